"""Feature declarations: adaptation from data, sharing, JSON round trip, validation."""

import json

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401
from tfrec_towers.features import (
    CategoricalFeature,
    FeatureSpec,
    HashedFeature,
    NumericFeature,
    SequenceFeature,
    adapt,
    feature_from_dict,
    feature_to_dict,
    input_signature,
    without_vocabulary,
)


def _spec():
    return FeatureSpec(
        query=(
            CategoricalFeature("user_id"),
            CategoricalFeature("gender", dtype="string", min_count=2),
            NumericFeature("age", dtype="int64", log1p=True),
            SequenceFeature("history", embedding_table="movie_id"),
            HashedFeature("zip", num_bins=7),
        ),
        candidate=(CategoricalFeature("movie_id", max_vocabulary_size=3), SequenceFeature("genres", dtype="string")),
        candidate_id="movie_id",
    )


def _tables():
    train = {
        "user_id": np.array([5, 5, 7], np.int64),
        "gender": np.array(["F", "F", "M"], object),
        "age": np.array([0, 3, 7], np.int64),
        "history": np.array([[0, 9, 9], [0, 0, 9], [8, 8, 8]], np.int64),
        "zip": np.array(["a", "b", "c"], object),
        "movie_id": np.array([1, 2, 1], np.int64),
        "genres": np.array(["A|B", "B", ""], object),
    }
    catalogue = {"movie_id": np.array([1, 2, 3], np.int64), "genres": np.array(["A|B", "B", "C"], object)}
    return train, catalogue


def test_adapt_learns_vocabularies_by_count_and_statistics():
    spec = adapt(_spec(), *_tables())
    by_name = {f.name: f for f in spec.all_features}
    assert by_name["user_id"].vocabulary == (5, 7)
    assert by_name["gender"].vocabulary == ("F",)  # "M" is below min_count=2
    # history and movie_id share a table: counts pooled (9:3, 8:3, 1:3, 2:2, 3:1), capped at 3
    # by the table's owner `movie_id`, in order of count then value.
    assert by_name["history"].vocabulary == by_name["movie_id"].vocabulary == (1, 8, 9)
    assert by_name["genres"].vocabulary == ("B", "A", "C")
    logs = np.log1p([0.0, 3.0, 7.0])
    assert by_name["age"].mean == pytest.approx(logs.mean())
    assert by_name["age"].variance == pytest.approx(logs.var())


def test_json_round_trip_keeps_everything():
    spec = adapt(_spec(), *_tables())
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_input_signature_follows_the_wire_contract():
    sig = input_signature(_spec().query)
    assert sig["user_id"] == tf.TensorSpec([None], tf.int64, "user_id")
    assert sig["gender"].dtype == tf.string
    assert sig["history"].shape.as_list() == [None, None]
    assert sig["age"].dtype == tf.int64


def test_validation_names_the_field():
    with pytest.raises(ValueError, match="`embedding_dim` must be a positive int"):
        CategoricalFeature("x", embedding_dim=0)
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        SequenceFeature("h", pooling="median")
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        CategoricalFeature("x", dtype="float32")
    with pytest.raises(ValueError, match="candidate_id"):
        FeatureSpec(query=(CategoricalFeature("u"),), candidate=(CategoricalFeature("i"),), candidate_id="item")
    with pytest.raises(ValueError, match="share the embedding table"):
        FeatureSpec(
            query=(SequenceFeature("h", embedding_table="i", embedding_dim=8),),
            candidate=(CategoricalFeature("i", embedding_dim=16),),
            candidate_id="i",
        )
    with pytest.raises(KeyError, match="`user_id` is declared but no input table"):
        adapt(_spec(), {"movie_id": np.array([1])})


def test_without_vocabulary_keeps_the_size_and_round_trips_through_json():
    spec = adapt(_spec(), *_tables())
    by_name = {f.name: without_vocabulary(f) for f in spec.all_features}
    assert (by_name["movie_id"].vocabulary, by_name["movie_id"].vocabulary_size) == (None, 3)
    assert (by_name["gender"].vocabulary, by_name["gender"].vocabulary_size) == (None, 1)
    assert by_name["zip"] == HashedFeature("zip", num_bins=7)  # no vocabulary: unchanged
    assert by_name["age"] == next(f for f in spec.query if f.name == "age")
    for feature in by_name.values():
        assert feature_from_dict(json.loads(json.dumps(feature_to_dict(feature)))) == feature
    relearnt = adapt(
        FeatureSpec(query=(by_name["user_id"],), candidate=(by_name["movie_id"],), candidate_id="movie_id"), *_tables()
    )
    assert [(f.vocabulary, f.vocabulary_size) for f in relearnt.all_features] == [((5, 7), None), ((1, 2, 3), None)]


def test_vocabulary_size_validation_names_the_field():
    with pytest.raises(ValueError, match="Feature `x`: `vocabulary_size` must be an int ≥ 0. Received: -1"):
        CategoricalFeature("x", vocabulary_size=-1)
    with pytest.raises(ValueError, match="Feature `x`: give `vocabulary` or `vocabulary_size`"):
        CategoricalFeature("x", vocabulary=(1, 2), vocabulary_size=2)
    assert CategoricalFeature("x", vocabulary_size=0).vocabulary_size == 0  # an empty vocabulary

"""Feature declarations: inferred from the tables' columns, or declared, and turned into a FeatureSpec."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow)
from tfrec_pipelines.data import DataError
from tfrec_pipelines.declarations import Declarations, feature_spec, infer_column, infer_declarations, rename_columns
from tfrec_pipelines.interactions import InteractionTables, interaction_data
from tfrec_towers.data_config import FeatureDeclaration
from tfrec_towers.features import CategoricalFeature, HashedFeature, NumericFeature, SequenceFeature, adapt


@pytest.mark.parametrize(
    "values, kind, extra",
    [
        (np.arange(5000) % 7, "categorical", {}),  # few integer codes
        (np.arange(5000), "numeric", {"log1p": False}),  # integers, all distinct, not heavy-tailed
        (np.r_[np.ones(990), np.full(10, 1e4)].astype(np.float32), "numeric", {"log1p": True}),  # heavy tail
        (np.array(["a|b", "c", "a"] * 10, object), "multi_valued", {"separator": "|"}),
        (np.array([f"title {i}" for i in range(3000)], object), "hashed", {"num_bins": 8192}),
        (np.array(["DE", "FR", ""] * 100, object), "categorical", {}),
    ],
)
def test_column_kinds_are_inferred_from_type_and_cardinality(values, kind, extra):
    declaration = infer_column("c", values)
    assert declaration.kind == kind
    for field, value in extra.items():
        assert getattr(declaration, field) == value


def _data():
    log = pd.DataFrame(
        {"user_id": ["u1", "u1", "u1", "u2", "u2"], "item_id": ["a", "b", "c", "a", "c"], "timestamp": [1, 2, 3, 1, 2]}
    )
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "tags": ["x|y", "y", "z|x"], "price": [1.0, 20.0, 3.0]})
    users = pd.DataFrame({"user_id": ["u1", "u2"], "country": ["DE", "FR"]})
    return interaction_data(InteractionTables("t", log, users=users, items=items), max_history=3)


def test_inferred_towers_read_ids_history_and_every_attribute_column():
    data = _data()
    declarations = infer_declarations(data, "user_id", ["country"], ["tags", "price"])
    assert [(d.name, d.kind) for d in declarations.query] == [
        ("user_id", "id"),
        ("history", "history"),
        ("country", "categorical"),
    ]
    assert [(d.name, d.kind) for d in declarations.candidate] == [
        ("item_id", "id"),
        ("tags", "multi_valued"),
        ("price", "numeric"),
    ]
    spec = feature_spec(
        declarations, data, embedding_dim=16, num_oov_buckets=2, history_pooling="mean", share_item_embeddings=True
    )
    history = next(f for f in spec.query if f.name == "history")
    assert isinstance(history, SequenceFeature) and history.dtype == "string" and history.separator is None
    assert history.embedding_table == "item_id" and history.embedding_dim == 16 and history.num_oov_buckets == 2
    assert spec.candidate_id == "item_id"
    assert isinstance(spec.candidate[1], SequenceFeature) and spec.candidate[1].separator == "|"
    assert isinstance(spec.candidate[2], NumericFeature) and spec.candidate[2].dtype == "float32"


def test_the_inferred_user_id_embeds_only_users_with_twenty_training_examples():
    # u1: 25 interactions -> 24 training examples (the last one is held out); u2: 5 -> 4.
    log = pd.DataFrame(
        {
            "user_id": ["u1"] * 25 + ["u2"] * 5,
            "item_id": [f"i{k}" for k in range(25)] + [f"i{k}" for k in range(5)],
            "timestamp": list(range(25)) + list(range(5)),
        }
    )
    data = interaction_data(InteractionTables("t", log), max_history=3)
    declarations = infer_declarations(data, "user_id", [], [])
    assert declarations.query[0].kind == "id" and declarations.query[0].min_count == 20
    spec = adapt(
        feature_spec(
            declarations, data, embedding_dim=8, num_oov_buckets=1, history_pooling="mean", share_item_embeddings=True
        ),
        data.train,
        data.candidates,
    )
    assert spec.query[0].vocabulary == ("u1",)  # u2 shares the out-of-vocabulary row


def test_declared_features_with_their_own_names_and_options():
    data = _data()
    declarations = Declarations(
        query=(
            FeatureDeclaration(name="user", column="user_id", kind="hashed", num_bins=64),
            FeatureDeclaration(name="history", kind="history", embedding_dim=8),
        ),
        candidate=(FeatureDeclaration(name="item", column="item_id", kind="id", embedding_dim=8, min_count=2),),
    )
    spec = feature_spec(
        declarations,
        rename_columns(data, declarations),
        embedding_dim=16,
        num_oov_buckets=1,
        history_pooling="mean",
        share_item_embeddings=True,
    )
    assert isinstance(spec.query[0], HashedFeature) and spec.query[0].num_bins == 64
    assert spec.candidate_id == "item" and spec.candidate[0].min_count == 2
    assert isinstance(spec.candidate[0], CategoricalFeature) and spec.query[1].embedding_table == "item"
    renamed = rename_columns(data, declarations)
    assert renamed.candidate_id == "item" and renamed.train["item"].tolist() == renamed.train["item_id"].tolist()


@pytest.mark.parametrize(
    "declarations, pattern",
    [
        (
            Declarations((FeatureDeclaration(name="user_id", kind="id"),), (FeatureDeclaration(name="tags"),)),
            r"exactly one `kind: id` feature reading the item column 'item_id'",
        ),
        (
            Declarations(
                (FeatureDeclaration(name="age", kind="numeric"),), (FeatureDeclaration(name="item_id", kind="id"),)
            ),
            r"'age'.*not a column of the users table",
        ),
        (
            Declarations(
                (FeatureDeclaration(name="country", kind="numeric"),), (FeatureDeclaration(name="item_id", kind="id"),)
            ),
            r"'country'.*holds text",
        ),
        (
            Declarations(
                (FeatureDeclaration(name="user_id", kind="id"),),
                (FeatureDeclaration(name="item_id", kind="id"), FeatureDeclaration(name="price")),
            ),
            r"'price'.*holds floats; declare it `kind: numeric`",
        ),
    ],
)
def test_declarations_that_do_not_fit_the_data_are_named(declarations, pattern):
    with pytest.raises(DataError, match=pattern):
        feature_spec(
            declarations,
            _data(),
            embedding_dim=8,
            num_oov_buckets=1,
            history_pooling="mean",
            share_item_embeddings=True,
        )


def test_bucketized_features_embed_the_bucket_of_given_or_quantile_boundaries():
    import tensorflow as tf

    from tfrec_towers.encoders import build_embedding_tables
    from tfrec_towers.features import BucketizedFeature, adapt

    data = _data()
    declarations = Declarations(
        (FeatureDeclaration(name="user_id", kind="id"),),
        (
            FeatureDeclaration(name="item_id", kind="id"),
            FeatureDeclaration(name="price", kind="bucketized", boundaries=(2.0, 10.0)),
        ),
    )
    spec = feature_spec(
        declarations, data, embedding_dim=4, num_oov_buckets=1, history_pooling="mean", share_item_embeddings=True
    )
    price = spec.candidate[1]
    assert isinstance(price, BucketizedFeature) and price.boundaries == (2.0, 10.0)
    table = build_embedding_tables([price])["price"]
    got = table(tf.constant([1.0, 2.0, 5.0, 20.0, float("nan")])).numpy()
    rows = table.embedding.embeddings.numpy()
    np.testing.assert_array_equal(got, rows[[0, 1, 1, 2, 0]])  # b ≤ x counts: 2.0 is in bucket 1
    learnt = adapt(
        dataclasses.replace(spec, candidate=(spec.candidate[0], BucketizedFeature("price", num_buckets=2))),
        data.train,
        data.candidates,
    )
    # the median of the prices adapt reads: the training examples' (1, 20, 1) and the catalogue's (1, 20, 3)
    assert learnt.candidate[1].boundaries == (2.0,)


def test_a_history_of_float_item_ids_is_named():
    data = _data()
    floats = dataclasses.replace(
        data, candidates={**data.candidates, "item_id": np.arange(len(data.candidates["item_id"]), dtype=np.float32)}
    )
    declarations = Declarations(
        (FeatureDeclaration(name="user_id", kind="id"), FeatureDeclaration(name="history", kind="history")),
        (FeatureDeclaration(name="item_id", kind="id"),),
    )
    with pytest.raises(
        DataError,
        match=r"'history': `kind: history` reads item ids, but the item column 'item_id' "
        r"holds floats; item ids are integers or text\.",
    ):
        feature_spec(
            declarations, floats, embedding_dim=8, num_oov_buckets=1, history_pooling="mean", share_item_embeddings=True
        )

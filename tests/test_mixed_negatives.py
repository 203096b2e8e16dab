"""Tests of the uniform corpus sampler of mixed negative sampling (Yang et al. 2020)."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_towers.losses.mixed_negatives import MixedNegativeSampler

CORPUS = {
    "movie_id": np.array([11, 3, 25, 7, 40, 18, 9], np.int64),
    "genres": np.array(["Action", "Comedy|Drama", "Drama", "Horror", "Action|Sci-Fi", "Animation", "War"], object),
    "year": np.array([1995.0, 1996.0, 1972.0, 1980.0, 1999.0, 1995.0, 1998.0], np.float32),
    "tags": np.arange(21, dtype=np.int64).reshape(7, 3),
}
ROW_OF_ID = {int(i): row for row, i in enumerate(CORPUS["movie_id"])}


def as_numpy(features):
    return {name: values.numpy() for name, values in features.items()}


def assert_real_rows(features, ids):
    np.testing.assert_array_equal(features["movie_id"], ids)
    rows = np.array([ROW_OF_ID[int(i)] for i in ids])
    np.testing.assert_array_equal(features["genres"], [g.encode() for g in CORPUS["genres"][rows]])
    np.testing.assert_array_equal(features["year"], CORPUS["year"][rows])
    np.testing.assert_array_equal(features["tags"], CORPUS["tags"][rows])


def test_rows_are_real_corpus_rows_and_log_q_is_uniform():
    sampler = MixedNegativeSampler(CORPUS, 50, "movie_id", seed=0)
    features, ids, log_q = sampler.sample()
    assert ids.shape == (50,) and features["tags"].shape == (50, 3)
    assert features["genres"].dtype == tf.string and features["year"].dtype == tf.float32
    assert_real_rows(as_numpy(features), ids.numpy())
    np.testing.assert_allclose(log_q.numpy(), np.full(50, -math.log(7)), rtol=1e-7)


def test_seeded_draws_are_deterministic():
    sampler = MixedNegativeSampler(CORPUS, 20, "movie_id")
    first = sampler.sample(seed=5)[1].numpy()
    np.testing.assert_array_equal(sampler.sample(seed=5)[1].numpy(), first)
    np.testing.assert_array_equal(sampler.sample(seed=tf.constant([5, 0], tf.int64))[1].numpy(), first)
    np.testing.assert_array_equal(tf.function(sampler.sample)(seed=tf.constant([5, 0]))[1].numpy(), first)
    assert not np.array_equal(sampler.sample(seed=6)[1].numpy(), first)
    other = MixedNegativeSampler(CORPUS, 20, "movie_id", seed=123)  # the layer's seed plays no part
    np.testing.assert_array_equal(other.sample(seed=5)[1].numpy(), first)


def test_generator_draws_advance_and_repeat_for_the_same_layer_seed():
    first, second = (MixedNegativeSampler(CORPUS, 20, "movie_id", seed=7) for _ in range(2))
    sample = tf.function(first.sample)
    draws = [sample()[1].numpy() for _ in range(3)]
    np.testing.assert_array_equal([second.sample()[1].numpy() for _ in range(3)], draws)
    assert not np.array_equal(draws[0], draws[1])
    assert int(first.draws.numpy()) == 3 and int(first.rng_seed.numpy()) == 7
    unseeded = MixedNegativeSampler(CORPUS, 20, "movie_id")  # a random rng_seed, still valid rows
    features, ids, _ = unseeded.sample()
    assert_real_rows(as_numpy(features), ids.numpy())


@pytest.mark.parametrize("seeded", [False, True])
def test_draws_are_uniform_over_rows(seeded):
    sampler = MixedNegativeSampler(CORPUS, 2000, "movie_id", seed=1)
    draws = np.concatenate([sampler.sample(seed=s if seeded else None)[1].numpy() for s in range(10)])
    observed = np.array([np.sum(draws == i) for i in CORPUS["movie_id"]])
    expected = len(draws) / 7
    chi_square = np.sum((observed - expected) ** 2 / expected)
    assert chi_square < 22.46  # 99.9% quantile of chi-square with 6 degrees of freedom


def test_config_holds_the_corpus_schema_and_a_checkpoint_restores_the_rows(tmp_path):
    sampler = MixedNegativeSampler(CORPUS, 9, "movie_id", seed=3, name="mns")
    config = json.loads(json.dumps(sampler.get_config()))
    assert config["columns"] == {
        "movie_id": {"dtype": "int64", "shape": [7]},
        "genres": {"dtype": "string", "shape": [7]},
        "year": {"dtype": "float32", "shape": [7]},
        "tags": {"dtype": "int64", "shape": [7, 3]},
    }
    assert "corpus" not in config
    assert (config["num_negatives"], config["candidate_id"], config["seed"]) == (9, "movie_id", 3)
    rebuilt = MixedNegativeSampler.from_config(config)
    assert rebuilt.get_config() == sampler.get_config() and rebuilt.corpus_size == 7
    assert not np.any(rebuilt.corpus["movie_id"].numpy()) and set(rebuilt.corpus["genres"].numpy()) == {b""}
    path = tf.train.Checkpoint(sampler=sampler).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(sampler=rebuilt).read(path).assert_consumed()
    expected = as_numpy(sampler.sample(seed=11)[0])
    for name, values in as_numpy(rebuilt.sample(seed=11)[0]).items():
        np.testing.assert_array_equal(values, expected[name])
        assert values.dtype == expected[name].dtype
    features, ids, _ = rebuilt.sample()
    assert_real_rows(as_numpy(features), ids.numpy())
    revived = tf.keras.layers.deserialize(tf.keras.layers.serialize(sampler))
    assert type(revived) is MixedNegativeSampler and revived.get_config() == sampler.get_config()


def test_a_config_that_held_the_corpus_still_loads_it():
    # the form earlier versions wrote: the columns as lists, no `columns` schema
    config = {
        "name": "mns",
        "trainable": True,
        "dtype": "float32",
        "num_negatives": 5,
        "candidate_id": "movie_id",
        "seed": 2,
        "corpus": {name: values.tolist() for name, values in CORPUS.items()},
    }
    sampler = MixedNegativeSampler.from_config(config)
    assert sampler.get_config()["columns"]["tags"] == {"dtype": "int64", "shape": [7, 3]}
    features, ids, _ = sampler.sample(seed=3)
    assert_real_rows(as_numpy(features), ids.numpy())


def test_checkpoint_restores_corpus_and_random_state(tmp_path):
    sampler = MixedNegativeSampler(CORPUS, 15, "movie_id", seed=1)
    sampler.sample()
    path = tf.train.Checkpoint(sampler=sampler).save(str(tmp_path / "ckpt"))
    scrambled = {name: values[::-1].copy() for name, values in CORPUS.items()}
    restored = MixedNegativeSampler(scrambled, 15, "movie_id", seed=2)
    tf.train.Checkpoint(sampler=restored).restore(path).assert_consumed()
    for name, column in restored.corpus.items():
        np.testing.assert_array_equal(column.numpy(), sampler.corpus[name].numpy())
    expected_features, expected_ids, _ = sampler.sample()
    features, ids, _ = restored.sample()
    np.testing.assert_array_equal(ids.numpy(), expected_ids.numpy())
    assert_real_rows(as_numpy(features), ids.numpy())


def test_saved_model_round_trip(tmp_path):
    sampler = MixedNegativeSampler(CORPUS, 6, "movie_id", seed=4)
    module = tf.Module()
    module.sampler = sampler
    module.sample_seeded = tf.function(
        lambda seed: sampler.sample(seed=seed), input_signature=[tf.TensorSpec([2], tf.int64)]
    )
    module.sample = tf.function(lambda: sampler.sample(), input_signature=[])
    tf.saved_model.save(module, str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    seed = tf.constant([8, 0], tf.int64)
    features, ids, log_q = loaded.sample_seeded(seed)
    np.testing.assert_array_equal(ids.numpy(), sampler.sample(seed=seed)[1].numpy())
    assert_real_rows(as_numpy(features), ids.numpy())
    features, ids, log_q = loaded.sample()
    assert_real_rows(as_numpy(features), ids.numpy())
    np.testing.assert_allclose(log_q.numpy(), np.full(6, -math.log(7)), rtol=1e-7)


@pytest.mark.parametrize(
    "corpus, kwargs, message",
    [
        (CORPUS, {"num_negatives": 0}, "`num_negatives` must be a positive int. Received: 0"),
        ({}, {}, "`corpus` must hold at least one column. Received: {}"),
        ({"movie_id": np.array([], np.int64)}, {}, "Corpus column 'movie_id' must be a non-empty array"),
        (
            {"movie_id": np.arange(3), "genres": np.array(["a", "b"], object)},
            {},
            "Corpus columns have different lengths: {'movie_id': 3, 'genres': 2}",
        ),
        ({"id": np.arange(3)}, {}, "`candidate_id` must name a corpus column ['id']. Received: 'movie_id'"),
        ({"movie_id": np.array([1, 2, 1])}, {}, "Corpus column 'movie_id' must hold distinct ids. Repeated: [1]"),
        (
            {"movie_id": np.arange(2), "flag": np.array([True, False])},
            {},
            "Corpus column 'flag' must hold int64, float32 or string values. Received dtype bool",
        ),
        (
            {"movie_id": np.array([1.0, 2.0])},
            {},
            "Corpus column 'movie_id' must hold int64 or string ids of shape [N]",
        ),
        (CORPUS, {"seed": -1}, "`seed` must be an int >= 0. Received: -1"),
        (None, {}, "`corpus` or `columns` (its schema, for a sampler a checkpoint fills) is required."),
        (
            None,
            {"columns": {"movie_id": {"dtype": "bool", "shape": [3]}}},
            "`columns['movie_id']` must be {'dtype': 'int64' | 'float32' | 'string', 'shape': [N, ...]}",
        ),
        (None, {"columns": {"movie_id": {"dtype": "int64", "shape": [0]}}}, "`columns['movie_id']` must be"),
        (
            {"movie_id": np.arange(3)},
            {"columns": {"movie_id": {"dtype": "int64", "shape": [4]}}},
            "`columns` must describe `corpus` {'movie_id': {'dtype': 'int64', 'shape': [3]}}",
        ),
        (
            None,
            {"columns": {"id": {"dtype": "int64", "shape": [3]}}},
            "`candidate_id` must name a corpus column ['id']",
        ),
    ],
)
def test_constructor_validation(corpus, kwargs, message):
    with pytest.raises(ValueError) as error:
        MixedNegativeSampler(corpus, **{"num_negatives": 4, "candidate_id": "movie_id", **kwargs})
    assert str(error.value).startswith(message)

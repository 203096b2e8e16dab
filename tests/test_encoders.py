"""Encoding layers: pooling under masks, OOV buckets, normalisation, serialisation."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401
from tfrec_towers.encoders import EmbeddingTable, FeatureEncoder, HashedEmbedding, MaskedPooling, NumericNormalization
from tfrec_towers.features import CategoricalFeature, NumericFeature, SequenceFeature


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pooling", ["mean", "sum", "max"])
def test_masked_pooling_matches_numpy(pooling, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    mask = rng.random((4, 5)) < 0.5
    mask[0] = False  # a row with no valid position pools to zeros
    expected = np.zeros((4, 3), np.float32)
    for b in range(4):
        valid = x[b][mask[b]]
        if len(valid):
            expected[b] = {"mean": valid.mean(0), "sum": valid.sum(0), "max": valid.max(0)}[pooling]
    got = MaskedPooling(pooling)(tf.constant(x), tf.constant(mask)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_unknown_ids_use_the_oov_rows():
    table = EmbeddingTable([10, 20, 30], "int64", 4, num_oov_buckets=1)
    out = table(tf.constant([20, 99999, -5], tf.int64)).numpy()
    weights = table.embedding.embeddings.numpy()
    np.testing.assert_allclose(out[0], weights[2])  # row = num_oov + index in vocabulary
    np.testing.assert_allclose(out[1], weights[0])
    np.testing.assert_allclose(out[2], weights[0])
    strings = EmbeddingTable(["a", "b"], "string", 2, num_oov_buckets=2)
    assert strings(tf.constant(["never-seen"])).shape == (1, 2)


def test_sequence_features_pool_only_real_items():
    spec = [
        SequenceFeature("history", vocabulary=(7, 8), embedding_dim=3, pooling="mean"),
        SequenceFeature("genres", dtype="string", vocabulary=("A", "B"), embedding_dim=2, pooling="sum"),
        NumericFeature("age", dtype="int64", mean=10.0, variance=4.0),
    ]
    encoder = FeatureEncoder(spec)
    out = encoder(
        {
            "history": tf.constant([[0, 7, 8], [0, 0, 0]], tf.int64),
            "genres": tf.constant(["A|B", ""]),
            "age": tf.constant([12, 8], tf.int64),
        }
    ).numpy()
    h = encoder.tables["history"].embedding.embeddings.numpy()
    g = encoder.tables["genres"].embedding.embeddings.numpy()
    np.testing.assert_allclose(out[0, :3], (h[1] + h[2]) / 2, rtol=1e-6)
    np.testing.assert_allclose(out[1, :3], 0.0)
    np.testing.assert_allclose(out[0, 3:5], g[1] + g[2], rtol=1e-6)
    np.testing.assert_allclose(out[1, 3:5], 0.0)
    np.testing.assert_allclose(out[:, 5], [(12 - 10) / np.sqrt(4 + 1e-6), (8 - 10) / np.sqrt(4 + 1e-6)], rtol=1e-5)


def test_encoder_reports_missing_inputs():
    encoder = FeatureEncoder([CategoricalFeature("user_id", vocabulary=(1,))])
    with pytest.raises(KeyError, match=r"lack the features \['user_id'\]"):
        encoder({"other": tf.constant([1], tf.int64)})


@pytest.mark.parametrize(
    "layer",
    [
        EmbeddingTable([1, 2], "int64", 3, 2),
        HashedEmbedding(5, 2),
        MaskedPooling("max"),
        NumericNormalization(1.0, 2.0, log1p=True),
        FeatureEncoder([CategoricalFeature("u", vocabulary=(1, 2)), SequenceFeature("h", vocabulary=(3,))]),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_config_round_trip(layer):
    config = layer.get_config()
    json.dumps(config)
    rebuilt = type(layer).from_config(config)
    assert rebuilt.get_config() == config


@pytest.mark.parametrize("key_dtype, values", [("string", ["a", "", "zz"]), ("int64", [3, 0, -7])])
def test_an_empty_vocabulary_sends_every_value_to_the_oov_bucket(key_dtype, values):
    table = EmbeddingTable([], key_dtype, 4, num_oov_buckets=1)
    out = table(tf.constant(values, tf.string if key_dtype == "string" else tf.int64)).numpy()
    row = table.embedding.embeddings.numpy()
    assert row.shape == (1, 4)
    np.testing.assert_array_equal(out, np.repeat(row, len(values), axis=0))


def test_validation_messages():
    with pytest.raises(ValueError, match="`key_dtype` must be"):
        EmbeddingTable([], "float32", 2)
    with pytest.raises(ValueError, match="`num_bins` must be a positive int"):
        HashedEmbedding(0, 2)
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        MaskedPooling("median")


@pytest.mark.slow
def test_savedmodel_round_trip_in_a_fresh_process(tmp_path):
    encoder = FeatureEncoder(
        [
            CategoricalFeature("user_id", vocabulary=(5, 6), embedding_dim=3),
            SequenceFeature("genres", dtype="string", vocabulary=("A", "B"), embedding_dim=2),
        ]
    )
    inputs = {"user_id": tf.constant([5, 123], tf.int64), "genres": tf.constant(["A|B", "Z"])}
    expected = encoder(inputs).numpy()
    module = tf.Module()
    module.encoder = encoder
    module.f = tf.function(
        lambda user_id, genres: encoder({"user_id": user_id, "genres": genres}),
        input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string)],
    )
    tf.saved_model.save(module, str(tmp_path / "m"))
    script = (
        "import sys, json, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "out = m.f(tf.constant([5, 123], tf.int64), tf.constant(['A|B', 'Z']))\n"
        "print(json.dumps(out.numpy().tolist()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m")], capture_output=True, text=True, check=True
    )
    np.testing.assert_allclose(np.array(json.loads(result.stdout.strip().splitlines()[-1])), expected, rtol=1e-6)


def _keras_rows(vocabulary, key_dtype, num_oov_buckets, values):
    """The rows Keras' own lookups give (Hashing for an empty vocabulary): the reference."""
    if not len(vocabulary):
        return tf.keras.layers.Hashing(num_oov_buckets)(values).numpy()
    if key_dtype == "int64":
        lookup = tf.keras.layers.IntegerLookup(
            vocabulary=np.asarray(vocabulary, np.int64), num_oov_indices=num_oov_buckets, mask_token=None
        )
    else:
        lookup = tf.keras.layers.StringLookup(
            vocabulary=np.asarray(vocabulary, object), num_oov_indices=num_oov_buckets, mask_token=None
        )
    return lookup(values).numpy()


@pytest.mark.parametrize("num_oov_buckets", [1, 3])
@pytest.mark.parametrize(
    "key_dtype, vocabulary, probe",
    [
        ("int64", [30, 10, 20], [[10, 20, 30], [7, -4, 0]]),
        ("int64", [], [[10, 7, -4]]),
        ("string", ["b", "a", "c"], [["a", "c", "b"], ["zz", "", "A"]]),
        ("string", [], [["a", "zz", ""]]),
    ],
)
def test_rows_are_those_of_keras_lookups(key_dtype, vocabulary, probe, num_oov_buckets):
    table = EmbeddingTable(vocabulary, key_dtype, 2, num_oov_buckets)
    values = tf.constant(probe, tf.int64 if key_dtype == "int64" else tf.string)
    np.testing.assert_array_equal(
        table.lookup(values).numpy(), _keras_rows(vocabulary, key_dtype, num_oov_buckets, values)
    )
    if vocabulary:  # row = num_oov + index in the vocabulary, by hand
        known = [num_oov_buckets + list(vocabulary).index(v) for v in probe[0]]
        np.testing.assert_array_equal(table.lookup(values).numpy()[0], known)


@pytest.mark.parametrize(
    "key_dtype, vocabulary, probe",
    [
        ("int64", [30, 10, 20], [10, 20, 30, 7]),
        ("string", ["b", "a", "c"], ["a", "c", "b", "zz"]),
        ("string", [], ["a"]),
    ],
)
def test_embedding_table_config_holds_sizes_and_a_checkpoint_restores_the_vocabulary(
    key_dtype, vocabulary, probe, tmp_path
):
    table = EmbeddingTable(vocabulary, key_dtype, 4, num_oov_buckets=2, name="items")
    config = json.loads(json.dumps(table.get_config()))
    assert {k: config[k] for k in ("key_dtype", "embedding_dim", "num_oov_buckets", "vocabulary_size")} == {
        "key_dtype": key_dtype,
        "embedding_dim": 4,
        "num_oov_buckets": 2,
        "vocabulary_size": len(vocabulary),
    }
    assert "vocabulary" not in config
    values = tf.constant(probe, tf.int64 if key_dtype == "int64" else tf.string)
    expected = table(values).numpy()
    rebuilt = EmbeddingTable.from_config(config)
    assert rebuilt.get_config() == table.get_config()
    assert np.all(rebuilt.lookup(values).numpy() < 2)  # no vocabulary yet: every value is OOV
    rebuilt(values)
    assert rebuilt.embedding.embeddings.shape == (len(vocabulary) + 2, 4)
    path = tf.train.Checkpoint(table=table).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(table=rebuilt).read(path).assert_consumed()
    assert rebuilt.get_vocabulary().tolist() == list(vocabulary)
    np.testing.assert_array_equal(rebuilt(values).numpy(), expected)


def test_feature_encoder_config_has_sizes_not_values():
    encoder = FeatureEncoder(
        [CategoricalFeature("u", vocabulary=(5, 6, 7)), SequenceFeature("h", dtype="string", vocabulary=("x",))]
    )
    features = encoder.get_config()["features"]
    assert [(f["name"], f["vocabulary"], f["vocabulary_size"]) for f in features] == [("u", None, 3), ("h", None, 1)]
    rebuilt = FeatureEncoder.from_config(encoder.get_config())
    assert rebuilt.tables["u"].vocabulary_size == 3 and rebuilt.tables["h"].vocabulary_size == 1


def test_embedding_table_validation_names_the_argument():
    with pytest.raises(ValueError, match=r"`vocabulary` or `vocabulary_size` is required. Received neither."):
        EmbeddingTable(None, "int64", 2)
    with pytest.raises(ValueError, match=r"`vocabulary_size` must equal the 2 values of `vocabulary`. Received: 3"):
        EmbeddingTable([1, 2], "int64", 2, vocabulary_size=3)
    with pytest.raises(
        ValueError, match=r"`vocabulary` must hold distinct values. Received 3 values, of which these repeat: \['a'\]"
    ):
        EmbeddingTable(["a", "b", "a"], "string", 2)
    with pytest.raises(ValueError, match=r"Received 5 values, of which these repeat: \[3, 7\]"):
        EmbeddingTable([7, 3, 7, 1, 3], "int64", 2)


def test_a_config_that_held_the_vocabulary_still_loads_it():
    # the form earlier versions wrote: the values themselves, no `vocabulary_size`
    config = {
        "name": "items",
        "trainable": True,
        "dtype": "float32",
        "vocabulary": [30, 10],
        "key_dtype": "int64",
        "embedding_dim": 2,
        "num_oov_buckets": 1,
    }
    table = EmbeddingTable.from_config(config)
    assert table.vocabulary_size == 2 and table.get_vocabulary().tolist() == [30, 10]
    np.testing.assert_array_equal(table.lookup(tf.constant([10, 30, 5], tf.int64)).numpy(), [2, 1, 0])

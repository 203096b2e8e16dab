"""Tests of the logQ correction s^c(x, y_j) = s(x, y_j) − log p_j."""

import json

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_towers.losses.logq import LogQCorrection


@pytest.mark.parametrize("seed", range(3))
def test_subtracts_log_probability_per_column(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(4, 6)).astype(np.float32)
    probabilities = rng.uniform(1e-4, 1.0, size=6)
    corrected = LogQCorrection()(logits, np.log(probabilities).astype(np.float32)).numpy()
    expected = np.array([[logits[i, j] - np.log(probabilities[j]) for j in range(6)] for i in range(4)])
    np.testing.assert_allclose(corrected, expected, rtol=1e-6)


def test_hand_computed_and_softmax_reweighting():
    logits = np.zeros((1, 2), np.float32)
    corrected = LogQCorrection()(logits, np.log([0.5, 0.125]).astype(np.float32)).numpy()
    np.testing.assert_allclose(corrected, [[np.log(2.0), np.log(8.0)]], rtol=1e-6)
    # equal scores: the rarer candidate gets 4x the softmax mass (8 / 2).
    softmax = tf.nn.softmax(corrected).numpy()
    np.testing.assert_allclose(softmax, [[0.2, 0.8]], rtol=1e-6)


def test_follows_a_mixed_precision_policy_and_works_in_tf_function():
    layer = LogQCorrection(dtype="mixed_float16")
    logits = tf.constant([[1.0, 2.0]], tf.float16)
    result = tf.function(layer)(logits, tf.constant([-1.0, -2.0], tf.float32))
    assert result.dtype == tf.float16
    np.testing.assert_allclose(result.numpy(), [[2.0, 4.0]])


def test_shape_validation():
    layer = LogQCorrection()
    with pytest.raises(ValueError, match=r"Expected `logits` \[batch, N\] and `log_q` \[N\]"):
        layer(tf.zeros([2, 3]), tf.zeros([2, 3]))
    with pytest.raises(ValueError, match="`logits` has 3 candidates but `log_q` has 4"):
        layer(tf.zeros([2, 3]), tf.zeros([4]))


def test_config_round_trip():
    layer = LogQCorrection(name="logq")
    config = json.loads(json.dumps(layer.get_config()))
    rebuilt = LogQCorrection.from_config(config)
    assert rebuilt.get_config() == layer.get_config() and rebuilt.name == "logq"
    revived = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(revived) is LogQCorrection


def test_saved_model_round_trip(tmp_path):
    module = tf.Module()
    module.layer = LogQCorrection()
    module.correct = tf.function(
        module.layer.call, input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.float32)]
    )
    tf.saved_model.save(module, str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    np.testing.assert_allclose(loaded.correct(tf.ones([2, 2]), tf.constant([-1.0, 0.0])).numpy(), [[2.0, 1.0]] * 2)

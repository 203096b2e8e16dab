"""Tests of the fixed and learnable softmax temperature."""

import math

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_towers.losses.temperature import Temperature

SIMILARITY = np.random.default_rng(0).uniform(-1, 1, size=(3, 5)).astype(np.float32)


def test_fixed_temperature_divides():
    layer = Temperature(0.05)
    np.testing.assert_allclose(layer(SIMILARITY).numpy(), SIMILARITY / 0.05, rtol=1e-6)
    assert layer.trainable_weights == [] and layer.weights == []
    assert layer.temperature.numpy() == np.float32(0.05)


def test_default_leaves_similarities_unchanged():
    np.testing.assert_array_equal(Temperature()(SIMILARITY).numpy(), SIMILARITY)


def test_learnable_gradient_flows_to_log_temperature():
    layer = Temperature(0.1, learnable=True)
    assert [w.name for w in layer.trainable_weights] == ["log_temperature:0"]
    np.testing.assert_allclose(layer.log_temperature.numpy(), math.log(0.1), rtol=1e-6)
    np.testing.assert_allclose(layer(SIMILARITY).numpy(), SIMILARITY / 0.1, rtol=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(SIMILARITY))
    gradient = tape.gradient(loss, layer.log_temperature)
    # d/d(log τ) Σ s·exp(−log τ) = −Σ s / τ
    np.testing.assert_allclose(gradient.numpy(), -SIMILARITY.sum() / 0.1, rtol=1e-4)


def test_learnable_clipping_holds():
    layer = Temperature(1.0, learnable=True, min_temperature=0.05, max_temperature=2.0)
    layer.log_temperature.assign(math.log(1e-4))
    np.testing.assert_allclose(layer.temperature.numpy(), 0.05, rtol=1e-6)
    np.testing.assert_allclose(layer(SIMILARITY).numpy(), SIMILARITY / 0.05, rtol=1e-5)
    layer.log_temperature.assign(math.log(50.0))
    np.testing.assert_allclose(layer.temperature.numpy(), 2.0, rtol=1e-6)


def test_optimizer_keeps_log_temperature_in_range():
    layer = Temperature(1.0, learnable=True, min_temperature=0.05, max_temperature=2.0)
    optimizer = tf.keras.optimizers.SGD(learning_rate=100.0)
    ones = np.ones((2, 2), np.float32)
    for sign, bound in ((-1.0, 0.05), (1.0, 2.0)):
        # minimising sign·Σ s/τ with s > 0 drives τ to 0 (sign −1) or to infinity (sign +1)
        with tf.GradientTape() as tape:
            loss = sign * tf.reduce_sum(layer(ones))
        gradient = tape.gradient(loss, layer.log_temperature)
        optimizer.apply_gradients([(gradient, layer.log_temperature)])
        np.testing.assert_allclose(layer.log_temperature.numpy(), math.log(bound), rtol=1e-6)
        # at the bound the gradient still flows, so τ can come back
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ones))
        assert tape.gradient(loss, layer.log_temperature).numpy() != 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, r"`temperature` must be a float in \(0.0, inf\). Received: 0.0"),
        ({"temperature": -1.0}, "`temperature` must be a float in"),
        ({"temperature": True}, "`temperature` must be a float in"),
        ({"min_temperature": 0.0}, "`min_temperature` must be a float in"),
        ({"max_temperature": float("inf")}, "`max_temperature` must be a float in"),
        (
            {"min_temperature": 2.0, "max_temperature": 1.0},
            "`min_temperature` must not exceed `max_temperature`",
        ),
        (
            {"temperature": 0.001},
            r"`temperature` must lie in \[`min_temperature`, `max_temperature`\]",
        ),
        ({"temperature": 0.5, "max_temperature": 0.2}, r"`temperature` must lie in"),
        ({"learnable": "yes"}, "`learnable` must be a bool"),
    ],
)
def test_validation_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Temperature(**kwargs)


@pytest.mark.parametrize("learnable", [False, True])
def test_config_round_trip(learnable):
    layer = Temperature(0.2, learnable=learnable, min_temperature=0.1, max_temperature=5.0, name="tau")
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert isinstance(restored, Temperature)
    assert restored.get_config() == layer.get_config()
    assert Temperature.from_config(layer.get_config()).get_config() == layer.get_config()
    np.testing.assert_allclose(restored(SIMILARITY).numpy(), SIMILARITY / 0.2, rtol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    layer = Temperature(0.2, learnable=True)
    layer.log_temperature.assign(math.log(0.3))
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    restored = Temperature(0.2, learnable=True)
    tf.train.Checkpoint(layer=restored).restore(path).assert_consumed()
    np.testing.assert_allclose(restored.temperature.numpy(), 0.3, rtol=1e-6)


def test_saved_model_round_trip(tmp_path):
    class Scale(tf.Module):
        def __init__(self):
            super().__init__()
            self.layer = Temperature(0.2, learnable=True)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
        def __call__(self, similarity):
            return self.layer(similarity)

    module = Scale()
    module.layer.log_temperature.assign(math.log(0.4))
    tf.saved_model.save(module, str(tmp_path / "temperature"))
    loaded = tf.saved_model.load(str(tmp_path / "temperature"))
    np.testing.assert_allclose(loaded(SIMILARITY).numpy(), SIMILARITY / 0.4, rtol=1e-5)

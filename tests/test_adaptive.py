"""Tests of the adaptive margin and temperature layer against numpy re-computations."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_towers.losses.adaptive import (
    AdaptiveMarginTemperature,
    item_anchored_similarities,
)
from tfrec_towers.losses.modes import SampledSoftmaxLoss

ALPHA, DELTA0, TAU0 = 0.5, 0.01, 1.0 / 30.0


def _np_margins_temperatures(c, alpha=ALPHA, delta0=DELTA0, tau0=TAU0, tau_min=1e-3):
    hardness = np.clip((c + 1.0) / 2.0, 0.0, 1.0)
    return delta0 * (1.0 - alpha * hardness), np.maximum(tau0 * (1.0 - alpha * hardness), tau_min)


def _np_logits(s_pos, s_neg, c, **hyper):
    delta0, tau0 = hyper.get("delta0", DELTA0), hyper.get("tau0", TAU0)
    margins, temperatures = _np_margins_temperatures(c, **hyper)
    z_pos = (s_pos - delta0) / tau0
    return z_pos, z_pos[:, None] + (s_neg - s_pos[:, None] + margins) / temperatures


def _unit(rng, shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _triples(seed, batch=4, num_negatives=6, dim=5):
    rng = np.random.default_rng(seed)
    q, v, n = _unit(rng, (batch, dim)), _unit(rng, (batch, dim)), _unit(rng, (num_negatives, dim))
    return q, v, n


def test_margin_and_temperature_strictly_decrease_with_hardness():
    grid = np.linspace(-1.0, 1.0, 41, dtype=np.float32)[None, :]
    margins, temperatures = AdaptiveMarginTemperature().margins_and_temperatures(grid)
    assert np.all(np.diff(margins.numpy()[0]) < 0)
    assert np.all(np.diff(temperatures.numpy()[0]) < 0)
    expected_margins, expected_temperatures = _np_margins_temperatures(grid)
    np.testing.assert_allclose(margins.numpy(), expected_margins, rtol=1e-6)
    np.testing.assert_allclose(temperatures.numpy(), expected_temperatures, rtol=1e-6)
    # the easiest negative gets the base values, the hardest (1 - alpha) of them
    ends = [0, -1]
    np.testing.assert_allclose(margins.numpy()[0, ends], [DELTA0, DELTA0 * (1 - ALPHA)], rtol=1e-6)
    np.testing.assert_allclose(temperatures.numpy()[0, ends], [TAU0, TAU0 * (1 - ALPHA)], rtol=1e-6)


def test_temperature_floor():
    layer = AdaptiveMarginTemperature(strength=1.0, min_temperature=0.005)
    _, temperatures = layer.margins_and_temperatures(np.array([[1.0, 0.9, -1.0]], np.float32))
    np.testing.assert_allclose(temperatures.numpy(), [[0.005, 0.005, TAU0]], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_against_numpy(seed):
    q, v, n = _triples(seed)
    s_pos, s_neg, c = np.sum(q * v, axis=1), q @ n.T, v @ n.T
    z_pos, z_neg = AdaptiveMarginTemperature()(s_pos, s_neg, c)
    expected_pos, expected_neg = _np_logits(s_pos, s_neg, c)
    np.testing.assert_allclose(z_pos.numpy(), expected_pos, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(z_neg.numpy(), expected_neg, rtol=1e-5, atol=1e-4)


def test_softmax_over_adaptive_logits_is_the_documented_formula():
    q, v, n = _triples(3)
    s_pos, s_neg, c = np.sum(q * v, axis=1), q @ n.T, v @ n.T
    mask = np.ones_like(s_neg, dtype=bool)
    mask[1, 2:] = False
    margins, temperatures = _np_margins_temperatures(c)
    d = (s_neg - s_pos[:, None] + margins) / temperatures
    expected = np.mean(np.log1p(np.sum(np.where(mask, np.exp(d), 0.0), axis=1)))
    got = SampledSoftmaxLoss()(*AdaptiveMarginTemperature()(s_pos, s_neg, c), mask)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_zero_strength_gives_constant_margin_and_temperature():
    q, v, n = _triples(4)
    s_pos, s_neg, c = np.sum(q * v, axis=1), q @ n.T, v @ n.T
    layer = AdaptiveMarginTemperature(strength=0.0)
    margins, temperatures = layer.margins_and_temperatures(c)
    np.testing.assert_allclose(margins.numpy(), np.full_like(c, DELTA0), rtol=1e-7)
    np.testing.assert_allclose(temperatures.numpy(), np.full_like(c, TAU0), rtol=1e-7)
    z_pos, z_neg = layer(s_pos, s_neg, c)
    # additive-margin softmax: z_i = (s_i - δ0)/τ0, z_ij = s_ij/τ0
    np.testing.assert_allclose(z_pos.numpy(), (s_pos - DELTA0) / TAU0, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(z_neg.numpy(), s_neg / TAU0, rtol=1e-5, atol=1e-4)


def test_no_gradient_flows_through_margin_and_temperature():
    rng = np.random.default_rng(5)
    q = tf.constant(_unit(rng, (4, 3)))
    v = tf.Variable(_unit(rng, (4, 3)))
    mask = ~np.eye(4, dtype=bool)
    layer, loss = AdaptiveMarginTemperature(), SampledSoftmaxLoss()

    with tf.GradientTape() as tape:
        s = tf.matmul(q, v, transpose_b=True)
        c = tf.matmul(v, v, transpose_b=True)
        got = loss(*layer(tf.linalg.diag_part(s), s, c), mask)
    got_gradient = tape.gradient(got, v)

    v_np = v.numpy()
    margins, temperatures = (tf.constant(x, tf.float32) for x in _np_margins_temperatures(v_np @ v_np.T))
    with tf.GradientTape() as tape:
        s = tf.matmul(q, v, transpose_b=True)
        s_pos = tf.linalg.diag_part(s)
        d = (s - s_pos[:, None] + margins) / temperatures
        reference = tf.reduce_mean(tf.math.log1p(tf.reduce_sum(tf.where(mask, tf.exp(d), 0.0), axis=1)))
    reference_gradient = tape.gradient(reference, v)

    np.testing.assert_allclose(got.numpy(), reference.numpy(), rtol=1e-5)
    np.testing.assert_allclose(got_gradient.numpy(), reference_gradient.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(got_gradient.numpy()).max() > 1e-3


def test_item_anchored_similarities():
    rng = np.random.default_rng(6)
    q, v = _unit(rng, (3, 4)), _unit(rng, (3, 4))
    result = item_anchored_similarities(tf.constant(q), tf.constant(v))
    for i in range(3):
        np.testing.assert_allclose(result.positive_similarity[i], v[i] @ q[i], rtol=1e-6)
        for j in range(3):
            np.testing.assert_allclose(result.negative_similarity[i, j], v[i] @ q[j], rtol=1e-6)
            np.testing.assert_allclose(result.positive_negative_similarity[i, j], q[i] @ q[j], rtol=1e-6)
            assert result.negative_mask[i, j] == (i != j)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strength": 1.5}, r"`strength` must be a float in \[0.0, 1.0\]. Received: 1.5"),
        ({"strength": "0.5"}, "`strength` must be a float in"),
        ({"base_margin": -0.1}, r"`base_margin` must be a float in \[0.0, inf\)"),
        ({"base_temperature": 0.0}, r"`base_temperature` must be a float in \(0.0, inf\)"),
        ({"item_anchored_weight": -0.05}, r"`item_anchored_weight` must be a float in \[0.0, 1"),
        ({"min_temperature": 0.1}, r"`min_temperature` must be a float in \(0.0, 0.0333"),
    ],
)
def test_validation_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveMarginTemperature(**kwargs)


def test_config_round_trip():
    layer = AdaptiveMarginTemperature(
        strength=0.3,
        base_margin=0.02,
        base_temperature=0.05,
        item_anchored_weight=0.1,
        min_temperature=0.002,
        name="adaptive",
    )
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert isinstance(restored, AdaptiveMarginTemperature)
    assert restored.get_config() == layer.get_config()
    config = layer.get_config()
    assert AdaptiveMarginTemperature.from_config(config).get_config() == config
    assert restored.item_anchored_weight == 0.1


def test_saved_model_round_trip(tmp_path):
    class Logits(tf.Module):
        def __init__(self):
            super().__init__()
            self.layer = AdaptiveMarginTemperature()

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32),
                tf.TensorSpec([None, None], tf.float32),
                tf.TensorSpec([None, None], tf.float32),
            ]
        )
        def __call__(self, s_pos, s_neg, c):
            return self.layer(s_pos, s_neg, c)

    q, v, n = _triples(7)
    s_pos, s_neg, c = np.sum(q * v, axis=1), q @ n.T, v @ n.T
    tf.saved_model.save(Logits(), str(tmp_path / "adaptive"))
    z_pos, z_neg = tf.saved_model.load(str(tmp_path / "adaptive"))(s_pos, s_neg, c)
    expected_pos, expected_neg = _np_logits(s_pos, s_neg, c)
    np.testing.assert_allclose(z_pos.numpy(), expected_pos, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(z_neg.numpy(), expected_neg, rtol=1e-5, atol=1e-4)

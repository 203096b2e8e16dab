"""Tests of the training-mode losses against numpy re-computations."""

import typing

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_towers.losses import modes


def _np_log_sigmoid(x):
    return -np.log1p(np.exp(-x))


def _np_softmax_row(positive, valid_negatives):
    logits = np.concatenate([[positive], valid_negatives])
    top = logits.max()
    return np.log(np.exp(logits - top).sum()) + top - positive


def _np_row_losses(mode, options, positive, negative, mask):
    """Per-row losses, one explicit loop per row, written independently of the code."""
    losses = []
    for i in range(len(positive)):
        valid = negative[i][mask[i]]
        if mode == "softmax":
            losses.append(_np_softmax_row(positive[i], valid))
        elif mode == "bce":
            sigmoid = 1.0 / (1.0 + np.exp(-valid))
            negative_part = np.mean(-np.log(1.0 - sigmoid)) if len(valid) else 0.0
            weight = options.get("negative_weight", 1.0)
            losses.append(-_np_log_sigmoid(positive[i]) + weight * negative_part)
        elif mode in ("bpr", "hinge"):
            if len(valid) == 0:
                losses.append(0.0)
                continue
            used = valid.max(keepdims=True) if options.get("hardest_negative_only") else valid
            if mode == "bpr":
                losses.append(np.mean(-_np_log_sigmoid(positive[i] - used)))
            else:
                losses.append(np.mean(np.maximum(0.0, options["margin"] - positive[i] + used)))
        elif mode == "softmax_hinge":  # at step 0 with no start and no ramp: w = hinge_weight
            weight = options.get("hinge_weight", 1.0)
            hinge_options = {k: options[k] for k in ("margin", "hardest_negative_only") if k in options}
            hinge = _np_row_losses("hinge", hinge_options, positive[i : i + 1], negative[i : i + 1], mask[i : i + 1])
            losses.append((1 - weight) * _np_softmax_row(positive[i], valid) + weight * hinge[0])
        elif mode == "symmetric":
            batch = len(positive)
            row_valid = [negative[i, j] for j in range(batch) if j != i and mask[i, j]]
            column_valid = [negative[j, i] for j in range(batch) if j != i and mask[j, i]]
            weight = options.get("candidate_to_query_weight", 0.5)
            losses.append(
                (1 - weight) * _np_softmax_row(positive[i], np.array(row_valid))
                + weight * _np_softmax_row(positive[i], np.array(column_valid))
            )
    return np.array(losses)


def _np_loss(mode, options, positive, negative, mask, weights=None):
    losses = _np_row_losses(mode, options, positive, negative, mask)
    weights = np.ones_like(losses) if weights is None else weights
    return np.sum(weights * losses) / np.sum(weights)


CASES = [
    ("softmax", {}),
    ("bce", {}),
    ("bce", {"negative_weight": 0.25}),
    ("bpr", {}),
    ("bpr", {"hardest_negative_only": True}),
    ("hinge", {"margin": 1.5}),
    ("hinge", {"margin": 0.5, "hardest_negative_only": True}),
    ("softmax_hinge", {"margin": 1.5}),
    ("softmax_hinge", {"margin": 0.5, "hardest_negative_only": True, "hinge_weight": 0.3}),
    ("symmetric", {}),
    ("symmetric", {"candidate_to_query_weight": 0.2}),
]


def _batch(seed, batch=4, num_negatives=4):
    rng = np.random.default_rng(seed)
    positive = rng.normal(size=batch).astype(np.float32)
    negative = rng.normal(scale=2.0, size=(batch, num_negatives)).astype(np.float32)
    mask = rng.random((batch, num_negatives)) > 0.3
    mask[:, 0] = True
    mask[2] = False  # a row whose negatives are all masked
    if batch == num_negatives:
        np.fill_diagonal(mask, False)
    # Masked entries hold large values: they must not leak into any loss.
    negative = np.where(mask, negative, 40.0).astype(np.float32)
    return positive, negative, mask


@pytest.mark.parametrize("mode, options", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_against_numpy(mode, options, seed):
    positive, negative, mask = _batch(seed)
    loss = modes.make_mode_loss(mode, **options)
    got = loss(tf.constant(positive), tf.constant(negative), tf.constant(mask))
    np.testing.assert_allclose(got.numpy(), _np_loss(mode, options, positive, negative, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode, options", CASES)
def test_sample_weight_is_a_weighted_mean_over_rows(mode, options):
    positive, negative, mask = _batch(3)
    weights = np.array([0.5, 2.0, 1.0, 0.0], np.float32)
    loss = modes.make_mode_loss(mode, **options)
    got = loss(positive, negative, mask, tf.constant(weights))
    np.testing.assert_allclose(
        got.numpy(),
        _np_loss(mode, options, positive, negative, mask, weights),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("mode, options", CASES)
def test_batch_size_one_without_valid_negative(mode, options):
    positive = np.array([0.7], np.float32)
    negative = np.array([[0.7]], np.float32)
    mask = np.array([[False]])
    got = modes.make_mode_loss(mode, **options)(positive, negative, mask).numpy()
    expected = -_np_log_sigmoid(0.7) if mode == "bce" else 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode, options", CASES)
def test_masked_negatives_get_no_gradient(mode, options):
    positive, negative, mask = _batch(4)
    negative = tf.Variable(negative)
    with tf.GradientTape() as tape:
        loss = modes.make_mode_loss(mode, **options)(positive, negative, mask)
    gradient = tape.gradient(loss, negative).numpy()
    assert np.all(np.isfinite(gradient))
    np.testing.assert_array_equal(gradient[~mask], 0.0)


@pytest.mark.parametrize("mode, options", CASES)
def test_non_finite_masked_negatives_are_ignored(mode, options):
    positive, negative, mask = _batch(9)
    fill = np.where(np.arange(4) % 2, np.inf, np.nan)
    garbage = tf.Variable(np.where(mask, negative, fill).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = modes.make_mode_loss(mode, **options)(positive, garbage, mask)
    gradient = tape.gradient(loss, garbage).numpy()
    np.testing.assert_allclose(loss.numpy(), _np_loss(mode, options, positive, negative, mask), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(gradient))
    np.testing.assert_array_equal(gradient[~mask], 0.0)


def test_all_weights_zero_gives_zero():
    positive, negative, mask = _batch(5)
    got = modes.SampledSoftmaxLoss()(positive, negative, mask, np.zeros(4, np.float32))
    assert got.numpy() == 0.0


def test_symmetric_rejects_non_square_logits():
    positive, negative, mask = _batch(6, batch=4, num_negatives=5)
    with pytest.raises(ValueError, match="square `negative_logits`"):
        modes.SymmetricSoftmaxLoss()(positive, negative, mask)
    signature = [
        tf.TensorSpec([None], tf.float32),
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([None, None], tf.bool),
    ]
    loss = modes.SymmetricSoftmaxLoss()
    dynamic = tf.function(lambda p, n, m: loss(p, n, m), input_signature=signature)
    with pytest.raises(tf.errors.InvalidArgumentError, match="square `negative_logits`"):
        dynamic(positive, negative, mask)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("ranknet", {}, "`name` must be one of 'softmax', 'bce', 'bpr', 'hinge', 'softmax_hinge', 'symmetric'"),
        ("softmax", {"margin": 1.0}, "`margin` is not an option of the 'softmax' mode"),
        ("bce", {"hardest_negative_only": True}, "`hardest_negative_only` is not an option of"),
        ("bpr", {"margin": 1.0}, "`margin` is not an option of the 'bpr' mode"),
        ("symmetric", {"negative_weight": 1.0}, "`negative_weight` is not an option of the 'sym"),
        ("hinge", {}, "`margin` is required for the hinge loss"),
        ("hinge", {"margin": 0.0}, r"`margin` must be a float in \(0.0, inf\). Received: 0.0"),
        ("hinge", {"margin": 1.0, "hardest_negative_only": 1}, "`hardest_negative_only` must be"),
        ("bce", {"negative_weight": -1.0}, "`negative_weight` must be a float in"),
        ("symmetric", {"candidate_to_query_weight": 1.5}, r"`candidate_to_query_weight` must be a"),
    ],
)
def test_validation_messages(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        modes.make_mode_loss(name, **kwargs)


def test_mode_names_match_the_registry():
    assert typing.get_args(modes.ModeName) == tuple(modes.MODE_LOSSES)


@pytest.mark.parametrize("mode, options", CASES)
def test_config_round_trip(mode, options):
    loss = modes.make_mode_loss(mode, **options)
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert type(loss).from_config(loss.get_config()).get_config() == loss.get_config()
    positive, negative, mask = _batch(7)
    np.testing.assert_allclose(restored(positive, negative, mask).numpy(), loss(positive, negative, mask).numpy())


def test_saved_model_round_trip(tmp_path):
    class Losses(tf.Module):
        def __init__(self):
            super().__init__()
            self.losses = [modes.make_mode_loss(mode, **options) for mode, options in CASES]

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32),
                tf.TensorSpec([None, None], tf.float32),
                tf.TensorSpec([None, None], tf.bool),
                tf.TensorSpec([None], tf.float32),
            ]
        )
        def __call__(self, positive, negative, mask, weights):
            return tf.stack([loss(positive, negative, mask, weights) for loss in self.losses])

    positive, negative, mask = _batch(8)
    weights = np.array([1.0, 0.5, 2.0, 1.0], np.float32)
    tf.saved_model.save(Losses(), str(tmp_path / "losses"))
    loaded = tf.saved_model.load(str(tmp_path / "losses"))
    expected = [_np_loss(mode, options, positive, negative, mask, weights) for mode, options in CASES]
    np.testing.assert_allclose(loaded(positive, negative, mask, weights).numpy(), expected, rtol=1e-5, atol=1e-6)

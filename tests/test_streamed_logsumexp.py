"""The streamed log-sum-exp of stored negatives against a numpy reference (value and query gradient)."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from tfrec_towers.losses.streamed_logsumexp import streamed_log_sum_exp


def _reference(queries, entries, offsets, valid, positive_ids, entry_ids):
    """numpy: log Σ over kept entries of exp(q·e − o), and its gradient Σ_j softmax_j e_j (0 for an empty row)."""
    values, gradients = [], []
    for q, y in zip(queries.astype(np.float64), positive_ids):
        keep = valid & (entry_ids != y)
        if not keep.any():
            values.append(-np.inf)
            gradients.append(np.zeros_like(q))
            continue
        logits = entries[keep].astype(np.float64) @ q - offsets[keep]
        top = logits.max()
        weights = np.exp(logits - top)
        values.append(top + np.log(weights.sum()))
        gradients.append((weights / weights.sum()) @ entries[keep].astype(np.float64))
    return np.array(values), np.array(gradients)


def _case(seed, batch=6, entries=37, dim=5):
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(batch, dim)).astype(np.float32) * 3
    stored = rng.normal(size=(entries, dim)).astype(np.float32)
    offsets = rng.normal(size=entries).astype(np.float32)
    valid = rng.random(entries) < 0.8
    stored[~valid] = np.nan  # an empty slot may hold anything
    offsets[~valid] = np.inf
    entry_ids = rng.integers(0, 10, size=entries)
    positive_ids = rng.integers(0, 10, size=batch)
    return queries, stored, offsets, valid, positive_ids, entry_ids


@pytest.mark.parametrize("chunk", [7, 1000])
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_query_gradient_match_numpy(seed, chunk):
    queries, stored, offsets, valid, positive_ids, entry_ids = _case(seed)
    expected, expected_gradient = _reference(queries, stored, offsets, valid, positive_ids, entry_ids)
    upstream = np.random.default_rng(seed + 10).normal(size=len(queries)).astype(np.float32)
    anchors = tf.Variable(queries)
    with tf.GradientTape() as tape:
        value = streamed_log_sum_exp(anchors, stored, offsets, valid, positive_ids, entry_ids, chunk_size=chunk)
        weighted = tf.reduce_sum(value * upstream)
    gradient = tape.gradient(weighted, anchors)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gradient.numpy(), upstream[:, None] * expected_gradient, rtol=1e-4, atol=1e-5)


def test_a_row_whose_entries_are_all_left_out_is_minus_infinity_with_zero_gradient():
    queries = np.ones((2, 3), np.float32)
    stored = np.eye(3, dtype=np.float32)
    valid = np.array([True, True, False])
    entry_ids = np.array([4, 4, 9])
    anchors = tf.Variable(queries)
    with tf.GradientTape() as tape:
        value = streamed_log_sum_exp(anchors, stored, np.zeros(3, np.float32), valid, np.array([4, 5]), entry_ids, 2)
        total = tf.reduce_sum(tf.where(tf.math.is_finite(value), value, 0.0))
    gradient = tape.gradient(total, anchors).numpy()
    assert value.numpy()[0] == -np.inf  # both valid entries are the row's positive, the third is empty
    np.testing.assert_allclose(value.numpy()[1], 1.0 + np.log(2.0), rtol=1e-6)  # exp(1) + exp(1)
    np.testing.assert_array_equal(gradient[0], np.zeros(3))
    np.testing.assert_allclose(gradient[1], [0.5, 0.5, 0.0], rtol=1e-6)


def test_string_ids_and_extreme_logits_stay_finite():
    queries = np.array([[200.0, 0.0], [-200.0, 0.0]], np.float32)
    stored = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], np.float32)
    entry_ids = np.array(["a", "b", "c"], dtype=object)
    value = streamed_log_sum_exp(
        tf.constant(queries),
        stored,
        np.zeros(3, np.float32),
        np.ones(3, bool),
        np.array(["z", "z"], object),
        entry_ids,
        2,
    ).numpy()
    np.testing.assert_allclose(value, [200.0, 200.0], rtol=1e-6)


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer. Received: 0"):
        streamed_log_sum_exp(
            np.ones((1, 2), np.float32),
            np.ones((3, 2), np.float32),
            np.zeros(3, np.float32),
            np.ones(3, bool),
            np.array([0]),
            np.array([1, 2, 3]),
            chunk_size=0,
        )


@pytest.mark.parametrize("id_dtype", ["int64", "string"])
@pytest.mark.parametrize("scale, bounded", [(0.5, True), (30.0, False)])
def test_the_fixed_shift_and_the_running_maximum_both_match_numpy(scale, bounded, id_dtype):
    from tfrec_towers.losses.streamed_logsumexp import SAFE_GAP, _logit_range

    rng = np.random.default_rng(4)
    queries = rng.normal(size=(8, 6)).astype(np.float32) * scale
    stored = rng.normal(size=(50, 6)).astype(np.float32)
    offsets = rng.normal(size=50).astype(np.float32)
    valid = rng.random(50) < 0.9
    entry_ids = rng.integers(0, 4, size=50)  # many accidental hits: every positive appears ~12 times
    positive_ids = rng.integers(0, 5, size=8)  # id 4 has none
    # the logit range by hand: 2‖q‖·max‖e‖ + the spread of −o over the valid entries
    entry_norm = np.linalg.norm(stored[valid], axis=1).max()
    gap = 2 * np.linalg.norm(queries, axis=1) * entry_norm + (offsets[valid].max() - offsets[valid].min())
    got_gap, got_shift = _logit_range(
        tf.constant(queries), tf.constant(stored), tf.constant(offsets), tf.constant(valid)
    )
    np.testing.assert_allclose(got_gap.numpy(), gap, rtol=1e-5)
    np.testing.assert_allclose(
        got_shift.numpy(), np.linalg.norm(queries, axis=1) * entry_norm - offsets[valid].min(), rtol=1e-5
    )
    assert bool((gap <= SAFE_GAP).all()) == bounded
    expected, expected_gradient = _reference(queries, stored, offsets, valid, positive_ids, entry_ids)
    if id_dtype == "string":
        entry_ids, positive_ids = (np.array([f"item-{i}" for i in x], object) for x in (entry_ids, positive_ids))
    anchors = tf.Variable(queries)
    with tf.GradientTape() as tape:
        value = streamed_log_sum_exp(anchors, stored, offsets, valid, positive_ids, entry_ids, chunk_size=16)
    gradient = tape.gradient(value, anchors)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gradient.numpy(), expected_gradient, rtol=1e-4, atol=1e-5)

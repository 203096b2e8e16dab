"""RetrievalLoss reads sampling probabilities through the provider's one per-example method."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from tfrec_towers.losses.frequency import CandidateProbability
from tfrec_towers.losses.task import RetrievalLoss, different_ids
from tfrec_towers.losses.temperature import Temperature


class PerExampleProbability:
    """A provider of this test only: ``p_y = y / 10`` per example, whatever the batch."""

    def log_example_probability(self, ids, batch_size):
        del batch_size
        return tf.math.log(tf.cast(ids, tf.float32) / 10.0)

    def update(self, ids):
        del ids


def test_any_provider_of_the_protocol_is_corrected_by_its_expected_count():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(3, 2)).astype(np.float32)
    v = rng.normal(size=(3, 2)).astype(np.float32)
    ids = np.array([1, 2, 5], np.int64)
    provider = PerExampleProbability()
    assert isinstance(provider, CandidateProbability)
    loss = RetrievalLoss(temperature=Temperature(1.0), candidate_probability=provider)
    got = float(loss(tf.constant(q), tf.constant(v), tf.constant(ids), training=True))

    log_count = np.log(3 * ids / 10.0)  # Q_y = B · p_y, with B = 3 in-batch negatives
    logits = q @ v.T - log_count[None, :]
    expected = np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)])
    assert got == pytest.approx(expected, rel=1e-5)


def test_string_ids_are_told_apart_as_numpy_compares_them():
    rng = np.random.default_rng(0)
    ids = np.array([f"item-{i}" for i in rng.integers(0, 40, 64)])
    others = np.array([f"item-{i}" for i in rng.integers(0, 40, 300)] + ["item-1 ", "Item-1", ""])
    got = different_ids(tf.constant(ids), tf.constant(others)).numpy()
    np.testing.assert_array_equal(got, ids[:, None] != others[None, :])
    integers = rng.integers(0, 40, 64)
    np.testing.assert_array_equal(
        different_ids(tf.constant(integers), tf.constant(integers[::-1])).numpy(),
        integers[:, None] != integers[None, ::-1],
    )

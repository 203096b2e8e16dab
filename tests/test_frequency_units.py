"""log_example_probability: every sampling-probability provider answers in per-example units."""

import math

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from tfrec_towers.losses.frequency import CountsFrequencyTable, StreamingFrequencyEstimator


@pytest.mark.parametrize("batch_size", [1, 4, 256])
def test_counts_are_per_example_whatever_the_batch(batch_size):
    table = CountsFrequencyTable([10, 20, 30], [1, 3, 4])  # p = 1/8, 3/8, 4/8; unseen: 1/16
    got = table.log_example_probability(tf.constant([10, 20, 30, 99], tf.int64), tf.constant(batch_size))
    np.testing.assert_allclose(got.numpy(), np.log([1 / 8, 3 / 8, 4 / 8, 1 / 16]), rtol=1e-6)


def test_the_estimator_divides_its_per_batch_estimate_by_the_batch_size():
    estimator = StreamingFrequencyEstimator(num_hashes=1, hash_buckets=2**20, learning_rate=0.5)
    for batch in ([1, 2], [1], [1, 3]):
        estimator.update(tf.constant(batch, tf.int64))
    # Gaps by hand: id 1 seen at steps 1, 2, 3 → B = 1; id 2 first seen at step 1 → B = 1;
    # id 3 first seen at step 3 → B = 3; id 9 never seen → its gap is at least t = 3.
    per_batch = [1.0, 1.0, 1 / 3, 1 / 3]
    got = estimator.log_example_probability(tf.constant([1, 2, 3, 9], tf.int64), tf.constant(4))
    np.testing.assert_allclose(got.numpy(), [math.log(p / 4) for p in per_batch], rtol=1e-6)

"""Tests of the NegativeSet contract and its concatenation."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_towers.losses.negatives import NegativeSet, check_int, concat_negative_sets


def make_set(rows, ids, dim=2, dtype=tf.int64):
    return NegativeSet(
        embeddings=tf.constant(np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)),
        ids=tf.constant(ids, dtype),
        log_q=tf.constant(-np.arange(rows, dtype=np.float32)),
        valid=tf.constant([r % 2 == 0 for r in range(rows)]),
    )


def test_concat_keeps_order_and_alignment():
    first, second = make_set(2, [7, 8]), make_set(3, [1, 2, 3])
    merged = concat_negative_sets([first, second])
    np.testing.assert_array_equal(merged.ids.numpy(), [7, 8, 1, 2, 3])
    np.testing.assert_array_equal(merged.embeddings.numpy(), [[0, 1], [2, 3], [0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(merged.log_q.numpy(), [0, -1, 0, -1, -2])
    np.testing.assert_array_equal(merged.valid.numpy(), [True, False, True, False, True])
    assert isinstance(merged, NegativeSet)


def test_concat_in_tf_function_with_unknown_batch():
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None], tf.string)])
    def merge(embeddings, ids):
        batch = NegativeSet(embeddings, ids, tf.zeros_like(embeddings[:, 0]), tf.ones_like(ids, tf.bool))
        return concat_negative_sets([batch, make_set(1, ["bank"], dtype=tf.string)])

    merged = merge(tf.ones([2, 2]), tf.constant(["a", "b"]))
    assert merged.ids.numpy().tolist() == [b"a", b"b", b"bank"]
    np.testing.assert_array_equal(merged.valid.numpy(), [True, True, True])


def test_concat_validation():
    with pytest.raises(ValueError, match=r"`sets` must hold at least one NegativeSet"):
        concat_negative_sets([])
    with pytest.raises(ValueError, match=r"same `ids` dtype. Received: \['int64', 'string'\]"):
        concat_negative_sets([make_set(1, [1]), make_set(1, ["a"], dtype=tf.string)])
    with pytest.raises(ValueError, match=r"same embedding size. Received: \[2, 3\]"):
        concat_negative_sets([make_set(1, [1]), make_set(1, [1], dim=3)])


@pytest.mark.parametrize(
    "value, low, message",
    [
        (0, 1, "`x` must be a positive int. Received: 0"),
        (True, 1, "`x` must be a positive int. Received: True"),
        (-1, 0, "`x` must be an int >= 0. Received: -1"),
        ("3", 0, "`x` must be an int >= 0. Received: '3'"),
    ],
)
def test_check_int(value, low, message):
    with pytest.raises(ValueError) as error:
        check_int("x", value, low)
    assert str(error.value) == message
    assert check_int("x", np.int64(5), 1) == 5

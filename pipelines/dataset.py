"""Feature dictionaries as ``tf.data`` pipelines, following the tf.data performance guide.

Training: ``from_tensor_slices → cache → shuffle → [repeat] → batch → prefetch``;
inference: ``from_tensor_slices → batch → prefetch``. Each element is a dict of
tensors: ``int64 [B]``, ``float32 [B]``, ``string [B]`` or ``int64 [B, L]``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from pipelines.data import DataError, num_rows

MAX_SHUFFLE_BUFFER = 1_000_000


def training_dataset(
    features: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of training examples, reshuffled every epoch.

    Args:
      features: the feature dictionary (see :mod:`pipelines.data`).
      batch_size: examples per batch.
      shuffle: shuffle with a buffer of ``min(rows, MAX_SHUFFLE_BUFFER)`` examples (a
        full shuffle up to that size), reshuffled each iteration.
      seed: the shuffle seed; the same seed gives the same order.
      repeat: repeat forever (after shuffling, so epochs do not blend).
      drop_remainder: drop the last partial batch (static batch size).

    Returns:
      A dataset of ``{name: tensor [batch, ...]}``.

    Raises:
      ValueError: ``batch_size`` is not a positive int.
      DataError: a column has an unsupported dtype, or columns differ in length.
    """
    _check_batch_size(batch_size)
    dataset = tf.data.Dataset.from_tensor_slices(_to_tensors(features)).cache()
    if shuffle:
        buffer_size = max(1, min(num_rows(features), MAX_SHUFFLE_BUFFER))
        dataset = dataset.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def inference_dataset(features: Mapping[str, np.ndarray], batch_size: int) -> tf.data.Dataset:
    """Batches of rows in order (for embedding and evaluation), the last one partial.

    Args:
      features: the feature dictionary.
      batch_size: rows per batch.

    Returns:
      A dataset of ``{name: tensor [batch, ...]}``.

    Raises:
      ValueError: ``batch_size`` is not a positive int.
      DataError: a column has an unsupported dtype, or columns differ in length.
    """
    _check_batch_size(batch_size)
    return tf.data.Dataset.from_tensor_slices(_to_tensors(features)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _to_tensors(features: Mapping[str, np.ndarray]) -> dict[str, tf.Tensor]:
    """One tensor per column; object arrays of ``str`` become ``tf.string`` in one conversion."""
    try:
        num_rows(features)
    except ValueError as e:
        raise DataError(str(e)) from None
    tensors = {}
    for name, values in features.items():
        values = np.asarray(values)
        if values.dtype.kind in "iu":
            tensors[name] = tf.constant(values, tf.int64)
        elif values.dtype.kind == "f":
            tensors[name] = tf.constant(values, tf.float32)
        elif values.dtype.kind in "OUS":
            try:
                tensors[name] = tf.constant(values, tf.string)
            except (TypeError, ValueError) as e:
                raise DataError(f"Column '{name}' must hold only strings: {e}") from None
        else:
            raise DataError(
                f"Column '{name}' has unsupported dtype {values.dtype}; expected integers, floats or strings."
            )
    return tensors


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: {batch_size!r}")

"""Feature dictionaries as ``tf.data`` pipelines, following the tf.data performance guide.

Training (:func:`epoch_batches`, resumable): each epoch in the order of ``(seed, epoch)``, from any
global step, gathered per batch and prefetched. Each element is a dict of tensors: ``int64 [B]``,
``float32 [B]``, ``string [B]`` or ``int64 [B, L]``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import tensorflow as tf

from tfrec_pipelines.data import DataError, num_rows


def epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``rows`` examples: a function of ``(seed, epoch)`` only.

    order = ``np.random.default_rng([seed, epoch]).permutation(rows)``, so a run resumed at any
    step sees the same batches as an uninterrupted one.

    Returns:
      ``int64 [rows]``, a permutation of ``0 … rows − 1``.
    """
    return np.random.default_rng([seed, epoch]).permutation(rows).astype(np.int64)


GROUPING_WINDOW_BATCHES = 50
"""Batches per window that :func:`length_grouped_order` sorts by length."""


def length_grouped_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """:func:`epoch_order` with examples of similar length batched together, a function of
    ``(lengths, batch_size, seed, epoch)`` only.

    The epoch's order, up to its last ``rows mod batch_size`` rows, is cut into windows of
    :data:`GROUPING_WINDOW_BATCHES` batches; each window is sorted by length (longest first, ties in
    the epoch's order) and cut into batches; the full batches are shuffled
    (``np.random.default_rng([seed, epoch, 1])``) and the leftover rows stay the last, partial
    batch, so batch ``b`` is still rows ``b·B … (b+1)·B − 1`` of the order (resuming slices it as
    :func:`epoch_batches` does).

    Returns:
      ``int64 [rows]``, a permutation of ``0 … rows − 1``.
    """
    lengths = np.asarray(lengths)
    order = epoch_order(len(lengths), seed, epoch)
    full = len(order) // batch_size * batch_size
    window = batch_size * GROUPING_WINDOW_BATCHES
    grouped = np.concatenate(
        [order[:0]]
        + [
            chunk[np.argsort(-lengths[chunk], kind="stable")]
            for chunk in (order[start : min(start + window, full)] for start in range(0, full, window))
        ]
    )
    batches = grouped.reshape(-1, batch_size)
    batches = batches[np.random.default_rng([seed, epoch, 1]).permutation(len(batches))]
    return np.concatenate([batches.reshape(-1), order[full:]]).astype(np.int64)


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Batches of one epoch, the last one partial: ``⌈rows / batch_size⌉``.

    Raises:
      DataError: there are no rows to train on.
    """
    if rows <= 0:
        raise DataError("There are no training examples: every column is empty.")
    return math.ceil(rows / batch_size)


def epoch_batches(
    features: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    seed: int,
    epochs: int,
    start_step: int = 0,
    lengths: Optional[np.ndarray] = None,
) -> tf.data.Dataset:
    """The batches of epochs ``0 … epochs − 1``, from global step ``start_step`` on.

    Epoch ``e`` visits the rows in :func:`epoch_order` ``(rows, seed, e)`` in batches of
    ``batch_size`` (the last one partial; batches never span two epochs). Step ``s`` is batch
    ``s mod S`` of epoch ``⌊s / S⌋`` (``S`` = :func:`steps_per_epoch`); starting at ``s`` slices
    that epoch's order instead of reading the skipped batches.

    Args:
      features: the feature dictionary (see :mod:`tfrec_pipelines.data`).
      batch_size: examples per batch.
      seed: the order's seed.
      epochs: the epochs of the whole run.
      start_step: the first global step to yield (0: the whole run; a resumed run's step).
      lengths: ``[rows]`` each example's length: the epochs then visit the rows in
        :func:`length_grouped_order` instead (``training.group_by_length``).

    Returns:
      A dataset of ``{name: tensor [batch, ...]}`` of ``epochs · S − start_step`` batches.

    Raises:
      ValueError: ``batch_size`` is not a positive int, or ``start_step`` is outside ``[0, epochs · S]``.
      DataError: a column has an unsupported dtype, or columns differ in length.
    """
    _check_batch_size(batch_size)
    columns = _to_tensors(features)
    rows = num_rows(features)
    if lengths is not None and len(lengths) != rows:
        raise ValueError(f"`lengths` must have one entry per example ({rows}). Received {len(lengths)}")
    per_epoch = steps_per_epoch(rows, batch_size)
    if not 0 <= start_step <= epochs * per_epoch:
        raise ValueError(f"`start_step` must be in [0, {epochs * per_epoch}]. Received: {start_step}")
    first_epoch, first_batch = divmod(start_step, per_epoch)

    def batches_of(epoch: tf.Tensor) -> tf.data.Dataset:
        def order_of(e: np.ndarray) -> np.ndarray:
            if lengths is None:
                return epoch_order(rows, seed, int(e))
            return length_grouped_order(lengths, batch_size, seed, int(e))

        order = tf.numpy_function(order_of, [epoch], tf.int64, stateful=False)
        skip = tf.where(epoch == first_epoch, first_batch * batch_size, 0)
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order, [rows])[skip:]).batch(batch_size)

    return (
        tf.data.Dataset.range(first_epoch, epochs)
        .flat_map(batches_of)
        .map(lambda index: {name: tf.gather(column, index) for name, column in columns.items()})
        .prefetch(tf.data.AUTOTUNE)
    )


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

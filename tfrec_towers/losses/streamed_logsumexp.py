"""The log-sum-exp of a softmax's stored negatives, streamed over chunks in one pass.

A memory bank (CBNS, Wang et al., SIGIR 2021) adds ``M`` stored candidate embeddings ``e_j`` to
every row's softmax. Materialised, their logits are a ``[B, M]`` matrix that the loss then walks
over several times (the logQ correction, the mask, the maximum, the exponentials, their sum, and
the same again backwards): on a CPU those passes over memory cost about twice the two matrix
products the bank cannot avoid (``[B, d] × [d, M]`` logits and ``[B, M] × [M, d]`` for the query
gradient). Here the bank's share of the softmax is one number per row,

    L_i = log Σ_{j valid, y_j ≠ y_i} exp(⟨q_i, e_j⟩ − o_j),

accumulated chunk by chunk (``o_j`` a per-entry offset such as the logQ correction
``log Q_j``; ``y_i`` the row's positive id, so an entry holding the positive is an accidental hit
and left out). For chunk ``c`` the running maximum ``m_i``, sum ``s_i = Σ e^{z − m_i}`` and
weighted sum of entries ``u_i = Σ e^{z − m_i} e_j`` are rescaled to the new maximum and updated,
as the streaming softmax of FlashAttention does (Dao et al., NeurIPS 2022; Milakov & Gimelshein
2018, "Online normalizer calculation for softmax"). At the end ``L_i = m_i + log s_i`` and, since
stored entries take no gradient,

    ∂L_i/∂q_i = Σ_j p_ij e_j = u_i / s_i,   p_ij = e^{z_ij − L_i},

is already known: backwards costs one ``[B, d]`` product, with no second pass over the entries.
Only one ``[B, chunk]`` block of logits exists at a time, small enough to stay in cache.

A row with no valid entry gets ``L_i = −∞`` (its share of the softmax is empty) and a zero gradient.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

MASKED = float(np.finfo(np.float32).min / 100.0)
"""The logit of a left-out entry inside a chunk: finite, so ``MASKED − MASKED`` is 0, not NaN."""

DEFAULT_CHUNK = 2048
"""Entries per chunk: ``[512, 2048]`` float32 logits are 4 MiB, about what a core's cache holds."""


def streamed_log_sum_exp(
    queries: tf.Tensor,
    entries: tf.Tensor,
    offsets: tf.Tensor,
    valid: tf.Tensor,
    positive_ids: tf.Tensor,
    entry_ids: tf.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
) -> tf.Tensor:
    """``L_i = log Σ_{j valid, y_j ≠ y_i} exp(⟨q_i, e_j⟩ − o_j)``, ``[B]``, with its gradient to ``queries`` only.

    Args:
      queries: ``[B, d]`` float32 (already divided by the temperature); the only input with a gradient.
      entries: ``[M, d]`` float32 stored embeddings (``M`` static, e.g. a memory bank's capacity).
      offsets: ``[M]`` float32 ``o_j`` subtracted from each entry's logits (e.g. ``log Q_j``).
      valid: ``[M]`` bool, False for an entry that is left out of every row (e.g. an empty slot);
        the entries and offsets of such a slot may hold anything, NaN included.
      positive_ids: ``[B]`` each row's positive id; an entry with the same id is left out of that row.
      entry_ids: ``[M]`` the entries' ids, of ``positive_ids``' dtype.
      chunk_size: entries per chunk (positive); the last chunk may be shorter.

    Returns:
      ``[B]`` float32; ``−∞`` for a row with no valid entry.

    Raises:
      ValueError: a non-positive ``chunk_size``, or ``entries`` without a static number of rows.
    """
    if int(chunk_size) <= 0:
        raise ValueError(f"`chunk_size` must be a positive integer. Received: {chunk_size}")
    num_entries = entries.shape[0]
    if num_entries is None:
        raise ValueError("`entries` must have a static number of rows (a memory bank's capacity).")
    chunk_size = min(int(chunk_size), max(int(num_entries), 1))
    queries = tf.convert_to_tensor(queries, tf.float32)
    entries = tf.stop_gradient(tf.where(valid[:, tf.newaxis], tf.cast(entries, tf.float32), 0.0))
    offsets = tf.stop_gradient(tf.where(valid, tf.cast(offsets, tf.float32), 0.0))

    @tf.custom_gradient
    def log_sum_exp(anchors: tf.Tensor):
        batch = tf.shape(anchors)[0]
        shift = tf.fill([batch], MASKED)
        total = tf.zeros([batch], tf.float32)
        weighted = tf.zeros_like(anchors)
        for start in range(0, int(num_entries), chunk_size):
            rows = entries[start : start + chunk_size]
            keep = tf.logical_and(
                valid[tf.newaxis, start : start + chunk_size],
                tf.not_equal(positive_ids[:, tf.newaxis], entry_ids[tf.newaxis, start : start + chunk_size]),
            )
            logits = tf.where(
                keep, tf.matmul(anchors, rows, transpose_b=True) - offsets[start : start + chunk_size], MASKED
            )
            new_shift = tf.maximum(shift, tf.reduce_max(logits, axis=1))
            rescale = tf.exp(shift - new_shift)
            weights = tf.where(keep, tf.exp(logits - new_shift[:, tf.newaxis]), 0.0)
            total = total * rescale + tf.reduce_sum(weights, axis=1)
            weighted = weighted * rescale[:, tf.newaxis] + tf.matmul(weights, rows)
            shift = new_shift
        result = tf.where(total > 0.0, shift + tf.math.log(tf.maximum(total, 1e-30)), -np.inf)
        mean_entry = tf.math.divide_no_nan(weighted, total[:, tf.newaxis])

        def gradient(upstream: tf.Tensor) -> tf.Tensor:
            return tf.cast(upstream, tf.float32)[:, tf.newaxis] * mean_entry

        return result, gradient

    return log_sum_exp(queries)

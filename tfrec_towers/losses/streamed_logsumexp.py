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

A fixed shift when the logits are bounded. The running maximum costs a pass over every chunk
(the maximum, the rescaling, the mask). When the logits' range is known in advance it is not
needed: by Cauchy–Schwarz every valid entry's logit lies within

    z_ij − o_j ≤ c_i = ‖q_i‖ · max_j ‖e_j‖ + max_j (−o_j),

and the largest kept logit of a row is at least ``c_i − g_i`` with ``g_i = 2‖q_i‖ max_j ‖e_j‖ +
(max_j (−o_j) − min_j (−o_j))``. When every ``g_i ≤ 80`` (L2-normalised towers at any temperature
above 0.025, say) every ``exp(z − c_i)`` of a kept entry that matters is a normal float32, so the
chunks are summed against the fixed ``c_i``: the offsets and the shift ride in the product as two
extra columns (``[q_i, 1, −c_i] · [e_j, −o_j, 1]``), an empty slot's offset is −10³⁰, and the
accidental hits (a few pairs found by sorting the entries' ids) are set to −10³⁰ in their chunk,
in place. Per chunk that leaves the two products, one ``exp`` and one sum. Otherwise the running
maximum is used.

A row with no valid entry gets ``L_i = −∞`` (its share of the softmax is empty) and a zero gradient.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec_towers.losses.corpus import sorted_id_ranges

MASKED = float(np.finfo(np.float32).min / 100.0)
"""The logit of a left-out entry inside a chunk: finite, so ``MASKED − MASKED`` is 0, not NaN."""

DEFAULT_CHUNK = 2048
"""Entries per chunk: ``[512, 2048]`` float32 logits are 4 MiB, about what a core's cache holds."""

SAFE_GAP = 80.0
"""The largest logit range ``g_i`` summed against a fixed shift: ``exp(−80) ≈ 1.8e-35`` is a normal float32."""

_LEFT_OUT = -1e30
"""The logit of a left-out entry in the fixed-shift sum: ``exp`` of it is exactly 0."""


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

    valid, positive_ids, entry_ids = (tf.convert_to_tensor(x) for x in (valid, positive_ids, entry_ids))
    gap, shift = _logit_range(tf.stop_gradient(queries), entries, offsets, valid)
    bounded = tf.logical_and(tf.reduce_any(valid), tf.reduce_all(gap <= SAFE_GAP))
    return tf.cond(
        bounded,
        lambda: _fixed_shift_log_sum_exp(
            queries, entries, offsets, valid, positive_ids, entry_ids, shift, chunk_size, int(num_entries)
        ),
        lambda: _running_max_log_sum_exp(
            queries, entries, offsets, valid, positive_ids, entry_ids, chunk_size, int(num_entries)
        ),
    )


def _value_and_gradient(shift: tf.Tensor, total: tf.Tensor, weighted: tf.Tensor):
    """``L = c + log s`` (``−∞`` for an empty row) and its gradient ``u / s`` times the upstream, from the
    shift ``c``, the sum ``s = Σ e^{z − c}`` and the weighted sum ``u = Σ e^{z − c} e_j`` of each row."""
    result = tf.where(total > 0.0, shift + tf.math.log(tf.maximum(total, 1e-37)), -np.inf)
    mean_entry = tf.math.divide_no_nan(weighted, total[:, tf.newaxis])

    def gradient(upstream: tf.Tensor) -> tf.Tensor:
        return tf.cast(upstream, tf.float32)[:, tf.newaxis] * mean_entry

    return result, gradient


def _logit_range(queries: tf.Tensor, entries: tf.Tensor, offsets: tf.Tensor, valid: tf.Tensor):
    """``(g [B], c [B])``: each row's logit range over the valid entries and its upper bound (module docstring)."""
    query_norms = tf.norm(queries, axis=1)
    entry_norm = tf.reduce_max(tf.where(valid, tf.norm(entries, axis=1), 0.0))
    highest = tf.reduce_max(tf.where(valid, -offsets, -np.inf))
    lowest = tf.reduce_min(tf.where(valid, -offsets, np.inf))
    return 2.0 * query_norms * entry_norm + (highest - lowest), query_norms * entry_norm + highest


def _accidental_hits(positive_ids: tf.Tensor, entry_ids: tf.Tensor):
    """``(rows [P], slots [P])``: every pair of a row and an entry holding the row's positive id, from each
    positive's range among the entries sorted by key (:func:`~tfrec_towers.losses.corpus.sorted_id_ranges`)."""
    order, low, counts = sorted_id_ranges(entry_ids, positive_ids)
    rows = tf.repeat(tf.range(tf.size(counts)), counts)
    within = tf.range(tf.reduce_sum(counts)) - tf.repeat(tf.cumsum(counts, exclusive=True), counts)
    slots = tf.gather(order, tf.repeat(low, counts) + within)
    same = tf.equal(tf.gather(entry_ids, slots), tf.gather(positive_ids, rows))  # a fingerprint collision is no hit
    return tf.boolean_mask(rows, same), tf.boolean_mask(slots, same)


def _fixed_shift_log_sum_exp(queries, entries, offsets, valid, positive_ids, entry_ids, shift, chunk_size, num_entries):
    """The sum against the fixed shift ``c``: per chunk the augmented product, the hits set aside, ``exp``, the sum."""
    stored = tf.concat(
        [entries, tf.where(valid, -offsets, _LEFT_OUT)[:, tf.newaxis], tf.ones([num_entries, 1], tf.float32)], axis=1
    )
    hit_rows, hit_slots = _accidental_hits(positive_ids, entry_ids)

    @tf.custom_gradient
    def log_sum_exp(anchors: tf.Tensor):
        batch = tf.shape(anchors)[0]
        augmented = tf.concat([anchors, tf.ones([batch, 1]), -shift[:, tf.newaxis]], axis=1)
        total = tf.zeros([batch], tf.float32)
        weighted = tf.zeros_like(anchors)
        for start in range(0, num_entries, chunk_size):
            end = min(start + chunk_size, num_entries)
            logits = tf.matmul(augmented, stored[start:end], transpose_b=True)  # z − o − c
            in_chunk = tf.logical_and(hit_slots >= start, hit_slots < end)
            pairs = tf.stack(
                [tf.boolean_mask(hit_rows, in_chunk), tf.boolean_mask(hit_slots, in_chunk) - start], axis=1
            )
            logits = tf.tensor_scatter_nd_update(logits, pairs, tf.fill(tf.shape(pairs)[:1], _LEFT_OUT))
            weights = tf.exp(logits)
            total = total + tf.reduce_sum(weights, axis=1)
            weighted = weighted + tf.matmul(weights, entries[start:end])
        return _value_and_gradient(shift, total, weighted)

    return log_sum_exp(queries)


def _running_max_log_sum_exp(queries, entries, offsets, valid, positive_ids, entry_ids, chunk_size, num_entries):
    """The sum against a running maximum, rescaled chunk by chunk (any logits)."""

    @tf.custom_gradient
    def log_sum_exp(anchors: tf.Tensor):
        batch = tf.shape(anchors)[0]
        shift = tf.fill([batch], MASKED)
        total = tf.zeros([batch], tf.float32)
        weighted = tf.zeros_like(anchors)
        for start in range(0, num_entries, chunk_size):
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
        return _value_and_gradient(shift, total, weighted)

    return log_sum_exp(queries)

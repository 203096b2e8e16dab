"""Cross-replica helpers: the global batch that every replica scores against under ``tf.distribute``.

With ``R`` replicas each holding a local batch of ``B_r`` examples, the retrieval loss of replica
``r`` scores its own queries against the candidates of the global batch, ``B = Σ_r B_r`` rows
gathered in replica order (``all_gather``, with gradient), and divides its local sum of losses by
the global weight ``W = Σ_r Σ_{i ∈ r} w_i``. ``tf.distribute`` sums gradients over replicas, so
the update is the gradient of the global mean ``Σ_i w_i ℓ_i / W`` — what a single device computes
on the same global batch.

``ReplicaContext.all_gather`` carries no strings; :func:`all_gather` sends a string tensor as
its zero-padded bytes (``uint8`` codes widened to ``int32``) and lengths, and rebuilds it exactly.
Outside a multi-replica context every function is the identity.
"""

from __future__ import annotations

import tensorflow as tf

# Every single byte as a one-byte string (a Python list: a module-level tensor would initialise
# TensorFlow's devices at import, before a user could configure logical devices).
_BYTE_STRINGS = [bytes([b]) for b in range(256)]


def num_replicas() -> int:
    """``R``, the replicas in sync (1 outside ``tf.distribute`` or in a cross-replica context)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def _context() -> tf.distribute.ReplicaContext:
    return tf.distribute.get_replica_context()


def all_gather(values: tf.Tensor) -> tf.Tensor:
    """The rows of every replica's ``values``, concatenated in replica order along axis 0.

    Args:
      values: ``[B_r, ...]``, any dtype ``all_gather`` carries, ``tf.bool``, or ``tf.string`` ``[B_r]``.

    Returns:
      ``[Σ_r B_r, ...]``; gradients flow back to each replica's rows.
    """
    if num_replicas() == 1:
        return values
    if values.dtype == tf.bool:  # collectives carry numbers only: masks travel as int32
        return tf.cast(_context().all_gather(tf.cast(values, tf.int32), axis=0), tf.bool)
    if values.dtype != tf.string:
        return _context().all_gather(values, axis=0)
    return _all_gather_strings(values)


def _all_gather_strings(values: tf.Tensor) -> tf.Tensor:
    lengths = tf.strings.length(values, unit="BYTE")
    width = tf.maximum(global_max(tf.reduce_max(tf.concat([lengths, [0]], axis=0))), 1)
    padding = tf.strings.reduce_join(tf.fill([width], "\0"))
    codes = tf.io.decode_raw(tf.strings.substr(values + padding, 0, width), tf.uint8)
    codes = tf.reshape(tf.cast(codes, tf.int32), [-1, width])
    gathered_codes = _context().all_gather(codes, axis=0)
    gathered_lengths = _context().all_gather(lengths, axis=0)
    joined = tf.strings.reduce_join(tf.gather(tf.constant(_BYTE_STRINGS), gathered_codes), axis=1)
    return tf.strings.substr(joined, tf.zeros_like(gathered_lengths), gathered_lengths)


def global_sum(value: tf.Tensor) -> tf.Tensor:
    """``Σ_r value_r`` (no gradient is needed through it: it only normalises)."""
    if num_replicas() == 1:
        return value
    return _context().all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(value))


def global_max(value: tf.Tensor) -> tf.Tensor:
    """``max_r value_r`` of an integer or float scalar (``ReduceOp`` has no MAX: gather, then reduce)."""
    if num_replicas() == 1:
        return value
    return tf.reduce_max(_context().all_gather(tf.reshape(value, [1]), axis=0))


def row_offset(local_rows: tf.Tensor) -> tf.Tensor:
    """The index of this replica's first row in the gathered global batch, ``Σ_{r' < r} B_r'``."""
    if num_replicas() == 1:
        return tf.zeros([], local_rows.dtype)
    sizes = _context().all_gather(tf.reshape(local_rows, [1]), axis=0)
    replica = tf.cast(_context().replica_id_in_sync_group, local_rows.dtype)
    return tf.reduce_sum(tf.where(tf.range(tf.size(sizes, out_type=local_rows.dtype)) < replica, sizes, 0))

"""Cross-batch negatives: a FIFO memory bank of candidate embeddings from recent batches.

Wang et al., SIGIR 2021, "Cross-Batch Negative Sampling for Training Two-Tower
Recommenders" (CBNS): after a short warm-up the candidate tower's embeddings change
slowly ("embedding stability"), so the embeddings of the last ``M`` candidates, stored
without gradient, serve as ``M`` extra negatives at the cost of one dot product each.
Per step: ``negatives = in-batch ∪ bank.read()``; loss; ``bank.enqueue(batch)``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Literal

import tensorflow as tf

from tfrec_towers.losses.corpus import corpus_rows
from tfrec_towers.losses.negatives import NegativeSet, check_int

IdDtype = Literal["int64", "string"]

_ID_DTYPES = ("int64", "string")


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class CrossBatchMemoryBank(tf.keras.layers.Layer):
    """A ring buffer of the ``capacity`` most recently enqueued candidates.

    :meth:`read` returns the stored candidates as a :class:`NegativeSet`; :meth:`enqueue`
    writes a batch in FIFO order: the ``n``-th row ever enqueued (from 0) goes to slot
    ``n mod M``, overwriting the oldest entry. A batch larger than the bank keeps its
    last ``M`` rows. Slots never written are invalid, and so is the whole bank until
    ``warmup_steps`` enqueues have happened (in-batch negatives only during warm-up, as in
    CBNS, while the embeddings still move fast). With ``deduplicate`` only the newest copy of each
    id is valid (a popular item enqueued many times counts once, as its freshest embedding).

    Stored values carry no gradient: :meth:`enqueue` applies ``tf.stop_gradient`` and the
    weights are non-trainable. ``log_q`` (per-example units, as in :class:`NegativeSet`) is
    stored as given at enqueue time (the loss may instead recompute it from the ids with a
    current :class:`~tfrec_towers.losses.frequency.CandidateProbability`).

    State (non-trainable weights, saved by checkpoints): ``embeddings [M, d]``,
    ``ids [M]``, ``log_q [M]``, ``rows_written`` (int64, total rows ever enqueued: the
    write pointer is ``rows_written mod M`` and ``min(rows_written, M)`` slots are
    filled) and ``steps`` (int64, number of :meth:`enqueue` calls). Under ``tf.distribute``
    the weights are mirrored with ``ONLY_FIRST_REPLICA`` aggregation: the first replica's
    write is applied to all copies, so enqueue the batch gathered across replicas (as the
    loss gathers in-batch negatives) and every replica reads the same bank.

    Args:
      capacity: ``M > 0``, the number of stored candidates.
      embedding_dim: ``d > 0``, the candidate embedding size.
      id_dtype: ``"int64"`` or ``"string"``, the dtype of candidate ids.
      warmup_steps: number of enqueues before the bank's negatives become valid (≥ 0).
      deduplicate: keep only the newest copy of each stored id valid.
      **kwargs: passed to ``tf.keras.layers.Layer``.

    Raises:
      ValueError: naming the argument, for ``capacity`` or ``embedding_dim`` ≤ 0, a
        negative ``warmup_steps``, an unknown ``id_dtype`` or a ``deduplicate`` that is not a bool.
    """

    def __init__(
        self,
        capacity: int,
        embedding_dim: int,
        id_dtype: IdDtype = "int64",
        warmup_steps: int = 0,
        deduplicate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.capacity = check_int("capacity", capacity, 1)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        if id_dtype not in _ID_DTYPES:
            raise ValueError(f"`id_dtype` must be one of {_ID_DTYPES}. Received: {id_dtype!r}")
        self.id_dtype: IdDtype = id_dtype
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        if not isinstance(deduplicate, bool):
            raise ValueError(f"`deduplicate` must be a bool. Received: {deduplicate!r}")
        self.deduplicate = deduplicate
        state = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=[self.capacity, self.embedding_dim],
            dtype=tf.float32,
            initializer="zeros",
            **state,
        )
        self.ids = self.add_weight(
            name="ids",
            shape=[self.capacity],
            dtype=id_dtype,
            initializer=lambda shape, dtype: tf.zeros(shape, dtype),
            **state,
        )
        self.log_q = self.add_weight(
            name="log_q", shape=[self.capacity], dtype=tf.float32, initializer="zeros", **state
        )
        self.rows_written = self.add_weight(name="rows_written", shape=[], dtype=tf.int64, initializer="zeros", **state)
        self.steps = self.add_weight(name="steps", shape=[], dtype=tf.int64, initializer="zeros", **state)
        self.built = True

    def read(self) -> NegativeSet:
        """The stored candidates.

        Returns:
          A :class:`NegativeSet` of ``M`` rows in slot order: ``embeddings [M, d]``,
          ``ids [M]``, ``log_q [M]`` and ``valid [M]``, True for written slots once
          ``warmup_steps`` enqueues have happened (with ``deduplicate``, for the newest copy of
          each id among them only).
        """
        valid = self._window()
        ids = self.ids.read_value()
        if self.deduplicate:
            # slot s last received row n_s = s + M⌊(R − 1 − s) / M⌋ of the R rows ever written (< 0: never)
            rows_written = self.rows_written.read_value()
            slots = tf.range(self.capacity, dtype=tf.int64)
            written_row = tf.where(
                valid, slots + self.capacity * tf.math.floordiv(rows_written - 1 - slots, self.capacity), -1
            )
            unique_ids, index = tf.unique(ids, out_idx=tf.int64)
            newest = tf.math.unsorted_segment_max(written_row, index, tf.size(unique_ids, out_type=tf.int64))
            valid = tf.logical_and(valid, tf.equal(written_row, tf.gather(newest, index)))
        return NegativeSet(
            embeddings=self.embeddings.read_value(),
            ids=ids,
            log_q=self.log_q.read_value(),
            valid=valid,
        )

    def window_size(self) -> tf.Tensor:
        """``W``, int64 scalar: the enqueued rows the bank's negatives are read from, ``min(R, M)`` once
        warmed up and 0 before (the number of valid slots without ``deduplicate``)."""
        return tf.reduce_sum(tf.cast(self._window(), tf.int64))

    def _written(self) -> tf.Tensor:
        """``bool [M]``: the slots ever written, ``slot < min(R, M)``."""
        return tf.range(self.capacity, dtype=tf.int64) < tf.minimum(self.rows_written.read_value(), self.capacity)

    def _window(self) -> tf.Tensor:
        """``bool [M]``: the written slots, all False during the warm-up."""
        return tf.logical_and(self._written(), self.steps.read_value() >= self.warmup_steps)

    def enqueue(self, embeddings: tf.Tensor, ids: tf.Tensor, log_q: tf.Tensor) -> None:
        """Writes a batch over the oldest entries (one step), without gradient.

        Args:
          embeddings: ``[B, d]`` candidate embeddings of the batch (cast to float32).
          ids: ``[B]`` their ids, of dtype ``id_dtype``.
          log_q: ``[B]`` their log sampling probabilities.

        Raises:
          ValueError: if ``embeddings`` is not ``[B, embedding_dim]``.
          TypeError: if ``ids`` is not of dtype ``id_dtype``.
        """
        embeddings = tf.stop_gradient(tf.cast(embeddings, tf.float32))
        ids = tf.convert_to_tensor(ids)
        log_q = tf.stop_gradient(tf.cast(log_q, tf.float32))
        if embeddings.shape.rank != 2 or embeddings.shape[1] not in (None, self.embedding_dim):
            raise ValueError(
                f"Expected `embeddings` of shape [batch, {self.embedding_dim}]. Received: {embeddings.shape}"
            )
        if ids.dtype != tf.as_dtype(self.id_dtype):
            raise TypeError(f"Expected `ids` of dtype {self.id_dtype}. Received: {ids.dtype.name}")
        batch_size = tf.shape(embeddings, out_type=tf.int64)[0]
        rows = tf.range(tf.maximum(batch_size - self.capacity, 0), batch_size)
        slots = (self.rows_written.read_value() + rows) % self.capacity
        self.embeddings.scatter_update(tf.IndexedSlices(tf.gather(embeddings, rows), slots))
        self.ids.scatter_update(tf.IndexedSlices(tf.gather(ids, rows), slots))
        self.log_q.scatter_update(tf.IndexedSlices(tf.gather(log_q, rows), slots))
        self.rows_written.assign_add(batch_size)
        self.steps.assign_add(1)

    def refresh(self, corpus_ids: tf.Tensor, encode: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
        """Re-encodes the stored candidates with the current candidate tower, without gradient.

        Every written slot whose id is in the corpus gets ``encode(rows)`` of its corpus row; a slot
        never written, or whose id is not in the corpus, keeps its embedding. Ids, ``log_q``, the
        write position and the step count are unchanged.

        Args:
          corpus_ids: ``[N]`` the corpus's distinct ids, of dtype ``id_dtype``.
          encode: corpus row indices ``int64 [M]`` → their embeddings ``[M, d]`` (e.g. the candidate
            tower on the corpus's rows).

        Returns:
          The number of slots re-encoded, int64 scalar.
        """
        rows, found = corpus_rows(corpus_ids, self.ids.read_value())
        update = tf.logical_and(found, self._written())
        fresh = tf.stop_gradient(tf.cast(encode(rows), tf.float32))
        self.embeddings.assign(tf.where(update[:, tf.newaxis], fresh, self.embeddings.read_value()))
        return tf.reduce_sum(tf.cast(update, tf.int64))

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            capacity=self.capacity,
            embedding_dim=self.embedding_dim,
            id_dtype=self.id_dtype,
            warmup_steps=self.warmup_steps,
            deduplicate=self.deduplicate,
        )
        return config

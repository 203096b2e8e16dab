"""A softmax over the whole catalogue: every query against every candidate, no sampling.

The full cross-entropy of SASRec as Klenitskiy & Vasilev train it (RecSys 2023, "Turning Dross Into
Gold Loss: is BERT4Rec really better than SASRec?"), for a two-tower model: for query ``q_i`` with
positive ``v_i`` (id ``y_i``) and the catalogue's candidate embeddings ``c_j`` (ids ``y_j``),

    ℓ_i = log(e^{z_i} + Σ_{j : y_j ≠ y_i} e^{z_ij}) − z_i,   z_i = ⟨q_i, v_i⟩ / τ,  z_ij = ⟨q_i, c_j⟩ / τ.

The positive is counted once: by its own logit ``z_i``, while every catalogue item with the
positive's id is left out of the negatives (as an accidental hit); a positive missing from the
catalogue is scored against every catalogue item. No logQ correction applies: no negative is
sampled, every candidate of the catalogue is in every row's softmax exactly once.

:class:`FullCatalogue` keeps the catalogue in weights (as the mixed-negative sampler keeps its
corpus) and hands all of it to :class:`~tfrec_towers.model.TwoTowerModel`, which encodes it with the
candidate tower in every training step; :class:`FullSoftmaxLoss` is the task. The log-sum-exp is
accumulated over chunks of ``chunk_size`` catalogue rows, forwards and backwards, so the largest
logit matrix is ``[B, chunk_size]`` rather than ``[B, N]``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import tensorflow as tf

from tfrec_towers.losses import cross_replica
from tfrec_towers.losses.corpus import add_corpus_weights, id_keys
from tfrec_towers.losses.modes import MASKED_LOGIT
from tfrec_towers.losses.negatives import NegativeSet, check_int
from tfrec_towers.losses.task import _share_of_global_mean
from tfrec_towers.losses.temperature import Temperature


def full_softmax_row_losses(
    queries: tf.Tensor,
    positive_logits: tf.Tensor,
    positive_ids: tf.Tensor,
    catalogue: tf.Tensor,
    catalogue_ids: tf.Tensor,
    chunk_size: int,
) -> tf.Tensor:
    """``ℓ_i = log(e^{z_i} + Σ_{j : y_j ≠ y_i} e^{⟨q_i, c_j⟩}) − z_i``, ``[B]``, over chunks of the catalogue.

    Forwards, a running maximum ``m_i`` and sum ``s_i = Σ e^{z − m_i}`` are updated chunk by chunk
    (starting from the positive, ``m_i = z_i``, ``s_i = 1``), so ``ℓ_i = m_i + log s_i − z_i``.
    Backwards, each chunk's logits are recomputed and its softmax ``p_ij = e^{z_ij − ℓ_i − z_i}``
    gives ``∂ℓ_i/∂q_i = Σ_j p_ij c_j``, ``∂ℓ_i/∂c_j = p_ij q_i`` and ``∂ℓ_i/∂z_i = p_i − 1``. Only one
    chunk's ``[B, chunk_size]`` logits exist at a time, in either pass.

    Args:
      queries: ``[B, d]`` float32, already divided by the temperature.
      positive_logits: ``[B]`` float32 ``z_i``.
      positive_ids: ``[B]`` the positives' ids (int64 or string; string ids are compared by their
        64-bit FarmHash fingerprints, ``tf.strings.to_hash_bucket_fast``, which is many times faster
        than comparing the strings of every ``[B, chunk_size]`` pair; two distinct ids of a catalogue
        of N items share one with probability about N² / 2⁶⁴, 4 · 10⁻⁹ for a million items).
      catalogue: ``[N, d]`` float32 candidate embeddings.
      catalogue_ids: ``[N]`` their ids, of ``positive_ids``' dtype.
      chunk_size: catalogue rows per chunk (positive).

    Returns:
      ``[B]`` float32 row losses.
    """
    if catalogue_ids.dtype == tf.string:  # compared [B, chunk] at a time: 64-bit fingerprints, not strings
        positive_ids, catalogue_ids = id_keys(positive_ids), id_keys(catalogue_ids)
    num_items = tf.shape(catalogue)[0]
    num_chunks = (num_items + chunk_size - 1) // chunk_size
    offsets = tf.range(chunk_size)

    def chunk(index: tf.Tensor, embeddings: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Chunk ``index``'s ``[chunk_size, d]`` rows (the last one's tail repeats row N − 1) and its
        ``[B, chunk_size]`` validity: in the catalogue and not the row's positive."""
        rows = index * chunk_size + offsets
        in_catalogue = rows < num_items
        rows = tf.minimum(rows, num_items - 1)
        valid = tf.logical_and(
            in_catalogue[tf.newaxis, :],
            tf.not_equal(tf.gather(catalogue_ids, rows)[tf.newaxis, :], positive_ids[:, tf.newaxis]),
        )
        return tf.gather(embeddings, rows), valid

    def masked_logits(anchors: tf.Tensor, rows: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
        return tf.where(valid, tf.matmul(anchors, rows, transpose_b=True), MASKED_LOGIT)

    @tf.custom_gradient
    def row_losses(anchors: tf.Tensor, embeddings: tf.Tensor, positive: tf.Tensor):
        def accumulate(index, shift, total):
            logits = masked_logits(anchors, *chunk(index, embeddings))
            new_shift = tf.maximum(shift, tf.reduce_max(logits, axis=1))
            total = total * tf.exp(shift - new_shift) + tf.reduce_sum(tf.exp(logits - new_shift[:, tf.newaxis]), axis=1)
            return index + 1, new_shift, total

        _, shift, total = tf.while_loop(
            lambda index, *_: index < num_chunks,
            accumulate,
            (tf.constant(0), positive, tf.ones_like(positive)),
            parallel_iterations=1,
        )
        log_normaliser = shift + tf.math.log(total)

        def gradient(upstream: tf.Tensor):
            def backward(index, query_gradient, catalogue_gradients):
                rows, valid = chunk(index, embeddings)
                weights = tf.exp(masked_logits(anchors, rows, valid) - log_normaliser[:, tf.newaxis])
                weights = weights * upstream[:, tf.newaxis]
                query_gradient = query_gradient + tf.matmul(weights, rows)
                return (
                    index + 1,
                    query_gradient,
                    catalogue_gradients.write(index, tf.matmul(weights, anchors, transpose_a=True)),
                )

            _, query_gradient, catalogue_gradients = tf.while_loop(
                lambda index, *_: index < num_chunks,
                backward,
                (
                    tf.constant(0),
                    tf.zeros_like(anchors),
                    tf.TensorArray(embeddings.dtype, size=num_chunks, element_shape=[chunk_size, anchors.shape[-1]]),
                ),
                parallel_iterations=1,
            )
            positive_gradient = upstream * (tf.exp(positive - log_normaliser) - 1.0)
            return query_gradient, catalogue_gradients.concat()[:num_items], positive_gradient

        return log_normaliser - positive, gradient

    return row_losses(queries, catalogue, positive_logits)


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class FullCatalogue(tf.keras.layers.Layer):
    """The whole catalogue, handed to the model in every training step for :class:`FullSoftmaxLoss`.

    :meth:`sample` returns every row, so :class:`~tfrec_towers.model.TwoTowerModel` (which takes it
    as its ``mixed_negatives``) encodes the catalogue with the candidate tower in the same step and
    passes it to the task as ``extra_negatives``. Hyper-parameters in the config, state in weights:
    the columns are non-trainable weights, the config holds only their ``columns`` schema, so
    ``from_config`` builds a catalogue of the same shape whose rows a checkpoint restores.

    Args:
      corpus: the candidate tower's raw features, one row per candidate (ids unique), column
        name → ``int64 [N]`` / ``int64 [N, L]`` / ``float32 [N]`` / ``str [N]`` arrays; ``None``
        for a catalogue a checkpoint fills (then ``columns`` is required).
      candidate_id: the id column of ``corpus``.
      columns: the schema, column name → ``{"dtype": "int64" | "float32" | "string", "shape":
        [N, ...]}`` (what :meth:`get_config` stores); must describe ``corpus`` when both are given.
      **kwargs: passed to ``tf.keras.layers.Layer``.

    Raises:
      ValueError: an empty corpus, columns of different lengths or unsupported dtypes, a
        ``candidate_id`` that is not an id column, repeated ids, neither ``corpus`` nor
        ``columns``, or ``columns`` that do not describe ``corpus``.
    """

    def __init__(
        self,
        corpus: Optional[Mapping[str, Any]],
        candidate_id: str,
        columns: Optional[Mapping[str, Mapping[str, Any]]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.candidate_id = candidate_id
        self.columns, self.corpus = add_corpus_weights(self, corpus, candidate_id, columns, "catalogue")
        self.corpus_size = self.columns[candidate_id]["shape"][0]
        self.built = True

    @tf.autograph.experimental.do_not_convert  # plain Python control flow: tracing needs no conversion
    def sample(self) -> Tuple[Dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
        """Every catalogue row.

        Returns:
          ``(features, ids, log_q)``: every column's ``N`` rows, ``ids`` ``[N]`` (the id column) and
          ``log_q`` ``float32 [N]`` zeros (nothing is sampled; :class:`FullSoftmaxLoss` ignores it).
        """
        features = {name: column.read_value() for name, column in self.corpus.items()}
        return features, features[self.candidate_id], tf.zeros([self.corpus_size], tf.float32)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            candidate_id=self.candidate_id,
            columns={name: {"dtype": c["dtype"], "shape": list(c["shape"])} for name, c in self.columns.items()},
        )
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "FullCatalogue":
        """A catalogue of the configured ``columns`` with zero rows, for a checkpoint to fill."""
        return cls(None, **config)


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class FullSoftmaxLoss(tf.keras.layers.Layer):
    """The retrieval task of a softmax over the whole catalogue (see the module docstring).

    ``L = Σ_i w_i·ℓ_i / Σ_i w_i`` (``w_i = 1`` without ``sample_weight``). For L2-normalised towers
    ``⟨q, c⟩`` is a cosine, so ``τ`` sets the logits' range as in the sampled softmax.

    Args:
      temperature: a :class:`Temperature` (fixed or learnable), default ``τ = 1``.
      chunk_size: catalogue rows scored at once (positive).
      **kwargs: passed to ``tf.keras.layers.Layer``.

    Raises:
      ValueError: a ``chunk_size`` that is not a positive int.

    Call: ``query_embeddings [B, d]``, ``candidate_embeddings [B, d]``, ``candidate_ids [B]``,
    ``extra_negatives`` (the :class:`~tfrec_towers.losses.negatives.NegativeSet` of the encoded
    catalogue: its ``embeddings [N, d]`` and ``ids [N]``; ``log_q`` and ``valid`` are not read),
    ``sample_weight [B]`` → scalar loss; under ``tf.distribute`` this replica's share of the global
    weighted mean. ``compute_metrics`` is accepted for TFRS compatibility and ignored.
    """

    def __init__(self, temperature: Optional[Temperature] = None, chunk_size: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temperature = temperature if temperature is not None else Temperature(1.0)
        self.chunk_size = check_int("chunk_size", chunk_size, 1)

    @tf.autograph.experimental.do_not_convert  # plain Python control flow: tracing needs no conversion
    def call(
        self,
        query_embeddings: tf.Tensor,
        candidate_embeddings: tf.Tensor,
        candidate_ids: tf.Tensor,
        extra_negatives: Optional[NegativeSet] = None,
        sample_weight: Optional[tf.Tensor] = None,
        compute_metrics: bool = False,
        training: Optional[bool] = None,
    ) -> tf.Tensor:
        """The loss of the batch against the catalogue.

        Raises:
          ValueError: without ``extra_negatives`` (the model passes the catalogue only in training,
            with a :class:`FullCatalogue` as its ``mixed_negatives``).
        """
        del compute_metrics, training
        if extra_negatives is None:
            raise ValueError(
                "FullSoftmaxLoss scores the encoded catalogue, which TwoTowerModel passes as `extra_negatives` "
                "in training only (with a FullCatalogue as its `mixed_negatives`); rank held-out queries with "
                "tfrec_towers.evaluation instead of model.evaluate."
            )
        queries = self.temperature(tf.cast(query_embeddings, tf.float32))
        positive_logits = tf.reduce_sum(queries * tf.cast(candidate_embeddings, tf.float32), axis=1)
        row_losses = full_softmax_row_losses(
            queries,
            positive_logits,
            candidate_ids,
            tf.cast(extra_negatives.embeddings, tf.float32),
            extra_negatives.ids,
            self.chunk_size,
        )
        if sample_weight is None:
            loss = tf.reduce_mean(row_losses)
        else:
            weights = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
            loss = tf.math.divide_no_nan(tf.reduce_sum(weights * row_losses), tf.reduce_sum(weights))
        if cross_replica.num_replicas() > 1:
            loss = _share_of_global_mean(loss, candidate_ids, sample_weight)
        return loss

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            temperature=tf.keras.utils.serialize_keras_object(self.temperature),
            chunk_size=self.chunk_size,
        )
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "FullSoftmaxLoss":
        config = dict(config)
        config["temperature"] = tf.keras.utils.deserialize_keras_object(config["temperature"])
        return cls(**config)

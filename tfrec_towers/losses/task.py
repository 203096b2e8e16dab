"""The retrieval loss: one task that composes negatives, logQ, margins/temperatures and a mode.

For a batch of B (query, positive candidate) pairs with embeddings q_i, v_i and ids y_i:

1. negatives n_j are pooled from the batch itself (all v_j), the cross-batch memory bank
   (CBNS, Wang et al., SIGIR 2021) and mixed negatives drawn uniformly from the corpus
   (MNS, Yang et al., WWW 2020); a negative with the positive's id (an accidental hit, the
   diagonal included) or an empty bank slot is masked out;
2. similarities s_i = ⟨q_i, v_i⟩, s_ij = ⟨q_i, n_j⟩ become logits by a fixed or learnable
   temperature, z = s / τ, or by adaptive margins and temperatures (Li et al., EMNLP 2023);
3. logQ correction (Yi et al., RecSys 2019): every sampled logit, the positive's included, becomes
   z − log Q_y with Q_y the expected number of copies of y in the pooled negatives,

       Q_y = (B + M_valid) · p_y + B' / N,

   p_y the per-example candidate probability (streamed or counted), B the batch size, M_valid the
   valid bank slots and B' mixed negatives drawn uniformly from N candidates. A sum of the
   sources' expected counts is the sampling distribution of the mixture, so the sources are
   corrected consistently with each other and not each in its own units;
4. a mode turns logits into a loss: sampled softmax (default), BCE, BPR, hinge or the symmetric
   (CLIP-style) in-batch softmax; with adaptive margins the item-anchored term is added:
   L = (1 − w) · L_query + w · L_item;
5. in training, the frequency estimator sees the batch's ids and the bank enqueues the batch's
   candidate embeddings (after they were read, without gradient).

Cost: with a bank of M slots the step is dominated by ``[B, B + M]`` work, so the similarities
are one matmul whose gradient skips the bank's stored rows (they are constants), a fixed
temperature scales the ``[B, d]`` queries instead of the ``[B, B + M]`` similarities, and the
softmax mode differentiates its log-sum-exp in one pass (``modes._softmax_row_losses``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import tensorflow as tf

from tfrec_towers.losses import cross_replica
from tfrec_towers.losses.adaptive import AdaptiveMarginTemperature, item_anchored_similarities
from tfrec_towers.losses.frequency import CandidateProbability, StreamingFrequencyEstimator
from tfrec_towers.losses.logq import LogQCorrection
from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank
from tfrec_towers.losses.modes import ModeLoss, SampledSoftmaxLoss, SymmetricSoftmaxLoss
from tfrec_towers.losses.negatives import NegativeSet, concat_negative_sets
from tfrec_towers.losses.temperature import Temperature


def _similarities(anchors: tf.Tensor, negatives: tf.Tensor, trainable_rows: tf.Tensor) -> tf.Tensor:
    """``⟨a_i, n_j⟩``, ``[B, N]``, where only the first ``trainable_rows`` negatives take gradient.

    Args:
      anchors: ``[B, d]``.
      negatives: ``[N, d]``; rows from ``trainable_rows`` on are stored (memory-bank) embeddings.
      trainable_rows: ``T``, int32 scalar.

    Returns:
      ``anchors @ negativesᵀ``. Its gradient is ``∂/∂anchors = G · negatives`` and
      ``∂/∂negatives = [Gᵀ_{:, :T} · anchors; 0]``: the ``[N − T, d]`` product for the stored rows,
      as costly as the forward matmul, is never formed (it would be discarded anyway).
    """

    @tf.custom_gradient
    def similarities(anchors: tf.Tensor, negatives: tf.Tensor):
        def gradient(upstream: tf.Tensor):
            trainable = tf.matmul(upstream[:, :trainable_rows], anchors, transpose_a=True)
            stored = tf.zeros(tf.stack([tf.shape(negatives)[0] - trainable_rows, tf.shape(negatives)[1]]), negatives.dtype)
            return tf.matmul(upstream, negatives), tf.concat([trainable, stored], axis=0)

        return tf.matmul(anchors, negatives, transpose_b=True), gradient

    return similarities(anchors, negatives)


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class RetrievalLoss(tf.keras.layers.Layer):
    """A TFRS-compatible retrieval task with logQ, memory bank, mixed negatives and modes.

    Args:
      mode: the :class:`ModeLoss` (default :class:`SampledSoftmaxLoss`).
      temperature: a :class:`Temperature` (fixed or learnable); unused with ``adaptive``.
      adaptive: an :class:`AdaptiveMarginTemperature`, replacing ``temperature``.
      candidate_probability: a :class:`CandidateProbability` (streaming estimator or counts
        table); logQ correction is on exactly when it is given.
      memory_bank: a :class:`CrossBatchMemoryBank` of recent candidates.
      num_mixed_negatives, corpus_size: B' and N of the mixed negatives the model passes as
        ``extra_negatives`` (0 when off).

    Raises:
      ValueError: a combination that does not fit: the symmetric mode needs square in-batch
        logits (no bank, no mixed negatives, no adaptive margins); adaptive margins bring their
        own temperature, so a learnable ``temperature`` alongside is refused.

    Call: ``query_embeddings [B, d]``, ``candidate_embeddings [B, d]``, ``candidate_ids [B]``,
    optional ``extra_negatives`` (:class:`NegativeSet`, e.g. mixed negatives), ``sample_weight
    [B]`` → scalar loss. ``compute_metrics`` is accepted for TFRS compatibility and ignored.
    """

    def __init__(
        self,
        mode: Optional[ModeLoss] = None,
        temperature: Optional[Temperature] = None,
        adaptive: Optional[AdaptiveMarginTemperature] = None,
        candidate_probability: Optional[CandidateProbability] = None,
        memory_bank: Optional[CrossBatchMemoryBank] = None,
        num_mixed_negatives: int = 0,
        corpus_size: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mode = mode if mode is not None else SampledSoftmaxLoss()
        self.temperature = temperature if temperature is not None else Temperature(1.0)
        self.adaptive = adaptive
        self.candidate_probability = candidate_probability
        self.memory_bank = memory_bank
        self.num_mixed_negatives = int(num_mixed_negatives)
        self.corpus_size = int(corpus_size)
        self.logq = LogQCorrection()
        if self.num_mixed_negatives < 0 or (self.num_mixed_negatives > 0 and self.corpus_size <= 0):
            raise ValueError(
                "`num_mixed_negatives` must be ≥ 0, with a positive `corpus_size` when > 0. "
                f"Received: {num_mixed_negatives}, {corpus_size}"
            )
        if isinstance(self.mode, SymmetricSoftmaxLoss) and (memory_bank is not None or self.num_mixed_negatives or adaptive is not None):
            raise ValueError(
                "`mode`='symmetric' scores square in-batch logits: it cannot be combined with a "
                "`memory_bank`, `mixed_negatives` or `adaptive` margins."
            )
        if adaptive is not None and temperature is not None and temperature.learnable:
            raise ValueError(
                "`adaptive` margins set their own per-negative temperatures: `temperature` cannot be learnable with them."
            )

    def _per_example_log_p(self, ids: tf.Tensor, batch_size: tf.Tensor) -> tf.Tensor:
        log_p = self.candidate_probability.log_probability(ids)
        if isinstance(self.candidate_probability, StreamingFrequencyEstimator):
            # The estimator's p̂ is the chance to appear in one batch ≈ B · p (see frequency.py).
            log_p = log_p - tf.math.log(tf.cast(batch_size, tf.float32))
        return log_p

    def _log_expected_count(
        self, log_p: tf.Tensor, batch_size: tf.Tensor, bank_slots: tf.Tensor, replicas: int = 1
    ) -> tf.Tensor:
        """log Q_y = log((B + M_valid) · p_y + R·B'/N), ``B`` the global batch of ``R`` replicas."""
        draws = tf.cast(batch_size, tf.float32) + tf.cast(bank_slots, tf.float32)
        expected = draws * tf.exp(log_p)
        if self.num_mixed_negatives:
            expected = expected + replicas * self.num_mixed_negatives / self.corpus_size
        return tf.math.log(expected)

    def _logits(self, anchors, positives, negatives, trainable_rows):
        """``(positive_logits [B], negative_logits [B, N])`` before the logQ correction."""
        if self.adaptive is not None:
            return self.adaptive(
                tf.reduce_sum(anchors * positives, axis=1),
                _similarities(anchors, negatives, trainable_rows),
                _similarities(positives, negatives, trainable_rows),
            )
        # ⟨q, v⟩ / τ = ⟨q / τ, v⟩: the temperature scales [B, d] instead of [B, N].
        scaled = self.temperature(anchors)
        return tf.reduce_sum(scaled * positives, axis=1), _similarities(scaled, negatives, trainable_rows)

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
        del compute_metrics
        training = bool(training)
        replicas = cross_replica.num_replicas()
        if replicas > 1 and isinstance(self.mode, SymmetricSoftmaxLoss):
            raise ValueError(
                "`mode`='symmetric' scores square in-batch logits of one replica; under tf.distribute "
                f"({replicas} replicas) use the 'softmax' mode."
            )
        # Under tf.distribute the negatives are the global batch (every replica's candidates, in
        # replica order, with gradient); a single device gathers nothing.
        all_candidate_embeddings = cross_replica.all_gather(candidate_embeddings)
        all_candidate_ids = cross_replica.all_gather(candidate_ids)
        batch_size = tf.shape(all_candidate_ids)[0]
        if self.candidate_probability is not None and training:
            self.candidate_probability.update(all_candidate_ids)
        if self.candidate_probability is not None:
            all_log_p = self._per_example_log_p(all_candidate_ids, batch_size)
            # One replica: the positives are the gathered rows themselves, looked up once.
            positive_log_p = all_log_p if replicas == 1 else self._per_example_log_p(candidate_ids, batch_size)
        else:
            positive_log_p = tf.zeros([tf.shape(candidate_ids)[0]], tf.float32)
            all_log_p = tf.zeros([batch_size], tf.float32)
        # Sources that take gradient first, the bank's stored rows last.
        sources = [NegativeSet(all_candidate_embeddings, all_candidate_ids, all_log_p, tf.ones([batch_size], tf.bool))]
        if extra_negatives is not None:
            extra_negatives = NegativeSet(*(cross_replica.all_gather(t) for t in extra_negatives))
            if self.candidate_probability is not None:
                extra_negatives = extra_negatives._replace(
                    log_q=self._per_example_log_p(extra_negatives.ids, batch_size)
                )
            sources.append(extra_negatives)
        trainable_rows = tf.add_n([tf.shape(source.ids)[0] for source in sources])
        bank_slots = tf.constant(0, tf.int64)
        if self.memory_bank is not None:
            bank = self.memory_bank.read()
            sources.append(bank)
            bank_slots = tf.reduce_sum(tf.cast(bank.valid, tf.int64))
        negatives = concat_negative_sets(sources)

        mask = tf.logical_and(
            negatives.valid[tf.newaxis, :],
            tf.not_equal(candidate_ids[:, tf.newaxis], negatives.ids[tf.newaxis, :]),
        )
        positive_logits, negative_logits = self._logits(
            query_embeddings, candidate_embeddings, negatives.embeddings, trainable_rows
        )
        if self.candidate_probability is not None:
            log_count = lambda log_p: self._log_expected_count(log_p, batch_size, bank_slots, replicas)  # noqa: E731
            negative_logits = self.logq(negative_logits, log_count(negatives.log_q))
            positive_logits = positive_logits - log_count(positive_log_p)
        loss = self.mode(positive_logits, negative_logits, mask, sample_weight)

        if self.adaptive is not None and self.adaptive.item_anchored_weight > 0:
            weight = self.adaptive.item_anchored_weight
            local_rows = tf.shape(candidate_ids)[0]
            item = item_anchored_similarities(
                query_embeddings,
                candidate_embeddings,
                cross_replica.all_gather(query_embeddings),
                cross_replica.row_offset(local_rows),
            )
            item_mask = tf.logical_and(
                item.negative_mask, tf.not_equal(candidate_ids[:, tf.newaxis], all_candidate_ids[tf.newaxis, :])
            )
            item_positive, item_negative = self.adaptive(
                item.positive_similarity, item.negative_similarity, item.positive_negative_similarity
            )
            loss = (1.0 - weight) * loss + weight * self.mode(item_positive, item_negative, item_mask, sample_weight)

        if self.memory_bank is not None and training:
            self.memory_bank.enqueue(all_candidate_embeddings, all_candidate_ids, all_log_p)
        if replicas > 1:
            # Local weighted mean × local weight / global weight: summed over replicas (as
            # tf.distribute sums gradients), the global weighted mean.
            local_weight = (
                tf.cast(tf.shape(candidate_ids)[0], tf.float32)
                if sample_weight is None
                else tf.reduce_sum(tf.cast(sample_weight, tf.float32))
            )
            loss = loss * local_weight / cross_replica.global_sum(local_weight)
        return loss

    def get_config(self) -> Dict[str, Any]:
        serialize = tf.keras.utils.serialize_keras_object
        return {
            **super().get_config(),
            "mode": serialize(self.mode),
            "temperature": serialize(self.temperature),
            "adaptive": serialize(self.adaptive) if self.adaptive is not None else None,
            "candidate_probability": serialize(self.candidate_probability) if self.candidate_probability is not None else None,
            "memory_bank": serialize(self.memory_bank) if self.memory_bank is not None else None,
            "num_mixed_negatives": self.num_mixed_negatives,
            "corpus_size": self.corpus_size,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "RetrievalLoss":
        config = dict(config)
        for key in ("mode", "temperature", "adaptive", "candidate_probability", "memory_bank"):
            if config.get(key) is not None:
                config[key] = tf.keras.utils.deserialize_keras_object(config[key])
        return cls(**config)


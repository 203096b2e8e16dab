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

       Q_y = (B + M_valid) · p_y + B' · q_y,

   p_y the per-example candidate probability (streamed or counted), B the batch size, M_valid the
   valid bank slots and B' mixed negatives drawn from N candidates with probability q_y: 1 / N
   uniformly, or p_y^α / Σ_k p_k^α by smoothed popularity (counted p only, so that q_y is exact). A sum of the
   sources' expected counts is the sampling distribution of the mixture, so the sources are
   corrected consistently with each other and not each in its own units. A bank that keeps only
   the newest copy of each id (``CrossBatchMemoryBank(deduplicate=True)``) holds y at most once,
   with the chance that y is among the W rows it was read from: its term is 1 − (1 − p_y)^W,

       Q_y = B · p_y + (1 − (1 − p_y)^W) + B' · q_y;

   the bank's rows may also be weighted in the softmax's partition sum, w · exp(z_ij) (``memory_bank_weight``);
4. a mode turns logits into a loss: sampled softmax (default), BCE, BPR, hinge, the softmax moving
   to the hinge or the symmetric (CLIP-style) in-batch softmax; with adaptive margins the
   item-anchored term is added: L = (1 − w) · L_query + w · L_item;
5. in training, the frequency estimator sees the batch's ids, the bank enqueues the batch's
   candidate embeddings (after they were read, without gradient) and the mode finishes the step
   (``ModeLoss.finish_training_step``, once per call however often the mode was called: the split
   by tower and the item-anchored term call it more than once; the softmax-to-hinge curriculum
   counts its steps there).

Which tower the bank trains. The bank's rows are constants, so in one softmax over every negative
(CBNS as published, ``bank_trains_candidate_tower=True``) the candidate tower is pulled towards
each query with weight ``1 − p_ii`` but pushed away only by the negatives with gradient: the bank's
share ``Σ_{j ∈ bank} p_ij`` of the push is missing, a net pull of every candidate towards the
queries. With MLP towers, whose items move together, that drives the candidate embeddings into one
direction once the bank dominates the softmax (a collapse: ml-100k and the Amazon tables lose most
of their hit rate). By default the loss is therefore split by tower:

    L = L_all(q, sg(v)) + L_own(sg(q), v) − sg(L_own),

``L_all`` the loss over every negative (the bank's rows included, logQ with ``B + M_valid``
in-batch-distributed draws), ``L_own`` the same loss over the negatives that take gradient only
(in-batch and mixed, logQ with ``B``), ``sg`` the stop-gradient. Its value is ``L_all``; the
query tower learns from every negative, the candidate tower from a softmax whose pull and push
balance (``Σ_j ∂L_own/∂n_j = −∂L_own/∂v_i``), as without a bank. The extra cost is one
``[B, B + B']`` logit matrix.

Cost: with a bank of M slots the step is dominated by ``[B, M]`` work. In the softmax mode with a
fixed or learnable temperature the bank's logits never form a ``[B, M]`` matrix: their log-sum-exp
(logQ-corrected, masked) is streamed over cache-sized chunks in one pass that also yields the
query gradient (:func:`~tfrec_towers.losses.streamed_logsumexp.streamed_log_sum_exp`), and the
mode adds it to the softmax of the other negatives. Otherwise (the other modes, adaptive margins)
the similarities are one matmul whose gradient skips the bank's stored rows (they are constants).
A fixed temperature scales the ``[B, d]`` queries instead of the similarities, and the softmax mode
differentiates its log-sum-exp in one pass (``modes._softmax_row_losses``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_towers.losses import cross_replica
from tfrec_towers.losses.adaptive import AdaptiveMarginTemperature, item_anchored_similarities
from tfrec_towers.losses.corpus import id_keys
from tfrec_towers.losses.frequency import CandidateProbability
from tfrec_towers.losses.logq import LogQCorrection
from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank
from tfrec_towers.losses.modes import ModeLoss, SampledSoftmaxLoss
from tfrec_towers.losses.negatives import NegativeSet, concat_negative_sets
from tfrec_towers.losses.streamed_logsumexp import streamed_log_sum_exp
from tfrec_towers.losses.temperature import Temperature
from tfrec_towers.xla import compiled


class _GlobalBatch(NamedTuple):
    """The positive candidates of every replica, in replica order (one replica: this batch).

    Attributes:
      embeddings: ``[B, d]`` candidate embeddings, with gradient.
      ids: ``[B]`` candidate ids.
      size: ``B``, int32 scalar, the global batch size.
    """

    embeddings: tf.Tensor
    ids: tf.Tensor
    size: tf.Tensor


class _PooledNegatives(NamedTuple):
    """Every negative of the step and what the logQ correction needs to know about them.

    Attributes:
      negatives: the :class:`NegativeSet` of ``N`` rows: the sources that take gradient first
        (the global batch, then the extra negatives), the bank's stored rows last unless streamed.
      trainable_rows: ``T``, int32 scalar, the rows that take gradient.
      bank_slots: ``M_valid``, int64 scalar, the valid memory-bank rows (0 without a bank).
      bank_draws: ``W``, int64 scalar, the enqueued rows the bank was read from (``M_valid`` unless
        the bank keeps one copy per id; 0 without a bank).
      streamed: the bank's rows when they are not in ``negatives`` but scored apart, streamed
        (:func:`~tfrec_towers.losses.streamed_logsumexp.streamed_log_sum_exp`); else None.
    """

    negatives: NegativeSet
    trainable_rows: tf.Tensor
    bank_slots: tf.Tensor
    bank_draws: tf.Tensor
    streamed: Optional[NegativeSet] = None


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
            stored = tf.zeros(
                tf.stack([tf.shape(negatives)[0] - trainable_rows, tf.shape(negatives)[1]]), negatives.dtype
            )
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
      bank_trains_candidate_tower: with a bank, train both towers on one softmax over every
        negative (CBNS as published); by default (False) the bank's rows train the query tower
        only and the candidate tower learns from the softmax without them (see the module's
        "Which tower the bank trains").
      memory_bank_weight: ``w > 0``, the weight of each bank row in the softmax's partition sum
        (``exp(z_ij)`` becomes ``w · exp(z_ij)``, i.e. ``z_ij + log w``); the softmax mode only.
      num_mixed_negatives, corpus_size: B' and N of the mixed negatives the model passes as
        ``extra_negatives`` (0 when off).
      mixed_negatives_alpha: ``α`` of mixed negatives drawn by smoothed popularity
        ``q_y = p_y^α / Z`` (:func:`~tfrec_towers.losses.mixed_negatives.popularity_log_probabilities`
        over the corpus, with ``candidate_probability``'s ``p``); 0 for uniform draws.
      mixed_log_normaliser: ``log Z = log Σ_k p_k^α`` over the corpus, kept in a weight; used when
        ``mixed_negatives_alpha > 0`` (the weight exists only then).

    Raises:
      ValueError: a negative ``num_mixed_negatives``, or mixed negatives without a positive
        ``corpus_size``. Which components combine is the configuration's rule
        (:class:`~tfrec_towers.config.LossConfig`): the symmetric mode itself refuses
        non-square logits, and under ``tf.distribute`` the call refuses the symmetric mode.

    Call: ``query_embeddings [B, d]``, ``candidate_embeddings [B, d]``, ``candidate_ids [B]``,
    optional ``extra_negatives`` (:class:`NegativeSet`, e.g. mixed negatives), ``sample_weight
    [B]`` → scalar loss. ``compute_metrics`` is accepted for TFRS compatibility and ignored.

    With :attr:`xla_training` (``training.jit_compile``), training calls run the mode's loss over
    the logits XLA-compiled (:func:`tfrec_towers.xla.compiled`).
    """

    xla_training: bool = False

    def __init__(
        self,
        mode: Optional[ModeLoss] = None,
        temperature: Optional[Temperature] = None,
        adaptive: Optional[AdaptiveMarginTemperature] = None,
        candidate_probability: Optional[CandidateProbability] = None,
        memory_bank: Optional[CrossBatchMemoryBank] = None,
        bank_trains_candidate_tower: bool = False,
        memory_bank_weight: float = 1.0,
        num_mixed_negatives: int = 0,
        corpus_size: int = 0,
        mixed_negatives_alpha: float = 0.0,
        mixed_log_normaliser: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mode = mode if mode is not None else SampledSoftmaxLoss()
        self.temperature = temperature if temperature is not None else Temperature(1.0)
        self.adaptive = adaptive
        self.candidate_probability = candidate_probability
        self.memory_bank = memory_bank
        self.bank_trains_candidate_tower = bool(bank_trains_candidate_tower)
        self.memory_bank_weight = float(memory_bank_weight)
        if not (math.isfinite(self.memory_bank_weight) and self.memory_bank_weight > 0.0):
            raise ValueError(f"`memory_bank_weight` must be a finite float > 0. Received: {memory_bank_weight!r}")
        if self.memory_bank_weight != 1.0 and not self.mode.takes_log_sum_exp:
            raise ValueError(
                "`memory_bank_weight` weighs the bank's rows in the softmax's partition sum: it needs the softmax "
                f"mode, not {type(self.mode).__name__}."
            )
        self.num_mixed_negatives = int(num_mixed_negatives)
        self.corpus_size = int(corpus_size)
        self.logq = LogQCorrection()
        if self.num_mixed_negatives < 0 or (self.num_mixed_negatives > 0 and self.corpus_size <= 0):
            raise ValueError(
                "`num_mixed_negatives` must be ≥ 0, with a positive `corpus_size` when > 0. "
                f"Received: {num_mixed_negatives}, {corpus_size}"
            )
        self.mixed_negatives_alpha = float(mixed_negatives_alpha)
        if not self.mixed_negatives_alpha >= 0.0:
            raise ValueError(f"`mixed_negatives_alpha` must be ≥ 0. Received: {mixed_negatives_alpha}")
        self.mixed_log_normaliser: Optional[tf.Variable] = None
        if self.mixed_negatives_alpha > 0.0:
            self.mixed_log_normaliser = self.add_weight(
                name="mixed_log_normaliser",
                shape=[],
                dtype=tf.float32,
                initializer=tf.keras.initializers.Constant(float(mixed_log_normaliser)),
                trainable=False,
            )

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
        """The step's loss: gather, update the frequencies, pool negatives, logits, logQ, mode, item term, scale.

        Returns:
          The scalar loss; under ``tf.distribute`` this replica's share of the global weighted mean.
        """
        del compute_metrics
        training = bool(training)
        replicas = self._check_replicas()
        batch = _gather_batch(candidate_embeddings, candidate_ids)
        if self.candidate_probability is not None and training:
            self.candidate_probability.update(batch.ids)
        batch_log_p, positive_log_p = self._batch_log_probabilities(batch, candidate_ids, replicas)
        pooled = self._pool_negatives(batch, batch_log_p, extra_negatives)
        streamed = self._streamed_log_sum_exp(query_embeddings, candidate_ids, pooled, batch.size, replicas)
        mode = compiled(self.mode, "__call__") if training and self.xla_training else self.mode

        def mode_loss(queries: tf.Tensor, candidates: tf.Tensor, negatives: _PooledNegatives, extra) -> tf.Tensor:
            """The mode's loss over ``negatives``: logits, the logQ correction of its sources, mask."""
            positive_logits, negative_logits = self._logits(
                queries, candidates, negatives.negatives.embeddings, negatives.trainable_rows
            )
            if self.candidate_probability is not None:
                positive_logits, negative_logits = self._correct_logq(
                    positive_logits, negative_logits, positive_log_p, negatives, batch.size, replicas
                )
            if self.memory_bank_weight != 1.0:
                negative_logits = negative_logits + self._bank_columns_log_weight(
                    tf.shape(negative_logits)[1], negatives.trainable_rows
                )
            mask = _negative_mask(candidate_ids, negatives.negatives)
            return mode(positive_logits, negative_logits, mask, sample_weight, extra_log_sum_exp=extra)

        if self.memory_bank is None or self.bank_trains_candidate_tower or not training:
            loss = mode_loss(query_embeddings, candidate_embeddings, pooled, streamed)
        else:
            # The query tower learns from every negative, the candidate tower from the softmax without
            # the bank; the value is the former's (evaluation computes only that).
            sg = tf.stop_gradient
            query_loss = mode_loss(query_embeddings, sg(candidate_embeddings), _constant(pooled), streamed)
            candidate_loss = mode_loss(sg(query_embeddings), candidate_embeddings, _without_bank(pooled), None)
            loss = query_loss + (candidate_loss - sg(candidate_loss))
        if self.adaptive is not None and self.adaptive.item_anchored_weight > 0:
            loss = self._with_item_anchored_term(
                self.adaptive, loss, query_embeddings, candidate_embeddings, candidate_ids, batch.ids, sample_weight
            )
        if self.memory_bank is not None and training:
            self.memory_bank.enqueue(batch.embeddings, batch.ids, batch_log_p)
        if training:  # once per step, after every call of the mode above
            self.mode.finish_training_step()
        if replicas > 1:
            loss = _share_of_global_mean(loss, candidate_ids, sample_weight)
        return loss

    def _check_replicas(self) -> int:
        """The number of replicas ``R`` in sync (1 outside ``tf.distribute``).

        Raises:
          ValueError: a mode of square in-batch logits (symmetric) under ``R > 1``: they are one replica's.
        """
        replicas = cross_replica.num_replicas()
        if replicas > 1 and self.mode.needs_square_in_batch_logits:
            raise ValueError(
                "`mode`='symmetric' scores square in-batch logits of one replica; under tf.distribute "
                f"({replicas} replicas) use the 'softmax' mode."
            )
        return replicas

    @staticmethod
    def _log_probability(probability: CandidateProbability, ids: tf.Tensor, batch_size: tf.Tensor) -> tf.Tensor:
        """``log p_y``, ``[N]``: the per-example sampling probability of each id (the provider's units)."""
        return probability.log_example_probability(ids, batch_size)

    def _batch_log_probabilities(
        self, batch: _GlobalBatch, candidate_ids: tf.Tensor, replicas: int
    ) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(log p_y of the global batch [B], log p_y of this replica's positives [B_local])``.

        Zeros without a ``candidate_probability`` (no logQ correction). With one replica the
        positives are the global batch itself, looked up once.
        """
        if self.candidate_probability is None:
            return tf.zeros([batch.size], tf.float32), tf.zeros([tf.shape(candidate_ids)[0]], tf.float32)
        batch_log_p = self._log_probability(self.candidate_probability, batch.ids, batch.size)
        positive_log_p = (
            batch_log_p
            if replicas == 1
            else self._log_probability(self.candidate_probability, candidate_ids, batch.size)
        )
        return batch_log_p, positive_log_p

    def _pool_negatives(
        self, batch: _GlobalBatch, batch_log_p: tf.Tensor, extra_negatives: Optional[NegativeSet]
    ) -> _PooledNegatives:
        """``n = [v_1..v_B; extra_1..extra_B'; bank_1..bank_M]``: the sources that take gradient first.

        Extra negatives (e.g. mixed negatives) are gathered across replicas and, with a
        ``candidate_probability``, their ``log_q`` is its ``log p_y`` (one unit for all sources).
        """
        sources = [NegativeSet(batch.embeddings, batch.ids, batch_log_p, tf.ones([batch.size], tf.bool))]
        if extra_negatives is not None:
            extra_negatives = NegativeSet(*(cross_replica.all_gather(t) for t in extra_negatives))
            if self.candidate_probability is not None:
                extra_negatives = extra_negatives._replace(
                    log_q=self._log_probability(self.candidate_probability, extra_negatives.ids, batch.size)
                )
            sources.append(extra_negatives)
        trainable_rows = tf.add_n([tf.shape(source.ids)[0] for source in sources])
        bank_slots, bank_draws, streamed = tf.constant(0, tf.int64), tf.constant(0, tf.int64), None
        if self.memory_bank is not None:
            bank = self.memory_bank.read()
            bank_slots = tf.reduce_sum(tf.cast(bank.valid, tf.int64))
            bank_draws = self.memory_bank.window_size() if self.memory_bank.deduplicate else bank_slots
            if self.streams_bank:
                streamed = bank
            else:
                sources.append(bank)
        return _PooledNegatives(concat_negative_sets(sources), trainable_rows, bank_slots, bank_draws, streamed)

    @property
    def streams_bank(self) -> bool:
        """Whether the bank's logits are streamed (never a ``[B, M]`` matrix): the mode's loss reads
        the negatives only through their log-sum-exp (the softmax) and the logits are ``⟨q, n⟩ / τ``."""
        return self.memory_bank is not None and self.mode.takes_log_sum_exp and self.adaptive is None

    def _streamed_log_sum_exp(
        self,
        query_embeddings: tf.Tensor,
        candidate_ids: tf.Tensor,
        pooled: _PooledNegatives,
        batch_size: tf.Tensor,
        replicas: int,
    ) -> Optional[tf.Tensor]:
        """``log Σ_{j valid, y_j ≠ y_i} exp(⟨q_i, e_j⟩ / τ − log Q_{y_j})`` over the bank's rows, ``[B]``
        (no ``− log Q`` without logQ correction); None when the bank is not streamed."""
        if pooled.streamed is None:
            return None
        bank = pooled.streamed
        offsets = tf.zeros_like(bank.log_q)
        if self.candidate_probability is not None:
            offsets = self._log_expected_count(bank.log_q, batch_size, pooled, replicas)
        offsets = offsets - self._bank_log_weight
        return streamed_log_sum_exp(
            self.temperature(query_embeddings), bank.embeddings, offsets, bank.valid, candidate_ids, bank.ids
        )

    @property
    def _bank_log_weight(self) -> float:
        """``log w``, the bank rows' additive logit weight."""
        return math.log(self.memory_bank_weight)

    def _bank_columns_log_weight(self, num_negatives: tf.Tensor, trainable_rows: tf.Tensor) -> tf.Tensor:
        """``[1, N]``: ``log w`` for the bank's columns (from ``trainable_rows`` on), 0 for the others."""
        columns = tf.range(num_negatives)
        return tf.where(columns >= trainable_rows, self._bank_log_weight, 0.0)[tf.newaxis, :]

    def _log_expected_count(
        self, log_p: tf.Tensor, batch_size: tf.Tensor, pooled: _PooledNegatives, replicas: int = 1
    ) -> tf.Tensor:
        """log Q_y = log((B + M_valid) · p_y + R·B'·q_y), ``B`` the global batch of ``R`` replicas and
        ``q_y`` the mixed negatives' draw probability (``1/N``, or ``p_y^α / Z``); with a bank that keeps
        one copy per id, its term is the chance that ``y`` is among its ``W`` draws,
        ``B · p_y + (1 − (1 − p_y)^W) + R·B'·q_y``."""
        p = tf.exp(log_p)
        if self.memory_bank is not None and self.memory_bank.deduplicate:
            draws = tf.cast(pooled.bank_draws, tf.float32)
            in_window = -tf.math.expm1(draws * tf.math.log1p(-tf.minimum(p, 1.0)))
            expected = tf.cast(batch_size, tf.float32) * p + tf.where(draws > 0, in_window, 0.0)
        else:
            expected = (tf.cast(batch_size, tf.float32) + tf.cast(pooled.bank_slots, tf.float32)) * p
        if self.num_mixed_negatives and self.mixed_log_normaliser is not None:
            mixed_q = tf.exp(self.mixed_negatives_alpha * log_p - self.mixed_log_normaliser)
            expected = expected + replicas * self.num_mixed_negatives * mixed_q
        elif self.num_mixed_negatives:
            expected = expected + replicas * self.num_mixed_negatives / self.corpus_size
        return tf.math.log(expected)

    def _correct_logq(
        self,
        positive_logits: tf.Tensor,
        negative_logits: tf.Tensor,
        positive_log_p: tf.Tensor,
        pooled: _PooledNegatives,
        batch_size: tf.Tensor,
        replicas: int,
    ) -> Tuple[tf.Tensor, tf.Tensor]:
        """``z − log Q_y`` for every sampled logit, the positive's included (Yi et al., RecSys 2019).

        ``Q_y`` is :meth:`_log_expected_count`'s expected number of copies of ``y`` among the pooled negatives.
        """

        def log_count(log_p: tf.Tensor) -> tf.Tensor:
            return self._log_expected_count(log_p, batch_size, pooled, replicas)

        negative_logits = self.logq(negative_logits, log_count(pooled.negatives.log_q))
        return positive_logits - log_count(positive_log_p), negative_logits

    def _logits(self, anchors, positives, negatives, trainable_rows):
        """``(positive_logits [B], negative_logits [B, N])`` before the logQ correction.

        ``z = s / τ`` with a temperature, or the adaptive margins and temperatures (Li et al., EMNLP 2023).
        """
        if self.adaptive is not None:
            return self.adaptive(
                tf.reduce_sum(anchors * positives, axis=1),
                _similarities(anchors, negatives, trainable_rows),
                _similarities(positives, negatives, trainable_rows),
            )
        # ⟨q, v⟩ / τ = ⟨q / τ, v⟩: the temperature scales [B, d] instead of [B, N].
        scaled = self.temperature(anchors)
        return tf.reduce_sum(scaled * positives, axis=1), _similarities(scaled, negatives, trainable_rows)

    def _with_item_anchored_term(
        self,
        adaptive: AdaptiveMarginTemperature,
        loss: tf.Tensor,
        query_embeddings: tf.Tensor,
        candidate_embeddings: tf.Tensor,
        candidate_ids: tf.Tensor,
        all_candidate_ids: tf.Tensor,
        sample_weight: Optional[tf.Tensor],
    ) -> tf.Tensor:
        """``L = (1 − w) · L_query + w · L_item`` (Li et al., EMNLP 2023), ``w`` the item-anchored weight.

        ``L_item`` anchors on the candidate ``v_i`` with positive ``q_i`` and the global batch's
        queries ``q_j`` as negatives, those whose candidate is ``v_i``'s id masked out.
        """
        weight = adaptive.item_anchored_weight
        item = item_anchored_similarities(
            query_embeddings,
            candidate_embeddings,
            cross_replica.all_gather(query_embeddings),
            cross_replica.row_offset(tf.shape(candidate_ids)[0]),
        )
        item_mask = tf.logical_and(item.negative_mask, different_ids(candidate_ids, all_candidate_ids))
        item_positive, item_negative = adaptive(
            item.positive_similarity, item.negative_similarity, item.positive_negative_similarity
        )
        return (1.0 - weight) * loss + weight * self.mode(item_positive, item_negative, item_mask, sample_weight)

    def get_config(self) -> Dict[str, Any]:
        serialize = tf.keras.utils.serialize_keras_object
        return {
            **super().get_config(),
            "mode": serialize(self.mode),
            "temperature": serialize(self.temperature),
            "adaptive": serialize(self.adaptive) if self.adaptive is not None else None,
            "candidate_probability": serialize(self.candidate_probability)
            if self.candidate_probability is not None
            else None,
            "memory_bank": serialize(self.memory_bank) if self.memory_bank is not None else None,
            "bank_trains_candidate_tower": self.bank_trains_candidate_tower,
            "memory_bank_weight": self.memory_bank_weight,
            "num_mixed_negatives": self.num_mixed_negatives,
            "corpus_size": self.corpus_size,
            "mixed_negatives_alpha": self.mixed_negatives_alpha,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "RetrievalLoss":
        config = dict(config)
        for key in ("mode", "temperature", "adaptive", "candidate_probability", "memory_bank"):
            if config.get(key) is not None:
                config[key] = tf.keras.utils.deserialize_keras_object(config[key])
        return cls(**config)


def _gather_batch(candidate_embeddings: tf.Tensor, candidate_ids: tf.Tensor) -> _GlobalBatch:
    """The global batch: every replica's candidates, in replica order, with gradient (one device: these)."""
    embeddings = cross_replica.all_gather(candidate_embeddings)
    ids = cross_replica.all_gather(candidate_ids)
    return _GlobalBatch(embeddings, ids, tf.shape(ids)[0])


def _constant(pooled: _PooledNegatives) -> _PooledNegatives:
    """``pooled`` whose negatives' embeddings carry no gradient."""
    negatives = pooled.negatives._replace(embeddings=tf.stop_gradient(pooled.negatives.embeddings))
    return pooled._replace(negatives=negatives)


def _without_bank(pooled: _PooledNegatives) -> _PooledNegatives:
    """The sources that take gradient (the global batch, the extra negatives): ``pooled`` without the bank's rows."""
    rows = pooled.trainable_rows
    negatives = NegativeSet(*(tensor[:rows] for tensor in pooled.negatives))
    return _PooledNegatives(negatives, rows, tf.zeros([], tf.int64), tf.zeros([], tf.int64), None)


def _negative_mask(candidate_ids: tf.Tensor, negatives: NegativeSet) -> tf.Tensor:
    """``bool [B, N]``: ``valid_j ∧ y_i ≠ y_j``, no empty bank slot and no accidental hit (the diagonal included)."""
    return tf.logical_and(negatives.valid[tf.newaxis, :], different_ids(candidate_ids, negatives.ids))


def different_ids(ids: tf.Tensor, others: tf.Tensor) -> tf.Tensor:
    """``bool [B, N]``: ``ids_i ≠ others_j``. String ids are compared by their 64-bit fingerprints
    (:func:`~tfrec_towers.losses.corpus.id_keys`): many times faster than ``B × N`` string comparisons,
    and two distinct ids share one with probability about 2⁻⁶⁴ (for a million items, about 4 · 10⁻⁹
    that any pair of the catalogue does; such a pair would only be left out of each other's negatives)."""
    if ids.dtype == tf.string:
        ids, others = id_keys(ids), id_keys(others)
    return tf.not_equal(ids[:, tf.newaxis], others[tf.newaxis, :])


def _share_of_global_mean(loss: tf.Tensor, candidate_ids: tf.Tensor, sample_weight: Optional[tf.Tensor]) -> tf.Tensor:
    """``L_local · W_local / Σ_r W_r``: summed over replicas (as tf.distribute sums gradients), the
    global weighted mean; ``W`` the replica's example count or sample-weight sum."""
    local_weight = (
        tf.cast(tf.shape(candidate_ids)[0], tf.float32)
        if sample_weight is None
        else tf.reduce_sum(tf.cast(sample_weight, tf.float32))
    )
    return loss * local_weight / cross_replica.global_sum(local_weight)


def in_batch_softmax_task(temperature: Optional[float] = 0.05) -> tfrs.tasks.Retrieval:
    """TFRS in-batch sampled softmax with accidental-hit removal, averaged over the batch.

    loss = −(1/B) Σ_i log softmax_j(⟨q_i, v_j⟩ / τ)_i, logits of other rows with the positive's
    id masked (an item twice in a batch is not its own negative).
    """
    return tfrs.tasks.Retrieval(
        loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
        temperature=temperature,
        remove_accidental_hits=True,
        metrics=None,
        batch_metrics=None,
    )

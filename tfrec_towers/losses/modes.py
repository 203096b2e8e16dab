"""One loss per training mode over ``(positive_logits, negative_logits, negative_mask)``.

Every mode is a Keras layer with the same call:
``loss(positive_logits [batch], negative_logits [batch, num_negatives],
negative_mask [batch, num_negatives] bool, sample_weight [batch] | None) -> scalar``.

* ``negative_mask[i, j]`` is False where negative ``j`` must be ignored for row ``i``
  (the in-batch diagonal, an accidental hit, an empty memory-bank slot). Masked
  negatives are excluded exactly: the softmax gives them a logit of ``-3.4e36`` (their
  probability underflows to 0), masked slots never enter any arithmetic (they may hold
  inf or NaN), every mean over negatives divides by the number of
  *valid* negatives, every max is taken over valid negatives only. A row without a
  valid negative (e.g. batch size 1 with in-batch negatives) contributes 0 for its
  negative part: its softmax and pair-wise losses are 0, its BCE is the positive term.
* Reduction: the weighted mean over rows, ``Σ_i w_i·ℓ_i / Σ_i w_i`` (``w_i = 1`` when
  ``sample_weight`` is None; 0 when all weights are 0). Losses are computed in float32.
* A mode whose loss depends on the training step (:class:`SoftmaxHingeLoss`) keeps its step in a
  weight: its calls only read it, and its owner calls :meth:`ModeLoss.finish_training_step` once
  per training step, after every call of the step (a no-op for the other modes).
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Literal, Mapping, Optional, Type

import numpy as np
import tensorflow as tf

from tfrec_towers.losses.negatives import check_int
from tfrec_towers.losses.temperature import check_real

MASKED_LOGIT = float(np.finfo(np.float32).min / 100.0)


def _softmax_row_losses(positive_logits: tf.Tensor, negative_logits: tf.Tensor, negative_mask: tf.Tensor) -> tf.Tensor:
    """``ℓ_i = logsumexp([z_i, z_ij for valid j]) − z_i``, ``[batch]``.

    Computed as ``m_i + log(e^{z_i − m_i} + Σ_{j valid} e^{z_ij − m_i}) − z_i`` with
    ``m_i = max(z_i, max_{j valid} z_ij)``, without a ``[batch, 1 + num_negatives]`` copy. The
    gradient is the softmax itself, ``∂ℓ_i/∂z_ij = e^{z_ij − m_i} / Σ_i`` (0 for masked slots)
    and ``∂ℓ_i/∂z_i = e^{z_i − m_i} / Σ_i − 1``, formed from the forward pass's exponentials in
    one ``[batch, num_negatives]`` product instead of differentiating each step of the
    log-sum-exp. Masked slots enter neither the value nor the gradient.
    """
    negative_mask = tf.cast(negative_mask, tf.bool)

    @tf.custom_gradient
    def row_losses(positive: tf.Tensor, negative: tf.Tensor):
        masked = tf.where(negative_mask, negative, MASKED_LOGIT)
        shift = tf.maximum(tf.reduce_max(masked, axis=1), positive)
        negative_exp = tf.exp(masked - shift[:, tf.newaxis])
        positive_exp = tf.exp(positive - shift)
        total = positive_exp + tf.reduce_sum(negative_exp, axis=1)

        def gradient(upstream: tf.Tensor):
            scale = upstream / total
            return scale * positive_exp - upstream, negative_exp * scale[:, tf.newaxis]

        return shift + tf.math.log(total) - positive, gradient

    return row_losses(positive_logits, negative_logits)


def _mean_over_valid(values: tf.Tensor, negative_mask: tf.Tensor) -> tf.Tensor:
    """Row means of ``values [batch, num_negatives]`` over valid entries; 0 if none."""
    total = tf.reduce_sum(tf.where(negative_mask, values, 0.0), axis=1)
    count = tf.reduce_sum(tf.cast(negative_mask, tf.float32), axis=1)
    return tf.math.divide_no_nan(total, count)


def _check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{field}` must be a bool. Received: {value!r}")
    return value


class ModeLoss(tf.keras.layers.Layer):
    """Base of the mode losses: casts to float32, takes the weighted mean of row losses.

    Subclasses implement ``_row_losses(positive_logits [batch], negative_logits
    [batch, num_negatives], negative_mask [batch, num_negatives]) -> [batch]``, and a subclass
    with a step-dependent loss :meth:`finish_training_step`. Unless a
    subclass sets ``reads_masked_slots = False`` (its ``_row_losses`` selects a constant in
    masked slots and gives them an exact zero gradient), ``call`` first zeroes masked slots.
    A subclass that scores only one replica's square in-batch logits sets
    ``needs_square_in_batch_logits = True``; one whose loss depends on the negatives only
    through their log-sum-exp (the softmax) sets ``takes_log_sum_exp = True`` and accepts
    negatives streamed elsewhere as ``extra_log_sum_exp``: ``logsumexp(z_1..z_n, L) =
    log(Σ_j e^{z_j} + e^L)``, so ``L`` enters as one more negative logit, exactly.
    """

    reads_masked_slots = True
    needs_square_in_batch_logits = False
    takes_log_sum_exp = False

    def finish_training_step(self) -> None:
        """Marks the end of one training step, after every call of the mode in it.

        The loss that owns the mode (:class:`~tfrec_towers.losses.task.RetrievalLoss`) calls it once
        per training call, never in evaluation; a mode whose loss depends on the step advances its
        step counter here. The modes without state do nothing.
        """

    def _row_losses(
        self,
        positive_logits: tf.Tensor,
        negative_logits: tf.Tensor,
        negative_mask: tf.Tensor,
    ) -> tf.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement `_row_losses`.")

    def call(
        self,
        positive_logits: tf.Tensor,
        negative_logits: tf.Tensor,
        negative_mask: tf.Tensor,
        sample_weight: Optional[tf.Tensor] = None,
        extra_log_sum_exp: Optional[tf.Tensor] = None,
    ) -> tf.Tensor:
        """Computes the loss.

        Args:
          positive_logits: ``[batch]`` logit ``z_i`` of each row's positive.
          negative_logits: ``[batch, num_negatives]`` logits ``z_ij``.
          negative_mask: ``[batch, num_negatives]`` bool, False = ignore.
          sample_weight: ``[batch]`` row weights, or None for equal weights.
          extra_log_sum_exp: ``[batch]`` the log-sum-exp of further negatives scored elsewhere
            (``−∞`` for none), for a mode with ``takes_log_sum_exp``; None for none.

        Returns:
          Scalar float32: ``Σ_i w_i·ℓ_i / Σ_i w_i``.

        Raises:
          ValueError: ``extra_log_sum_exp`` for a mode whose loss needs every negative's logit.
        """
        if extra_log_sum_exp is not None and not self.takes_log_sum_exp:
            raise ValueError(
                f"{type(self).__name__} scores every negative's logit; it cannot take `extra_log_sum_exp`."
            )
        negative_mask = tf.cast(negative_mask, tf.bool)
        negative_logits = tf.cast(negative_logits, tf.float32)
        if extra_log_sum_exp is not None:  # one more negative per row: valid unless it is −∞ (nothing streamed)
            extra = tf.cast(extra_log_sum_exp, tf.float32)[:, tf.newaxis]
            negative_logits = tf.concat([negative_logits, extra], axis=1)
            negative_mask = tf.concat([negative_mask, tf.math.is_finite(extra)], axis=1)
        if self.reads_masked_slots:
            # Masked slots may hold anything (inf, NaN in an empty memory-bank slot): they are
            # zeroed before any arithmetic so neither the loss nor its gradient sees them.
            negative_logits = tf.where(negative_mask, negative_logits, 0.0)
        row_losses = self._row_losses(tf.cast(positive_logits, tf.float32), negative_logits, negative_mask)
        if sample_weight is None:
            return tf.reduce_mean(row_losses)
        weights = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        return tf.math.divide_no_nan(tf.reduce_sum(weights * row_losses), tf.reduce_sum(weights))


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class SampledSoftmaxLoss(ModeLoss):
    """List-wise sampled softmax: ``ℓ_i = −log(e^{z_i} / (e^{z_i} + Σ_{j valid} e^{z_ij}))``.

    The default retrieval loss (TFRS's ``Retrieval`` task; Yi et al. 2019, "Sampling-Bias-
    Corrected Neural Modeling for Large Corpus Item Recommendations", with logQ-corrected
    logits).
    """

    reads_masked_slots = False
    takes_log_sum_exp = True

    def _row_losses(self, positive_logits, negative_logits, negative_mask):
        return _softmax_row_losses(positive_logits, negative_logits, negative_mask)


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class BinaryCrossEntropyLoss(ModeLoss):
    """Point-wise BCE: ``ℓ_i = −log σ(z_i) − λ·mean_{j valid} log(1 − σ(z_ij))``.

    Label 1 on the positive logit and 0 on each valid negative; ``λ = negative_weight``.
    """

    def __init__(self, negative_weight: float = 1.0, **kwargs: Any) -> None:
        """Initializes the loss.

        Args:
          negative_weight: ``λ > 0``, the weight of the per-row mean negative term.
          **kwargs: passed to ``tf.keras.layers.Layer`` (``name``).

        Raises:
          ValueError: if ``negative_weight`` is not a positive float.
        """
        super().__init__(**kwargs)
        self.negative_weight = check_real("negative_weight", negative_weight, 0.0, low_open=True)

    def _row_losses(self, positive_logits, negative_logits, negative_mask):
        positive_term = tf.nn.softplus(-positive_logits)
        negative_term = _mean_over_valid(tf.nn.softplus(negative_logits), negative_mask)
        return positive_term + self.negative_weight * negative_term

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(negative_weight=self.negative_weight)
        return config


class _PairwiseLoss(ModeLoss):
    """``ℓ_i = mean_{j valid} f(z_ij − z_i)``, or ``f(max_{j valid} z_ij − z_i)``."""

    def __init__(self, hardest_negative_only: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hardest_negative_only = _check_bool("hardest_negative_only", hardest_negative_only)

    def _pair_loss(self, difference: tf.Tensor) -> tf.Tensor:
        """``f(z_ij − z_i)``, element-wise."""
        raise NotImplementedError(f"{type(self).__name__} must implement `_pair_loss`.")

    def _row_losses(self, positive_logits, negative_logits, negative_mask):
        if not self.hardest_negative_only:
            differences = negative_logits - positive_logits[:, tf.newaxis]
            return _mean_over_valid(self._pair_loss(differences), negative_mask)
        hardest = tf.reduce_max(tf.where(negative_mask, negative_logits, MASKED_LOGIT), axis=1)
        return tf.where(
            tf.reduce_any(negative_mask, axis=1),
            self._pair_loss(hardest - positive_logits),
            0.0,
        )

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(hardest_negative_only=self.hardest_negative_only)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class BPRLoss(_PairwiseLoss):
    """Pair-wise BPR: ``ℓ_i = mean_{j valid} −log σ(z_i − z_ij)``.

    Rendle et al. 2009, "BPR: Bayesian Personalized Ranking from Implicit Feedback".
    With ``hardest_negative_only`` only the largest valid negative logit of each row is
    used (hard negative mining: Schroff et al. 2015, FaceNet; Wu et al. 2017,
    "Sampling Matters in Deep Embedding Learning").

    Args:
      hardest_negative_only: use only each row's hardest valid negative.
      **kwargs: passed to ``tf.keras.layers.Layer`` (``name``).

    Raises:
      ValueError: if ``hardest_negative_only`` is not a bool.
    """

    def _pair_loss(self, difference: tf.Tensor) -> tf.Tensor:
        return tf.nn.softplus(difference)


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class HingeLoss(_PairwiseLoss):
    """Pair-wise hinge: ``ℓ_i = mean_{j valid} max(0, m − z_i + z_ij)``.

    Hard negative mining as in :class:`BPRLoss` with ``hardest_negative_only`` (FaceNet's
    triplet loss on the hardest negative).
    """

    def __init__(
        self,
        margin: Optional[float] = None,
        hardest_negative_only: bool = False,
        **kwargs: Any,
    ) -> None:
        """Initializes the loss.

        Args:
          margin: ``m > 0``, required: the logit gap the positive must keep over a negative.
          hardest_negative_only: use only each row's hardest valid negative.
          **kwargs: passed to ``tf.keras.layers.Layer`` (``name``).

        Raises:
          ValueError: if ``margin`` is missing or not positive, or
            ``hardest_negative_only`` is not a bool.
        """
        super().__init__(hardest_negative_only=hardest_negative_only, **kwargs)
        if margin is None:
            raise ValueError("`margin` is required for the hinge loss: a positive float. Received: None")
        self.margin = check_real("margin", margin, 0.0, low_open=True)

    def _pair_loss(self, difference: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(self.margin + difference)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(margin=self.margin)
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class SoftmaxHingeLoss(HingeLoss):
    """The sampled softmax moving to the hinge, or a weighted sum of both: ``ℓ_i = (1 − w_t)·ℓ^CE_i + w_t·ℓ^H_i``.

    ``ℓ^CE_i`` is :class:`SampledSoftmaxLoss`'s row loss and ``ℓ^H_i`` :class:`HingeLoss`'s (margin
    ``m``, ``hardest_negative_only`` honoured), over the same logits and mask; the reduction is the
    weighted mean over rows, so the loss is ``L_t = (1 − w_t)·L_softmax + w_t·L_hinge`` with the same
    sample weights in both. The hinge's weight follows the training step ``t``::

        w_t = h · min(1, max(0, (t − s) / r))    (r > 0)
        w_t = h · [t ≥ s]                        (r = 0)

    ``h = hinge_weight``, ``s = hinge_start_steps``, ``r = hinge_ramp_steps``, ``t`` the training
    steps finished before this one. ``s = r = 0`` is a constant weighted sum (``h = 0.5``: half each);
    the defaults (``h = 1``, ``s = r = 0``) are the pure hinge from the first step.

    Why: a hinge on each row's hardest negative started from random embeddings can collapse
    ("selecting the hardest negatives can in practice lead to bad local minima early on in training
    [...] a collapsed model", Schroff et al. 2015, FaceNet): every candidate scores the same for a
    query, ``z_i = max_j z_ij``, and every row's loss is the constant margin ``m``. The sampled
    softmax (Yi et al. 2019, "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
    Recommendations"), whose gradient is never zero, trains first, and the hinge takes over once
    the scores have had time to spread (a curriculum) or trains beside it (a weighted sum). The
    collapse monitor (:mod:`tfrec_towers.collapse`) flags a run that collapsed all the same, by its
    score spread.

    The loss reads every negative's logit (``takes_log_sum_exp`` is False), so a memory bank is
    scored as a matrix, as for the hinge.

    State: ``steps``, a non-trainable int64 weight (``t``), saved by checkpoints and, under
    ``tf.distribute``, mirrored with ``ONLY_FIRST_REPLICA`` aggregation (the same on every replica).
    Calls only read it; :meth:`finish_training_step` adds 1 (``RetrievalLoss`` calls it once per
    training call, after the mode's calls of the step; never in evaluation). ``w_t`` is computed
    from it in the graph. ``get_config`` holds the hyper-parameters only: a layer built from a
    config starts at step 0 until a checkpoint restores ``steps``.
    """

    def __init__(
        self,
        margin: Optional[float] = None,
        hardest_negative_only: bool = False,
        hinge_weight: float = 1.0,
        hinge_start_steps: int = 0,
        hinge_ramp_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        """Initializes the loss.

        Args:
          margin: ``m > 0``, required: the hinge's logit gap the positive must keep over a negative.
          hardest_negative_only: the hinge uses only each row's hardest valid negative.
          hinge_weight: ``h`` in ``(0, 1]``, the hinge's weight once the ramp is over.
          hinge_start_steps: ``s ≥ 0``, training steps of the softmax alone.
          hinge_ramp_steps: ``r ≥ 0``, training steps over which ``w_t`` rises linearly from 0 to
            ``h`` (0: it jumps to ``h`` at step ``s``).
          **kwargs: passed to ``tf.keras.layers.Layer`` (``name``).

        Raises:
          ValueError: naming the argument, if ``margin`` is missing or not positive,
            ``hardest_negative_only`` is not a bool, ``hinge_weight`` is outside ``(0, 1]``, or a
            step count is not an int ≥ 0.
        """
        super().__init__(margin=margin, hardest_negative_only=hardest_negative_only, **kwargs)
        self.hinge_weight = check_real("hinge_weight", hinge_weight, 0.0, 1.0, low_open=True)
        self.hinge_start_steps = check_int("hinge_start_steps", hinge_start_steps, 0)
        self.hinge_ramp_steps = check_int("hinge_ramp_steps", hinge_ramp_steps, 0)
        self.steps = self.add_weight(
            name="steps",
            shape=[],
            dtype=tf.int64,
            initializer="zeros",
            trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def current_hinge_weight(self) -> tf.Tensor:
        """``w_t`` of the step counter's ``t``, float32 scalar, computed in the graph.

        Returns:
          ``h · min(1, max(0, (t − s) / r))`` for ``r > 0``, ``h · [t ≥ s]`` for ``r = 0``.
        """
        elapsed = self.steps.read_value() - self.hinge_start_steps
        if self.hinge_ramp_steps > 0:
            # clipped in int64 before the cast, so the share is exact however long the run
            done = tf.clip_by_value(elapsed, tf.constant(0, tf.int64), tf.constant(self.hinge_ramp_steps, tf.int64))
            share = tf.cast(done, tf.float32) / float(self.hinge_ramp_steps)
        else:
            share = tf.cast(elapsed >= 0, tf.float32)
        return self.hinge_weight * share

    def finish_training_step(self) -> None:
        """Advances ``t`` by one: the step's calls are done."""
        self.steps.assign_add(1)

    def _row_losses(self, positive_logits, negative_logits, negative_mask):
        weight = self.current_hinge_weight()
        softmax = _softmax_row_losses(positive_logits, negative_logits, negative_mask)
        hinge = super()._row_losses(positive_logits, negative_logits, negative_mask)
        return (1.0 - weight) * softmax + weight * hinge

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            hinge_weight=self.hinge_weight,
            hinge_start_steps=self.hinge_start_steps,
            hinge_ramp_steps=self.hinge_ramp_steps,
        )
        return config


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class SymmetricSoftmaxLoss(ModeLoss):
    """CLIP-style symmetric in-batch softmax: ``ℓ_i = (1 − w)·CE_row_i + w·CE_column_i``.

    Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
    Supervision". Applies only to in-batch square logits: ``negative_logits [batch,
    batch]`` with ``negative_logits[i, j] = z(q_i, v_j)``; the diagonal is replaced by
    ``positive_logits`` and always excluded as a negative. ``CE_row_i`` is the sampled
    softmax of query ``q_i`` over candidates ``v_j`` (mask row ``i``); ``CE_column_i`` that
    of candidate ``v_i`` over queries ``q_j`` (mask column ``i``, weight of example ``i``).
    For adaptive-margin logits use ``adaptive.item_anchored_similarities`` instead: those
    logits are anchored on the query of their row.
    """

    reads_masked_slots = False
    needs_square_in_batch_logits = True

    def __init__(self, candidate_to_query_weight: float = 0.5, **kwargs: Any) -> None:
        """Initializes the loss.

        Args:
          candidate_to_query_weight: ``w`` in ``[0, 1]``, the weight of the column
            (candidate → query) term; CLIP uses 0.5.
          **kwargs: passed to ``tf.keras.layers.Layer`` (``name``).

        Raises:
          ValueError: if ``candidate_to_query_weight`` is outside ``[0, 1]``.
        """
        super().__init__(**kwargs)
        self.candidate_to_query_weight = check_real("candidate_to_query_weight", candidate_to_query_weight, 0.0, 1.0)

    def _row_losses(self, positive_logits, negative_logits, negative_mask):
        rows, columns = negative_logits.shape[0], negative_logits.shape[1]
        if rows is not None and columns is not None and rows != columns:
            raise ValueError(
                "SymmetricSoftmaxLoss needs in-batch square `negative_logits` "
                f"[batch, batch]. Received shape: {negative_logits.shape}"
            )
        batch_size = tf.shape(negative_logits)[0]
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    batch_size,
                    tf.shape(negative_logits)[1],
                    message="SymmetricSoftmaxLoss needs in-batch square `negative_logits` [batch, batch]",
                )
            ]
        ):
            negative_mask = tf.logical_and(negative_mask, tf.logical_not(tf.eye(batch_size, dtype=tf.bool)))
        row_term = _softmax_row_losses(positive_logits, negative_logits, negative_mask)
        column_term = _softmax_row_losses(positive_logits, tf.transpose(negative_logits), tf.transpose(negative_mask))
        weight = self.candidate_to_query_weight
        return (1.0 - weight) * row_term + weight * column_term

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(candidate_to_query_weight=self.candidate_to_query_weight)
        return config


ModeName = Literal["softmax", "bce", "bpr", "hinge", "softmax_hinge", "symmetric"]

MODE_LOSSES: Mapping[str, Type[ModeLoss]] = {
    "softmax": SampledSoftmaxLoss,
    "bce": BinaryCrossEntropyLoss,
    "bpr": BPRLoss,
    "hinge": HingeLoss,
    "softmax_hinge": SoftmaxHingeLoss,
    "symmetric": SymmetricSoftmaxLoss,
}


def mode_options(name: ModeName) -> tuple[str, ...]:
    """The keyword arguments :func:`make_mode_loss` accepts for mode ``name``."""
    layer_parameters = inspect.signature(tf.keras.layers.Layer.__init__).parameters
    parameters = inspect.signature(MODE_LOSSES[name].__init__).parameters
    options = [
        option
        for option, parameter in parameters.items()
        if option not in layer_parameters and parameter.kind is not parameter.VAR_KEYWORD
    ]
    return tuple(options)


def make_mode_loss(name: ModeName, **kwargs: Any) -> ModeLoss:
    """Builds the loss of a training mode.

    Args:
      name: ``"softmax"`` (list-wise, default), ``"bce"`` (point-wise), ``"bpr"`` or
        ``"hinge"`` (pair-wise), ``"softmax_hinge"`` (the softmax moving to the hinge, or a
        weighted sum of both), ``"symmetric"`` (CLIP-style, in-batch square logits).
      **kwargs: the mode's options (see :func:`mode_options`), e.g. ``margin`` for
        hinge; the layer gets the default name of its class.

    Returns:
      The mode's loss layer.

    Raises:
      ValueError: if ``name`` is unknown, or an option does not belong to the mode
        (the error names the option and the mode), or an option's value is invalid.
    """
    if name not in MODE_LOSSES:
        raise ValueError(f"`name` must be one of {', '.join(map(repr, MODE_LOSSES))}. Received: {name!r}")
    options = mode_options(name)
    for option in kwargs:
        if option not in options:
            raise ValueError(
                f"`{option}` is not an option of the {name!r} mode; its options are: {', '.join(options) or '(none)'}."
            )
    return MODE_LOSSES[name](**kwargs)

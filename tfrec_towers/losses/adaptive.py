"""Adaptive margin and temperature per (query, positive, negative) triple.

After Li et al., EMNLP 2023 Industry Track (JD.com), "Adaptive Margin and Temperature"
for dense retrieval. The paper's exact functional form is not available in text, so
this module fixes *this package's reading* of it:

* the hardness of negative ``n_j`` for the pair ``(q_i, v_i)`` is the stop-gradient
  similarity of the positive item and the negative, ``c_ij = sg(s(v_i, n_j))``, mapped
  to ``ĉ_ij = clip((c_ij + 1) / 2, 0, 1)`` (cosines: towers L2-normalised);
* the harder the negative, the smaller its margin and its temperature (a negative
  very close to the positive is likely a false negative, so it is not pushed a full
  margin away, but its logit is sharpened so that the ordering is still learned):
  ``δ_ij = δ0·(1 − α·ĉ_ij)``, ``τ_ij = max(τ0·(1 − α·ĉ_ij), τ_min)``;
* the positive must beat each negative by that negative's margin, measured in that
  negative's temperature: the pairwise logit difference is
  ``d_ij = (s(q_i, n_j) − s(q_i, v_i) + δ_ij) / τ_ij``.

The layer returns logits whose differences are exactly ``d_ij``:
``z_i = (s(q_i, v_i) − δ0) / τ0`` and ``z_ij = z_i + d_ij``, so the sampled softmax of
:mod:`tfrec_towers.losses.modes` over ``[z_i, z_i1..z_iN]`` is

    ℓ_i = log(1 + Σ_{j valid} exp((s(q_i, n_j) − s(q_i, v_i) + δ_ij) / τ_ij)).

The pair-wise modes (BPR, hinge) see exactly ``z_ij − z_i = d_ij`` as well. With
``α = 0`` the logits reduce to the additive-margin softmax (CosFace / AM-softmax:
``z_i = (s_i − δ0)/τ0``, ``z_ij = s_ij/τ0``). LogQ correction, when on, is subtracted
from these logits afterwards. The item-anchored (symmetric) term uses the same layer on
the inputs of :func:`item_anchored_similarities`; the total loss is
``(1 − w)·L_query_anchored + w·L_item_anchored`` with ``w = item_anchored_weight``.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

import tensorflow as tf

from tfrec_towers.losses.temperature import check_real


class AnchoredSimilarities(NamedTuple):
    """Inputs of :class:`AdaptiveMarginTemperature` for one anchor per row.

    Attributes:
      positive_similarity: ``[batch]`` anchor–positive similarity.
      negative_similarity: ``[batch, batch]`` anchor ``i`` – negative ``j`` similarity.
      positive_negative_similarity: ``[batch, batch]`` positive ``i`` – negative ``j``
        similarity (the hardness the margin and temperature are computed from).
      negative_mask: ``[batch, batch]`` bool, False on the diagonal (the positive).
    """

    positive_similarity: tf.Tensor
    negative_similarity: tf.Tensor
    positive_negative_similarity: tf.Tensor
    negative_mask: tf.Tensor


def item_anchored_similarities(
    query_embeddings: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    all_query_embeddings: Optional[tf.Tensor] = None,
    row_offset: Optional[tf.Tensor] = None,
) -> AnchoredSimilarities:
    """Similarities of the item-anchored term: anchor ``v_i``, positive ``q_i``, negatives ``q_j``.

    ``positive_similarity[i] = s(v_i, q_i)``, ``negative_similarity[i, j] = s(v_i, q_j)``,
    ``positive_negative_similarity[i, j] = s(q_i, q_j)``; ``negative_mask`` excludes
    ``j = i`` (``j = row_offset + i`` among gathered queries). AND it with a mask of duplicate
    queries when the batch may hold the same query twice. The stop-gradient of ``s(q_i, q_j)``
    is taken by the layer.

    Args:
      query_embeddings: ``[batch, dim]`` query tower outputs ``q``.
      candidate_embeddings: ``[batch, dim]`` positive candidate tower outputs ``v``.
      all_query_embeddings: ``[global_batch, dim]`` the negatives ``q_j`` (default: ``q``); under
        ``tf.distribute`` the queries of every replica, this replica's rows from ``row_offset``.
      row_offset: int32 scalar, the index of row 0 of ``q`` in ``all_query_embeddings`` (default 0).

    Returns:
      An :class:`AnchoredSimilarities` of ``[batch]`` and ``[batch, global_batch]`` tensors.
    """
    negatives = query_embeddings if all_query_embeddings is None else all_query_embeddings
    offset = tf.zeros([], tf.int32) if row_offset is None else tf.cast(row_offset, tf.int32)
    rows = tf.range(tf.shape(query_embeddings)[0]) + offset
    return AnchoredSimilarities(
        positive_similarity=tf.reduce_sum(query_embeddings * candidate_embeddings, axis=1),
        negative_similarity=tf.matmul(candidate_embeddings, negatives, transpose_b=True),
        positive_negative_similarity=tf.matmul(query_embeddings, negatives, transpose_b=True),
        negative_mask=tf.not_equal(rows[:, tf.newaxis], tf.range(tf.shape(negatives)[0])[tf.newaxis, :]),
    )


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class AdaptiveMarginTemperature(tf.keras.layers.Layer):
    """Logits with a per-negative margin ``δ_ij`` and temperature ``τ_ij`` (see module doc).

    ``ĉ_ij = clip((sg(s(v_i, n_j)) + 1)/2, 0, 1)``, ``δ_ij = δ0·(1 − α·ĉ_ij)``,
    ``τ_ij = max(τ0·(1 − α·ĉ_ij), τ_min)``; ``z_i = (s_i − δ0)/τ0``,
    ``z_ij = z_i + (s_ij − s_i + δ_ij)/τ_ij``. No gradient flows through ``δ`` or ``τ``.
    Similarities are assumed to be cosines; larger dot products saturate ``ĉ`` at 1.
    """

    def __init__(
        self,
        strength: float = 0.5,
        base_margin: float = 0.01,
        base_temperature: float = 1.0 / 30.0,
        item_anchored_weight: float = 0.05,
        min_temperature: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        """Initializes the layer; defaults are the paper's.

        Args:
          strength: ``α`` in ``[0, 1]``, how much hardness shrinks margin and temperature.
          base_margin: ``δ0 ≥ 0``, the margin of the easiest negative (``ĉ = 0``).
          base_temperature: ``τ0 > 0``, the temperature of the positive and of the
            easiest negative.
          item_anchored_weight: ``w`` in ``[0, 1]``, the weight of the item-anchored
            term in ``(1 − w)·L_query_anchored + w·L_item_anchored``; read by the task
            that composes the loss.
          min_temperature: ``τ_min`` in ``(0, τ0]``, the floor of ``τ_ij`` (it only
            binds when ``τ0·(1 − α) < τ_min``).
          **kwargs: passed to ``tf.keras.layers.Layer`` (``name``, ``dtype``).

        Raises:
          ValueError: naming the argument, if one is outside its range.
        """
        super().__init__(**kwargs)
        self.strength = check_real("strength", strength, 0.0, 1.0)
        self.base_margin = check_real("base_margin", base_margin, 0.0)
        self.base_temperature = check_real("base_temperature", base_temperature, 0.0, low_open=True)
        self.item_anchored_weight = check_real("item_anchored_weight", item_anchored_weight, 0.0, 1.0)
        self.min_temperature = check_real("min_temperature", min_temperature, 0.0, self.base_temperature, low_open=True)

    def margins_and_temperatures(self, positive_negative_similarity: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Per-negative margins and temperatures, without gradient.

        Args:
          positive_negative_similarity: ``[batch, num_negatives]`` ``c_ij = s(v_i, n_j)``.

        Returns:
          ``(δ, τ)``, both ``[batch, num_negatives]``:
          ``δ_ij = δ0·(1 − α·ĉ_ij)``, ``τ_ij = max(τ0·(1 − α·ĉ_ij), τ_min)``.
        """
        hardness = tf.clip_by_value(
            (tf.stop_gradient(tf.cast(positive_negative_similarity, self.compute_dtype)) + 1.0) / 2.0,
            0.0,
            1.0,
        )
        shrink = 1.0 - self.strength * hardness
        margins = self.base_margin * shrink
        temperatures = tf.maximum(self.base_temperature * shrink, self.min_temperature)
        return margins, temperatures

    def call(
        self,
        positive_similarity: tf.Tensor,
        negative_similarity: tf.Tensor,
        positive_negative_similarity: tf.Tensor,
    ) -> Tuple[tf.Tensor, tf.Tensor]:
        """Computes adaptive logits.

        Args:
          positive_similarity: ``[batch]`` ``s_i = s(q_i, v_i)``.
          negative_similarity: ``[batch, num_negatives]`` ``s_ij = s(q_i, n_j)``.
          positive_negative_similarity: ``[batch, num_negatives]`` ``c_ij = s(v_i, n_j)``
            (stop-gradient is applied here).

        Returns:
          ``(positive_logits [batch], negative_logits [batch, num_negatives])`` with
          ``z_i = (s_i − δ0)/τ0`` and ``z_ij = z_i + (s_ij − s_i + δ_ij)/τ_ij``.
        """
        positive_similarity = tf.cast(positive_similarity, self.compute_dtype)
        negative_similarity = tf.cast(negative_similarity, self.compute_dtype)
        margins, temperatures = self.margins_and_temperatures(positive_negative_similarity)
        positive_logits = (positive_similarity - self.base_margin) / self.base_temperature
        differences = (negative_similarity - positive_similarity[:, tf.newaxis] + margins) / temperatures
        return positive_logits, positive_logits[:, tf.newaxis] + differences

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            strength=self.strength,
            base_margin=self.base_margin,
            base_temperature=self.base_temperature,
            item_anchored_weight=self.item_anchored_weight,
            min_temperature=self.min_temperature,
        )
        return config

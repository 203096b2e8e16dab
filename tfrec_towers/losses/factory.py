"""Builds the retrieval task and the mixed-negative sampler from a :class:`LossConfig`.

The one place where configuration strings become loss layers; everything else receives objects.
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import numpy as np
import tensorflow_recommenders as tfrs

from tfrec_towers.config import LossConfig
from tfrec_towers.losses.adaptive import AdaptiveMarginTemperature
from tfrec_towers.losses.frequency import CountsFrequencyTable, StreamingFrequencyEstimator, check_key_dtype
from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank
from tfrec_towers.losses.mixed_negatives import MixedNegativeSampler
from tfrec_towers.losses.modes import make_mode_loss
from tfrec_towers.losses.task import RetrievalLoss, in_batch_softmax_task
from tfrec_towers.losses.temperature import Temperature


def is_plain_in_batch(loss: LossConfig) -> bool:
    """True when the configuration is TFRS's own in-batch softmax (no addition of this package):
    the softmax mode with a fixed temperature, no logQ correction and in-batch negatives only."""
    return (
        loss.mode == "softmax"
        and loss.logq == "none"
        and not loss.memory_bank_size
        and not loss.mixed_negatives
        and not loss.adaptive.enabled
        and not loss.learnable_temperature
    )


def _mode_kwargs(loss: LossConfig) -> dict:
    if loss.mode == "hinge":
        return {"margin": loss.margin, "hardest_negative_only": loss.hardest_negative_only}
    if loss.mode == "bpr":
        return {"hardest_negative_only": loss.hardest_negative_only}
    if loss.mode == "bce":
        return {"negative_weight": loss.negative_weight}
    if loss.mode == "symmetric":
        return {"candidate_to_query_weight": loss.candidate_to_query_weight}
    return {}


def build_retrieval_task(
    loss: LossConfig,
    temperature: float,
    embedding_dim: int,
    id_dtype: str,
    training_ids: Optional[np.ndarray] = None,
    corpus_size: int = 0,
) -> Union[RetrievalLoss, tfrs.tasks.Retrieval]:
    """The task for ``TwoTowerModel``: TFRS's in-batch softmax for the plain configuration,
    else a :class:`RetrievalLoss` with the configured components.

    Args:
      loss: the loss configuration.
      temperature: τ of the scores (initial value when learnable; unused with adaptive margins).
      embedding_dim: d, for the memory bank.
      id_dtype: ``"int64"`` or ``"string"``, the candidate id dtype.
      training_ids: ``[num_examples]`` candidate ids of the training data, for ``logq='counts'``.
      corpus_size: N, the candidate corpus size, for mixed negatives.

    Raises:
      ValueError: ``logq='counts'`` without ``training_ids``, or a layer's own validation.
    """
    if is_plain_in_batch(loss):
        return in_batch_softmax_task(temperature)
    probability = None
    if loss.logq == "counts":
        if training_ids is None:
            raise ValueError("`loss.logq`='counts' needs the training data's candidate ids (`training_ids`).")
        probability = CountsFrequencyTable.from_ids(training_ids, name="candidate_counts")
    elif loss.logq == "streaming":
        probability = StreamingFrequencyEstimator(
            num_hashes=loss.frequency.num_hashes,
            hash_buckets=loss.frequency.hash_buckets,
            learning_rate=loss.frequency.learning_rate,
            key_dtype=check_key_dtype("key_dtype", id_dtype),
            name="frequency_estimator",
        )
    bank = (
        CrossBatchMemoryBank(
            loss.memory_bank_size,
            embedding_dim,
            check_key_dtype("id_dtype", id_dtype),
            loss.memory_bank_warmup_steps,
            name="memory_bank",
        )
        if loss.memory_bank_size
        else None
    )
    adaptive = (
        AdaptiveMarginTemperature(
            strength=loss.adaptive.strength,
            base_margin=loss.adaptive.base_margin,
            base_temperature=loss.adaptive.base_temperature,
            item_anchored_weight=loss.adaptive.item_anchored_weight,
        )
        if loss.adaptive.enabled
        else None
    )
    return RetrievalLoss(
        mode=make_mode_loss(loss.mode, **_mode_kwargs(loss)),
        temperature=Temperature(
            temperature, learnable=loss.learnable_temperature, min_temperature=min(0.01, temperature)
        )
        if adaptive is None
        else None,
        adaptive=adaptive,
        candidate_probability=probability,
        memory_bank=bank,
        num_mixed_negatives=loss.mixed_negatives,
        corpus_size=corpus_size if loss.mixed_negatives else 0,
        name="retrieval_loss",
    )


def build_mixed_sampler(
    loss: LossConfig, corpus: Mapping[str, np.ndarray], candidate_id: str, seed: int = 0
) -> Optional[MixedNegativeSampler]:
    """The uniform corpus sampler of mixed negative sampling, or None when off."""
    if not loss.mixed_negatives:
        return None
    return MixedNegativeSampler(dict(corpus), loss.mixed_negatives, candidate_id, seed=seed, name="mixed_negatives")

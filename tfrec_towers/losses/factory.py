"""Builds the retrieval task and the mixed-negative sampler from a :class:`LossConfig`.

The one place where configuration strings become loss layers; everything else receives objects.
"""

from __future__ import annotations

from typing import Mapping, Optional, Tuple, Union

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_towers.config import ConfigError, LossConfig
from tfrec_towers.losses.adaptive import AdaptiveMarginTemperature
from tfrec_towers.losses.frequency import CountsFrequencyTable, StreamingFrequencyEstimator, check_key_dtype
from tfrec_towers.losses.full_softmax import FullCatalogue, FullSoftmaxLoss
from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank
from tfrec_towers.losses.mixed_negatives import MixedNegativeSampler, popularity_log_probabilities
from tfrec_towers.losses.modes import make_mode_loss
from tfrec_towers.losses.task import RetrievalLoss, in_batch_softmax_task
from tfrec_towers.losses.temperature import Temperature

MixedDistribution = Tuple[np.ndarray, float]
"""``(log q [N], log Z)``: the mixed negatives' draw probability of each corpus row, and its normaliser."""


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


def memory_bank_warmup_steps(loss: LossConfig, total_steps: Optional[int]) -> int:
    """The step at which the bank's negatives join: ``max(W, ⌊f × T⌋)`` with ``W`` =
    ``loss.memory_bank_warmup_steps``, ``f`` = ``loss.memory_bank_warmup_fraction`` and ``T`` the run's
    training steps.

    Raises:
      ConfigError: a bank with ``f > 0`` and ``total_steps`` None (the share needs the run's length).
    """
    fraction = loss.memory_bank_warmup_fraction
    if not loss.memory_bank_size or fraction == 0.0:
        return loss.memory_bank_warmup_steps
    if total_steps is None:
        raise ConfigError(
            f"`loss.memory_bank_warmup_fraction` ({fraction}) warms the memory bank up for that share of the run's "
            "training steps: pass `total_steps` (`training.epochs` × steps per epoch), or set "
            "`loss.memory_bank_warmup_fraction: 0` and `loss.memory_bank_warmup_steps`."
        )
    return max(loss.memory_bank_warmup_steps, int(fraction * total_steps))


def _mode_kwargs(loss: LossConfig) -> dict:
    if loss.mode == "hinge":
        return {"margin": loss.margin, "hardest_negative_only": loss.hardest_negative_only}
    if loss.mode == "softmax_hinge":
        return {
            "margin": loss.margin,
            "hardest_negative_only": loss.hardest_negative_only,
            "hinge_weight": loss.hinge_weight,
            "hinge_start_steps": loss.hinge_start_steps,
            "hinge_ramp_steps": loss.hinge_ramp_steps,
        }
    if loss.mode == "bpr":
        return {"hardest_negative_only": loss.hardest_negative_only}
    if loss.mode == "bce":
        return {"negative_weight": loss.negative_weight}
    if loss.mode == "symmetric":
        return {"candidate_to_query_weight": loss.candidate_to_query_weight}
    return {}


def _temperature(loss: LossConfig, temperature: float) -> Temperature:
    """τ, fixed or (``loss.learnable_temperature``) learnable from ``temperature`` down to 0.01."""
    return Temperature(temperature, learnable=loss.learnable_temperature, min_temperature=min(0.01, temperature))


def build_retrieval_task(
    loss: LossConfig,
    temperature: float,
    embedding_dim: int,
    id_dtype: str,
    training_ids: Optional[np.ndarray] = None,
    corpus_size: int = 0,
    mixed_distribution: Optional[MixedDistribution] = None,
    total_steps: Optional[int] = None,
) -> Union[RetrievalLoss, FullSoftmaxLoss, tfrs.tasks.Retrieval]:
    """The task for ``TwoTowerModel``: TFRS's in-batch softmax for the plain configuration, a
    :class:`FullSoftmaxLoss` for ``full_softmax``, else a :class:`RetrievalLoss` with the configured components.

    Args:
      loss: the loss configuration.
      temperature: τ of the scores (initial value when learnable; unused with adaptive margins).
      embedding_dim: d, for the memory bank.
      id_dtype: ``"int64"`` or ``"string"``, the candidate id dtype.
      training_ids: ``[num_examples]`` candidate ids of the training data, for ``logq='counts'``.
      corpus_size: N, the candidate corpus size, for mixed negatives.
      mixed_distribution: the mixed negatives' draw distribution (:func:`mixed_negative_distribution`),
        None for uniform draws.
      total_steps: the run's training steps, for the bank's warm-up (:func:`memory_bank_warmup_steps`).

    Raises:
      ConfigError: a bank warmed up for a share of the run without ``total_steps``.
      ValueError: ``logq='counts'`` without ``training_ids``, or a layer's own validation.
    """
    if is_plain_in_batch(loss):
        return in_batch_softmax_task(temperature)
    if loss.mode == "full_softmax":
        return FullSoftmaxLoss(
            _temperature(loss, temperature), chunk_size=loss.full_softmax_chunk, name="retrieval_loss"
        )
    probability = None
    # the draw probabilities enter the logQ of every logit, so only a task that corrects needs them
    weighted = mixed_distribution is not None and loss.logq != "none"
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
            memory_bank_warmup_steps(loss, total_steps),
            deduplicate=loss.memory_bank_deduplicate,
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
        temperature=_temperature(loss, temperature) if adaptive is None else None,
        adaptive=adaptive,
        candidate_probability=probability,
        memory_bank=bank,
        bank_trains_candidate_tower=loss.memory_bank_trains == "both_towers",
        memory_bank_weight=loss.memory_bank_weight,
        num_mixed_negatives=loss.mixed_negatives,
        corpus_size=corpus_size if loss.mixed_negatives else 0,
        mixed_negatives_alpha=loss.mixed_negatives_alpha if weighted else 0.0,
        mixed_log_normaliser=mixed_distribution[1] if weighted and mixed_distribution is not None else 0.0,
        name="retrieval_loss",
    )


def mixed_negative_distribution(
    loss: LossConfig, training_ids: Optional[np.ndarray], corpus_ids: np.ndarray
) -> Optional[MixedDistribution]:
    """``(log q [N], log Z)`` of mixed negatives drawn by smoothed popularity (``loss.mixed_negatives_alpha``),
    ``q_j = p_j^α / Z`` with ``p_j`` the training counts' probability of corpus row ``j`` (the same
    :class:`CountsFrequencyTable` the ``counts`` logQ uses, unseen ids included); None for uniform draws.

    Raises:
      ValueError: ``α > 0`` without ``training_ids``.
    """
    if not loss.mixed_negatives or loss.mixed_negatives_alpha == 0.0:
        return None
    if training_ids is None:
        raise ValueError("`loss.mixed_negatives_alpha` > 0 needs the training data's candidate ids (`training_ids`).")
    table = CountsFrequencyTable.from_ids(training_ids)
    log_p = table.log_example_probability(tf.constant(np.asarray(corpus_ids)), tf.constant(1)).numpy()
    return popularity_log_probabilities(log_p, loss.mixed_negatives_alpha)


def build_mixed_sampler(
    loss: LossConfig,
    corpus: Mapping[str, np.ndarray],
    candidate_id: str,
    seed: int = 0,
    mixed_distribution: Optional[MixedDistribution] = None,
) -> Optional[MixedNegativeSampler]:
    """The corpus sampler of mixed negative sampling (uniform, or by ``mixed_distribution``), or None when off."""
    if not loss.mixed_negatives:
        return None
    return MixedNegativeSampler(
        dict(corpus),
        loss.mixed_negatives,
        candidate_id,
        seed=seed,
        log_probabilities=None if mixed_distribution is None else mixed_distribution[0],
        name="mixed_negatives",
    )


def build_candidate_source(
    loss: LossConfig,
    corpus: Mapping[str, np.ndarray],
    candidate_id: str,
    seed: int = 0,
    mixed_distribution: Optional[MixedDistribution] = None,
) -> Optional[Union[MixedNegativeSampler, FullCatalogue]]:
    """The layer ``TwoTowerModel`` encodes extra candidates from in training (its ``mixed_negatives``):
    the whole catalogue for ``full_softmax``, else the mixed-negative sampler, or None when off."""
    if loss.mode == "full_softmax":
        return FullCatalogue(dict(corpus), candidate_id, name="full_catalogue")
    return build_mixed_sampler(loss, corpus, candidate_id, seed=seed, mixed_distribution=mixed_distribution)

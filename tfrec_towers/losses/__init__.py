"""Retrieval losses: negative sources, sampling-probability providers, logit transforms and modes."""

from tfrec_towers.losses.adaptive import AdaptiveMarginTemperature
from tfrec_towers.losses.frequency import CandidateProbability, CountsFrequencyTable, StreamingFrequencyEstimator
from tfrec_towers.losses.logq import LogQCorrection
from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank
from tfrec_towers.losses.mixed_negatives import MixedNegativeSampler
from tfrec_towers.losses.modes import (
    BinaryCrossEntropyLoss,
    BPRLoss,
    HingeLoss,
    SampledSoftmaxLoss,
    SymmetricSoftmaxLoss,
)
from tfrec_towers.losses.negatives import NegativeSet, concat_negative_sets
from tfrec_towers.losses.task import RetrievalLoss
from tfrec_towers.losses.temperature import Temperature

__all__ = [
    "AdaptiveMarginTemperature",
    "BPRLoss",
    "BinaryCrossEntropyLoss",
    "CandidateProbability",
    "CountsFrequencyTable",
    "CrossBatchMemoryBank",
    "HingeLoss",
    "LogQCorrection",
    "MixedNegativeSampler",
    "NegativeSet",
    "RetrievalLoss",
    "SampledSoftmaxLoss",
    "StreamingFrequencyEstimator",
    "SymmetricSoftmaxLoss",
    "Temperature",
    "concat_negative_sets",
]

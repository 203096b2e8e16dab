"""Retrieval losses: negative sources, sampling-probability providers, logit transforms and modes."""

from tfrec_towers.losses.adaptive import AdaptiveMarginTemperature
from tfrec_towers.losses.frequency import CandidateProbability, CountsFrequencyTable, StreamingFrequencyEstimator
from tfrec_towers.losses.full_softmax import FullCatalogue, FullSoftmaxLoss
from tfrec_towers.losses.logq import LogQCorrection
from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank
from tfrec_towers.losses.mixed_negatives import MixedNegativeSampler, popularity_log_probabilities
from tfrec_towers.losses.modes import (
    BinaryCrossEntropyLoss,
    BPRLoss,
    HingeLoss,
    SampledSoftmaxLoss,
    SoftmaxHingeLoss,
    SymmetricSoftmaxLoss,
)
from tfrec_towers.losses.negatives import NegativeSet, concat_negative_sets
from tfrec_towers.losses.streamed_logsumexp import streamed_log_sum_exp
from tfrec_towers.losses.task import RetrievalLoss
from tfrec_towers.losses.temperature import Temperature

__all__ = [
    "AdaptiveMarginTemperature",
    "BPRLoss",
    "BinaryCrossEntropyLoss",
    "CandidateProbability",
    "CountsFrequencyTable",
    "CrossBatchMemoryBank",
    "FullCatalogue",
    "FullSoftmaxLoss",
    "HingeLoss",
    "LogQCorrection",
    "MixedNegativeSampler",
    "NegativeSet",
    "RetrievalLoss",
    "SampledSoftmaxLoss",
    "SoftmaxHingeLoss",
    "StreamingFrequencyEstimator",
    "SymmetricSoftmaxLoss",
    "Temperature",
    "concat_negative_sets",
    "popularity_log_probabilities",
    "streamed_log_sum_exp",
]

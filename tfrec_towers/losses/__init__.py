"""Retrieval losses: negative sources, sampling-probability providers and logit corrections."""

from tfrec_towers.losses.frequency import CandidateProbability
from tfrec_towers.losses.frequency import CountsFrequencyTable
from tfrec_towers.losses.frequency import StreamingFrequencyEstimator
from tfrec_towers.losses.logq import LogQCorrection
from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank
from tfrec_towers.losses.mixed_negatives import MixedNegativeSampler
from tfrec_towers.losses.negatives import NegativeSet
from tfrec_towers.losses.negatives import concat_negative_sets
from tfrec_towers.losses.adaptive import AdaptiveMarginTemperature
from tfrec_towers.losses.modes import BinaryCrossEntropyLoss, BPRLoss, HingeLoss, SampledSoftmaxLoss, SymmetricSoftmaxLoss
from tfrec_towers.losses.task import RetrievalLoss
from tfrec_towers.losses.temperature import Temperature

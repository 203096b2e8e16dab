"""Collapse of a two-tower model: every candidate embedding points one way, every candidate scores the same.

Two statistics, on a fixed sample of query rows ``q`` and candidate rows ``c`` of the towers' outputs:

    mean resultant length   R = ‖(1/N) Σ_c c/‖c‖‖₂                            in [0, 1]
    score spread            S = (1/Q) Σ_q std_c ⟨q, c⟩ / (2 ‖q‖ max_c ‖c‖)     in [0, 1/2]

``R`` is the directional statistic of Mardia & Jupp (Directional Statistics, Wiley 2000): 1 when
every candidate embedding points the same way, about ``1/√N`` for ``N`` directions spread over
the sphere. ``S`` is, per query, the standard deviation of its scores over the candidate sample
divided by the width of the interval every one of its scores lies in (Cauchy–Schwarz:
``|⟨q, c⟩| ≤ ‖q‖ max_c ‖c‖``), averaged over the queries: 0 when every candidate scores the same
for each query. The model's scores are ``⟨q, c⟩ / τ``; the division by their range cancels the
temperature τ, so one threshold serves every temperature (with L2-normalised towers ``S`` is half
the standard deviation of the cosines). Wang & Isola (ICML 2020, "Understanding Contrastive
Representation Learning through Alignment and Uniformity on the Hypersphere") discuss this
collapse of contrastive embeddings: alignment without uniformity.

:class:`CollapseMonitor` measures both during ``model.fit`` at every epoch end (and every
``every_steps`` steps), adds them to the epoch's logs (``history.json``, TensorBoard) and warns,
or stops training, when :class:`CollapseCriteria` finds a collapse.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfrec_towers.config import DEFAULT_MAX_MEAN_RESULTANT_LENGTH, DEFAULT_MIN_SCORE_SPREAD, TrainingConfig
from tfrec_towers.schedules import crosses_multiple
from tfrec_towers.towers import compute_embeddings

logger = logging.getLogger(__name__)

MEAN_RESULTANT_LENGTH = "mean_resultant_length"
"""The epoch logs' (and ``history.json``'s) key of the candidate embeddings' mean resultant length."""
SCORE_SPREAD = "score_spread"
"""The epoch logs' (and ``history.json``'s) key of the score spread."""
NUM_QUERIES = 256
"""Training queries the monitor scores (a fixed, seeded sample)."""
NUM_CANDIDATES = 2048
"""Catalogue rows the monitor embeds and scores (a fixed, seeded sample)."""
ADVICE = (
    "Lower `training.learning_rate` (or add `training.learning_rate_warmup_steps`), keep the memory bank to "
    "the query tower (`loss.memory_bank_trains: query_tower`) and warm it up with in-batch negatives first "
    "(`loss.memory_bank_warmup_steps`), use `loss.mode: softmax` instead of "
    "hinge or BPR with `loss.hardest_negative_only`, or raise `model.temperature`."
)
"""What to change when a run collapses."""
_ZERO_NORM = 1e-12  # rows of an L2 norm at most this are zero embeddings


def _matrix(name: str, embeddings: Any) -> np.ndarray:
    values = np.asarray(embeddings, np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"`{name}` must be a non-empty matrix [rows, dim]. Received shape {values.shape}")
    return values


def mean_resultant_length(embeddings: Any) -> float:
    """``R = ‖(1/N) Σ_i e_i/‖e_i‖‖₂`` of the rows of ``embeddings`` (Mardia & Jupp, Directional Statistics).

    1 when every row points the same way, about ``1/√N`` for directions spread over the sphere,
    0 for rows that cancel (``±e_i``). A row of zero norm (``‖e_i‖ ≤ 1e-12``) has no direction and
    scores 0 against every query: it counts as collapsed, pointing along the resultant of the
    other rows, i.e. ``R = ‖Σ_{nonzero} e_i/‖e_i‖‖ / N + (zero rows) / N``, the largest value its
    direction could give (1 when every row is zero). NaN if a row is not finite.

    Args:
      embeddings: ``[N, d]`` rows (at least one).

    Returns:
      ``R`` in [0, 1].

    Raises:
      ValueError: ``embeddings`` is not a non-empty matrix.
    """
    rows = _matrix("embeddings", embeddings)
    norms = np.linalg.norm(rows, axis=1)
    if not np.all(np.isfinite(norms)):
        return math.nan
    nonzero = norms > _ZERO_NORM
    resultant = np.linalg.norm(np.sum(rows[nonzero] / norms[nonzero, None], axis=0))
    return float(min((resultant + np.sum(~nonzero)) / len(rows), 1.0))


def score_spread(query_embeddings: Any, candidate_embeddings: Any) -> float:
    """``S = (1/Q) Σ_q std_c ⟨q, c⟩ / (2 ‖q‖ max_c ‖c‖)``: how much the candidates' scores differ per query.

    ``std_c`` is the population standard deviation over the candidate rows; ``2 ‖q‖ max_c ‖c‖`` is
    the width of the interval all of the query's scores lie in (the temperature τ of the model's
    scores ``⟨q, c⟩ / τ`` cancels). 0 when every candidate scores the same for every query, at
    most 1/2 (half the scores at each end of the interval). A query of zero norm (or a candidate
    sample of zero norms) scores every candidate 0: its term is 0.

    Args:
      query_embeddings: ``[Q, d]`` query rows (at least one).
      candidate_embeddings: ``[C, d]`` candidate rows (at least one).

    Returns:
      ``S`` in [0, 1/2]; NaN if an embedding is not finite.

    Raises:
      ValueError: either is not a non-empty matrix, or their widths differ.
    """
    queries = _matrix("query_embeddings", query_embeddings)
    candidates = _matrix("candidate_embeddings", candidate_embeddings)
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"The query and candidate embeddings must have one width. Received {queries.shape[1]} and "
            f"{candidates.shape[1]}"
        )
    width = 2.0 * np.linalg.norm(queries, axis=1) * np.max(np.linalg.norm(candidates, axis=1))
    spread = np.std(queries @ candidates.T, axis=1)
    if not (np.all(np.isfinite(width)) and np.all(np.isfinite(spread))):
        return math.nan
    return float(np.mean(np.where(width > _ZERO_NORM, spread / np.where(width > _ZERO_NORM, width, 1.0), 0.0)))


@dataclasses.dataclass(frozen=True)
class CollapseCriteria:
    """When the two statistics count as a collapse.

    Attributes:
      max_mean_resultant_length: the candidate embeddings collapsed when their mean resultant
        length is above it, in (0, 1] (1: never).
      min_score_spread: the scores collapsed when their spread is below it, in [0, 1/2] (0: never).

    Raises:
      ValueError: a threshold is out of its range.
    """

    max_mean_resultant_length: float = DEFAULT_MAX_MEAN_RESULTANT_LENGTH
    min_score_spread: float = DEFAULT_MIN_SCORE_SPREAD

    def __post_init__(self) -> None:
        if not 0.0 < self.max_mean_resultant_length <= 1.0:
            raise ValueError(
                f"`max_mean_resultant_length` must be in (0, 1]. Received: {self.max_mean_resultant_length!r}"
            )
        if not 0.0 <= self.min_score_spread <= 0.5:
            raise ValueError(f"`min_score_spread` must be in [0, 0.5]. Received: {self.min_score_spread!r}")

    @classmethod
    def from_config(cls, training: TrainingConfig) -> "CollapseCriteria":
        """The thresholds ``training.collapse_max_mean_resultant_length`` and ``training.collapse_min_score_spread``."""
        return cls(training.collapse_max_mean_resultant_length, training.collapse_min_score_spread)

    def findings(self, mean_resultant_length: float, score_spread: float) -> Tuple[str, ...]:
        """What collapsed, in words (empty: nothing did)."""
        found = []
        if mean_resultant_length > self.max_mean_resultant_length:
            found.append(
                f"the candidate embeddings point one way (mean resultant length {mean_resultant_length:.4f} "
                f"> {self.max_mean_resultant_length:g})"
            )
        if score_spread < self.min_score_spread:
            found.append(
                f"every candidate scores about the same (score spread {score_spread:.5f} < {self.min_score_spread:g})"
            )
        return tuple(found)


@dataclasses.dataclass(frozen=True)
class CollapseCheck:
    """One measurement of the monitor.

    Attributes:
      step: the global training step it was taken after.
      epoch: the 1-based epoch of that step.
      mean_resultant_length: of the candidate sample's embeddings (:func:`mean_resultant_length`).
      score_spread: of the query sample's scores of the candidate sample (:func:`score_spread`).
      findings: what collapsed, in words (empty: the model is not collapsed).
    """

    step: int
    epoch: int
    mean_resultant_length: float
    score_spread: float
    findings: Tuple[str, ...]

    @property
    def collapsed(self) -> bool:
        """Whether a criterion found a collapse."""
        return bool(self.findings)

    def describe(self) -> str:
        """E.g. ``step 40 (epoch 2): the candidate embeddings point one way (...)``."""
        return f"step {self.step} (epoch {self.epoch}): {' and '.join(self.findings) or 'no collapse'}"

    def to_dict(self) -> Dict[str, Any]:
        """The check as JSON values."""
        return {**dataclasses.asdict(self), "findings": list(self.findings)}


class CollapseMonitor(tf.keras.callbacks.Callback):
    """Measures collapse on a fixed sample during ``model.fit``; adds both statistics to the epoch logs.

    At every epoch end (and after every ``every_steps``-th global step, counted by the optimizer's
    iterations) the model's towers embed the candidate and query samples; the epoch end adds
    ``mean_resultant_length`` and ``score_spread`` to the epoch's ``logs``, so callbacks after
    this one (checkpoints, TensorBoard, Keras's ``History``) see them. A check that finds a
    collapse logs a warning naming what collapsed and what to change (:data:`ADVICE`); with
    ``stop_on_collapse`` it also stops training (:attr:`stopping` holds the check). Measuring
    reads the weights only (towers called with ``training=False``): training is unchanged.

    Args:
      query_features: a fixed sample of query rows (e.g. :data:`NUM_QUERIES` training queries),
        ``{feature: [Q, ...]}`` with at least the query tower's features.
      candidate_features: a fixed sample of catalogue rows (e.g. :data:`NUM_CANDIDATES`),
        ``{feature: [C, ...]}`` with at least the candidate tower's features.
      every_steps: also check after every this many global steps (0: epoch ends only).
      max_mean_resultant_length, min_score_spread: the :class:`CollapseCriteria`.
      stop_on_collapse: stop training at the check that finds a collapse.
      batch_size: rows per tower call.

    Raises:
      ValueError: a sample is empty, ``every_steps`` is negative, ``batch_size`` is not positive
        or a threshold is out of range.
    """

    def __init__(
        self,
        query_features: Mapping[str, np.ndarray],
        candidate_features: Mapping[str, np.ndarray],
        *,
        every_steps: int = 0,
        max_mean_resultant_length: float = DEFAULT_MAX_MEAN_RESULTANT_LENGTH,
        min_score_spread: float = DEFAULT_MIN_SCORE_SPREAD,
        stop_on_collapse: bool = False,
        batch_size: int = 4096,
    ) -> None:
        super().__init__()
        for name, sample in (("query_features", query_features), ("candidate_features", candidate_features)):
            if not sample or len(next(iter(sample.values()))) == 0:
                raise ValueError(f"`{name}` must hold at least one row.")
        if every_steps < 0:
            raise ValueError(f"`every_steps` must be ≥ 0 (0: epoch ends only). Received: {every_steps!r}")
        if batch_size <= 0:
            raise ValueError(f"`batch_size` must be positive. Received: {batch_size!r}")
        self.query_features = dict(query_features)
        self.candidate_features = dict(candidate_features)
        self.every_steps = int(every_steps)
        self.criteria = CollapseCriteria(max_mean_resultant_length, min_score_spread)
        self.stop_on_collapse = bool(stop_on_collapse)
        self.batch_size = int(batch_size)
        self.checks: List[CollapseCheck] = []
        self.stopping: Optional[CollapseCheck] = None
        self._epoch = 1
        self._last_step = 0  # the global step at the previous batch end

    def get_config(self) -> Dict[str, Any]:
        """The hyper-parameters (not the samples)."""
        return {
            "every_steps": self.every_steps,
            "max_mean_resultant_length": self.criteria.max_mean_resultant_length,
            "min_score_spread": self.criteria.min_score_spread,
            "stop_on_collapse": self.stop_on_collapse,
            "batch_size": self.batch_size,
        }

    def measure(self) -> Tuple[float, float]:
        """``(mean resultant length, score spread)`` of the model's current weights on the samples."""
        candidates = compute_embeddings(self.model.candidate_tower, self.candidate_features, self.batch_size)
        queries = compute_embeddings(self.model.query_tower, self.query_features, self.batch_size)
        return mean_resultant_length(candidates), score_spread(queries, candidates)

    def check(self, step: int) -> CollapseCheck:
        """The check after global step ``step``: measured once per step (later calls reuse it).

        A collapse is warned about (once) and, with ``stop_on_collapse``, stops training.
        """
        if self.checks and self.checks[-1].step == step:
            return self.checks[-1]
        length, spread = self.measure()
        check = CollapseCheck(step, self._epoch, length, spread, self.criteria.findings(length, spread))
        self.checks.append(check)
        if check.collapsed:
            stops = self.stop_on_collapse and self.stopping is None
            logger.warning(
                "The model collapsed at %s. %s%s",
                check.describe(),
                ADVICE,
                " Training stops (`training.stop_on_collapse: true`)." if stops else "",
            )
            if stops:
                self.stopping = check
                self.model.stop_training = True
        return check

    def _global_step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs: Optional[Dict[str, Any]] = None) -> None:
        self._last_step = self._global_step()

    def on_epoch_begin(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        """Checks after the first batch end on or after each ``every_steps``-th global step (the
        batch ends come every ``steps_per_execution`` steps)."""
        if self.every_steps and self.stopping is None:
            step = self._global_step()
            if crosses_multiple(self._last_step, step, self.every_steps):
                self.check(step)
            self._last_step = step

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        check = self.stopping or self.check(self._global_step())
        if logs is not None:
            logs.update({MEAN_RESULTANT_LENGTH: check.mean_resultant_length, SCORE_SPREAD: check.score_spread})


def collapse_summary(
    history: Mapping[str, Sequence[float]], criteria: CollapseCriteria, final_epoch: Optional[int] = None
) -> Dict[str, Any]:
    """Whether a run's model collapsed, from the per-epoch values of its history.

    Args:
      history: ``{key: [value per epoch]}`` holding :data:`MEAN_RESULTANT_LENGTH` and
        :data:`SCORE_SPREAD` (a history without them gives ``collapsed: None``).
      criteria: the thresholds.
      final_epoch: the 0-based epoch whose weights the run ended with (default the last; the
        best epoch's under early stopping).

    Returns:
      ``{"collapsed": bool or None (the final model), "final": {epoch, mean_resultant_length,
      score_spread, findings} or None, "collapsed_epochs": [1-based epochs that crossed a
      threshold], "max_mean_resultant_length", "min_score_spread", "advice"}``.
    """
    lengths = list(history.get(MEAN_RESULTANT_LENGTH, ()))
    spreads = list(history.get(SCORE_SPREAD, ()))
    epochs = [
        (epoch + 1, length, spread, criteria.findings(length, spread))
        for epoch, (length, spread) in enumerate(zip(lengths, spreads))
    ]
    final = None
    if epochs:
        epoch, length, spread, findings = epochs[-1 if final_epoch is None else final_epoch]
        final = {"epoch": epoch, MEAN_RESULTANT_LENGTH: length, SCORE_SPREAD: spread, "findings": list(findings)}
    return {
        "collapsed": None if final is None else bool(final["findings"]),
        "final": final,
        "collapsed_epochs": [epoch for epoch, _, _, findings in epochs if findings],
        "max_mean_resultant_length": criteria.max_mean_resultant_length,
        "min_score_spread": criteria.min_score_spread,
        "advice": ADVICE,
    }

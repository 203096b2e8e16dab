"""Full-catalogue evaluation of a model, per-epoch validation metrics and early stopping.

:func:`evaluate_model` ranks each evaluated interaction's target among the whole catalogue
(:mod:`tfrec_towers.evaluation`). During training, :class:`ValidationMetrics` evaluates the
validation interactions (``data.validation``) at every epoch end and adds ``val_HR@K`` /
``val_NDCG@K`` to the epoch's logs, so they reach the run's ``history.json``, TensorBoard and
the checkpoints. :class:`EarlyStopping` (``training.early_stopping``) reads them from the history
of the finished epochs, which every checkpoint holds, so a resumed run decides exactly as an
uninterrupted one (:class:`~tfrec_pipelines.checkpointing.ResumableTraining` applies it).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from tfrec_pipelines.data import RetrievalData
from tfrec_towers.config import EarlyStoppingConfig
from tfrec_towers.evaluation import DEFAULT_KS, metrics_from_ranks, target_ranks
from tfrec_towers.towers import compute_embeddings

logger = logging.getLogger(__name__)

VALIDATION_PREFIX = "val_"


def evaluate_model(
    model: tf.keras.Model, data: RetrievalData, batch_size: int = 4096, ks: Sequence[int] = DEFAULT_KS
) -> Dict[str, float]:
    """Exact full-catalogue HR@K / NDCG@K (K in ``ks``) on the held-out interactions, each
    query's seen items (``data.seen``) filtered out.

    Args:
      model: a model with ``query_tower`` and ``candidate_tower``.
      data: the split; its eval queries, targets and seen lists are evaluated.
      batch_size: rows per tower call.
      ks: the cut-offs K.

    Returns:
      ``{"HR@10": ..., "NDCG@10": ...}`` for every K of ``ks``.
    """
    queries = compute_embeddings(model.query_tower, data.eval_queries, batch_size)
    candidates = compute_embeddings(model.candidate_tower, data.candidates, batch_size)
    ranks = target_ranks(
        queries,
        candidates,
        data.candidates[data.candidate_id],
        data.eval_targets,
        data.seen_indptr,
        data.seen_ids,
    )
    return metrics_from_ranks(ranks, ks)


class ValidationMetrics(tf.keras.callbacks.Callback):
    """At every epoch end, adds ``val_HR@K`` and ``val_NDCG@K`` of the validation interactions to the logs.

    Callbacks after this one (the checkpointing one, TensorBoard, Keras's ``History``) see them.

    Args:
      data: the split; its ``validation`` interactions are evaluated.
      ks: the cut-offs K.
      batch_size: rows per tower call.

    Raises:
      ValueError: ``data`` has no validation interactions.
    """

    def __init__(self, data: RetrievalData, ks: Sequence[int] = DEFAULT_KS, batch_size: int = 4096) -> None:
        super().__init__()
        self.data = data.validation_data()
        self.ks = tuple(ks)
        self.batch_size = batch_size

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        metrics = evaluate_model(self.model, self.data, self.batch_size, self.ks)
        if logs is not None:
            logs.update({f"{VALIDATION_PREFIX}{name}": value for name, value in metrics.items()})
        logger.info("Epoch %d validation: %s", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stops when the validation metric has not risen by more than ``min_delta`` for ``patience`` epochs.

    Decided from the history of the finished epochs alone (:meth:`decide`), so the decision
    survives a resume. The best epoch is the first one reaching the highest value (ties keep the
    earlier epoch).

    Attributes:
      metric: the history key watched, e.g. ``val_HR@10``.
      patience: epochs without an improvement before stopping (positive).
      min_delta: the smallest rise that counts as an improvement.
    """

    metric: str
    patience: int
    min_delta: float = 0.0

    @classmethod
    def from_config(cls, config: EarlyStoppingConfig) -> "EarlyStopping":
        return cls(f"{VALIDATION_PREFIX}{config.metric}", config.patience, config.min_delta)

    def decide(self, history: Mapping[str, List[float]]) -> Tuple[Optional[int], bool]:
        """``(best epoch or None, whether to stop)`` after the epochs of ``history`` (0-based epochs).

        Raises:
          KeyError: the history of finished epochs lacks the metric.
        """
        if not any(history.values()):
            return None, False
        if self.metric not in history:
            raise KeyError(
                f"Early stopping watches {self.metric!r}, which the training history lacks "
                f"(it holds {sorted(history)})."
            )
        best, best_value, waited = None, float("-inf"), 0
        for epoch, value in enumerate(history[self.metric]):
            if value - self.min_delta > best_value:
                best, best_value, waited = epoch, value, 0
            else:
                waited += 1
        return best, waited >= self.patience

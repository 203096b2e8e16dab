"""Full-catalogue retrieval metrics during ``model.fit``, as a Keras callback.

:class:`RetrievalMetrics` embeds the evaluation queries and the whole candidate catalogue with the
model's towers at the end of an epoch and ranks each query's held-out target exactly among every
candidate (:func:`tfrec_towers.evaluation.target_ranks`), optionally with each query's seen items
filtered out, then writes

    HR@K   = mean_u 1[rank_u < K]                       (= Recall@K with one target)
    NDCG@K = mean_u 1[rank_u < K] / log2(rank_u + 2)

into the epoch's ``logs`` under a prefix (``val_HR@10``, ...), so they appear in ``History``, in
``TensorBoard`` and can drive ``EarlyStopping(monitor="val_HR@10", mode="max")``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfrec_towers.evaluation import metrics_from_ranks, target_ranks
from tfrec_towers.towers import compute_embeddings


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int. Received: {value!r}")
    return int(value)


def _columns(name: str, table: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """``table`` (a dict of arrays or a DataFrame) as numpy columns of one length, at least one row."""
    if not isinstance(table, Mapping) and not hasattr(table, "columns"):
        raise TypeError(f"`{name}` must map feature names to columns. Received: {type(table).__name__}")
    columns = {str(key): np.asarray(table[key]) for key in table}
    lengths = {key: len(values) for key, values in columns.items()}
    if not columns or len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"`{name}` must hold columns of one length, at least one row. Received lengths {lengths}")
    return columns


class RetrievalMetrics(tf.keras.callbacks.Callback):
    """HR@K and NDCG@K over the whole catalogue, written into the epoch's ``logs``.

    Place it before the callbacks that read its metrics (``EarlyStopping``, ``TensorBoard``,
    ``ModelCheckpoint``) in ``callbacks=[...]``: Keras hands them the same ``logs``.

    Args:
      queries: the evaluation queries' raw features, ``{feature: [U, ...]}`` (a dict of arrays or a
        DataFrame) with at least the query tower's features.
      targets: ``[U]`` the held-out candidate id of each query; each must be in the catalogue.
      candidates: the whole catalogue, one row per candidate, ``{feature: [N, ...]}`` with at least
        the candidate tower's features and the candidate id column.
      candidate_id: the catalogue's id column; default the model's ``candidate_id``.
      seen_indptr: ``int [U + 1]`` CSR offsets of each query's seen (training) ids in ``seen_ids``,
        which are filtered out of its ranking (the target itself never is); with ``seen_ids``.
      seen_ids: ``[nnz]`` the seen ids, query after query.
      ks: the cut-offs K, positive ints.
      every_n_epochs: compute the metrics every this many epochs (and after the last epoch).
      prefix: prepended to each metric name in ``logs`` (``"val_"`` gives ``val_HR@10``).
      batch_size: rows per tower call when embedding.

    Raises:
      ValueError: on empty or ragged tables, a ``targets`` length other than the queries', a
        missing candidate id column, only one of ``seen_indptr`` / ``seen_ids``, CSR offsets that
        are not ``U + 1`` non-decreasing values from 0 to ``len(seen_ids)``, or a non-positive
        ``ks`` entry, ``every_n_epochs`` or ``batch_size``.
      TypeError: ``queries`` or ``candidates`` is not a mapping of columns.
    """

    def __init__(
        self,
        queries: Mapping[str, Any],
        targets: Sequence[Any],
        candidates: Mapping[str, Any],
        *,
        candidate_id: Optional[str] = None,
        seen_indptr: Optional[Sequence[int]] = None,
        seen_ids: Optional[Sequence[Any]] = None,
        ks: Sequence[int] = (10, 50, 100),
        every_n_epochs: int = 1,
        prefix: str = "val_",
        batch_size: int = 4096,
    ) -> None:
        super().__init__()
        self.queries = _columns("queries", queries)
        self.candidates = _columns("candidates", candidates)
        num_queries = len(next(iter(self.queries.values())))
        self.targets = np.asarray(targets)
        if self.targets.shape != (num_queries,):
            raise ValueError(
                f"`targets` must hold one candidate id per query ({num_queries}). Received shape {self.targets.shape}"
            )
        if candidate_id is not None and candidate_id not in self.candidates:
            raise ValueError(
                f"`candidate_id` {candidate_id!r} is not a column of `candidates` {sorted(self.candidates)}."
            )
        self.candidate_id = candidate_id
        if (seen_indptr is None) != (seen_ids is None):
            raise ValueError("`seen_indptr` and `seen_ids` go together: pass both, or neither.")
        if seen_indptr is None:
            self.seen_indptr, self.seen_ids = np.zeros(num_queries + 1, np.int64), self.targets[:0]
        else:
            self.seen_indptr, self.seen_ids = np.asarray(seen_indptr, np.int64), np.asarray(seen_ids)
            if (
                self.seen_indptr.shape != (num_queries + 1,)
                or self.seen_indptr[0] != 0
                or self.seen_indptr[-1] != len(self.seen_ids)
                or np.any(np.diff(self.seen_indptr) < 0)
            ):
                raise ValueError(
                    f"`seen_indptr` must be {num_queries + 1} non-decreasing offsets from 0 to len(seen_ids) "
                    f"= {len(self.seen_ids)}. Received {self.seen_indptr.shape[0]} offsets from "
                    f"{self.seen_indptr[:1].tolist()} to {self.seen_indptr[-1:].tolist()}"
                )
        self.ks = tuple(_positive_int("ks", k) for k in ks)
        if not self.ks:
            raise ValueError("`ks` must hold at least one cut-off K.")
        self.every_n_epochs = _positive_int("every_n_epochs", every_n_epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        if not isinstance(prefix, str):
            raise ValueError(f"`prefix` must be a string. Received: {prefix!r}")
        self.prefix = prefix

    def compute(self) -> Dict[str, float]:
        """The metrics of the model as it is now: ``{"HR@K": ..., "NDCG@K": ...}`` without the prefix.

        Raises:
          TypeError: the model has no ``query_tower`` / ``candidate_tower`` (a two-tower model).
          ValueError: a target is not in the catalogue, or the model has no ``candidate_id`` and
            none was given.
        """
        query_tower = getattr(self.model, "query_tower", None)
        candidate_tower = getattr(self.model, "candidate_tower", None)
        if query_tower is None or candidate_tower is None:
            raise TypeError(
                "RetrievalMetrics needs a two-tower model with `query_tower` and `candidate_tower` "
                f"(tfrec_towers.TwoTowerModel). Received: {type(self.model).__name__}"
            )
        candidate_id = self.candidate_id or getattr(self.model, "candidate_id", None)
        if candidate_id not in self.candidates:
            raise ValueError(
                f"The candidate id column {candidate_id!r} is not in `candidates` {sorted(self.candidates)}: "
                "pass `candidate_id`."
            )
        ranks = target_ranks(
            compute_embeddings(query_tower, self.queries, self.batch_size),
            compute_embeddings(candidate_tower, self.candidates, self.batch_size),
            self.candidates[candidate_id],
            self.targets,
            self.seen_indptr,
            self.seen_ids,
        )
        return metrics_from_ranks(ranks, self.ks)

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        """Adds the prefixed metrics to ``logs`` every ``every_n_epochs`` epochs and after the last one."""
        last = epoch + 1 == (self.params or {}).get("epochs")
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        metrics = self.compute()
        if logs is not None:
            logs.update({f"{self.prefix}{name}": value for name, value in metrics.items()})

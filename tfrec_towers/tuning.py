"""Tune the retrieval index on held-out queries: the fastest configuration that meets a recall@k target.

:func:`tune_index` sweeps ScaNN's partitions (``num_leaves``, one build each), leaves searched and
re-ordering pool (search-time parameters of a built searcher, so they need no rebuild), and
measures for every configuration

* recall@k against exact search (:func:`tfrec_towers.index.exact_top_k`, numpy), and
* batched queries per second of the index as it is served (the same TensorFlow ops as the
  SavedModel's ``serving_default``, timed with the verification worker's
  :func:`~tfrec_towers.verify_worker.measure_batched_qps`).

Exact brute force is measured as well and competes: its recall is 1, so on a corpus small enough
for a ``[batch, N]`` matmul to beat the tree search it is the one chosen (below
:data:`~tfrec_towers.index.SCANN_MIN_CANDIDATES` candidates it is the only one). The *frontier* is the
Pareto set (no other configuration has both higher recall and higher throughput); listed by
increasing recall, its throughput decreases. :func:`save_tuning_report` writes it as JSON and as a
recall-vs-QPS plot (matplotlib, the ``report`` extra).

ScaNN builds are not reproducible bit for bit (its k-means and quantiser training draw their
samples from OS entropy), so a re-built index reaches about, not exactly, the measured recall: keep
a margin in ``target_recall``, or check the export with ``tfrec-towers verify``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from tfrec_towers.extras import missing_extra
from tfrec_towers.index import (
    SCANN_MIN_CANDIDATES,
    IndexConfig,
    build_index,
    exact_top_k,
    recall_at_k,
    validate_corpus,
)
from tfrec_towers.verify_worker import measure_batched_qps

REPORT_JSON = "tuning.json"
REPORT_PLOT = "tuning.png"


def _positive_ints(field: str, values: Tuple[int, ...]) -> None:
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in values):
        raise ValueError(f"`{field}` must be a non-empty tuple of positive ints. Received: {values!r}")


@dataclasses.dataclass(frozen=True)
class TuningGrid:
    """The ScaNN settings swept by :func:`tune_index`.

    Every combination is measured: ``num_leaves_to_search = ⌈fraction · num_leaves⌉`` for each
    fraction, and ``reordering_multiplier · k`` candidates re-scored exactly.

    Attributes:
      num_leaves: partition counts, one index build each.
      search_fractions: fractions of the leaves searched per query, in ``(0, 1]``.
      reordering_multipliers: re-ordering pools as multiples of ``k``.
    """

    num_leaves: Tuple[int, ...]
    search_fractions: Tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
    reordering_multipliers: Tuple[int, ...] = (2, 5, 10, 25)

    def __post_init__(self) -> None:
        _positive_ints("num_leaves", self.num_leaves)
        _positive_ints("reordering_multipliers", self.reordering_multipliers)
        if not self.search_fractions or any(not 0.0 < float(f) <= 1.0 for f in self.search_fractions):
            raise ValueError(
                f"`search_fractions` must be a non-empty tuple of fractions in (0, 1]. Received: {self.search_fractions!r}"
            )

    @classmethod
    def for_corpus(cls, num_candidates: int) -> "TuningGrid":
        """Half, once and twice ScaNN's ``√N`` partitions (capped at ``N``), default search and re-ordering."""
        root = math.sqrt(num_candidates)
        return cls(num_leaves=tuple(sorted({min(num_candidates, max(1, round(f * root))) for f in (0.5, 1.0, 2.0)})))

    def configs(self, k: int, num_candidates: int) -> List[IndexConfig]:
        """Every distinct resolved ScaNN configuration of the grid for a corpus of ``N`` candidates."""
        configs = []
        for num_leaves in self.num_leaves:
            if num_leaves > num_candidates:
                raise ValueError(
                    f"`num_leaves` must not exceed the number of candidates ({num_candidates}). Received: {num_leaves}"
                )
            for fraction in self.search_fractions:
                for multiplier in self.reordering_multipliers:
                    config = IndexConfig(
                        kind="scann",
                        k=k,
                        num_leaves=num_leaves,
                        num_leaves_to_search=min(num_leaves, math.ceil(fraction * num_leaves)),
                        reordering_multiplier=multiplier,
                    )
                    configs.append(config)
        # Re-ordering pools beyond N are the same search: keep the first of each.
        distinct: Dict[Tuple[int, int, int], IndexConfig] = {}
        for config in configs:
            key = (*config.resolved_leaves, min(num_candidates, config.num_reordering_candidates))
            distinct.setdefault(key, config)
        return list(distinct.values())


@dataclasses.dataclass(frozen=True)
class TuningPoint:
    """One measured configuration.

    Attributes:
      config: the resolved :class:`~tfrec_towers.index.IndexConfig` (export with it as it is).
      recall: recall@k against exact search on the tuning queries.
      queries_per_second: batched throughput of the index (not the towers).
      build_seconds: time to build the index this configuration searches.
    """

    config: IndexConfig
    recall: float
    queries_per_second: float
    build_seconds: float

    @property
    def label(self) -> str:
        c = self.config
        if c.kind == "brute-force":
            return "brute-force"
        return f"leaves {c.num_leaves}, search {c.num_leaves_to_search}, reorder {c.num_reordering_candidates}"

    def to_dict(self) -> Dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "recall": self.recall,
            "queries_per_second": self.queries_per_second,
            "build_seconds": self.build_seconds,
        }


@dataclasses.dataclass(frozen=True)
class TuningResult:
    """What :func:`tune_index` measured and chose.

    Attributes:
      k: neighbours per query.
      target_recall: the recall@k the chosen configuration had to reach.
      num_candidates: corpus size ``N``.
      num_queries: tuning queries.
      batch_size: queries per batch in the throughput measurement.
      points: every measured configuration (brute force first).
      frontier: the Pareto-optimal points by increasing recall (and decreasing throughput).
      chosen: the fastest point with ``recall >= target_recall`` (or, if none reached it, the
        most accurate one; ``target_met`` is then False).
      target_met: whether ``chosen`` reaches the target.
    """

    k: int
    target_recall: float
    num_candidates: int
    num_queries: int
    batch_size: int
    points: Tuple[TuningPoint, ...]
    frontier: Tuple[TuningPoint, ...]
    chosen: TuningPoint
    target_met: bool

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready; ``IndexConfig(**result.to_dict()["chosen"]["config"])`` rebuilds the choice."""
        return {
            "k": self.k,
            "target_recall": self.target_recall,
            "num_candidates": self.num_candidates,
            "num_queries": self.num_queries,
            "batch_size": self.batch_size,
            "target_met": self.target_met,
            "chosen": self.chosen.to_dict(),
            "frontier": [p.to_dict() for p in self.frontier],
            "points": [p.to_dict() for p in self.points],
        }

    def frontier_table(self) -> str:
        """The frontier as a Markdown table, the chosen configuration marked with ``*``."""
        lines = [
            f"recall@{self.k} / throughput frontier over {self.num_candidates:,} candidates, "
            f"{self.num_queries} queries, batches of {self.batch_size} (target recall {self.target_recall}):",
            "| | configuration | recall | queries/s |",
            "|---|---|---|---|",
        ]
        for point in self.frontier:
            mark = "*" if point == self.chosen else ""
            lines.append(f"| {mark} | {point.label} | {point.recall:.4f} | {point.queries_per_second:,.0f} |")
        if self.chosen not in self.frontier:
            lines.append(
                f"| * | {self.chosen.label} | {self.chosen.recall:.4f} | {self.chosen.queries_per_second:,.0f} |"
            )
        if not self.target_met:
            lines.append(f"No configuration reached recall {self.target_recall}; the most accurate one is chosen.")
        return "\n".join(lines)


def pareto_frontier(points: Tuple[TuningPoint, ...]) -> Tuple[TuningPoint, ...]:
    """Points that no other point beats on both recall and throughput, by increasing recall.

    Args:
      points: measured configurations.

    Returns:
      The frontier; along it recall strictly increases and throughput strictly decreases.
    """
    frontier: List[TuningPoint] = []
    for point in sorted(points, key=lambda p: (-p.queries_per_second, -p.recall)):
        if not frontier or point.recall > frontier[-1].recall:
            frontier.append(point)
    return tuple(frontier)


def _check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    queries = np.asarray(queries)
    if queries.ndim != 2 or not np.issubdtype(queries.dtype, np.floating) or queries.shape[1] != dim:
        raise ValueError(
            f"`queries` must be a float matrix [num_queries, {dim}] (the candidates' dimension). "
            f"Received: dtype {queries.dtype}, shape {queries.shape}"
        )
    if queries.shape[0] == 0:
        raise ValueError("`queries` is empty: tuning needs held-out query embeddings.")
    if not np.isfinite(queries).all():
        raise ValueError("`queries` has NaN or inf values.")
    return queries.astype(np.float32)


def _measure(
    search: Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]],
    queries: np.ndarray,
    batch_size: int,
    exact_ids: np.ndarray,
    min_seconds: float,
) -> Tuple[float, float]:
    """``(recall@k, queries per second)`` of ``search`` over ``queries`` in batches."""
    batches = [
        (tf.constant(queries[i : i + batch_size]), len(queries[i : i + batch_size]))
        for i in range(0, len(queries), batch_size)
    ]
    found = np.concatenate([search(batch)[1].numpy() for batch, _ in batches])
    qps = measure_batched_qps(search, batches, min_passes=2, min_seconds=min_seconds)
    return recall_at_k(found, exact_ids), qps


def tune_index(
    candidate_embeddings: np.ndarray,
    candidate_ids: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    target_recall: float = 0.95,
    grid: Optional[TuningGrid] = None,
    *,
    batch_size: int = 256,
    min_seconds: float = 0.2,
) -> TuningResult:
    """Sweeps ScaNN settings on held-out queries and picks the fastest one meeting ``target_recall``.

    Args:
      candidate_embeddings: ``float [N, dim]`` the corpus, as the export will index it.
      candidate_ids: ``int or string [N]`` unique ids in the rows' order.
      queries: ``float [num_queries, dim]`` held-out query embeddings (not used in training).
      k: neighbours per query (the export's ``k``); must not exceed ``N``.
      target_recall: the recall@k against exact search to reach, in ``(0, 1]``.
      grid: the settings to sweep; default :meth:`TuningGrid.for_corpus`.
      batch_size: queries per batch when measuring throughput.
      min_seconds: minimum timed seconds per configuration (the fastest pass counts).

    Returns:
      A :class:`TuningResult`; ``result.chosen.config`` is the :class:`IndexConfig` to export with.

    Raises:
      ValueError: on an empty corpus or query set, mismatched dimensions, non-finite values,
        repeated ids, ``k`` larger than the corpus, a ``target_recall`` outside ``(0, 1]`` or a
        grid with more leaves than candidates.
    """
    embeddings, ids = validate_corpus(candidate_embeddings, candidate_ids)
    num_candidates, dim = embeddings.shape
    queries = _check_queries(queries, dim)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"`k` must be a positive int. Received: {k!r}")
    if k > num_candidates:
        raise ValueError(f"`k` must not exceed the number of candidates ({num_candidates}). Received: {k}")
    if isinstance(target_recall, bool) or not 0.0 < float(target_recall) <= 1.0:
        raise ValueError(f"`target_recall` must be in (0, 1]. Received: {target_recall!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive int. Received: {batch_size!r}")
    grid = grid or TuningGrid.for_corpus(num_candidates)
    # ScaNN cannot index a corpus this small (IndexConfig.resolve makes it exact): brute force only.
    configs = grid.configs(k, num_candidates) if num_candidates >= SCANN_MIN_CANDIDATES else []

    exact_ids = ids[exact_top_k(queries, embeddings, k)[1]]
    spec = tf.TensorSpec([None, dim], tf.float32)
    start = time.perf_counter()
    brute_force = build_index(IndexConfig(kind="brute-force", k=k), embeddings, ids)
    build_seconds = time.perf_counter() - start
    recall, qps = _measure(brute_force, queries, batch_size, exact_ids, min_seconds)
    points = [TuningPoint(brute_force.config, recall, qps, build_seconds)]

    for num_leaves in dict.fromkeys(c.num_leaves for c in configs):
        sweep = [c for c in configs if c.num_leaves == num_leaves]
        widest = dataclasses.replace(
            sweep[0],
            num_leaves_to_search=max(c.resolved_leaves[1] for c in sweep),
            reordering_multiplier=max(c.reordering_multiplier for c in sweep),
        )
        start = time.perf_counter()
        index = build_index(widest, embeddings, ids)
        build_seconds = time.perf_counter() - start
        for config in sweep:
            search = tf.function(
                lambda q, c=config, index=index: index.search(q, c.num_leaves_to_search, c.num_reordering_candidates),
                input_signature=[spec],
            )
            recall, qps = _measure(search, queries, batch_size, exact_ids, min_seconds)
            points.append(TuningPoint(config.resolve(num_candidates), recall, qps, build_seconds))

    meeting = [p for p in points if p.recall >= target_recall]
    chosen = max(meeting, key=lambda p: p.queries_per_second) if meeting else max(points, key=lambda p: p.recall)
    return TuningResult(
        k=k,
        target_recall=float(target_recall),
        num_candidates=num_candidates,
        num_queries=len(queries),
        batch_size=batch_size,
        points=tuple(points),
        frontier=pareto_frontier(tuple(points)),
        chosen=chosen,
        target_met=bool(meeting),
    )


def check_report_directory(directory: Union[str, Path]) -> Path:
    """``directory`` as a ``Path`` if a report can be written there (it may not exist yet).

    Raises:
      NotADirectoryError: if ``directory`` is a file.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; the tuning report needs a directory there.")
    return directory


def load_index_config(path: Union[str, Path]) -> IndexConfig:
    """The :class:`~tfrec_towers.index.IndexConfig` in a JSON file: a tuning report's choice, or a config.

    Args:
      path: a ``tuning.json`` written by :func:`save_tuning_report` (its ``chosen`` configuration
        is read) or a JSON object of :class:`~tfrec_towers.index.IndexConfig` fields
        (``IndexConfig.to_dict()``).

    Returns:
      The config (validated by ``IndexConfig``).

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the file is not JSON, or not a report or config (the message names the fields).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The index config file {path} does not exist.")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"The index config file {path} is not JSON: {e}") from e
    fields = content.get("chosen", {}).get("config") if isinstance(content, dict) and "chosen" in content else content
    known = {f.name for f in dataclasses.fields(IndexConfig)}
    if not isinstance(fields, dict) or not set(fields) <= known or "kind" not in fields:
        received = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
        raise ValueError(
            f"{path} must be a tuning report (tuning.json) or a JSON object with `kind` and other IndexConfig "
            f"fields {sorted(known)}. Received: {received}"
        )
    return IndexConfig(**fields)


def save_tuning_report(result: TuningResult, directory: Union[str, Path]) -> Dict[str, Path]:
    """Writes ``tuning.json`` (:meth:`TuningResult.to_dict`) and ``tuning.png`` (recall vs QPS).

    The plot shows every measured configuration, the frontier as a line, the target recall as a
    dashed line and the chosen configuration circled; throughput is on a log scale.

    Args:
      result: a :func:`tune_index` result.
      directory: created if missing.

    Returns:
      ``{"json": path, "plot": path}``.

    Raises:
      NotADirectoryError: if ``directory`` is a file.
      MissingExtraError: matplotlib (the ``report`` extra) is not installed; nothing is written.
    """
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as e:
        raise missing_extra("report", "The tuning report's recall/QPS plot", e) from e
    directory = check_report_directory(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, plot_path = directory / REPORT_JSON, directory / REPORT_PLOT
    json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")

    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    axes.scatter(
        [p.queries_per_second for p in result.points],
        [p.recall for p in result.points],
        s=14,
        color="0.6",
        label="configurations",
    )
    axes.plot(
        [p.queries_per_second for p in result.frontier],
        [p.recall for p in result.frontier],
        marker="o",
        color="tab:blue",
        label="frontier",
    )
    axes.axhline(result.target_recall, linestyle="--", color="tab:red", label=f"target {result.target_recall}")
    axes.scatter(
        [result.chosen.queries_per_second],
        [result.chosen.recall],
        s=160,
        facecolors="none",
        edgecolors="tab:green",
        linewidths=2,
        label=f"chosen: {result.chosen.label}",
        zorder=3,
    )
    axes.set_xscale("log")
    axes.set_xlabel(f"queries per second (batches of {result.batch_size})")
    axes.set_ylabel(f"recall@{result.k}")
    axes.set_title(f"Index tuning: {result.num_candidates:,} candidates, {result.num_queries} queries")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    figure.savefig(plot_path, format="png", dpi=100)
    return {"json": json_path, "plot": plot_path}

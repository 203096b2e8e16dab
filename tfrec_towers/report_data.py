"""What a run report shows, computed from a run directory: curves, buckets, distributions.

:func:`collect_run` reads a run written by :func:`pipelines.train.train`, reloads its model and
data, and recomputes from the held-out target ranks (DESIGN §4)

    HR@K   = mean_u 1[rank_u < K]                         for K = 1 … 100
    NDCG@K = mean_u 1[rank_u < K] / log2(rank_u + 2)

overall and by item-popularity bucket (the training count of each query's target item: the
sampling bias that logQ correction, Yi et al. RecSys 2019, removes shows up as low recall on rare
items), plus the embedding norms and the score distributions. Sampling is seeded by the run's
``training.seed``, so a report is reproducible. :func:`compare_table` reads only ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from pipelines.train import (
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    VERIFICATION_FILE,
    RunError,
    load_data,
    load_run,
)
from tfrec_towers.config import config_to_dict
from tfrec_towers.evaluation import METRIC_KEYS, metrics_from_ranks, target_ranks
from tfrec_towers.towers import compute_embeddings
from tfrec_towers.tuning import REPORT_JSON as TUNING_FILE

MAX_K = 100
BUCKET_KS: Tuple[int, ...] = (10, 50)
NUM_POPULARITY_BUCKETS = 5
NUM_SCORE_QUERIES = 1024
NUM_SCORE_CANDIDATES = 1024

PathLike = Union[str, Path]


@dataclasses.dataclass(frozen=True)
class PopularityBucket:
    """Eval queries whose target item was trained on ``low`` ≤ count < ``high`` times.

    Attributes:
      low, high: the half-open range of training counts.
      num_items: catalogue items with a count in the range.
      num_queries: eval queries whose target falls in the range.
      hit_rate: ``{K: HR@K}`` over those queries, for K in :data:`BUCKET_KS`.
    """

    low: int
    high: int
    num_items: int
    num_queries: int
    hit_rate: Dict[int, float]

    @property
    def label(self) -> str:
        """``"0"``, ``"7"`` or ``"4–15"`` (inclusive counts)."""
        return str(self.low) if self.high - self.low == 1 else f"{self.low}–{self.high - 1}"


@dataclasses.dataclass
class RunReportData:
    """Everything a report draws for one run.

    Attributes:
      name: the run directory's name (the label in plots and tables).
      run_dir: the run directory.
      config: the resolved configuration (``config.json``, as a nested dict).
      data_name: the data set's name, e.g. ``"ml-100k"``.
      num_candidates: catalogue size.
      history: per-epoch Keras history (``history.json``: ``loss`` and the other logged values).
      metrics: ``metrics.json`` (DESIGN §4 keys).
      ranks: ``int64 [U]`` 0-based rank of each eval query's target among its unseen catalogue.
      target_counts: ``int64 [U]`` training interactions of each eval query's target item.
      hit_rate_curve, ndcg_curve: ``float [MAX_K]``; entry ``K - 1`` is HR@K / NDCG@K.
      popularity: the popularity buckets, by increasing count.
      query_norms: ``float [U]`` L2 norms of the eval query embeddings.
      candidate_norms: ``float [N]`` L2 norms of the catalogue embeddings.
      target_scores: ``float [S]`` ⟨q, v_target⟩ of a seeded sample of S eval queries.
      catalogue_scores: ``float [S * C]`` ⟨q, v⟩ of the same queries with a seeded sample of C items.
      tuning: the index tuning report (``TuningResult.to_dict()``), if one was given or found.
      verification: ``verification.json`` (the fresh-process check of the export), if present.
    """

    name: str
    run_dir: Path
    config: Dict[str, Any]
    data_name: str
    num_candidates: int
    history: Dict[str, List[float]]
    metrics: Dict[str, float]
    ranks: np.ndarray
    target_counts: np.ndarray
    hit_rate_curve: np.ndarray
    ndcg_curve: np.ndarray
    popularity: Tuple[PopularityBucket, ...]
    query_norms: np.ndarray
    candidate_norms: np.ndarray
    target_scores: np.ndarray
    catalogue_scores: np.ndarray
    tuning: Optional[Dict[str, Any]]
    verification: Optional[Dict[str, Any]]


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise RunError(f"{path.parent} is not a complete tfrec-towers run: {path.name} ({what}) is missing.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} ({what}) is not valid JSON: {e}") from e


def _find_tuning(run_dir: Path, tuning: Optional[PathLike]) -> Optional[Dict[str, Any]]:
    """The tuning report at ``tuning`` (a ``tuning.json`` or its directory), else one in the run directory."""
    if tuning is not None:
        path = Path(tuning)
        path = path / TUNING_FILE if path.is_dir() else path
        return _read_json(path, "index tuning report")
    found = sorted([*run_dir.glob(TUNING_FILE), *run_dir.glob(f"*/{TUNING_FILE}")])
    return _read_json(found[0], "index tuning report") if found else None


def popularity_edges(item_counts: np.ndarray, num_buckets: int = NUM_POPULARITY_BUCKETS) -> np.ndarray:
    """Bucket boundaries: ``0, 1`` (items never trained on), then log-spaced up to the largest count.

    Args:
      item_counts: ``int [N]`` training interactions of every catalogue item.
      num_buckets: log-spaced buckets over counts ``1 … max`` (fewer when the counts are small).

    Returns:
      ``int64`` increasing boundaries ``e``; bucket ``i`` holds counts ``e[i] ≤ c < e[i + 1]``.
    """
    top = int(np.max(item_counts, initial=0)) + 1
    logspaced = np.floor(np.geomspace(1, top, num_buckets + 1)).astype(np.int64) if top > 1 else np.array([1])
    return np.unique(np.concatenate([[0, 1], logspaced, [top]]))


def popularity_buckets(
    ranks: np.ndarray, target_counts: np.ndarray, item_counts: np.ndarray, ks: Sequence[int] = BUCKET_KS
) -> Tuple[PopularityBucket, ...]:
    """HR@K of the eval queries grouped by their target's training count (empty buckets left out).

    Args:
      ranks: ``int [U]`` target ranks.
      target_counts: ``int [U]`` training count of each query's target.
      item_counts: ``int [N]`` training count of every catalogue item (sets the boundaries).
      ks: the cut-offs K.
    """
    edges = popularity_edges(item_counts)
    buckets = []
    for low, high in zip(edges[:-1], edges[1:]):
        in_bucket = (target_counts >= low) & (target_counts < high)
        if not in_bucket.any():
            continue
        buckets.append(
            PopularityBucket(
                low=int(low),
                high=int(high),
                num_items=int(np.sum((item_counts >= low) & (item_counts < high))),
                num_queries=int(in_bucket.sum()),
                hit_rate={k: float(np.mean(ranks[in_bucket] < k)) for k in ks},
            )
        )
    return tuple(buckets)


def _score_sample(
    queries: np.ndarray, candidates: np.ndarray, target_rows: np.ndarray, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Target scores and catalogue scores of a seeded sample of queries and items."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(queries), size=min(NUM_SCORE_QUERIES, len(queries)), replace=False))
    items = np.sort(rng.choice(len(candidates), size=min(NUM_SCORE_CANDIDATES, len(candidates)), replace=False))
    target = np.einsum("ud,ud->u", queries[picked], candidates[target_rows[picked]])
    return target, (queries[picked] @ candidates[items].T).ravel()


def collect_run(run_dir: PathLike, *, tuning: Optional[PathLike] = None) -> RunReportData:
    """Reads a run directory, reloads its model and data, and computes what the report draws.

    Args:
      run_dir: a directory written by :func:`pipelines.train.train`.
      tuning: a ``tuning.json`` of ``tune-index`` (or the directory holding it); by default the
        run directory and its sub-directories are searched for one.

    Returns:
      The run's :class:`RunReportData`.

    Raises:
      RunError: the directory is not a complete run (names the missing file).
    """
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / METRICS_FILE, "evaluation metrics")
    history = _read_json(run_dir / HISTORY_FILE, "training history")
    verification_path = run_dir / VERIFICATION_FILE
    verification = _read_json(verification_path, "export verification") if verification_path.is_file() else None
    config, _, model = load_run(run_dir)
    data = load_data(config)

    candidate_ids = data.candidates[data.candidate_id]
    queries = compute_embeddings(model.query_tower, data.eval_queries)
    candidates = compute_embeddings(model.candidate_tower, data.candidates)
    ranks = target_ranks(queries, candidates, candidate_ids, data.eval_targets, data.seen_indptr, data.seen_ids)

    trained_ids, trained_counts = np.unique(data.train[data.candidate_id], return_counts=True)
    position = np.clip(np.searchsorted(trained_ids, candidate_ids), 0, max(len(trained_ids) - 1, 0))
    item_counts = np.where(trained_ids[position] == candidate_ids, trained_counts[position], 0)
    order = np.argsort(candidate_ids, kind="stable")
    target_rows = order[np.searchsorted(candidate_ids[order], data.eval_targets)]
    target_counts = item_counts[target_rows]

    curves = metrics_from_ranks(ranks, ks=range(1, MAX_K + 1))
    target_scores, catalogue_scores = _score_sample(queries, candidates, target_rows, config.training.seed)
    return RunReportData(
        name=run_dir.resolve().name,
        run_dir=run_dir,
        config=config_to_dict(config),
        data_name=data.name,
        num_candidates=len(candidate_ids),
        history={key: [float(v) for v in values] for key, values in history.items()},
        metrics={key: float(metrics[key]) for key in METRIC_KEYS if key in metrics},
        ranks=ranks,
        target_counts=target_counts.astype(np.int64),
        hit_rate_curve=np.array([curves[f"HR@{k}"] for k in range(1, MAX_K + 1)]),
        ndcg_curve=np.array([curves[f"NDCG@{k}"] for k in range(1, MAX_K + 1)]),
        popularity=popularity_buckets(ranks, target_counts, item_counts),
        query_norms=np.linalg.norm(queries, axis=1),
        candidate_norms=np.linalg.norm(candidates, axis=1),
        target_scores=target_scores,
        catalogue_scores=catalogue_scores,
        tuning=_find_tuning(run_dir, tuning),
        verification=verification,
    )


def loss_summary(config: Dict[str, Any]) -> str:
    """The loss settings of a resolved configuration in a few words, e.g. ``"softmax, logQ streaming, bank 4096"``."""
    loss = config.get("loss", {})
    parts = [str(loss.get("mode", "?")), f"logQ {loss.get('logq', '?')}"]
    if loss.get("memory_bank_size"):
        parts.append(f"bank {loss['memory_bank_size']}")
    if loss.get("mixed_negatives"):
        parts.append(f"mixed {loss['mixed_negatives']}")
    if loss.get("adaptive", {}).get("enabled"):
        parts.append("adaptive")
    return ", ".join(parts)


def compare_table(run_dirs: Sequence[PathLike]) -> str:
    """A Markdown table of ``metrics.json`` across runs, one row per run (for the terminal).

    Columns: the run directory, its loss settings (:func:`loss_summary`), the DESIGN §4 metrics
    to 4 decimals, and the verified export's recall@k when ``verification.json`` exists.

    Raises:
      RunError: a directory has no ``metrics.json`` or ``config.json``.
    """
    header = ["run", "loss", *METRIC_KEYS, "export recall@k"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run_dir in map(Path, run_dirs):
        metrics = _read_json(run_dir / METRICS_FILE, "evaluation metrics")
        config = _read_json(run_dir / CONFIG_FILE, "resolved configuration")
        verification_path = run_dir / VERIFICATION_FILE
        recall = "–"
        if verification_path.is_file():
            checked = _read_json(verification_path, "export verification").get("metrics", {})
            if "recall_at_k" in checked:
                recall = f"{checked['recall_at_k']:.4f} (k={checked.get('k', '?')})"
        cells = [
            str(run_dir),
            loss_summary(config),
            *(f"{metrics[key]:.4f}" if key in metrics else "–" for key in METRIC_KEYS),
            recall,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

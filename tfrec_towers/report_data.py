"""What a run report shows, computed from a run directory: curves, buckets, baselines, examples.

:func:`collect_run` reads a run written by :func:`tfrec_pipelines.train.train` (of any data set: the
user's own tables, MovieLens, synthetic), reloads its model and its data
(:func:`tfrec_pipelines.sources.prepare_data`), and recomputes from the held-out target ranks

    HR@K   = mean_u 1[rank_u < K]                         for K = 1 … 100
    NDCG@K = mean_u 1[rank_u < K] / log2(rank_u + 2)

overall and by item-popularity bucket (the training count of each query's target item: the
sampling bias that logQ correction, Yi et al. RecSys 2019, removes shows up as low recall on rare
items), plus the embedding norms and the score distributions. Beside the model it evaluates the
most-popular-items baseline the same way (every query scores item c by its training count n_c,
the user's training items filtered out, ties counted against the target), the catalogue coverage
of both top-10 lists (the share of catalogue items in at least one evaluated user's top 10), and
it picks a few users whose recent history it shows beside their top 10. Sampling is seeded by the
run's ``training.seed``, so a report is reproducible. :func:`compare_table` reads only ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tfrec_pipelines.data import RetrievalData
from tfrec_pipelines.declarations import Declarations
from tfrec_pipelines.sources import prepare_data
from tfrec_pipelines.train import (
    COLLAPSE_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    VERIFICATION_FILE,
    RunError,
    load_run,
)
from tfrec_towers.collapse import MEAN_RESULTANT_LENGTH, SCORE_SPREAD
from tfrec_towers.config import config_to_dict
from tfrec_towers.evaluation import METRIC_KEYS, metrics_from_ranks, target_ranks
from tfrec_towers.towers import compute_embeddings
from tfrec_towers.tuning import REPORT_JSON as TUNING_FILE

MAX_K = 100
BUCKET_KS: Tuple[int, ...] = (10, 50)
NUM_POPULARITY_BUCKETS = 5
NUM_SCORE_QUERIES = 1024
NUM_SCORE_CANDIDATES = 1024
COVERAGE_K = 10  # the list length of the coverage figures and of the example users' recommendations
NUM_EXAMPLE_USERS = 5
NUM_EXAMPLE_HISTORY = 10  # most recent history items shown per example user

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


@dataclasses.dataclass(frozen=True)
class ExampleItem:
    """A catalogue item as the example users' table shows it.

    Attributes:
      id: the item id, as in the data (a string or an integer).
      attributes: ``{column: value}`` of the item's candidate feature columns (empty for an id
        missing from the catalogue).
    """

    id: Any
    attributes: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ExampleUser:
    """One evaluated user: recent history beside the model's top list.

    Attributes:
      user: the user id (as in the data), or ``"#u"`` (the eval query's position) when the query
        tower has no id feature.
      held_out: the user's held-out (last) item.
      history: up to :data:`NUM_EXAMPLE_HISTORY` training items, most recent first.
      recommended: the model's top :data:`COVERAGE_K` unseen items, best first.
    """

    user: Any
    held_out: ExampleItem
    history: Tuple[ExampleItem, ...]
    recommended: Tuple[ExampleItem, ...]


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
      metrics: ``metrics.json``.
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
      coverage: share of catalogue items in at least one eval query's top :data:`COVERAGE_K`.
      baseline_metrics: the most-popular-items baseline's HR@K / NDCG@K (the ``metrics`` keys).
      baseline_ranks: ``int64 [U]`` the target ranks of the baseline.
      baseline_hit_rate_curve, baseline_ndcg_curve: ``float [MAX_K]``, as for the model.
      baseline_popularity: the baseline's hit rates in the model's popularity buckets.
      baseline_coverage: the catalogue coverage of the baseline's top :data:`COVERAGE_K` lists.
      item_attributes: the candidate feature columns other than the id (the examples' attributes).
      examples: a seeded choice of :data:`NUM_EXAMPLE_USERS` eval queries with their top lists.
      collapse: ``collapse.json`` (whether the trained model collapsed, with the thresholds), if present.
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
    coverage: float
    baseline_metrics: Dict[str, float]
    baseline_ranks: np.ndarray
    baseline_hit_rate_curve: np.ndarray
    baseline_ndcg_curve: np.ndarray
    baseline_popularity: Tuple[PopularityBucket, ...]
    baseline_coverage: float
    item_attributes: Tuple[str, ...]
    examples: Tuple[ExampleUser, ...]
    collapse: Optional[Dict[str, Any]] = None

    @property
    def collapse_history(self) -> Dict[str, List[float]]:
        """The per-epoch collapse checks of ``history`` (``mean_resultant_length``, ``score_spread``);
        empty for a run trained without them."""
        return {key: self.history[key] for key in (MEAN_RESULTANT_LENGTH, SCORE_SPREAD) if key in self.history}

    @property
    def validation_history(self) -> Dict[str, List[float]]:
        """The per-epoch validation values of ``history`` (keys starting with ``val_``); empty without a
        validation split."""
        return {key: values for key, values in self.history.items() if key.startswith("val_")}


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


def rows_of(candidate_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Catalogue row of each of ``ids`` (``-1`` for an id not in the catalogue).

    Args:
      candidate_ids: ``[N]`` unique ids of the catalogue rows, in any order.
      ids: ``[M]`` ids to look up.

    Returns:
      ``int64 [M]`` rows of ``candidate_ids``.
    """
    candidate_ids, ids = np.asarray(candidate_ids), np.asarray(ids)
    if len(candidate_ids) == 0:
        return np.full(len(ids), -1, np.int64)
    order = np.argsort(candidate_ids, kind="stable")
    position = np.clip(np.searchsorted(candidate_ids[order], ids), 0, len(candidate_ids) - 1)
    return np.where(candidate_ids[order][position] == ids, order[position], -1).astype(np.int64)


def training_counts(train_ids: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
    """``int64 [N]`` training interactions of every catalogue item (0 for items never trained on)."""
    rows = rows_of(candidate_ids, train_ids)
    return np.bincount(rows[rows >= 0], minlength=len(candidate_ids)).astype(np.int64)


def popularity_ranks(
    item_counts: np.ndarray,
    candidate_ids: np.ndarray,
    targets: np.ndarray,
    seen_indptr: np.ndarray,
    seen_ids: np.ndarray,
) -> np.ndarray:
    """0-based target ranks of the most-popular-items baseline, evaluated like the model.

    Every query scores item ``c`` by its training count ``n_c`` (as the 1-d embeddings query = [1],
    item = [dense rank of n_c], exact in float32); the user's training items are filtered out and
    ties count against the target (:func:`~tfrec_towers.evaluation.target_ranks`).

    Args:
      item_counts: ``int [N]`` training count of every catalogue item.
      candidate_ids, targets, seen_indptr, seen_ids: as for :func:`~tfrec_towers.evaluation.target_ranks`.

    Returns:
      ``int64 [U]`` ranks.
    """
    _, dense_rank = np.unique(np.asarray(item_counts), return_inverse=True)
    return target_ranks(
        np.ones((len(targets), 1), np.float32),
        dense_rank.reshape(-1, 1).astype(np.float32),
        candidate_ids,
        targets,
        seen_indptr,
        seen_ids,
    )


def unseen_top_k(
    query_embeddings: np.ndarray,
    candidate_embeddings: np.ndarray,
    candidate_ids: np.ndarray,
    targets: np.ndarray,
    seen_indptr: np.ndarray,
    seen_ids: np.ndarray,
    k: int = COVERAGE_K,
    query_chunk: int = 1024,
    candidate_chunk: int = 16384,
) -> np.ndarray:
    """Each query's top ``k`` catalogue rows by ⟨q, v⟩, its training items other than its target filtered out.

    The filter is the evaluation's (:func:`~tfrec_towers.evaluation.target_ranks`), so the lists are
    the ones HR@K reads. Scored chunk by chunk (memory O(query_chunk × candidate_chunk)), keeping a
    running top ``k``; ties are broken by the lower catalogue row.

    Args:
      query_embeddings: ``[U, d]``; candidate_embeddings: ``[N, d]``.
      candidate_ids, targets, seen_indptr, seen_ids: as for :func:`~tfrec_towers.evaluation.target_ranks`.
      k: the list length.
      query_chunk, candidate_chunk: block sizes of the chunked scoring.

    Returns:
      ``int64 [U, min(k, N)]`` catalogue rows, best first; ``-1`` pads a query with fewer unseen items.
    """
    queries = np.asarray(query_embeddings, np.float32)
    candidates = np.asarray(candidate_embeddings, np.float32)
    num_queries, num_candidates = len(queries), len(candidates)
    k = min(k, num_candidates)
    target_rows = rows_of(candidate_ids, targets)
    seen_rows = rows_of(candidate_ids, seen_ids)
    seen_owner = np.repeat(np.arange(num_queries), np.diff(seen_indptr))
    keep = (seen_rows >= 0) & (seen_rows != target_rows[seen_owner])
    seen_rows, seen_owner = seen_rows[keep], seen_owner[keep]
    top = np.full((num_queries, k), -1, np.int64)
    for q0 in range(0, num_queries, query_chunk):
        q1 = min(q0 + query_chunk, num_queries)
        in_chunk = (seen_owner >= q0) & (seen_owner < q1)
        owners, rows = seen_owner[in_chunk] - q0, seen_rows[in_chunk]
        best_scores = np.full((q1 - q0, k), -np.inf, np.float32)
        best_rows = np.full((q1 - q0, k), -1, np.int64)
        for c0 in range(0, num_candidates, candidate_chunk):
            c1 = min(c0 + candidate_chunk, num_candidates)
            scores = queries[q0:q1] @ candidates[c0:c1].T
            local = (rows >= c0) & (rows < c1)
            scores[owners[local], rows[local] - c0] = -np.inf
            all_scores = np.concatenate([best_scores, scores], axis=1)
            all_rows = np.concatenate([best_rows, np.broadcast_to(np.arange(c0, c1), scores.shape)], axis=1)
            kth = np.partition(all_scores, -k, axis=1)[:, [-k]]
            query, column = np.nonzero(all_scores >= kth)  # the top k and everything tied with the k-th
            picked_rows, picked_scores = all_rows[query, column], all_scores[query, column]
            order = np.lexsort((np.where(picked_rows < 0, num_candidates, picked_rows), -picked_scores, query))
            first = np.r_[0, np.cumsum(np.bincount(query, minlength=q1 - q0))[:-1]]
            chosen = order[first[:, None] + np.arange(k)]
            best_scores, best_rows = picked_scores[chosen], picked_rows[chosen]
        top[q0:q1] = np.where(np.isfinite(best_scores), best_rows, -1)
    return top


def popularity_top_k(
    item_counts: np.ndarray,
    candidate_ids: np.ndarray,
    targets: np.ndarray,
    seen_indptr: np.ndarray,
    seen_ids: np.ndarray,
    k: int = COVERAGE_K,
) -> np.ndarray:
    """The most-popular-items baseline's top ``k`` unseen rows of each query (:func:`unseen_top_k`).

    Items rank by training count, ties by the lower catalogue row.

    Returns:
      ``int64 [U, min(k, N)]`` catalogue rows, best first (``-1`` pads).
    """
    order = np.lexsort((np.arange(len(item_counts)), -np.asarray(item_counts)))
    position = np.empty(len(order), np.float32)
    position[order] = np.arange(len(order), 0, -1)  # distinct scores: the most popular item scores N
    return unseen_top_k(
        np.ones((len(targets), 1), np.float32),
        position.reshape(-1, 1),
        candidate_ids,
        targets,
        seen_indptr,
        seen_ids,
        k,
    )


def catalogue_coverage(top_rows: np.ndarray, num_candidates: int) -> float:
    """Share of the ``num_candidates`` catalogue rows in at least one list of ``top_rows`` (``-1`` pads)."""
    found = np.unique(np.asarray(top_rows))
    return float(np.sum(found >= 0) / num_candidates) if num_candidates else 0.0


def _curves(ranks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """HR@K and NDCG@K for K = 1 … :data:`MAX_K` (entry ``K - 1``)."""
    values = metrics_from_ranks(ranks, ks=range(1, MAX_K + 1))
    return (
        np.array([values[f"HR@{k}"] for k in range(1, MAX_K + 1)]),
        np.array([values[f"NDCG@{k}"] for k in range(1, MAX_K + 1)]),
    )


def _score_sample(
    queries: np.ndarray, candidates: np.ndarray, target_rows: np.ndarray, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Target scores and catalogue scores of a seeded sample of queries and items."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(queries), size=min(NUM_SCORE_QUERIES, len(queries)), replace=False))
    items = np.sort(rng.choice(len(candidates), size=min(NUM_SCORE_CANDIDATES, len(candidates)), replace=False))
    target = np.einsum("ud,ud->u", queries[picked], candidates[target_rows[picked]])
    return target, (queries[picked] @ candidates[items].T).ravel()


def example_users(
    data: RetrievalData,
    declarations: Declarations,
    top_rows: np.ndarray,
    seed: int,
    count: int = NUM_EXAMPLE_USERS,
) -> Tuple[ExampleUser, ...]:
    """A seeded choice of ``count`` eval queries with their recent history and top list, items with attributes.

    Args:
      data: the run's split (columns under the features' names).
      declarations: its feature declarations (the query id, the history and the candidate attributes).
      top_rows: ``int [U, k]`` each eval query's top catalogue rows (``-1`` pads).
      seed: the seed of the choice.
      count: how many users (all of them when there are fewer).

    Returns:
      The users in eval-query order.
    """
    candidate_ids = data.candidates[data.candidate_id]
    attributes = _item_attributes(declarations)
    user_column = next((d.name for d in declarations.query if d.kind == "id"), None)
    history_column = next((d.name for d in declarations.query if d.kind == "history"), None)

    def item(row: int, item_id: Any) -> ExampleItem:
        values = {} if row < 0 else {name: data.candidates[name][row] for name in attributes}
        return ExampleItem(item_id.item() if isinstance(item_id, np.generic) else item_id, values)

    def items(ids: np.ndarray) -> Tuple[ExampleItem, ...]:
        return tuple(item(row, item_id) for row, item_id in zip(rows_of(candidate_ids, ids), ids))

    picked = np.random.default_rng(seed).choice(
        len(data.eval_targets), size=min(count, len(data.eval_targets)), replace=False
    )
    users = []
    for u in np.sort(picked):
        history = np.asarray(data.eval_queries[history_column][u]) if history_column else np.zeros(0)
        history = history[history != (0 if history.dtype.kind in "iu" else "")][::-1][:NUM_EXAMPLE_HISTORY]
        user = data.eval_queries[user_column][u] if user_column else f"#{u}"
        recommended = top_rows[u][top_rows[u] >= 0]
        users.append(
            ExampleUser(
                user=user.item() if isinstance(user, np.generic) else user,
                held_out=items(data.eval_targets[u : u + 1])[0],
                history=items(history),
                recommended=items(candidate_ids[recommended]),
            )
        )
    return tuple(users)


def _item_attributes(declarations: Declarations) -> Tuple[str, ...]:
    return tuple(d.name for d in declarations.candidate if d.kind != "id")


def collect_run(run_dir: PathLike, *, tuning: Optional[PathLike] = None) -> RunReportData:
    """Reads a run directory, reloads its model and data, and computes what the report draws.

    Args:
      run_dir: a directory written by :func:`tfrec_pipelines.train.train`.
      tuning: a ``tuning.json`` of ``tune-index`` (or the directory holding it); by default the
        run directory and its sub-directories are searched for one.

    Returns:
      The run's :class:`RunReportData`.

    Raises:
      RunError: the directory is not a complete run (names the missing file).
      FileNotFoundError, DataError: the run's data can no longer be read (the message names the table).
    """
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / METRICS_FILE, "evaluation metrics")
    history = _read_json(run_dir / HISTORY_FILE, "training history")
    verification_path = run_dir / VERIFICATION_FILE
    verification = _read_json(verification_path, "export verification") if verification_path.is_file() else None
    collapse_path = run_dir / COLLAPSE_FILE
    collapse = _read_json(collapse_path, "collapse checks") if collapse_path.is_file() else None
    config, _, model = load_run(run_dir)
    prepared = prepare_data(config)
    data = prepared.data

    candidate_ids = data.candidates[data.candidate_id]
    split = (candidate_ids, data.eval_targets, data.seen_indptr, data.seen_ids)
    queries = compute_embeddings(model.query_tower, data.eval_queries)
    candidates = compute_embeddings(model.candidate_tower, data.candidates)
    ranks = target_ranks(queries, candidates, *split)
    top_rows = unseen_top_k(queries, candidates, *split)

    item_counts = training_counts(data.train[data.candidate_id], candidate_ids)
    target_rows = rows_of(candidate_ids, data.eval_targets)
    target_counts = item_counts[target_rows]
    baseline_ranks = popularity_ranks(item_counts, *split)

    hit_rate_curve, ndcg_curve = _curves(ranks)
    baseline_hit_rate_curve, baseline_ndcg_curve = _curves(baseline_ranks)
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
        hit_rate_curve=hit_rate_curve,
        ndcg_curve=ndcg_curve,
        popularity=popularity_buckets(ranks, target_counts, item_counts),
        query_norms=np.linalg.norm(queries, axis=1),
        candidate_norms=np.linalg.norm(candidates, axis=1),
        target_scores=target_scores,
        catalogue_scores=catalogue_scores,
        tuning=_find_tuning(run_dir, tuning),
        verification=verification,
        coverage=catalogue_coverage(top_rows, len(candidate_ids)),
        baseline_metrics=metrics_from_ranks(baseline_ranks),
        baseline_ranks=baseline_ranks,
        baseline_hit_rate_curve=baseline_hit_rate_curve,
        baseline_ndcg_curve=baseline_ndcg_curve,
        baseline_popularity=popularity_buckets(baseline_ranks, target_counts, item_counts),
        baseline_coverage=catalogue_coverage(popularity_top_k(item_counts, *split), len(candidate_ids)),
        item_attributes=_item_attributes(prepared.declarations),
        examples=example_users(data, prepared.declarations, top_rows, config.training.seed),
        collapse=collapse,
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

    Columns: the run directory, its loss settings (:func:`loss_summary`), the metrics.json metrics
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

"""Exact full-catalogue retrieval metrics with seen-item filtering.

For each query u with held-out target t_u, every candidate c in the catalogue is scored
s(u, c) = ⟨q_u, v_c⟩; the query's training items (other than t_u) are removed, and

    rank_u = |{c ≠ t_u unseen : s(u, c) ≥ s(u, t_u)}|      (ties count against the target)
    HR@K   = mean_u 1[rank_u < K]                           (= Recall@K with one target)
    NDCG@K = mean_u 1[rank_u < K] / log2(rank_u + 2)

Ranks are counted chunk by chunk over the catalogue, so no [queries, catalogue] matrix is ever
held: memory is O(query_chunk × candidate_chunk) and a million-item catalogue fits. The evaluation
protocol these metrics belong to (which interactions are held out, which items are filtered) is in
docs/contracts.md.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from tfrec_towers.progress import progress

DEFAULT_KS: tuple[int, ...] = (10, 50, 100)
METRIC_KEYS: tuple[str, ...] = tuple(f"{m}@{k}" for m in ("HR", "NDCG") for k in DEFAULT_KS)


def target_ranks(
    query_embeddings: np.ndarray,
    candidate_embeddings: np.ndarray,
    candidate_ids: np.ndarray,
    targets: np.ndarray,
    seen_indptr: np.ndarray,
    seen_ids: np.ndarray,
    query_chunk: int = 1024,
    candidate_chunk: int = 65536,
) -> np.ndarray:
    """0-based rank of each query's target among the unseen catalogue.

    Args:
      query_embeddings: ``[U, d]``.
      candidate_embeddings: ``[N, d]`` — the whole catalogue.
      candidate_ids: ``[N]`` unique ids of the catalogue rows.
      targets: ``[U]`` the held-out id of each query (must be in ``candidate_ids``).
      seen_indptr, seen_ids: CSR lists of each query's training ids, filtered out.
      query_chunk, candidate_chunk: block sizes of the chunked scoring.

    Returns:
      ``int64 [U]`` ranks.

    Raises:
      ValueError: a target is not in the catalogue, or shapes disagree.
    """
    query_embeddings = np.asarray(query_embeddings, np.float32)
    candidate_embeddings = np.asarray(candidate_embeddings, np.float32)
    num_queries, num_candidates = len(query_embeddings), len(candidate_embeddings)
    if len(targets) != num_queries or len(seen_indptr) != num_queries + 1:
        raise ValueError(
            f"{num_queries} query embeddings but {len(targets)} targets and {len(seen_indptr) - 1} seen lists."
        )
    if len(candidate_ids) != num_candidates:
        raise ValueError(f"{num_candidates} candidate embeddings but {len(candidate_ids)} candidate ids.")

    order = np.argsort(candidate_ids, kind="stable")
    sorted_ids = np.asarray(candidate_ids)[order]

    def rows_of(ids: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, max(num_candidates - 1, 0))
        found = sorted_ids[pos] == ids if num_candidates else np.zeros(len(ids), bool)
        return np.where(found, order[pos], -1)

    target_rows = rows_of(np.asarray(targets))
    if (target_rows < 0).any():
        missing = np.asarray(targets)[target_rows < 0][:5].tolist()
        raise ValueError(f"Evaluation targets are not in the candidate catalogue, e.g. {missing}.")
    seen_rows = rows_of(np.asarray(seen_ids))
    seen_owner = np.repeat(np.arange(num_queries), np.diff(seen_indptr))
    keep = (seen_rows >= 0) & (seen_rows != target_rows[seen_owner])
    seen_rows, seen_owner = seen_rows[keep], seen_owner[keep]

    target_scores = np.einsum("ud,ud->u", query_embeddings, candidate_embeddings[target_rows])
    ranks = np.zeros(num_queries, np.int64)
    with progress(f"Ranking among {num_candidates:,} candidates", total=num_queries, unit="queries") as bar:
        for q0 in range(0, num_queries, query_chunk):
            q1 = min(q0 + query_chunk, num_queries)
            in_chunk = (seen_owner >= q0) & (seen_owner < q1)
            owners, rows = seen_owner[in_chunk] - q0, seen_rows[in_chunk]
            threshold = target_scores[q0:q1, None]
            for c0 in range(0, num_candidates, candidate_chunk):
                c1 = min(c0 + candidate_chunk, num_candidates)
                scores = query_embeddings[q0:q1] @ candidate_embeddings[c0:c1].T
                beats = scores >= threshold
                local = (rows >= c0) & (rows < c1)
                beats[owners[local], rows[local] - c0] = False
                targets_here = (target_rows[q0:q1] >= c0) & (target_rows[q0:q1] < c1)
                beats[np.nonzero(targets_here)[0], target_rows[q0:q1][targets_here] - c0] = False
                ranks[q0:q1] += beats.sum(axis=1)
            bar.update(q1 - q0)
    return ranks


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> Dict[str, float]:
    """HR@K and NDCG@K (the metrics.json keys) from 0-based target ranks."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        raise ValueError("No evaluation queries: the data set has no user with a held-out item.")
    metrics: Dict[str, float] = {}
    for k in ks:
        metrics[f"HR@{k}"] = float(np.mean(ranks < k))
    for k in ks:
        metrics[f"NDCG@{k}"] = float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))
    return metrics

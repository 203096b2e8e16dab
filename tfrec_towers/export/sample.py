"""The verification sample of an export: raw rows with the in-memory outputs and their exact top k.

``assets.extra/verification_sample.json`` holds up to :data:`NUM_SAMPLE_QUERIES` raw query rows
with their embeddings, the retrieved and the exact top-k ids over the whole corpus (computed
where the corpus embeddings are in memory), and some catalogue rows with their embeddings, so
that :func:`tfrec_towers.verify.verify_export` can check an export, and measure its recall, in a
fresh process without this package.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from tfrec_towers.export.signatures import Features, num_rows, take_feature_rows
from tfrec_towers.index import RetrievalIndex, exact_top_k, recall_at_k
from tfrec_towers.towers import check_embeddings

NUM_SAMPLE_QUERIES = 256
NUM_SCORED_QUERIES = 4
NUM_SAMPLE_CANDIDATES = 8
NUM_SAMPLE_RETRIEVED = 3
"""The verification sample holds up to ``NUM_SAMPLE_QUERIES`` query rows (recall, latency and
throughput are measured on them), the first ``NUM_SAMPLE_CANDIDATES`` catalogue rows and the
``NUM_SAMPLE_RETRIEVED`` best candidates of the first ``NUM_SCORED_QUERIES`` queries (so retrieved
scores can be checked against dot products of recorded embeddings)."""


def _decode(value: Union[bytes, str]) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def to_json(values: np.ndarray) -> list:
    """Nested lists; strings as text (non-UTF-8 bytes survive as surrogate escapes)."""
    if values.dtype == object:
        return np.vectorize(_decode, otypes=[object])(values).tolist()
    return values.tolist()


def features_to_json(features: Features) -> Dict[str, list]:
    """Every column as :func:`to_json` lists."""
    return {name: to_json(values) for name, values in features.items()}


def search_with_exact(
    index: RetrievalIndex,
    query_embeddings: np.ndarray,
    candidate_embeddings: np.ndarray,
    candidate_ids: np.ndarray,
    history: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the index retrieves for the sample queries, and the exact answer over the whole corpus.

    Args:
      index: the exported index.
      query_embeddings: ``float32 [Q, d]``.
      candidate_embeddings: ``float32 [N, d]``, the corpus the index was built over.
      candidate_ids: ``[N]`` their ids, as the index holds them.
      history: ``[Q, L]`` ids to leave out of each row's top k (as ``serving_default`` does with
        ``exclude_history``); None for the plain top k.

    Returns:
      ``(scores [Q, k], retrieved ids [Q, k], exact top-k ids [Q, k])``.
    """
    queries = tf.constant(query_embeddings)
    if history is None:
        scores, top_ids = (t.numpy() for t in index(queries))
        exact_ids = candidate_ids[exact_top_k(query_embeddings, candidate_embeddings, index.k)[1]]
        return scores, top_ids, exact_ids
    history_ids = tf.constant(history, index.id_dtype)
    scores, top_ids = (t.numpy() for t in index.search_excluding(queries, history_ids))
    exact_ids = _exact_ids_excluding(
        query_embeddings, candidate_embeddings, candidate_ids, index.k, history_ids.numpy(), index.padding_id
    )
    return scores, top_ids, exact_ids


def _exact_ids_excluding(
    query_embeddings: np.ndarray,
    candidate_embeddings: np.ndarray,
    candidate_ids: np.ndarray,
    k: int,
    history: np.ndarray,
    padding_id: object,
) -> np.ndarray:
    """The exact top-k ids of each row without its ``history`` ids (0 / ``b""`` entries excluding
    nothing), padded with ``padding_id`` when fewer than k remain: ``[num_queries, k]``."""
    width = min(k + history.shape[1], len(candidate_ids))
    ranked = candidate_ids[exact_top_k(query_embeddings, candidate_embeddings, width)[1]]
    rows = []
    for row_ids, row_history in zip(ranked.tolist(), history.tolist()):
        excluded = set(row_history) - {0, b""}
        kept = [i for i in row_ids if i not in excluded][:k]
        rows.append(kept + [padding_id] * (k - len(kept)))
    return np.array(rows, dtype=candidate_ids.dtype).reshape(len(rows), k)


def sampled_candidate_positions(candidate_ids: np.ndarray, top_ids: np.ndarray) -> np.ndarray:
    """Corpus rows of the sample: the first :data:`NUM_SAMPLE_CANDIDATES`, then the
    :data:`NUM_SAMPLE_RETRIEVED` best of the first :data:`NUM_SCORED_QUERIES` queries, each once."""
    retrieved = top_ids[:NUM_SCORED_QUERIES, :NUM_SAMPLE_RETRIEVED].ravel()
    retrieved_positions = np.flatnonzero(np.isin(candidate_ids, retrieved))
    first_positions = np.arange(min(NUM_SAMPLE_CANDIDATES, len(candidate_ids)))
    return np.array(list(dict.fromkeys(first_positions.tolist() + retrieved_positions.tolist())))


def verification_sample(
    queries: Features,
    query_embeddings: np.ndarray,
    candidates: Features,
    candidate_embeddings: np.ndarray,
    retrieved: Tuple[np.ndarray, np.ndarray, np.ndarray],
) -> Dict[str, Any]:
    """The JSON content of ``verification_sample.json``.

    Args:
      queries: the sample's raw query rows.
      query_embeddings: ``[Q, d]`` their in-memory embeddings.
      candidates: the sample's raw candidate rows.
      candidate_embeddings: ``[C, d]`` their embeddings.
      retrieved: :func:`search_with_exact`'s ``(scores, retrieved ids, exact ids)`` of the queries.
    """
    scores, top_ids, exact_ids = retrieved
    return {
        "queries": features_to_json(queries),
        "query_embeddings": query_embeddings.tolist(),
        "candidates": features_to_json(candidates),
        "candidate_embeddings": candidate_embeddings.tolist(),
        "top_k": {"candidate_ids": to_json(top_ids), "scores": scores.tolist()},
        "exact_top_k_candidate_ids": to_json(exact_ids),
        "index_recall": recall_at_k(top_ids, exact_ids),
    }


def model_verification_sample(
    query_model: tf.keras.Model,
    index: RetrievalIndex,
    sample_queries: Features,
    candidates: Features,
    candidate_embeddings: np.ndarray,
    candidate_ids: np.ndarray,
    exclude_history: Optional[str] = None,
) -> Dict[str, Any]:
    """The sample of an export made from the towers in memory and the whole embedded catalogue.

    Without each row's ``exclude_history`` ids when given, as ``serving_default`` returns them.

    Raises:
      ValueError: ``query_model`` does not return ``float32 [batch, dim]`` of the candidates' ``dim``.
    """
    query_embeddings = check_embeddings(
        "`query_model`", query_model(sample_queries, training=False), num_rows(sample_queries)
    )
    if query_embeddings.shape[1] != candidate_embeddings.shape[1]:
        raise ValueError(
            f"The towers disagree on the embedding dimension: `query_model` returns {query_embeddings.shape[1]}, "
            f"`candidate_model` returns {candidate_embeddings.shape[1]}."
        )
    history = None if exclude_history is None else sample_queries[exclude_history]
    retrieved = search_with_exact(index, query_embeddings, candidate_embeddings, candidate_ids, history)
    positions = sampled_candidate_positions(candidate_ids, retrieved[1])
    return verification_sample(
        sample_queries,
        query_embeddings,
        take_feature_rows(candidates, positions),
        candidate_embeddings[positions],
        retrieved,
    )

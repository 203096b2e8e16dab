"""Retrieval indexes: top-k candidates by dot product, exact or approximate, saved inside a SavedModel.

An index is chosen by name through :class:`IndexConfig` and built by :func:`build_index`:

* ``"brute-force"`` — exact: ``scores = Q · Cᵀ``, then ``tf.math.top_k``. Runs on stock TF Serving.
* ``"scann"`` — approximate: ScaNN's partition tree + anisotropic vector quantisation + exact
  re-ordering (Guo et al., "Accelerating Large-Scale Inference with Anisotropic Vector
  Quantization", ICML 2020). Built with ScaNN's TensorFlow ops, so the index is part of the
  SavedModel; loading it needs the ScaNN ops (``import scann``, or a TF Serving built with them).

Both return ``(scores [batch, k], candidate_ids [batch, k])``, best first, and hold the corpus in
non-trainable variables, so they save with ``tf.saved_model.save`` and serve without this package.
:meth:`RetrievalIndex.search_excluding` returns the best k whose ids are not in each row's list of
excluded ids (a user's history), still k per row.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from typing import Callable, Dict, Literal, Optional, Tuple, Union, cast

import numpy as np
import tensorflow as tf

from tfrec_towers.progress import progress
from tfrec_towers.unique_ids import repeated_ids

IndexKind = Literal["brute-force", "scann"]
INDEX_KINDS: Tuple[str, ...] = ("brute-force", "scann")


def index_kind(kind: str) -> IndexKind:
    """``kind`` checked to be an index kind (``"brute-force"`` or ``"scann"``).

    Raises:
      ValueError: if it is neither.
    """
    if kind in INDEX_KINDS:
        return cast(IndexKind, kind)
    raise ValueError(f"`kind` must be one of {list(INDEX_KINDS)}. Received: {kind!r}")


BRUTE_FORCE_MAX_CANDIDATES = 5_000
"""Corpora up to this size use exact search in :meth:`IndexConfig.for_corpus`: a [batch, N]
matmul is then cheaper than ScaNN's tree search and needs no custom serving binary."""

SCANN_MIN_CANDIDATES = 16
"""ScaNN's asymmetric hashing trains 16 centres per block, so it cannot index fewer candidates:
:meth:`IndexConfig.resolve` searches such corpora exactly (and the export records a warning)."""

PADDING_SCORE = float(np.finfo(np.float32).min)
"""Score of a padding slot, returned when ScaNN finds fewer than k candidates in the searched
leaves. The slot's id is -1 (int64 ids) or the empty string (string ids). The lowest float32,
not -inf, so that JSON clients (TF Serving REST) can read it."""


def _check_positive_int(field: str, value: Optional[int]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0):
        raise ValueError(f"`{field}` must be a positive int. Received: {value!r}")


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """Which index to build and how; ScaNN parameters left as ``None`` are derived from the corpus.

    Derived values for a corpus of ``N`` candidates (:meth:`resolve`), following ScaNN's guidance:

    * ``num_leaves = round(√N)`` partitions (≈ √N points each);
    * ``num_reordering_candidates = min(N, reordering_multiplier · k)`` re-scored exactly;
    * ``num_leaves_to_search = max(⌈num_leaves / 10⌉, ⌈4 · num_reordering_candidates · num_leaves / N⌉)``
      capped at ``num_leaves``: a tenth of the leaves, but enough leaves to hold about four times the
      re-ordering pool, so small corpora are not starved;
    * ScaNN's partition training gets ``min_partition_size = min(50, ⌊N / (2 · num_leaves)⌋)`` (at
      least 1): with ScaNN's default of 50, leaves averaging fewer than 50 points (``N < 2,500`` at
      √N leaves, or many leaves in a ``tune-index`` sweep) were trained into uneven partitions, and
      recall@10 varied from 0.84 to 0.98 between builds of the same 2,000-point corpus (1.0 with the
      smaller minimum).

    :meth:`for_corpus` picks exact search up to :data:`BRUTE_FORCE_MAX_CANDIDATES` candidates, and
    :meth:`resolve` degrades ScaNN to exact search below :data:`SCANN_MIN_CANDIDATES`.

    Attributes:
      kind: ``"brute-force"`` (exact) or ``"scann"`` (approximate).
      k: number of candidates returned per query; clamped to the corpus size.
      num_leaves: ScaNN partitions (k-means leaves).
      num_leaves_to_search: leaves scored per query.
      dimensions_per_block: ScaNN asymmetric-hashing block size (2 is ScaNN's recommendation).
      reordering_multiplier: the ``reordering_multiplier · k`` best approximate candidates are
        re-scored exactly, so the returned scores are exact dot products.
      anisotropic_quantization_threshold: ScaNN's η threshold for anisotropic quantisation
        (0.2 is ScaNN's recommendation for dot-product search).
      training_iterations: k-means iterations when building the partitions.
    """

    kind: IndexKind = "brute-force"
    k: int = 100
    num_leaves: Optional[int] = None
    num_leaves_to_search: Optional[int] = None
    dimensions_per_block: int = 2
    reordering_multiplier: int = 10
    anisotropic_quantization_threshold: float = 0.2
    training_iterations: int = 12

    def __post_init__(self) -> None:
        index_kind(self.kind)
        for field in (
            "k",
            "num_leaves",
            "num_leaves_to_search",
            "dimensions_per_block",
            "reordering_multiplier",
            "training_iterations",
        ):
            _check_positive_int(field, getattr(self, field))
        if (
            self.num_leaves is not None
            and self.num_leaves_to_search is not None
            and self.num_leaves_to_search > self.num_leaves
        ):
            raise ValueError(
                f"`num_leaves_to_search` must not exceed `num_leaves` ({self.num_leaves}). "
                f"Received: {self.num_leaves_to_search}"
            )
        eta = float(self.anisotropic_quantization_threshold)
        if not (math.isnan(eta) or 0.0 <= eta < 1.0):
            raise ValueError(
                "`anisotropic_quantization_threshold` must be in [0, 1) or NaN (isotropic). "
                f"Received: {self.anisotropic_quantization_threshold!r}"
            )

    @classmethod
    def for_corpus(cls, num_candidates: int, k: int = 100) -> "IndexConfig":
        """Exact search up to :data:`BRUTE_FORCE_MAX_CANDIDATES` candidates, ScaNN beyond.

        Args:
          num_candidates: corpus size ``N``.
          k: candidates returned per query.

        Returns:
          An unresolved config; ScaNN parameters are derived by :meth:`resolve` at build time.
        """
        _check_positive_int("num_candidates", num_candidates)
        kind: IndexKind = "brute-force" if num_candidates <= BRUTE_FORCE_MAX_CANDIDATES else "scann"
        return cls(kind=kind, k=k)

    @property
    def resolved_leaves(self) -> Tuple[int, int]:
        """``(num_leaves, num_leaves_to_search)`` of a ScaNN config :meth:`resolve` has filled in.

        Raises:
          ValueError: if either is unset (an unresolved or brute-force config).
        """
        if self.num_leaves is None or self.num_leaves_to_search is None:
            raise ValueError(
                "`num_leaves` and `num_leaves_to_search` are unset: build the ScaNN index from "
                "`IndexConfig.resolve(num_candidates)`."
            )
        return self.num_leaves, self.num_leaves_to_search

    @property
    def num_reordering_candidates(self) -> int:
        """Candidates re-scored exactly by ScaNN: ``reordering_multiplier · k``."""
        return self.reordering_multiplier * self.k

    def resolve(self, num_candidates: int) -> "IndexConfig":
        """The config with ``k`` clamped to ``N`` and every ScaNN parameter filled in.

        A ScaNN config over fewer than :data:`SCANN_MIN_CANDIDATES` candidates resolves to brute force.

        Args:
          num_candidates: corpus size ``N``.

        Returns:
          A config with no ``None`` left (brute force keeps its ScaNN fields as ``None``).

        Raises:
          ValueError: if ``num_leaves`` exceeds ``N``.
        """
        _check_positive_int("num_candidates", num_candidates)
        k = min(self.k, num_candidates)
        if self.num_leaves is not None and self.num_leaves > num_candidates and self.kind == "scann":
            raise ValueError(
                f"`num_leaves` must not exceed the number of candidates ({num_candidates}). Received: {self.num_leaves}"
            )
        if self.kind == "brute-force" or num_candidates < SCANN_MIN_CANDIDATES:
            return dataclasses.replace(self, kind="brute-force", k=k, num_leaves=None, num_leaves_to_search=None)
        num_leaves = self.num_leaves or max(1, round(math.sqrt(num_candidates)))
        reordering = min(num_candidates, self.reordering_multiplier * k)
        num_leaves_to_search = self.num_leaves_to_search or min(
            num_leaves,
            max(math.ceil(num_leaves / 10), math.ceil(4 * reordering * num_leaves / num_candidates)),
        )
        return dataclasses.replace(self, k=k, num_leaves=num_leaves, num_leaves_to_search=num_leaves_to_search)

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready form; ``IndexConfig(**config.to_dict())`` rebuilds it."""
        return dataclasses.asdict(self)


def check_candidate_ids(candidate_ids: np.ndarray) -> np.ndarray:
    """Checks that candidate ids are a vector of unique integers or strings.

    Args:
      candidate_ids: ``int or string [N]`` (``str`` or ``bytes`` values).

    Returns:
      The ids as ``int64 [N]`` or as a ``bytes`` object array ``[N]`` (strings UTF-8 encoded).

    Raises:
      ValueError: if the ids are not a vector, neither integers nor strings, or repeat (the
        message names up to five repeated ids).
    """
    ids = np.asarray(candidate_ids)
    if ids.ndim != 1:
        raise ValueError(f"`candidate_ids` must be a vector [num_candidates]. Received shape {ids.shape}")
    if np.issubdtype(ids.dtype, np.integer):
        ids = ids.astype(np.int64)
    elif ids.dtype.kind in "USO" and all(isinstance(i, (str, bytes, np.str_, np.bytes_)) for i in ids):
        ids = np.array([i.encode("utf-8") if isinstance(i, str) else bytes(i) for i in ids], dtype=object)
    else:
        raise ValueError(f"`candidate_ids` must be integers or strings. Received dtype {ids.dtype}")
    duplicates = repeated_ids(ids)
    if duplicates.size:
        raise ValueError(
            f"`candidate_ids` must be unique; {duplicates.size} ids repeat, e.g. {duplicates[:5].tolist()}."
        )
    return ids


def validate_corpus(candidate_embeddings: np.ndarray, candidate_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Checks a corpus before an index is built over it.

    Args:
      candidate_embeddings: ``float [N, dim]``.
      candidate_ids: ``int or string [N]``, unique, in the rows' order.

    Returns:
      ``(embeddings float32 [N, dim], ids int64 or bytes-object [N])``.

    Raises:
      ValueError: on an empty corpus, a length mismatch, repeated ids (naming some), non-finite
        embeddings or ids that are neither integers nor strings.
    """
    embeddings = np.asarray(candidate_embeddings)
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(
            "`candidate_embeddings` must be a float matrix [num_candidates, dim]. "
            f"Received: dtype {embeddings.dtype}, shape {embeddings.shape}"
        )
    if embeddings.shape[0] == 0:
        raise ValueError("`candidate_embeddings` is empty: an index needs at least one candidate.")
    if embeddings.shape[1] == 0:
        raise ValueError("`candidate_embeddings` has dimension 0.")
    embeddings = embeddings.astype(np.float32, copy=False)
    bad_rows = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if bad_rows.size:
        raise ValueError(
            f"`candidate_embeddings` has {bad_rows.size} rows with NaN or inf, e.g. rows {bad_rows[:5].tolist()}."
        )
    ids = np.asarray(candidate_ids)
    if ids.ndim == 1 and ids.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"`candidate_ids` has {ids.shape[0]} entries but `candidate_embeddings` has "
            f"{embeddings.shape[0]} rows; they must match one to one."
        )
    return embeddings, check_candidate_ids(ids)


def exact_top_k(
    query_embeddings: np.ndarray, candidate_embeddings: np.ndarray, k: int, chunk_size: int = 64
) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product in numpy, ``chunk_size`` queries at a time (the reference for recall).

    ``scores = Q · Cᵀ``; ties are broken by the lower candidate row, as ``tf.math.top_k`` does.

    Args:
      query_embeddings: ``float [num_queries, dim]``.
      candidate_embeddings: ``float [N, dim]``.
      k: neighbours per query, ``1 <= k <= N``.
      chunk_size: queries scored per matmul (bounds memory to ``chunk_size · N`` floats).

    Returns:
      ``(scores float32 [num_queries, k], rows int64 [num_queries, k])``, best first.

    Raises:
      ValueError: on mismatched dimensions or ``k`` outside ``[1, N]``.
    """
    queries = np.asarray(query_embeddings, np.float32)
    candidates = np.asarray(candidate_embeddings, np.float32)
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"Query embeddings {queries.shape} and candidate embeddings {candidates.shape} must be "
            "matrices of the same dimension."
        )
    _check_positive_int("k", k)
    if k > candidates.shape[0]:
        raise ValueError(f"`k` must not exceed the number of candidates ({candidates.shape[0]}). Received: {k}")
    all_scores, all_rows = [], []
    for start in range(0, queries.shape[0], chunk_size):
        scores = queries[start : start + chunk_size] @ candidates.T
        if k < scores.shape[1]:
            pool = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            # Widen the pool to every candidate tied with the k-th score, so ties resolve by row.
            kth = np.take_along_axis(scores, pool, axis=1).min(axis=1, keepdims=True)
            rows = [np.flatnonzero(row >= bound) for row, bound in zip(scores, kth)]
        else:
            rows = [np.arange(scores.shape[1]) for _ in scores]
        for row_scores, candidate_rows in zip(scores, rows):
            order = np.lexsort((candidate_rows, -row_scores[candidate_rows]))[:k]
            all_rows.append(candidate_rows[order])
            all_scores.append(row_scores[candidate_rows[order]])
    if not all_rows:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.stack(all_scores).astype(np.float32), np.stack(all_rows).astype(np.int64)


def recall_at_k(found_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of ``|found ∩ exact| / k``: recall@k of an approximate top-k.

    Args:
      found_ids: ``[num_queries, k]`` ids returned by an index (padding ids never match).
      exact_ids: ``[num_queries, k]`` ids of the exact top-k.

    Returns:
      The recall in ``[0, 1]``.
    """
    found_ids, exact_ids = np.asarray(found_ids), np.asarray(exact_ids)
    hits = [len(set(found) & set(exact)) for found, exact in zip(found_ids.tolist(), exact_ids.tolist())]
    return float(np.sum(hits) / exact_ids.size) if exact_ids.size else 0.0


class RetrievalIndex(tf.Module):
    """Base of the indexes: holds the candidate ids and maps query embeddings to the top k.

    Subclasses implement ``_search(query_embeddings [batch, dim], num_neighbors) -> (scores, ids)``
    (``[batch, num_neighbors]`` each, ``num_neighbors`` an int or a scalar int32 tensor, at most N) in
    TensorFlow.
    """

    def __init__(self, config: IndexConfig, candidate_ids: np.ndarray, embedding_dim: int, name: str) -> None:
        super().__init__(name=name)
        self.config = config
        self.k = config.k
        self.embedding_dim = embedding_dim
        self.num_candidates = int(candidate_ids.shape[0])
        self.candidate_ids = tf.Variable(candidate_ids, trainable=False, name="candidate_ids")
        self.padding_id: object = -1 if candidate_ids.dtype == np.int64 else b""

    def _trace(self) -> None:
        """Traces ``__call__`` for ``[None, dim]`` so it is saved for any batch size (subclasses call it last)."""
        spec = tf.TensorSpec([None, self.embedding_dim], tf.float32, name="query_embeddings")
        self.__call__.get_concrete_function(spec)

    @property
    def id_dtype(self) -> tf.DType:
        """``tf.int64`` or ``tf.string``."""
        return self.candidate_ids.dtype

    @tf.function(autograph=False)
    def __call__(self, query_embeddings: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Top-k candidates by dot product.

        Args:
          query_embeddings: ``float32 [batch, dim]``.

        Returns:
          ``(scores float32 [batch, k], candidate_ids [batch, k])``, best first.
        """
        return self._search(query_embeddings, self.k)

    def search_excluding(self, query_embeddings: tf.Tensor, excluded_ids: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Top-k candidates by dot product whose ids are not in the row's ``excluded_ids``.

        Retrieves ``min(k + L, N)`` candidates, drops those whose id is among the row's ``L``
        excluded ids, and keeps the best ``k`` that remain, so a history of ``L`` items still
        leaves ``k`` results. Excluded entries equal to ``0`` or ``""`` (a history's padding) exclude
        nothing.

        Args:
          query_embeddings: ``float32 [batch, dim]``.
          excluded_ids: ``[batch, L]`` ids in the candidate id dtype (``L`` may be 0).

        Returns:
          ``(scores float32 [batch, k], candidate_ids [batch, k])``, best first; when fewer than k
          candidates remain, the last slots hold :data:`PADDING_SCORE` and the padding id.
        """
        padding_id = tf.constant(self.padding_id, self.id_dtype)
        history_padding = tf.constant(0 if self.id_dtype == tf.int64 else b"", self.id_dtype)
        width = tf.shape(excluded_ids)[1]
        scores, ids = self._search(query_embeddings, tf.minimum(self.k + width, self.num_candidates))
        counted = tf.not_equal(excluded_ids, history_padding)[:, tf.newaxis, :]
        matches = tf.equal(ids[:, :, tf.newaxis], excluded_ids[:, tf.newaxis, :]) & counted
        dropped = tf.reduce_any(matches, axis=2)  # [batch, min(k + L, N)]
        # The kept positions first, in their (best-first) order, then the dropped ones.
        order = tf.argsort(tf.cast(dropped, tf.int32), axis=1, stable=True)[:, : self.k]
        kept = tf.logical_not(tf.gather(dropped, order, batch_dims=1))
        scores = tf.where(kept, tf.gather(scores, order, batch_dims=1), PADDING_SCORE)
        ids = tf.where(kept, tf.gather(ids, order, batch_dims=1), padding_id)
        scores.set_shape([None, self.k])
        ids.set_shape([None, self.k])
        return scores, ids

    def _search(self, query_embeddings: tf.Tensor, num_neighbors: Union[int, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
        """The subclass's search (brute force or ScaNN); this base class has none."""
        raise NotImplementedError(f"{type(self).__name__} must implement `_search`.")


class BruteForceIndex(RetrievalIndex):
    """Exact top-k: ``scores = Q · Cᵀ [batch, N]``, ``tf.math.top_k`` over candidates."""

    def __init__(self, candidate_embeddings: np.ndarray, candidate_ids: np.ndarray, config: IndexConfig) -> None:
        super().__init__(config, candidate_ids, candidate_embeddings.shape[1], name="brute_force_index")
        self.candidate_embeddings = tf.Variable(candidate_embeddings, trainable=False, name="candidate_embeddings")
        self._trace()

    def _search(self, query_embeddings: tf.Tensor, num_neighbors: Union[int, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
        scores = tf.linalg.matmul(query_embeddings, self.candidate_embeddings, transpose_b=True)
        top_scores, top_indices = tf.math.top_k(scores, k=num_neighbors)
        return top_scores, tf.gather(self.candidate_ids, top_indices)


def _scann_ops():
    """ScaNN's TensorFlow ops module (imported on first use: scann is needed only for ScaNN)."""
    try:
        from scann.scann_ops.py import scann_ops
    except ImportError as e:
        raise ImportError(
            "The `scann` index needs the scann package with its TensorFlow ops (`pip install scann`, "
            "built for this TensorFlow version). Use `IndexConfig(kind='brute-force')` otherwise."
        ) from e
    return scann_ops


class ScannIndex(RetrievalIndex):
    """Approximate top-k with ScaNN's TF ops: tree search, AH scoring, exact re-ordering.

    The searcher's state (config, partitions, codebooks, dataset) is a ``ScannState`` module of
    variables, so it is saved with the SavedModel; serving re-creates the searcher from it.
    """

    def __init__(self, candidate_embeddings: np.ndarray, candidate_ids: np.ndarray, config: IndexConfig) -> None:
        scann_ops = _scann_ops()
        dim = candidate_embeddings.shape[1]
        if config.dimensions_per_block > dim:
            raise ValueError(
                f"`dimensions_per_block` must not exceed the embedding dimension ({dim}). "
                f"Received: {config.dimensions_per_block}"
            )
        num_leaves, num_leaves_to_search = config.resolved_leaves
        super().__init__(config, candidate_ids, dim, name="scann_index")
        with progress(f"Building ScaNN index ({self.num_candidates:,} × {dim})"):
            searcher = (
                scann_ops.builder(candidate_embeddings, config.k, "dot_product")
                .tree(
                    num_leaves=num_leaves,
                    num_leaves_to_search=num_leaves_to_search,
                    training_iterations=config.training_iterations,
                    min_partition_size=min(50, max(1, self.num_candidates // (2 * num_leaves))),
                )
                .score_ah(
                    config.dimensions_per_block,
                    anisotropic_quantization_threshold=config.anisotropic_quantization_threshold,
                )
                .reorder(min(self.num_candidates, config.num_reordering_candidates))
                .build(shared_name=f"tfrec_towers_scann/{uuid.uuid4()}")
            )
        self.searcher_state = searcher.serialize_to_module()
        self._trace()

    def _search(self, query_embeddings: tf.Tensor, num_neighbors: Union[int, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
        return self.search(query_embeddings, num_neighbors=num_neighbors)

    def search(
        self,
        query_embeddings: tf.Tensor,
        num_leaves_to_search: Optional[int] = None,
        num_reordering_candidates: Optional[int] = None,
        num_neighbors: Union[int, tf.Tensor, None] = None,
    ) -> Tuple[tf.Tensor, tf.Tensor]:
        """Top-k with the built searcher, optionally overriding its search-time parameters.

        Overriding the leaves searched and the re-ordering pool needs no rebuild: the tree and the
        quantiser do not depend on them, which is how :func:`tfrec_towers.tuning.tune_index`
        sweeps them. Served requests use the config's values (``__call__``).

        Args:
          query_embeddings: ``float32 [batch, dim]``.
          num_leaves_to_search: leaves scored per query (default ``config.num_leaves_to_search``).
          num_reordering_candidates: candidates re-scored exactly (default ``reordering_multiplier · k``,
            at most N; at least ``num_neighbors``).
          num_neighbors: candidates returned per query, an int or a scalar int32 tensor, at most N
            (default k).

        Returns:
          ``(scores float32 [batch, num_neighbors], candidate_ids [batch, num_neighbors])``, best
          first; slots ScaNN could not fill hold :data:`PADDING_SCORE` and the padding id.
        """
        leaves = num_leaves_to_search or self.config.num_leaves_to_search
        reordering = num_reordering_candidates or self.config.num_reordering_candidates
        neighbors = self.k if num_neighbors is None else num_neighbors
        searcher = _scann_ops().searcher_from_module(self.searcher_state)
        result = searcher.search_batched_parallel(
            query_embeddings,
            final_num_neighbors=neighbors,
            pre_reorder_num_neighbors=tf.minimum(self.num_candidates, tf.maximum(reordering, neighbors)),
            leaves_to_search=leaves,
        )
        # ScaNN returns only the candidates it found (NaN distance, index 0 for empty slots).
        found = tf.math.logical_not(tf.math.is_nan(result.distances))
        padding_id = tf.constant(self.padding_id, self.id_dtype)
        scores = tf.where(found, result.distances, PADDING_SCORE)
        ids = tf.where(found, tf.gather(self.candidate_ids, result.indices), padding_id)
        missing = [[0, 0], [0, neighbors - tf.shape(scores)[1]]]
        scores = tf.pad(scores, missing, constant_values=PADDING_SCORE)
        ids = tf.pad(ids, missing, constant_values=padding_id)
        width = neighbors if isinstance(neighbors, int) else None
        scores.set_shape([None, width])
        ids.set_shape([None, width])
        return scores, ids


_INDEXES: Dict[str, Callable[[np.ndarray, np.ndarray, IndexConfig], RetrievalIndex]] = {
    "brute-force": BruteForceIndex,
    "scann": ScannIndex,
}


def build_index(config: IndexConfig, candidate_embeddings: np.ndarray, candidate_ids: np.ndarray) -> RetrievalIndex:
    """Builds the index named by ``config.kind`` over a corpus.

    Args:
      config: the index configuration; resolved here against the corpus size.
      candidate_embeddings: ``float [N, dim]`` candidate embeddings.
      candidate_ids: ``int or string [N]`` candidate ids, unique, in the rows' order.

    Returns:
      A ``tf.Module`` ``index`` with ``index(query_embeddings [batch, dim]) ->
      (scores [batch, k], candidate_ids [batch, k])`` best first, ``k = min(config.k, N)``;
      ``index.config`` is the resolved config.

    Raises:
      ValueError: on an empty corpus, a length mismatch, duplicate ids, non-finite embeddings or
        ids that are neither integers nor strings.
      ImportError: for ``kind="scann"`` without the scann package.
    """
    embeddings, ids = validate_corpus(candidate_embeddings, candidate_ids)
    resolved = config.resolve(embeddings.shape[0])
    return _INDEXES[resolved.kind](embeddings, ids, resolved)

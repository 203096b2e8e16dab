"""Exporting towers held in memory: embed the catalogue, build the index, write one version.

:func:`export_model` does it in one call for a :class:`~tfrec_towers.model.TwoTowerModel` of this
package's towers, the signatures derived from their feature declarations;
:func:`export_retrieval_model` takes any two towers with explicit input specs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import tensorflow as tf

from tfrec_towers.export.assembly import METADATA_KEYS, write_retrieval_export
from tfrec_towers.export.publish import target_directory
from tfrec_towers.export.sample import NUM_SAMPLE_QUERIES, model_verification_sample
from tfrec_towers.export.signatures import (
    as_features,
    check_history_feature,
    named_specs,
    placeholder_features,
    take_feature_rows,
)
from tfrec_towers.features import SequenceFeature, input_signature
from tfrec_towers.index import (
    SCANN_MIN_CANDIDATES,
    IndexConfig,
    RetrievalIndex,
    build_index,
    check_candidate_ids,
    index_kind,
)
from tfrec_towers.towers import compute_embeddings

logger = logging.getLogger(__name__)


def _check_candidate_column(candidates: Mapping[str, Any], candidate_id: str, spec: tf.TensorSpec) -> None:
    """The candidate id column has the spec's dtype (a clear message for the common mix-up), rows and no repeats."""
    if candidate_id not in candidates:
        return  # reported with the other missing columns by _as_features
    ids = np.asarray(candidates[candidate_id])
    is_string = ids.dtype.kind in "USO" and all(isinstance(v, (str, bytes)) for v in ids.flat)
    is_integer = ids.dtype.kind in "iu"
    if (spec.dtype == tf.int64 and not is_integer) or (spec.dtype == tf.string and not is_string):
        convert = "ids.astype(np.int64)" if spec.dtype == tf.int64 else "ids.astype(str)"
        other = "tf.string" if spec.dtype == tf.int64 else "tf.int64"
        raise ValueError(
            f"The candidate id column {candidate_id!r} has dtype {ids.dtype}, but the candidate input spec "
            f"declares it {spec.dtype.name}: convert the ids (`{convert}`) or declare the feature {other}."
        )
    if ids.ndim != 1 or ids.shape[0] == 0:
        raise ValueError(
            f"`candidates` is empty or malformed: the candidate id column {candidate_id!r} must hold one id per "
            f"candidate, at least one. Received shape {ids.shape}"
        )
    check_candidate_ids(ids)


def export_retrieval_model(
    query_model: tf.keras.Model,
    candidate_model: tf.keras.Model,
    query_input_spec: Mapping[str, tf.TensorSpec],
    candidate_input_spec: Mapping[str, tf.TensorSpec],
    candidates: Mapping[str, np.ndarray],
    candidate_id: str,
    export_base: Union[str, Path],
    model_name: str,
    index: IndexConfig,
    version: Optional[int] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    warmup_queries: Optional[Mapping[str, np.ndarray]] = None,
    *,
    embedding_batch_size: int = 4096,
    exclude_history: Optional[str] = None,
) -> Path:
    """Embeds the catalogue, builds the index and writes ``<export_base>/<model_name>/<version>/``.

    Args:
      query_model: raw query features (``query_input_spec``) → ``float32 [batch, dim]``.
      candidate_model: raw candidate features (``candidate_input_spec``) → ``float32 [batch, dim]``.
      query_input_spec: ``{feature: tf.TensorSpec([None, ...], dtype)}`` of the query signatures.
      candidate_input_spec: ``{feature: tf.TensorSpec}`` of ``candidate_embedding``.
      candidates: the catalogue's raw candidate features, one row per unique id, numpy columns
        (:func:`tfrec_pipelines.candidate_table.read_candidate_table` reads them from a DataFrame,
        Parquet, CSV or TFRecord file).
      candidate_id: the column of ``candidates`` whose values ``serving_default`` returns; its dtype
        must be the candidate input spec's (int64 or string).
      export_base: the directory TF Serving's ``base_path`` points above (created if missing).
      model_name: the model's directory name (TF Serving's model name).
      index: which index to build (:class:`~tfrec_towers.index.IndexConfig`); a ``k`` larger than the
        corpus is clamped to its size, and ScaNN over fewer than
        :data:`~tfrec_towers.index.SCANN_MIN_CANDIDATES` candidates becomes exact search, each with a
        warning logged and recorded in the metadata.
      version: the version number; ``None`` = one more than the highest existing version (1 if none),
        or, if a concurrent export publishes that one first, the next free version.
      metadata: JSON-serialisable entries merged into ``tfrec_towers_metadata.json``.
      warmup_queries: real raw query rows: the first ``NUM_WARMUP_ROWS`` make the warm-up requests,
        the first ``NUM_SAMPLE_QUERIES`` the verification sample on which the fresh-process check
        measures recall, latency and throughput (pass a few hundred held-out queries for a
        meaningful recall); ``None`` uses zero / empty-string placeholder rows.
      embedding_batch_size: catalogue rows per ``candidate_model`` call.
      exclude_history: a query feature ``[None, None]`` of candidate ids (the user's history,
        padded with 0 or ""): ``serving_default`` then retrieves ``k + L`` candidates for a history of
        width ``L`` and returns the best k whose ids are not in the row's history (still k results).
        None (the default) returns the plain top k.

    Returns:
      The path of the written version directory.

    Raises:
      ValueError: on inconsistent specs, columns, towers, ``metadata`` keys or ``version``; on an
        empty catalogue, repeated candidate ids (naming some) or a candidate id column whose dtype
        is not the spec's; on an ``exclude_history`` that is not a query id matrix of the candidate
        id dtype. Nothing is written then.
      NotADirectoryError: if ``export_base`` or ``<export_base>/<model_name>`` is a file.
      FileExistsError: if ``version`` already exists (as a directory or a file), or another
        export publishes it while this one is written.
    """
    query_spec = named_specs("query_input_spec", query_input_spec)
    candidate_spec = named_specs("candidate_input_spec", candidate_input_spec)
    if candidate_id not in candidate_spec:
        raise ValueError(
            f"`candidate_id` must be one of the candidate features {sorted(candidate_spec)}. Received: {candidate_id!r}"
        )
    if candidate_spec[candidate_id].dtype not in (tf.int64, tf.string) or candidate_spec[candidate_id].shape.rank != 1:
        raise ValueError(f"`candidate_id` {candidate_id!r} must be an int64 or string feature of shape [None].")
    if exclude_history is not None:
        check_history_feature(exclude_history, query_spec, candidate_spec[candidate_id])
    if isinstance(embedding_batch_size, bool) or not isinstance(embedding_batch_size, int) or embedding_batch_size <= 0:
        raise ValueError(f"`embedding_batch_size` must be a positive int. Received: {embedding_batch_size!r}")
    collisions = sorted(set(metadata or {}) & set(METADATA_KEYS))
    if collisions:
        raise ValueError(f"`metadata` must not override the export's own entries: {collisions}")
    try:
        json.dumps(dict(metadata or {}))
    except TypeError as e:
        raise ValueError(f"`metadata` must be JSON-serialisable: {e}") from e
    next_free = version is None
    model_dir, version = target_directory(export_base, model_name, version)
    _check_candidate_column(candidates, candidate_id, candidate_spec[candidate_id])
    catalogue = as_features("candidates", candidates, candidate_spec)
    sample_queries = take_feature_rows(
        as_features("warmup_queries", warmup_queries, query_spec)
        if warmup_queries is not None
        else placeholder_features(query_spec),
        slice(0, NUM_SAMPLE_QUERIES),
    )

    candidate_embeddings = compute_embeddings(candidate_model, catalogue, embedding_batch_size)
    retrieval_index = build_index(index, candidate_embeddings, catalogue[candidate_id])
    warnings = _index_warnings(index, retrieval_index)
    for warning in warnings:
        logger.warning("Export %s/%s: %s", model_name, version, warning)
    sample = model_verification_sample(
        query_model,
        retrieval_index,
        sample_queries,
        catalogue,
        candidate_embeddings,
        retrieval_index.candidate_ids.numpy(),
        exclude_history,
    )
    return write_retrieval_export(
        model_dir,
        version,
        model_name,
        query_model,
        candidate_model,
        retrieval_index,
        query_spec,
        candidate_spec,
        candidate_id,
        sample,
        (sample_queries, catalogue),
        warnings=warnings,
        exclude_history=exclude_history,
        metadata=metadata,
        next_free=next_free,
    )


def _index_warnings(requested: IndexConfig, index: RetrievalIndex) -> List[str]:
    """What the built index changed of the requested one: exact search for a small corpus, a clamped ``k``."""
    warnings = []
    if index.config.kind != requested.kind:
        warnings.append(
            f"index {requested.kind!r} needs at least {SCANN_MIN_CANDIDATES} candidates; the corpus has "
            f"{index.num_candidates}, so it is searched exactly ({index.config.kind!r})."
        )
    if index.k < requested.k:
        warnings.append(
            f"k={requested.k} exceeds the corpus size ({index.num_candidates} candidates); clamped to k={index.k}."
        )
    return warnings


def history_feature_name(query_tower: tf.keras.Model) -> str:
    """The history feature of a :class:`~tfrec_towers.towers.Tower`: ``history.feature``, an id matrix.

    Raises:
      ValueError: the tower has no ``[B, L]`` id sequence feature of that name.
    """
    name = getattr(getattr(query_tower, "history", None), "feature", None)
    feature = next((f for f in getattr(query_tower, "features", ()) if f.name == name), None)
    if not isinstance(feature, SequenceFeature) or not feature.is_matrix:
        raise ValueError(
            f"`exclude_history` needs a query tower with a history of candidate ids: a SequenceFeature id matrix "
            f"named {name!r} (the tower's `history.feature`). The query features are "
            f"{[f.name for f in getattr(query_tower, 'features', ())]}."
        )
    return feature.name


def _columns(argument: str, table: Mapping[str, Any], specs: Mapping[str, tf.TensorSpec]) -> Dict[str, Any]:
    """The columns of ``table`` (a dict of arrays or a DataFrame) that ``specs`` declares; others are dropped."""
    missing = sorted(name for name in specs if name not in table)
    if missing:
        raise ValueError(f"`{argument}` lacks the tower's features {missing}; it has {sorted(table)}.")
    return {name: np.asarray(table[name]) for name in specs}


def export_model(
    model: tf.keras.Model,
    candidates: Mapping[str, Any],
    export_base: Union[str, Path],
    *,
    index: Union[str, IndexConfig] = "brute-force",
    k: Optional[int] = None,
    model_name: str = "tfrec_towers",
    warmup_queries: Optional[Mapping[str, Any]] = None,
    exclude_history: bool = False,
) -> Path:
    """Exports a trained two-tower model in one call: ``<export_base>/<model_name>/<version>/``.

    The signatures' inputs are the towers' feature declarations
    (:func:`~tfrec_towers.features.input_signature`), ``serving_default`` returns values of the
    model's ``candidate_id``; the rest is :func:`export_retrieval_model`.

    Args:
      model: a :class:`~tfrec_towers.model.TwoTowerModel` of :class:`~tfrec_towers.towers.Tower` s
        (e.g. :func:`tfrec_towers.build.build_model`), trained.
      candidates: the catalogue to index, one row per candidate: a dict of numpy columns or a
        DataFrame holding at least the candidate tower's features (other columns are ignored).
      export_base: the directory TF Serving's ``base_path`` points above (created if missing).
      index: ``"brute-force"`` (exact, stock TF Serving), ``"scann"`` (ScaNN parameters derived from
        the corpus size) or a full :class:`~tfrec_towers.index.IndexConfig`.
      k: candidates per query, at least 1; default the ``IndexConfig``'s ``k``, 100 for a kind
        given by name.
      model_name: the model's directory name (TF Serving's model name).
      warmup_queries: real query rows with at least the query tower's features (other columns are
        ignored), for the warm-up requests and the verification sample; None uses placeholders.
      exclude_history: remove the query's history items (the query tower's ``history.feature``)
        from ``serving_default``'s top k, still k results.

    Returns:
      The path of the written version directory.

    Raises:
      TypeError: ``model`` has no towers with feature declarations (use :func:`export_retrieval_model`
        with explicit input specs for other towers).
      ValueError: an invalid ``index`` or ``k``, a missing column, or ``exclude_history`` without
        a history of the candidate ids' dtype; see also :func:`export_retrieval_model`.
      NotADirectoryError, FileExistsError: see :func:`export_retrieval_model`.
    """
    towers: List[Any] = [getattr(model, name, None) for name in ("query_tower", "candidate_tower")]
    if not all(hasattr(tower, "features") for tower in towers) or not hasattr(model, "candidate_id"):
        raise TypeError(
            "`model` must be a TwoTowerModel whose towers declare their features (tfrec_towers.build_model, "
            f"tfrec_towers.build_towers). Received: {type(model).__name__}; export other towers with "
            "`export_retrieval_model` and explicit input specs."
        )
    query_tower, candidate_tower = towers
    if isinstance(index, IndexConfig):
        index_config = index if k is None else dataclasses.replace(index, k=k)
    else:
        index_config = IndexConfig(kind=index_kind(index), k=100 if k is None else k)
    query_spec, candidate_spec = input_signature(query_tower.features), input_signature(candidate_tower.features)
    return export_retrieval_model(
        query_model=query_tower,
        candidate_model=candidate_tower,
        query_input_spec=query_spec,
        candidate_input_spec=candidate_spec,
        candidates=_columns("candidates", candidates, candidate_spec),
        candidate_id=model.candidate_id,
        export_base=export_base,
        model_name=model_name,
        index=index_config,
        warmup_queries=None if warmup_queries is None else _columns("warmup_queries", warmup_queries, query_spec),
        exclude_history=history_feature_name(query_tower) if exclude_history else None,
    )

"""Export trained towers plus a retrieval index as one SavedModel version for TF Serving.

``<export_base>/<model_name>/<version>/`` holds three signatures on raw features:

* ``serving_default``: query features → ``candidate_ids [B, k]``, ``scores [B, k]``, best first
  (optionally without the ids of the request's history, still k of them);
* ``query_embedding``: query features → ``embedding [B, d]``;
* ``candidate_embedding``: candidate features → ``embedding [B, d]``;

and, under ``assets.extra/``, TF Serving's warm-up requests, ``tfrec_towers_metadata.json`` (what was
exported and how, and any warning such as a clamped ``k``) and ``verification_sample.json`` (raw query
rows with the in-memory model's outputs and their exact top-k over the whole corpus, so
:func:`tfrec_towers.verify.verify_export` can check the export, and measure its recall, in a fresh
process without this package).

The version is written into a hidden sibling directory ``.tmp-<host>-<pid>-<token>`` (TF Serving
ignores names that are not integers) and renamed into place, so a polling server never sees half a
model. When another export publishes the same next version first, the export takes the next free
one. A temporary directory whose writer is gone (a ``kill -9`` of an export on this host) is removed,
with a warning, by the next export into the same model directory.

:func:`export` does it in one call for a :class:`~tfrec_towers.model.TwoTowerModel` of this package's
towers, the signatures derived from their feature declarations; the module itself is callable as
:func:`export` (``tfrec_towers.export(model, candidates, export_base)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

import tfrec_towers
from tfrec_towers import warmup
from tfrec_towers.features import SequenceFeature, input_signature
from tfrec_towers.index import (
    SCANN_MIN_CANDIDATES,
    IndexConfig,
    RetrievalIndex,
    build_index,
    check_candidate_ids,
    exact_top_k,
    recall_at_k,
)
from tfrec_towers.progress import progress

logger = logging.getLogger(__name__)

SIGNATURE_NAMES: Tuple[str, ...] = ("serving_default", "query_embedding", "candidate_embedding")
METADATA_FILENAME = "tfrec_towers_metadata.json"
VERIFICATION_SAMPLE_FILENAME = "verification_sample.json"
NUM_WARMUP_ROWS = 4
"""Rows per warm-up request (the first query rows, the first catalogue rows)."""
NUM_SAMPLE_QUERIES = 256
NUM_SCORED_QUERIES = 4
NUM_SAMPLE_CANDIDATES = 8
NUM_SAMPLE_RETRIEVED = 3
"""The verification sample holds up to ``NUM_SAMPLE_QUERIES`` query rows (recall, latency and
throughput are measured on them), the first ``NUM_SAMPLE_CANDIDATES`` catalogue rows and the
``NUM_SAMPLE_RETRIEVED`` best candidates of the first ``NUM_SCORED_QUERIES`` queries (so retrieved
scores can be checked against dot products of recorded embeddings)."""

METADATA_KEYS: Tuple[str, ...] = (
    "model_name",
    "version",
    "tfrec_towers_version",
    "signatures",
    "index",
    "k",
    "embedding_dim",
    "corpus_size",
    "candidate_id",
    "candidate_id_dtype",
    "query_input_spec",
    "candidate_input_spec",
    "exclude_history",
    "warnings",
)
"""The entries of ``tfrec_towers_metadata.json`` written by the export; user ``metadata`` adds others."""

Features = Dict[str, np.ndarray]


class RetrievalExport(tf.Module):
    """The exported object: both towers, the index and the three serving signatures.

    Args:
      query_model: raw query features → ``float32 [batch, dim]``.
      candidate_model: raw candidate features → ``float32 [batch, dim]``.
      index: a :class:`~tfrec_towers.index.RetrievalIndex` over the candidate embeddings.
      query_input_spec: ``{feature: tf.TensorSpec}`` of the query signature inputs.
      candidate_input_spec: ``{feature: tf.TensorSpec}`` of the candidate signature inputs.
      exclude_history: a query feature ``[B, L]`` of candidate ids whose ids ``serving_default``
        leaves out of each row's top k (:meth:`~tfrec_towers.index.RetrievalIndex.search_excluding`);
        None returns the plain top k.
    """

    def __init__(
        self,
        query_model: tf.keras.Model,
        candidate_model: tf.keras.Model,
        index: RetrievalIndex,
        query_input_spec: Mapping[str, tf.TensorSpec],
        candidate_input_spec: Mapping[str, tf.TensorSpec],
        exclude_history: Optional[str] = None,
    ) -> None:
        super().__init__(name="retrieval_export")
        self.query_model = query_model
        self.candidate_model = candidate_model
        self.index = index
        self.exclude_history = exclude_history
        self.serving_default = tf.function(self._retrieve, input_signature=[dict(query_input_spec)])
        self.query_embedding = tf.function(self._embed_queries, input_signature=[dict(query_input_spec)])
        self.candidate_embedding = tf.function(self._embed_candidates, input_signature=[dict(candidate_input_spec)])

    def _retrieve(self, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        query_embeddings = self.query_model(features, training=False)
        if self.exclude_history is None:
            scores, candidate_ids = self.index(query_embeddings)
        else:
            scores, candidate_ids = self.index.search_excluding(query_embeddings, features[self.exclude_history])
        return {"candidate_ids": candidate_ids, "scores": scores}

    def _embed_queries(self, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return {"embedding": self.query_model(features, training=False)}

    def _embed_candidates(self, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return {"embedding": self.candidate_model(features, training=False)}

    def signatures(self) -> Dict[str, Any]:
        """``{signature name: concrete function}`` for ``tf.saved_model.save``."""
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURE_NAMES}


def _named_specs(argument: str, specs: Mapping[str, tf.TensorSpec]) -> Dict[str, tf.TensorSpec]:
    """Copies of the specs named after their feature (the signature's input names)."""
    if not specs:
        raise ValueError(f"`{argument}` must map at least one feature name to a tf.TensorSpec.")
    named = {}
    for name, spec in specs.items():
        if not isinstance(spec, tf.TensorSpec):
            raise TypeError(f"`{argument}[{name!r}]` must be a tf.TensorSpec. Received: {spec!r}")
        if spec.shape.rank is None or spec.shape.rank < 1 or spec.shape[0] is not None:
            raise ValueError(
                f"`{argument}[{name!r}]` must have rank >= 1 and an unknown batch dimension, "
                f"e.g. [None] or [None, None]. Received shape {spec.shape}"
            )
        named[name] = tf.TensorSpec(spec.shape, spec.dtype, name=name)
    return named


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


def as_features(argument: str, columns: Mapping[str, Any], specs: Mapping[str, tf.TensorSpec]) -> Features:
    """Raw columns as numpy arrays of the spec dtypes, checked against the specs, equal row counts."""
    missing = sorted(set(specs) - set(columns))
    extra = sorted(set(columns) - set(specs))
    if missing or extra:
        raise ValueError(
            f"`{argument}` must have exactly the input spec's features {sorted(specs)}. "
            f"Missing: {missing}; unexpected: {extra}."
        )
    features: Features = {}
    for name, spec in specs.items():
        values = np.asarray(columns[name])
        if spec.dtype == tf.string:
            ok = values.dtype.kind in "USO" and all(isinstance(v, (str, bytes)) for v in values.flat)
            target = object
        else:
            target = spec.dtype.as_numpy_dtype
            ok = values.dtype.kind in "biuf" and np.can_cast(values.dtype, target, casting="same_kind")
        if not ok or not spec.shape.is_compatible_with(values.shape):
            raise ValueError(
                f"`{argument}[{name!r}]` must be a {spec.dtype.name} array of shape {spec.shape} "
                f"(padded, not ragged). Received dtype {values.dtype}, shape {values.shape}"
            )
        features[name] = values.astype(target)
    lengths = {name: len(values) for name, values in features.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"`{argument}` columns must have the same number of rows. Received: {lengths}")
    return features


def take_feature_rows(features: Features, positions: Union[slice, np.ndarray]) -> Features:
    return {name: values[positions] for name, values in features.items()}


def _num_rows(features: Features) -> int:
    return len(next(iter(features.values())))


def placeholder_features(specs: Mapping[str, tf.TensorSpec], num_rows: int = 2) -> Features:
    """Zero / empty-string rows in the spec's shape (unknown inner dimensions of size 1)."""
    features: Features = {}
    for name, spec in specs.items():
        shape = [num_rows] + [dim if dim is not None else 1 for dim in spec.shape.as_list()[1:]]
        if spec.dtype == tf.string:
            features[name] = np.full(shape, b"", dtype=object)
        else:
            features[name] = np.zeros(shape, dtype=spec.dtype.as_numpy_dtype)
    return features


def _check_embeddings(argument: str, embeddings: Any, num_rows: int) -> np.ndarray:
    """The tower output as numpy, if it is ``float32 [num_rows, dim]``."""
    if (
        not isinstance(embeddings, tf.Tensor)
        or embeddings.dtype != tf.float32
        or embeddings.shape.rank != 2
        or embeddings.shape[0] != num_rows
    ):
        received = (
            f"{embeddings.dtype.name} {embeddings.shape}" if isinstance(embeddings, tf.Tensor) else type(embeddings)
        )
        raise ValueError(
            f"`{argument}` must return a float32 tensor of embeddings [batch, dim]. Received {received} "
            f"for {num_rows} rows."
        )
    return embeddings.numpy()


def _embed_in_batches(
    candidate_model: tf.keras.Model, specs: Mapping[str, tf.TensorSpec], candidates: Features, batch_size: int
) -> np.ndarray:
    """``candidate_model`` over the whole catalogue, ``batch_size`` rows at a time → ``[N, dim]``."""
    embed = tf.function(lambda features: candidate_model(features, training=False), input_signature=[dict(specs)])
    num_rows = _num_rows(candidates)
    batches = []
    with progress("Embedding the corpus", total=num_rows, unit="rows") as bar:
        for start in range(0, num_rows, batch_size):
            batch = take_feature_rows(candidates, slice(start, start + batch_size))
            batches.append(_check_embeddings("candidate_model", embed(batch), _num_rows(batch)))
            bar.update(len(batches[-1]))
    return np.concatenate(batches, axis=0)


def _decode(value: Union[bytes, str]) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def to_json(values: np.ndarray) -> list:
    """Nested lists; strings as text (non-UTF-8 bytes survive as surrogate escapes)."""
    if values.dtype == object:
        return np.vectorize(_decode, otypes=[object])(values).tolist()
    return values.tolist()


def features_to_json(features: Features) -> Dict[str, list]:
    return {name: to_json(values) for name, values in features.items()}


def _spec_to_json(specs: Mapping[str, tf.TensorSpec]) -> Dict[str, Dict[str, Any]]:
    return {name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()} for name, spec in specs.items()}


def _verification_sample(
    query_model: tf.keras.Model,
    index: RetrievalIndex,
    sample_queries: Features,
    candidates: Features,
    candidate_embeddings: np.ndarray,
    candidate_ids: np.ndarray,
    exclude_history: Optional[str] = None,
) -> Dict[str, Any]:
    """Sample rows with the in-memory model's outputs, and the exact top-k over the whole corpus
    (without each row's ``exclude_history`` ids when given, as ``serving_default`` returns them).

    The exact neighbours are computed here, where the corpus embeddings are in memory, so that the
    fresh-process check can measure the served recall without re-embedding the catalogue.
    """
    query_embeddings = _check_embeddings(
        "query_model", query_model(sample_queries, training=False), _num_rows(sample_queries)
    )
    if query_embeddings.shape[1] != candidate_embeddings.shape[1]:
        raise ValueError(
            f"The towers disagree on the embedding dimension: `query_model` returns {query_embeddings.shape[1]}, "
            f"`candidate_model` returns {candidate_embeddings.shape[1]}."
        )
    if exclude_history is None:
        scores, top_ids = (t.numpy() for t in index(tf.constant(query_embeddings)))
        exact_ids = candidate_ids[exact_top_k(query_embeddings, candidate_embeddings, index.k)[1]]
    else:
        history = tf.constant(sample_queries[exclude_history], index.id_dtype)
        scores, top_ids = (t.numpy() for t in index.search_excluding(tf.constant(query_embeddings), history))
        exact_ids = _exact_ids_excluding(
            query_embeddings, candidate_embeddings, candidate_ids, index.k, history.numpy(), index.padding_id
        )

    retrieved = top_ids[:NUM_SCORED_QUERIES, :NUM_SAMPLE_RETRIEVED].ravel()
    retrieved_positions = np.flatnonzero(np.isin(candidate_ids, retrieved))
    first_positions = np.arange(min(NUM_SAMPLE_CANDIDATES, len(candidate_ids)))
    positions = np.array(list(dict.fromkeys(first_positions.tolist() + retrieved_positions.tolist())))
    return {
        "queries": features_to_json(sample_queries),
        "query_embeddings": query_embeddings.tolist(),
        "candidates": features_to_json(take_feature_rows(candidates, positions)),
        "candidate_embeddings": candidate_embeddings[positions].tolist(),
        "top_k": {"candidate_ids": to_json(top_ids), "scores": scores.tolist()},
        "exact_top_k_candidate_ids": to_json(exact_ids),
        "index_recall": recall_at_k(top_ids, exact_ids),
    }


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


def _check_history_feature(
    exclude_history: str, query_spec: Mapping[str, tf.TensorSpec], id_spec: tf.TensorSpec
) -> None:
    """``exclude_history`` names a query feature ``[None, None]`` of the candidate id dtype."""
    spec = query_spec.get(exclude_history)
    if spec is None or spec.shape.rank != 2 or spec.dtype != id_spec.dtype:
        received = "no such query feature" if spec is None else f"{spec.dtype.name} {spec.shape.as_list()}"
        raise ValueError(
            f"`exclude_history` must name a query feature holding candidate ids ({id_spec.dtype.name} "
            f"[None, None], one history per row); the query features are {sorted(query_spec)}. "
            f"Received: {exclude_history!r} ({received})"
        )


def _existing_versions(model_dir: Path) -> List[int]:
    """The integer version names in ``model_dir``, ascending (none if it does not exist)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isascii() and p.name.isdigit())


def target_directory(export_base: Union[str, Path], model_name: str, version: Optional[int]) -> Tuple[Path, int]:
    """``(<export_base>/<model_name>, version)`` after checking the target can be written."""
    if not model_name or model_name in (".", "..") or "/" in model_name or os.sep in model_name:
        raise ValueError(f"`model_name` must be a plain directory name. Received: {model_name!r}")
    base = Path(export_base)
    model_dir = base / model_name
    for directory in (base, model_dir):
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} is a file; the export needs a directory there (created if missing).")
    existing = _existing_versions(model_dir)
    next_version = existing[-1] + 1 if existing else 1
    if version is None:
        return model_dir, next_version
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version <= 0:
        raise ValueError(f"`version` must be a positive int or None. Received: {version!r}")
    if int(version) in existing:
        kind = "directory" if (model_dir / str(int(version))).is_dir() else "file"
        raise FileExistsError(
            f"Version {version} of model {model_name!r} already exists in {model_dir} (a {kind}). "
            f"Pass another `version`, or None for the next one ({next_version})."
        )
    return model_dir, int(version)


MAX_PUBLISH_ATTEMPTS = 100
"""Versions an export tries in turn while concurrent exports keep publishing the one it chose."""

_TEMPORARY_NAME = re.compile(r"^\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{32}$")


def _host_name() -> str:
    """This machine's name as it appears in temporary directory names."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())


def _is_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts; a reused pid is
    taken for the writer, so its directory is kept)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        pass
    return True


def _remove_stale_temporaries(model_dir: Path) -> None:
    """Removes the temporary version directories of ``model_dir`` whose writer, a process of this host, is gone.

    Those of live processes and of other hosts (a shared file system) are left alone.
    """
    host = _host_name()
    for entry in model_dir.iterdir():
        match = _TEMPORARY_NAME.match(entry.name)
        if match is None or match["host"] != host or _is_running(int(match["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        logger.warning("Removed %s: the unfinished export of process %s, which is no longer running.",
                       entry, match["pid"])


def _publish(tmp: Path, model_dir: Path, version: int, label: Callable[[Path, int], None], next_free: bool) -> Path:
    """Renames ``tmp`` to ``<model_dir>/<version>``, after ``label(tmp, version)``; the next free version if taken.

    Raises:
      FileExistsError: the version appeared meanwhile and ``next_free`` is False; or
        :data:`MAX_PUBLISH_ATTEMPTS` versions in a row were taken.
    """
    for _ in range(MAX_PUBLISH_ATTEMPTS):
        label(tmp, version)
        final = model_dir / str(version)
        if not os.path.lexists(final):
            try:
                os.rename(tmp, final)
                return final
            except OSError:  # the target appeared between the check and the rename
                if not os.path.lexists(final):
                    raise
        if not next_free:
            raise FileExistsError(
                f"Version {version} of model {model_dir.name!r} appeared in {model_dir} while this export was "
                "written (another export published it). Pass another `version`, or None for the next one."
            )
        taken, version = version, max([version, *_existing_versions(model_dir)]) + 1
        logger.info("Version %d of %s was published by another export meanwhile: this export becomes version %d.",
                    taken, model_dir, version)
    raise FileExistsError(
        f"Concurrent exports into {model_dir} took {MAX_PUBLISH_ATTEMPTS} versions in a row before this one "
        "could publish: export again."
    )


def _write_atomically(
    model_dir: Path, version: int, write: Callable[[Path], None], label: Callable[[Path, int], None], next_free: bool
) -> Path:
    """Runs ``write(tmp)`` on a hidden sibling of the versions, then publishes it as ``<model_dir>/<version>``.

    The sibling is ``.tmp-<host>-<pid>-<token>``; stale ones of writers that are gone are removed
    first. ``label(tmp, version)`` writes what names the version, before each attempt to publish:
    if another export has published ``version`` by then, the next free version is taken when
    ``next_free`` (:func:`_publish`). On any failure the temporary directory (and ``model_dir`` if
    this call created it and it is empty) is removed and the exception re-raised.
    """
    created_model_dir = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(model_dir)
    tmp = model_dir / f".tmp-{_host_name()}-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write(tmp)
        return _publish(tmp, model_dir, version, label, next_free)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_model_dir and not any(model_dir.iterdir()):
            with contextlib.suppress(OSError):  # another export may have just started writing there
                model_dir.rmdir()
        raise


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
        (:func:`tfrec_towers.candidate_table.read_candidate_table` reads them from a DataFrame,
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
    query_spec = _named_specs("query_input_spec", query_input_spec)
    candidate_spec = _named_specs("candidate_input_spec", candidate_input_spec)
    if candidate_id not in candidate_spec:
        raise ValueError(
            f"`candidate_id` must be one of the candidate features {sorted(candidate_spec)}. Received: {candidate_id!r}"
        )
    if candidate_spec[candidate_id].dtype not in (tf.int64, tf.string) or candidate_spec[candidate_id].shape.rank != 1:
        raise ValueError(f"`candidate_id` {candidate_id!r} must be an int64 or string feature of shape [None].")
    if exclude_history is not None:
        _check_history_feature(exclude_history, query_spec, candidate_spec[candidate_id])
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

    candidate_embeddings = _embed_in_batches(candidate_model, candidate_spec, catalogue, embedding_batch_size)
    retrieval_index = build_index(index, candidate_embeddings, catalogue[candidate_id])
    candidate_ids = retrieval_index.candidate_ids.numpy()
    warnings = []
    if retrieval_index.config.kind != index.kind:
        warnings.append(
            f"index {index.kind!r} needs at least {SCANN_MIN_CANDIDATES} candidates; the corpus has "
            f"{retrieval_index.num_candidates}, so it is searched exactly ({retrieval_index.config.kind!r})."
        )
    if retrieval_index.k < index.k:
        warnings.append(
            f"k={index.k} exceeds the corpus size ({retrieval_index.num_candidates} candidates); "
            f"clamped to k={retrieval_index.k}."
        )
    for warning in warnings:
        logger.warning("Export %s/%s: %s", model_name, version, warning)
    sample = _verification_sample(
        query_model, retrieval_index, sample_queries, catalogue, candidate_embeddings, candidate_ids, exclude_history
    )
    description: Dict[str, Any] = {
        "model_name": model_name,
        "version": version,
        "tfrec_towers_version": tfrec_towers.__version__,
        "signatures": list(SIGNATURE_NAMES),
        "index": retrieval_index.config.to_dict(),
        "k": retrieval_index.k,
        "embedding_dim": int(candidate_embeddings.shape[1]),
        "corpus_size": int(candidate_embeddings.shape[0]),
        "candidate_id": candidate_id,
        "candidate_id_dtype": retrieval_index.id_dtype.name,
        "query_input_spec": _spec_to_json(query_spec),
        "candidate_input_spec": _spec_to_json(candidate_spec),
        "exclude_history": exclude_history,
        "warnings": warnings,
    }
    description.update(metadata or {})
    module = RetrievalExport(query_model, candidate_model, retrieval_index, query_spec, candidate_spec, exclude_history)
    warmup_inputs = {
        "serving_default": take_feature_rows(sample_queries, slice(0, NUM_WARMUP_ROWS)),
        "query_embedding": take_feature_rows(sample_queries, slice(0, NUM_WARMUP_ROWS)),
        "candidate_embedding": take_feature_rows(catalogue, slice(0, NUM_WARMUP_ROWS)),
    }
    return write_export(model_dir, version, module, model_name, description, sample, warmup_inputs, next_free=next_free)


def write_export(
    model_dir: Path,
    version: int,
    module: RetrievalExport,
    model_name: str,
    description: Mapping[str, Any],
    verification_sample: Mapping[str, Any],
    warmup_inputs: Mapping[str, Features],
    *,
    next_free: bool = False,
) -> Path:
    """Writes ``model_dir/<version>/`` atomically: the SavedModel and its ``assets.extra``.

    ``assets.extra`` holds the TF Serving warm-up requests (one per signature, from
    ``warmup_inputs``), the metadata file (``description``, its ``version`` the published one) and
    the verification sample.

    Args:
      model_dir: ``<export_base>/<model_name>`` (:func:`target_directory`).
      version: the new version number.
      module: the :class:`RetrievalExport` to save with its three signatures.
      model_name: TF Serving's model name, written into the warm-up requests.
      description: JSON-serialisable metadata (``tfrec_towers_metadata.json``).
      verification_sample: JSON-serialisable sample for ``tfrec-towers verify``.
      warmup_inputs: ``{signature: raw feature rows}`` for the warm-up requests.
      next_free: ``version`` is the next one (:func:`target_directory` with ``version=None``): if
        another export publishes it first, this one takes the next free version.

    Returns:
      The written version directory; nothing is left behind on failure.

    Raises:
      FileExistsError: ``version`` was published meanwhile by another export and ``next_free`` is False.
    """

    def write(directory: Path) -> None:
        with progress(f"Writing the SavedModel of {model_name!r}"):
            tf.saved_model.save(module, str(directory), signatures=module.signatures())
        extra = directory / "assets.extra"
        extra.mkdir()
        with progress("Writing the warm-up requests"):
            warmup.write_warmup_requests(extra / warmup.WARMUP_FILENAME, model_name, warmup_inputs)
        (extra / VERIFICATION_SAMPLE_FILENAME).write_text(json.dumps(dict(verification_sample)) + "\n")

    def label(directory: Path, published: int) -> None:
        metadata = dict(description, version=published)
        (directory / "assets.extra" / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2) + "\n")

    return _write_atomically(model_dir, version, write, label, next_free)


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
    return name


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
    towers = [getattr(model, name, None) for name in ("query_tower", "candidate_tower")]
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
        index_config = IndexConfig(kind=index, k=100 if k is None else k)
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


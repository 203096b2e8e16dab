"""Assembling one export version: the SavedModel, its metadata, warm-up requests and verification sample.

Every export writes the same version, whatever its towers are (Keras towers in memory, or the
signatures of an earlier export over a corpus embedded elsewhere): :func:`write_retrieval_export`
builds the :class:`~tfrec_towers.export.signatures.RetrievalExport`, the metadata and the warm-up
requests, and :func:`write_export` writes them atomically (:mod:`tfrec_towers.export.publish`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, ContextManager, Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

import tfrec_towers
from tfrec_towers import warmup
from tfrec_towers.export.publish import write_version_atomically
from tfrec_towers.export.signatures import SIGNATURE_NAMES, Features, RetrievalExport, specs_to_json, take_feature_rows
from tfrec_towers.index import RetrievalIndex
from tfrec_towers.progress import progress

METADATA_FILENAME = "tfrec_towers_metadata.json"
VERIFICATION_SAMPLE_FILENAME = "verification_sample.json"
NUM_WARMUP_ROWS = 4
"""Rows per warm-up request (the first query rows, the first catalogue rows)."""

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


def _without_keras_layer_traces() -> ContextManager[Any]:
    """Saves the towers' variables and the signatures only, not Keras's per-layer call traces.

    ``tf.saved_model.save`` of a module holding Keras models also traces every layer's ``call``
    for Keras's own reloading (``keras_api`` objects): about half of an export's time, for objects
    neither TF Serving nor ``tf.saved_model.load`` use (the signatures are traced anyway). This is
    Keras's ``save_traces=False``, set for a plain ``tf.saved_model.save``. If Keras moves the
    switch, the export is unchanged, only slower.
    """
    try:
        from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope
    except ImportError:  # pragma: no cover - another Keras 2 layout
        return contextlib.nullcontext()
    return keras_option_scope(save_traces=False)


def write_retrieval_export(
    model_dir: Path,
    version: int,
    model_name: str,
    query_model: tf.Module,
    candidate_model: tf.Module,
    index: RetrievalIndex,
    query_spec: Mapping[str, tf.TensorSpec],
    candidate_spec: Mapping[str, tf.TensorSpec],
    candidate_id: str,
    verification_sample: Mapping[str, Any],
    warmup_rows: Tuple[Features, Features],
    *,
    warnings: Sequence[str] = (),
    exclude_history: Optional[str] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    next_free: bool = False,
) -> Path:
    """Writes ``model_dir/<version>/``: the towers and ``index`` behind the three signatures.

    Args:
      model_dir: ``<export_base>/<model_name>`` (:func:`~tfrec_towers.export.publish.target_directory`).
      version: the version number.
      model_name: TF Serving's model name.
      query_model: raw query features → ``float32 [batch, dim]``.
      candidate_model: raw candidate features → ``float32 [batch, dim]``.
      index: the retrieval index over the corpus embeddings.
      query_spec: ``{feature: tf.TensorSpec}`` of the query signatures (named specs).
      candidate_spec: ``{feature: tf.TensorSpec}`` of ``candidate_embedding``.
      candidate_id: the candidate feature whose values ``serving_default`` returns.
      verification_sample: the content of ``verification_sample.json``
        (:func:`~tfrec_towers.export.sample.verification_sample`).
      warmup_rows: ``(query rows, candidate rows)``; the first :data:`NUM_WARMUP_ROWS` of each make
        the warm-up requests.
      warnings: what the metadata's ``warnings`` lists (already logged).
      exclude_history: the query feature whose ids ``serving_default`` leaves out, or None.
      metadata: entries added to the metadata (none of :data:`METADATA_KEYS`).
      next_free: ``version`` is the next one: if another export publishes it first, take the next free one.

    Returns:
      The written version directory.

    Raises:
      FileExistsError: see :func:`write_export`.
    """
    description: Dict[str, Any] = {
        "model_name": model_name,
        "version": version,
        "tfrec_towers_version": tfrec_towers.__version__,
        "signatures": list(SIGNATURE_NAMES),
        "index": index.config.to_dict(),
        "k": index.k,
        "embedding_dim": int(index.embedding_dim),
        "corpus_size": int(index.num_candidates),
        "candidate_id": candidate_id,
        "candidate_id_dtype": index.id_dtype.name,
        "query_input_spec": specs_to_json(query_spec),
        "candidate_input_spec": specs_to_json(candidate_spec),
        "exclude_history": exclude_history,
        "warnings": list(warnings),
        **(metadata or {}),
    }
    module = RetrievalExport(query_model, candidate_model, index, query_spec, candidate_spec, exclude_history)
    queries, candidates = (take_feature_rows(rows, slice(0, NUM_WARMUP_ROWS)) for rows in warmup_rows)
    warmup_inputs = {"serving_default": queries, "query_embedding": queries, "candidate_embedding": candidates}
    return write_export(
        model_dir, version, module, model_name, description, verification_sample, warmup_inputs, next_free=next_free
    )


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
      model_dir: ``<export_base>/<model_name>`` (:func:`~tfrec_towers.export.publish.target_directory`).
      version: the new version number.
      module: the :class:`~tfrec_towers.export.signatures.RetrievalExport` to save with its three signatures.
      model_name: TF Serving's model name, written into the warm-up requests.
      description: JSON-serialisable metadata (``tfrec_towers_metadata.json``).
      verification_sample: JSON-serialisable sample for ``tfrec-towers verify``.
      warmup_inputs: ``{signature: raw feature rows}`` for the warm-up requests.
      next_free: ``version`` is the next one (``target_directory`` with ``version=None``): if
        another export publishes it first, this one takes the next free version.

    Returns:
      The written version directory; nothing is left behind on failure.

    Raises:
      FileExistsError: ``version`` was published meanwhile by another export and ``next_free`` is False.
    """

    def write(directory: Path) -> None:
        with progress(f"Writing the SavedModel of {model_name!r}"), _without_keras_layer_traces():
            tf.saved_model.save(module, str(directory), signatures=module.signatures())
        extra = directory / "assets.extra"
        extra.mkdir()
        with progress("Writing the warm-up requests"):
            warmup.write_warmup_requests(extra / warmup.WARMUP_FILENAME, model_name, warmup_inputs)
        (extra / VERIFICATION_SAMPLE_FILENAME).write_text(json.dumps(dict(verification_sample)) + "\n")

    def label(directory: Path, published: int) -> None:
        metadata = dict(description, version=published)
        (directory / "assets.extra" / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2) + "\n")

    return write_version_atomically(model_dir, version, write, label, next_free)

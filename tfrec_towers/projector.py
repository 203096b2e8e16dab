"""Embeddings for TensorBoard's projector: a checkpointed tensor, its metadata table and the config.

``write_projector_embeddings(log_dir, embeddings, metadata)`` writes, in ``log_dir``:

* ``<name>.ckpt-1.*`` and ``checkpoint``: the embeddings ``[N, d]`` as the variable ``name`` of a
  ``tf.train.Checkpoint`` (the projector finds the latest checkpoint of the directory);
* ``metadata.tsv``: one row per embedding, a header row first when there is more than one column
  (the projector's convention), tabs, newlines and backslashes in values escaped as ``\\t``,
  ``\\n``, ``\\r`` and ``\\\\``;
* ``projector_config.pbtxt`` (:func:`tensorboard.plugins.projector.visualize_embeddings`), whose
  paths are relative, so the directory can be moved.

``tensorboard --logdir LOG_DIR`` then shows them under "Projector".
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector
from tensorboard.plugins.projector.metadata import PROJECTOR_FILENAME

DEFAULT_MAX_ROWS = 10_000
"""Embeddings written by default: the projector's PCA and t-SNE stay interactive up to about this many."""
METADATA_FILENAME = "metadata.tsv"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _cell(value: object) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.translate(_ESCAPES)


def write_projector_embeddings(
    log_dir: Union[str, Path],
    embeddings: np.ndarray,
    metadata: Optional[Mapping[str, np.ndarray]] = None,
    name: str = "candidate_embeddings",
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Path:
    """Writes the first ``max_rows`` embeddings and their metadata for TensorBoard's projector.

    Rows are kept in the given order: pass them most important first (e.g. by training frequency)
    when there are more than ``max_rows``.

    Args:
      log_dir: the TensorBoard log directory (created if missing); one set of embeddings per
        directory (a second call replaces the first's configuration).
      embeddings: ``float [N, d]``.
      metadata: ``{column: [N] values}``, e.g. the candidate id and its genres; ``None`` or empty
        writes no ``metadata.tsv``.
      name: the checkpoint variable (a Python identifier); the projector shows the tensor as
        ``<name>/.ATTRIBUTES/VARIABLE_VALUE``.
      max_rows: at most this many rows are written (the first ones).

    Returns:
      The path of ``projector_config.pbtxt``.

    Raises:
      ValueError: ``embeddings`` is not a non-empty float matrix, a metadata column is not a vector
        of ``N`` values (the message names it), ``name`` is not an identifier or ``max_rows`` is
        not a positive int.
    """
    values = np.asarray(embeddings)
    if values.ndim != 2 or values.shape[0] == 0 or not np.issubdtype(values.dtype, np.floating):
        raise ValueError(
            f"`embeddings` must be a non-empty float matrix [N, d]. Received: {values.dtype} {values.shape}"
        )
    if not name.isidentifier():
        raise ValueError(f"`name` must be a Python identifier. Received: {name!r}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows <= 0:
        raise ValueError(f"`max_rows` must be a positive int. Received: {max_rows!r}")
    columns = {column: np.asarray(cells) for column, cells in (metadata or {}).items()}
    for column, cells in columns.items():
        if cells.shape != (len(values),):
            raise ValueError(
                f"Metadata column {column!r} must hold one value per embedding ({len(values)}). Received shape {cells.shape}"
            )
    rows = min(len(values), max_rows)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(**{name: tf.Variable(values[:rows].astype(np.float32))}).save(str(log_dir / f"{name}.ckpt"))

    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
    if columns:
        lines = ["\t".join(map(_cell, row)) for row in zip(*(cells[:rows] for cells in columns.values()))]
        header = ["\t".join(map(_cell, columns))] if len(columns) > 1 else []
        (log_dir / METADATA_FILENAME).write_text("\n".join(header + lines) + "\n", encoding="utf-8")
        embedding.metadata_path = METADATA_FILENAME
    projector.visualize_embeddings(str(log_dir), config)
    return log_dir / PROJECTOR_FILENAME

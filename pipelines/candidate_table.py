"""The candidate corpus for an export, read from a candidate feature table (DataFrame, Parquet, CSV, TFRecord).

:func:`read_candidate_table` turns the candidate tower's input spec into reader column types
(``int64 [None]`` → ``"int64"``, ``float32 [None]`` → ``"float32"``, ``string [None]`` → ``"string"``,
``int64 [None, None]`` → ``"int64_list"``) and reads exactly those columns with
:mod:`tfrec_pipelines.readers`, which validates every value and names the file, column and row of a bad one.
The result is the ``candidates`` argument of :func:`tfrec_towers.export.export_retrieval_model`.

``tfrec_pipelines.readers`` imports only ``tfrec_pipelines.data`` (and ``pipelines/__init__`` only this package's
``__init__``), so importing it here creates no import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrec_pipelines.data import ColumnType
from tfrec_pipelines.formats import FILE_FORMATS as FORMATS
from tfrec_pipelines.formats import suffix_format, unknown_suffix_message
from tfrec_pipelines.readers import from_dataframe, read_csv, read_parquet, read_tfrecord

_READERS = {"parquet": read_parquet, "csv": read_csv, "tfrecord": read_tfrecord}

CandidateSource = Union[pd.DataFrame, str, Path]
"""A candidate feature table: a DataFrame, or the path of a Parquet, CSV or TFRecord file."""


def column_types(candidate_input_spec: Mapping[str, tf.TensorSpec]) -> Dict[str, ColumnType]:
    """The reader column type of each candidate feature.

    Args:
      candidate_input_spec: ``{feature: tf.TensorSpec}`` of the candidate tower's raw inputs.

    Returns:
      ``{feature: "int64" | "float32" | "string" | "int64_list"}``.

    Raises:
      ValueError: for a spec no reader column type represents (e.g. ``float32 [None, 3]``).
    """
    scalar_types: Dict[Any, ColumnType] = {tf.int64: "int64", tf.float32: "float32", tf.string: "string"}
    types: Dict[str, ColumnType] = {}
    for name, spec in candidate_input_spec.items():
        rank = spec.shape.rank
        if rank == 1 and spec.dtype in (tf.int64, tf.float32, tf.string):
            types[name] = scalar_types[spec.dtype]
        elif rank == 2 and spec.dtype == tf.int64 and spec.shape[1] is None:
            types[name] = "int64_list"
        else:
            raise ValueError(
                f"Candidate feature {name!r} has spec {spec.dtype.name}{spec.shape}; a candidate table can hold "
                "int64, float32 or string [None] columns and int64 [None, None] lists."
            )
    return types


def table_format(path: Union[str, Path]) -> str:
    """``"parquet"``, ``"csv"`` or ``"tfrecord"`` from the file suffix (:data:`~tfrec_pipelines.formats.SUFFIX_FORMATS`;
    a directory is Parquet).

    Raises:
      ValueError: if the suffix is not one of :data:`~tfrec_pipelines.formats.SUFFIX_FORMATS`.
    """
    path = Path(path)
    if path.is_dir():
        return "parquet"
    fmt = suffix_format(str(path))
    if fmt is None:
        raise ValueError(unknown_suffix_message(str(path), "candidate table", "pass `file_format`"))
    return fmt


def read_candidate_table(
    source: CandidateSource,
    candidate_input_spec: Mapping[str, tf.TensorSpec],
    file_format: Optional[str] = None,
) -> Dict[str, np.ndarray]:
    """Reads the candidate corpus, one row per candidate, as the export's ``candidates`` columns.

    Args:
      source: a DataFrame, or the path of a Parquet file or directory, a CSV file with a header, or
        a TFRecord file or glob of ``tf.train.Example`` records.
      candidate_input_spec: ``{feature: tf.TensorSpec}`` of the candidate tower's raw inputs; exactly
        these columns are read, with these types (other columns are ignored).
      file_format: ``"parquet"``, ``"csv"`` or ``"tfrecord"``; by default from the suffix.

    Returns:
      ``{feature: numpy array [N, ...]}`` (strings as ``str`` objects, lists 0-padded on the left).

    Raises:
      FileNotFoundError: if ``source`` does not exist.
      tfrec_pipelines.data.DataError: if the table is empty, lacks a column or holds a value of the wrong
        type (the message names the file, column and row).
      ValueError: on an unknown ``file_format`` or a spec no column type represents.
    """
    types = column_types(candidate_input_spec)
    if isinstance(source, pd.DataFrame):
        return from_dataframe(source, types)
    if file_format is not None and file_format not in FORMATS:
        raise ValueError(f"`file_format` must be one of {list(FORMATS)}. Received: {file_format!r}")
    is_glob = any(c in str(source) for c in "*?[")
    fmt = file_format or ("tfrecord" if is_glob else table_format(source))
    if not is_glob and not Path(source).exists():
        raise FileNotFoundError(f"The candidate table {source} does not exist.")
    return _READERS[fmt](source, types)

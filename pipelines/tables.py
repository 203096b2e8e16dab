"""Tables of any schema from CSV, Parquet or TFRecord: a file, a directory of shards or a glob.

The readers of :mod:`tfrec_pipelines.readers` return the columns a caller already knows the types of;
the tables here are the user's own (interaction logs, item and user attribute tables), whose
columns are discovered from the files. A table is returned as a ``pandas.DataFrame`` with one
dtype per column across every shard:

==============  =========================================================================
format          how it is read
==============  =========================================================================
``csv``         a header row; every field read as text first, then each column parsed as
                int64, else float64, else kept as strings (a column is one type in all shards)
``parquet``     pyarrow, the file's own types; list columns stay lists
``tfrecord``    ``tf.train.Example`` records; a feature with one value in every record is a
                scalar (int64, float32 or string), otherwise a list column
==============  =========================================================================

The format comes from the file suffix (:data:`tfrec_pipelines.formats.SUFFIX_FORMATS`: ``.csv``, ``.tsv``
tab-separated, ``.parquet``/``.pq``, ``.tfrecord``/``.tfrecords``/``.tfrec``/``.tfr``) unless given. Errors are
:class:`~tfrec_pipelines.data.DataError` naming the file (and the column and row where there is one).
"""

from __future__ import annotations

import glob as globbing
from pathlib import Path
from typing import Dict, List, Optional, Sequence, cast

import numpy as np
import pandas as pd

from tfrec_pipelines.data import DataError
from tfrec_pipelines.formats import FILE_FORMATS, FileFormat, csv_delimiter, suffix_format, unknown_suffix_message


def table_files(path: str | Path, what: str = "table") -> List[Path]:
    """The files of a table: ``path`` itself, the data files of a directory, or a glob's matches.

    Hidden files and names starting with ``_`` (``_SUCCESS``, ``_metadata``) are skipped, as
    Spark, Beam and pyarrow do. Files come in name order.

    Raises:
      FileNotFoundError: the path does not exist, a directory holds no data file, or a glob
        matches nothing.
    """
    text = str(path)
    if any(c in text for c in "*?["):
        files = [Path(p) for p in sorted(globbing.glob(text)) if Path(p).is_file()]
        if not files:
            raise FileNotFoundError(f"The {what} glob {text!r} matches no file.")
        return files
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
        if not files:
            raise FileNotFoundError(f"The {what} directory {path} holds no data file.")
        return files
    raise FileNotFoundError(f"The {what} path {path} does not exist.")


def table_format(files: Sequence[Path], declared: Optional[str] = None, what: str = "table") -> FileFormat:
    """The format of a table's files: ``declared``, or the one their suffixes name.

    Raises:
      DataError: a suffix is unknown, or the files mix formats.
    """
    if declared is not None:
        if declared not in FILE_FORMATS:
            raise DataError(f"The {what} format must be one of {', '.join(FILE_FORMATS)}. Received: {declared!r}")
        return cast(FileFormat, declared)
    formats: Dict[FileFormat, Path] = {}
    for file in files:
        fmt = suffix_format(str(file))
        if fmt is None:
            raise DataError(unknown_suffix_message(str(file), what, "name the format in the configuration (`format:`)"))
        formats.setdefault(fmt, file)
    if len(formats) > 1:
        shown = ", ".join(f"{fmt} ({file.name})" for fmt, file in formats.items())
        raise DataError(f"The {what} files mix formats: {shown}; one table is one format.")
    return next(iter(formats))


def read_table(
    path: str | Path,
    *,
    format: Optional[str] = None,
    columns: Optional[Sequence[str]] = None,
    what: str = "table",
) -> pd.DataFrame:
    """Reads every shard of a table and concatenates them (rows in file, then row order).

    Args:
      path: a file, a directory of shards or a glob.
      format: ``csv``, ``parquet`` or ``tfrecord``; default from the suffixes.
      columns: the columns to keep (all when None); each must be in every shard.
      what: the table's role in messages (``"interactions table"``).

    Returns:
      The table, with a ``RangeIndex``.

    Raises:
      FileNotFoundError: see :func:`table_files`.
      DataError: a file is unreadable or empty, lacks a column, or a column's type differs
        between shards (names the files, the column and both types).
    """
    files = table_files(path, what)
    kind = table_format(files, format, what)
    reader = {"csv": _read_csv, "parquet": _read_parquet, "tfrecord": _read_tfrecord}[kind]
    frames = []
    for file in files:
        frame = reader(file, columns)
        if columns is not None:
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise DataError(
                    f"{file}: the {what} has no column {missing[0]!r}; its columns are {list(frame.columns)}."
                )
            frame = frame[list(columns)]
        frames.append((file, frame))
    _check_same_schema(frames, what)
    table = pd.concat([f for _, f in frames], ignore_index=True) if len(frames) > 1 else frames[0][1]
    if len(table) == 0:
        raise DataError(f"The {what} {path} has no rows.")
    return table.reset_index(drop=True)


def _kind(series: pd.Series) -> str:
    """A column's type as a user would name it: int64, float, string, bool, list, datetime."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int64"
    if pd.api.types.is_float_dtype(series):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    sample = series.dropna()
    if len(sample) and isinstance(sample.iloc[0], (list, tuple, np.ndarray)):
        return "list"
    return "string"


def _check_same_schema(frames: Sequence[tuple], what: str) -> None:
    first_file, first = frames[0]
    kinds = {c: _kind(first[c]) for c in first.columns}
    for file, frame in frames[1:]:
        if list(frame.columns) != list(first.columns) and set(frame.columns) != set(first.columns):
            raise DataError(
                f"{file}: the {what} shards disagree on their columns: {sorted(frame.columns)} here, "
                f"{sorted(first.columns)} in {first_file}."
            )
        for column in frame.columns:
            kind = _kind(frame[column])
            if len(frame) and len(first) and kind != kinds[column] and {kind, kinds[column]} != {"int64", "float"}:
                raise DataError(
                    f"{file}: column {column!r} of the {what} is {kind} here but {kinds[column]} in {first_file}; "
                    "a column has one type in every shard."
                )


def _read_csv(file: Path, columns: Optional[Sequence[str]]) -> pd.DataFrame:
    """pyarrow's multi-threaded CSV reader with type inference; a column whose later values do not
    fit the type inferred from the first block is re-read as text and typed by :func:`_parse_text_column`."""
    import pyarrow as pa
    from pyarrow import csv as pa_csv

    parse = pa_csv.ParseOptions(delimiter=csv_delimiter(str(file)))
    if file.stat().st_size == 0:
        raise DataError(f"{file} is empty; expected a header row and data rows.")
    try:
        try:
            return _utf8_checked(pa_csv.read_csv(file, parse_options=parse), file).to_pandas()
        except pa.ArrowInvalid as e:
            if "conversion error" not in str(e):
                raise
        head = pa_csv.read_csv(file, parse_options=parse, read_options=pa_csv.ReadOptions(block_size=1 << 16))
        text = pa_csv.read_csv(
            file,
            parse_options=parse,
            convert_options=pa_csv.ConvertOptions(column_types={name: pa.string() for name in head.column_names}),
        )
    except pa.ArrowInvalid as e:
        message = str(e).replace("CSV parse error: ", "")
        if "utf8" in message.lower() or "utf-8" in message.lower():
            raise DataError(f"{file} is not UTF-8 text: save it as UTF-8 ({message}).") from None
        raise DataError(f"{file} is not a readable CSV file: {message}") from None
    except OSError as e:
        raise DataError(f"{file} cannot be read: {e}") from None
    frame = _utf8_checked(text, file).to_pandas()
    for column in frame.columns:
        frame[column] = _parse_text_column(frame[column])
    return frame


def _utf8_checked(table, file: Path):
    """``table``, if no column was read as bytes (pyarrow's type for text that is not UTF-8)."""
    import pyarrow as pa

    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_binary(column.type):
            for row, cell in enumerate(column.to_pylist()):
                try:
                    cell is None or cell.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(
                        f"{file}: column {name!r}, line {row + 2} is not UTF-8 text ({cell!r}); save the file as UTF-8."
                    ) from None
    return table


def _parse_text_column(values: pd.Series) -> pd.Series:
    """int64 when every value is an integer, float64 when every present one is a number, else text."""
    present = values.dropna()
    if len(present) == 0:
        return values
    as_number = pd.to_numeric(present, errors="coerce")
    if as_number.isna().any():
        return values
    if len(present) == len(values) and present.str.fullmatch(r"\s*[+-]?\d+\s*").all():
        parsed = pd.to_numeric(values, errors="coerce")
        if parsed.dtype.kind == "i":
            return parsed.astype(np.int64)
    return pd.to_numeric(values, errors="coerce").astype(np.float64)


def _read_parquet(file: Path, columns: Optional[Sequence[str]]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        wanted = [c for c in columns if c in names] if columns is not None else None
        return parquet.read(columns=wanted).to_pandas()
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
        raise DataError(f"{file} is not a readable Parquet file: {e}") from None


def _read_tfrecord(file: Path, columns: Optional[Sequence[str]]) -> pd.DataFrame:
    import tensorflow as tf

    records: List[Dict[str, list]] = []
    kinds: Dict[str, str] = {}
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(str(file)).as_numpy_iterator()):
            row: Dict[str, list] = {}
            for name, feature in tf.train.Example.FromString(record).features.feature.items():
                kind = feature.WhichOneof("kind")
                if kind is None or (columns is not None and name not in columns):
                    continue
                if kinds.setdefault(name, kind) != kind:
                    raise DataError(
                        f"{file}: feature {name!r} is a {kind} in record {index} but a {kinds[name]} before; "
                        "a feature has one type in every record."
                    )
                row[name] = list(getattr(feature, kind).value)
            records.append(row)
    except tf.errors.DataLossError as e:
        raise DataError(f"{file} is not a valid TFRecord file: {e.message}") from None
    except DataError:
        raise
    except Exception as e:  # protobuf's DecodeError: the records are not tf.train.Example
        raise DataError(f"{file} does not hold tf.train.Example records: {e}") from None
    frame = {}
    for name, kind in kinds.items():
        cells = [row.get(name) for row in records]
        if kind == "bytes_list":
            cells = [None if c is None else [v.decode("utf-8") for v in c] for c in cells]
        if all(c is not None and len(c) == 1 for c in cells):
            dtype = {"int64_list": np.int64, "float_list": np.float32, "bytes_list": object}[kind]
            frame[name] = pd.Series([c[0] for c in cells if c is not None], dtype=dtype)
        else:
            frame[name] = pd.Series(cells, dtype=object)
    return pd.DataFrame(frame)

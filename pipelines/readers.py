"""Generic readers: CSV, Parquet and TFRecord files into feature dictionaries.

The "bring your own data" path: each reader takes the expected :data:`ColumnType` of
every column it should return, validates the file against it, and returns a
:data:`~tfrec_pipelines.data.FeatureDict` (see :mod:`tfrec_pipelines.data`). Errors are
:class:`~tfrec_pipelines.data.DataError` naming the file, the column, the expected type and,
for a bad value, the first bad line, row or record.

Integers that do not fit in ``int64`` are errors naming their line or row, never
wrapped around; a delimited file that is not valid text in its encoding is an error
naming the line.

``int64_list`` columns are stored as ``"3|17|42"`` strings in CSV, as list columns (or
the same strings) in Parquet and as variable-length ``int64_list`` features in
TFRecord. They are returned as ``int64 [N, L]``, left-padded with 0 so the most recent
(last) item is in the last column; ``L`` is the longest row, or ``max_length`` (longer
rows then keep their last ``max_length`` items).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import re
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow.dataset as pa_dataset
import tensorflow as tf

from tfrec_pipelines.data import ColumnType, DataError, FeatureDict, num_rows
from tfrec_pipelines.formats import csv_delimiter

LIST_SEPARATOR = "|"

_COLUMN_TYPES = ("int64", "float32", "string", "int64_list")
_INTEGER = r"\s*[+-]?\d+\s*"
_INTEGER_LIST = rf"(?:{_INTEGER}(?:{re.escape(LIST_SEPARATOR)}{_INTEGER})*)?"
_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_SUBSTITUTE_SEPARATOR = "\x1f"  # ASCII unit separator: stands in for multi-character separators.
_DECODE_CHUNK_BYTES = 1 << 20  # read size when looking for the line that is not valid text
_PARSE_BATCH_SIZE = 4096  # records per tf.io.parse_example call
_PANDAS_DTYPES = {"int64": np.int64, "float32": np.float32, "string": str, "int64_list": str}
_TF_FEATURES = {
    "int64": tf.io.FixedLenFeature([], tf.int64),
    "float32": tf.io.FixedLenFeature([], tf.float32),
    "string": tf.io.FixedLenFeature([], tf.string),
    "int64_list": tf.io.RaggedFeature(tf.int64),
}


@dataclasses.dataclass(frozen=True)
class _Column:
    """Where a column comes from, to word its errors: ``file: column 'c' (type), line 7: ...``."""

    source: str
    name: str
    column_type: ColumnType
    row_unit: str = "row"
    first_row: int = 0

    def error(self, row: Optional[int], problem: str) -> DataError:
        where = "" if row is None else f", {self.row_unit} {self.first_row + row}"
        return DataError(f"{self.source}: column '{self.name}' ({self.column_type}){where}: {problem}")


def from_dataframe(
    df: pd.DataFrame, column_types: Mapping[str, ColumnType], *, max_length: Optional[int] = None
) -> FeatureDict:
    """The ``column_types`` columns of a DataFrame as a feature dictionary.

    Args:
      df: one row per example. ``int64_list`` cells are lists/arrays or ``"3|17"`` strings.
      column_types: the columns to return and their types.
      max_length: width of ``int64_list`` columns (default: the longest row).

    Returns:
      The feature dictionary; missing strings become ``""``.

    Raises:
      DataError: a column is missing or holds a value of the wrong type (names the row).
      ValueError: an unknown column type or a bad ``max_length``.
    """
    return convert_columns(df, column_types, source="DataFrame", row_unit="row", first_row=0, max_length=max_length)


def read_csv(
    path: str | Path, column_types: Mapping[str, ColumnType], *, max_length: Optional[int] = None
) -> FeatureDict:
    """Reads a delimited file with a header row (see :func:`read_delimited`): fields separated by
    commas, or by tabs for a ``.tsv`` file (:func:`tfrec_pipelines.formats.csv_delimiter`)."""
    return read_delimited(path, column_types, sep=csv_delimiter(str(path)), max_length=max_length)


def read_delimited(
    path: str | Path,
    column_types: Mapping[str, ColumnType],
    *,
    sep: str = ",",
    names: Optional[Sequence[str]] = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
    max_length: Optional[int] = None,
    unique: Sequence[str] = (),
) -> FeatureDict:
    """Reads a delimited text file with pandas' C parser and explicit dtypes.

    Numeric columns are parsed straight into ``int64``/``float32``; only when that fails
    is the file read again as text to find and name the first bad line.

    Args:
      path: the file.
      column_types: the columns to return and their types.
      sep: the field separator; a multi-character one (MovieLens' ``"::"``) is supported.
      names: the names of all fields of a headerless file, in order; ``None`` when the
        first line is a header.
      encoding: the text encoding (MovieLens item files are ``"latin-1"``).
      quoting: a :mod:`csv` quoting constant; ``csv.QUOTE_NONE`` for files whose text
        fields may hold a bare ``"``.
      max_length: width of ``int64_list`` columns (default: the longest row).
      unique: columns of ``column_types`` whose values must not repeat (key columns).

    Returns:
      The feature dictionary.

    Raises:
      FileNotFoundError: ``path`` is not a file.
      DataError: the file is empty or has no data rows, is not valid ``encoding`` text
        (names the line), a column is missing (a header without it, or too few fields
        per line), a line has the wrong number of fields, a value does not parse as its
        column's type or does not fit in it (names the line), or a ``unique`` column
        repeats a value (names both lines).
      ValueError: an unknown column type, a bad ``max_length``, or a ``unique`` column
        that is not in ``column_types``.
    """
    path = Path(path)
    _check_column_types(column_types)
    not_read = [name for name in unique if name not in column_types]
    if not_read:
        raise ValueError(f"`unique` names columns {not_read} that are not in `column_types` ({list(column_types)}).")
    expected = _describe(column_types)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a file with columns {expected}.")
    content = None
    if len(sep) > 1:
        content = path.read_bytes().replace(sep.encode(encoding), _SUBSTITUTE_SEPARATOR.encode(encoding))
        sep = _SUBSTITUTE_SEPARATOR

    def read(**kwargs) -> pd.DataFrame:
        options = dict(sep=sep, encoding=encoding, quoting=quoting, index_col=False, na_filter=False)
        if names is not None:
            options.update(header=None, names=list(names))
        options.update(kwargs)
        try:
            return pd.read_csv(path if content is None else io.BytesIO(content), **options)
        except UnicodeDecodeError as e:
            raise _decoding_error(path, encoding, e) from None

    try:
        head = read(nrows=1, header=None, names=None) if names is not None else read(nrows=0)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; expected columns {expected}.") from None
    if names is not None:
        _check_field_count(path, head.shape[1], list(names), column_types)
    else:
        missing = [name for name in column_types if name not in head.columns]
        if missing:
            raise DataError(
                f"{path} has no column '{missing[0]}' (expected {column_types[missing[0]]}); "
                f"its header has {list(head.columns)}."
            )

    # Every field is parsed (unused ones as cheap categoricals): with `usecols`, pandas would
    # silently accept a line with too many fields instead of naming it.
    fields = list(names) if names is not None else list(head.columns)
    try:
        frame = read(dtype={f: _PANDAS_DTYPES[column_types[f]] if f in column_types else "category" for f in fields})
    except pd.errors.ParserError as e:  # names the line, e.g. "Expected 4 fields in line 7, saw 5"
        raise DataError(f"{path}: {str(e).strip()}") from None
    except DataError:
        raise
    except (ValueError, OverflowError):  # a value that is not of its dtype: found and named by convert_columns
        frame = read(dtype=str)
    if len(frame) == 0:
        raise DataError(f"{path} has no data rows; expected columns {expected}.")
    first_line = 1 if names is not None else 2
    features = convert_columns(
        frame, column_types, source=str(path), row_unit="line", first_row=first_line, max_length=max_length
    )
    for name in unique:
        _check_unique(features[name], _Column(str(path), name, column_types[name], "line", first_line))
    return features


def read_parquet(
    path: str | Path, column_types: Mapping[str, ColumnType], *, max_length: Optional[int] = None
) -> FeatureDict:
    """Reads a Parquet file (or a directory of Parquet files).

    Args:
      path: the file or directory.
      column_types: the columns to return and their types. ``int64_list`` columns may be
        Parquet list columns or ``"3|17|42"`` strings; null lists are empty.
      max_length: width of ``int64_list`` columns (default: the longest row).

    Returns:
      The feature dictionary; null strings become ``""``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      DataError: the file is empty, not Parquet or corrupt (names the file), has no rows,
        lacks a column, or holds a value of the wrong type (names the row).
      ValueError: an unknown column type or a bad ``max_length``.
    """
    path = Path(path)
    _check_column_types(column_types)
    expected = _describe(column_types)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; expected Parquet with columns {expected}.")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path} is empty; expected Parquet with columns {expected}.")
    try:
        dataset = pa_dataset.dataset(path, format="parquet")
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a non-Parquet file
        raise DataError(f"{path} is not a readable Parquet file: {e}") from None
    missing = [name for name in column_types if name not in dataset.schema.names]
    if missing:
        raise DataError(
            f"{path} has no column '{missing[0]}' (expected {column_types[missing[0]]}); "
            f"its columns are {dataset.schema.names}."
        )
    try:
        table = dataset.to_table(columns=list(column_types))
    except Exception as e:  # a corrupt page raises OSError, ArrowInvalid, ...
        raise _unreadable_parquet_error(path, dataset, list(column_types), e) from None
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows; expected columns {expected}.")
    return convert_columns(
        table.to_pandas(), column_types, source=str(path), row_unit="row", first_row=0, max_length=max_length
    )


def read_tfrecord(
    path_or_glob: str | Path,
    column_types: Mapping[str, ColumnType],
    *,
    max_length: Optional[int] = None,
) -> FeatureDict:
    """Reads ``tf.train.Example`` records from one file or every file of a glob (in name order).

    Args:
      path_or_glob: a TFRecord file, or a glob such as ``"out/part-*.tfrecord"``.
      column_types: the features to return and their types. Scalar features must hold
        exactly one value; ``int64_list`` features any number (none when absent).
      max_length: width of ``int64_list`` columns (default: the longest row).

    Returns:
      The feature dictionary, rows in file then record order.

    Raises:
      FileNotFoundError: nothing matches ``path_or_glob``.
      DataError: there are no records, a file is corrupt, or a record lacks a feature
        or holds the wrong kind or number of values (names file, record and feature).
      ValueError: an unknown column type or a bad ``max_length``.
    """
    _check_column_types(column_types)
    _check_max_length(max_length)
    files = sorted(tf.io.gfile.glob(str(path_or_glob)))
    if not files:
        raise FileNotFoundError(f"No TFRecord file matches {path_or_glob}.")
    spec = {name: _TF_FEATURES[t] for name, t in column_types.items()}
    batches: Dict[str, list] = {name: [] for name in column_types}
    lengths: Dict[str, list] = {name: [] for name, t in column_types.items() if t == "int64_list"}
    for file in files:
        records = tf.data.TFRecordDataset(file).batch(_PARSE_BATCH_SIZE).map(lambda b: tf.io.parse_example(b, spec))
        try:
            for parsed in records:
                for name, values in parsed.items():
                    if name in lengths:
                        batches[name].append(values.flat_values.numpy())
                        lengths[name].append(values.row_lengths().numpy())
                    else:
                        batches[name].append(values.numpy())
        except tf.errors.InvalidArgumentError as e:
            raise _tfrecord_error(file, column_types, e) from None
        except tf.errors.DataLossError as e:
            raise DataError(f"{file} is not a valid TFRecord file: {e.message}") from None
    if not any(len(b) for b in batches[next(iter(column_types))]):
        raise DataError(f"{path_or_glob} holds no records; expected features {_describe(column_types)}.")
    features: FeatureDict = {}
    for name, column_type in column_types.items():
        values = np.concatenate(batches[name])
        if column_type == "int64_list":
            features[name] = left_pad(values, np.concatenate(lengths[name]), max_length)
        elif column_type == "string":
            features[name] = np.array([v.decode("utf-8") for v in values], dtype=object)
        else:
            features[name] = values
    return features


def write_tfrecord(features: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Writes a feature dictionary as one ``tf.train.Example`` per row.

    Column types follow the arrays: integer ``[N]`` → one int64, integer ``[N, L]``
    (``int64_list``) → its non-zero items (the 0 padding is dropped, so readers see the
    true length), float ``[N]`` → one float, strings ``[N]`` → one UTF-8 bytes value.

    Args:
      features: the feature dictionary.
      path: the output file.

    Raises:
      DataError: a column of another dtype or rank.
    """
    n = num_rows(features)
    columns: Dict[str, list] = {}
    for name, values in features.items():
        values = np.asarray(values)
        if values.dtype.kind in "iu" and values.ndim == 2:
            columns[name] = [tf.train.Feature(int64_list=tf.train.Int64List(value=row[row != 0])) for row in values]
        elif values.dtype.kind in "iu" and values.ndim == 1:
            columns[name] = [tf.train.Feature(int64_list=tf.train.Int64List(value=[v])) for v in values.tolist()]
        elif values.dtype.kind == "f" and values.ndim == 1:
            columns[name] = [tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for v in values.tolist()]
        elif values.dtype.kind in "OUS" and values.ndim == 1:
            columns[name] = [
                tf.train.Feature(bytes_list=tf.train.BytesList(value=[v if isinstance(v, bytes) else str(v).encode()]))
                for v in values.tolist()
            ]
        else:
            raise DataError(
                f"Cannot write column '{name}' of dtype {values.dtype} and shape {values.shape}: "
                "expected int [N], int [N, L], float [N] or strings [N]."
            )
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in range(n):
            feature = {name: column[row] for name, column in columns.items()}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def left_pad(values: np.ndarray, lengths: np.ndarray, max_length: Optional[int] = None) -> np.ndarray:
    """Variable-length rows as a left-0-padded matrix, most recent (last) item in the last column.

    Args:
      values: ``int64 [sum(lengths)]`` the rows' items, concatenated.
      lengths: ``int [N]`` the length of each row.
      max_length: the width ``L``; longer rows keep their last ``L`` items.
        Default: the longest row.

    Returns:
      ``int64 [N, L]``.
    """
    _check_max_length(max_length)
    lengths = np.asarray(lengths, np.int64)
    width = int(lengths.max(initial=0)) if max_length is None else max_length
    padded = np.zeros((len(lengths), width), np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    from_end = np.cumsum(lengths)[row] - 1 - np.arange(len(row))  # 0 for each row's last item
    keep = from_end < width
    padded[row[keep], width - 1 - from_end[keep]] = np.asarray(values, np.int64)[keep]
    return padded


def convert_columns(
    frame: pd.DataFrame,
    column_types: Mapping[str, ColumnType],
    *,
    source: str,
    row_unit: str,
    first_row: int,
    max_length: Optional[int],
) -> FeatureDict:
    _check_column_types(column_types)
    _check_max_length(max_length)
    features: FeatureDict = {}
    for name, column_type in column_types.items():
        if name not in frame.columns:
            raise DataError(
                f"{source} has no column '{name}' (expected {column_type}); its columns are {list(frame.columns)}."
            )
        column = _Column(source, name, column_type, row_unit, first_row)
        series = frame[name].reset_index(drop=True)
        if column_type == "int64":
            features[name] = _to_int64(series, column)
        elif column_type == "float32":
            features[name] = _to_float32(series, column)
        elif column_type == "string":
            features[name] = _to_string(series)
        else:
            features[name] = left_pad(*_to_int64_rows(series, column), max_length)
    return features


def _to_int64(series: pd.Series, column: _Column) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series) or not (
        pd.api.types.is_numeric_dtype(series)
        or pd.api.types.is_string_dtype(series)
        or pd.api.types.is_object_dtype(series)
    ):
        raise column.error(None, f"a column of dtype {series.dtype} cannot be read as int64")
    missing = series.isna().to_numpy()
    if missing.any():
        raise column.error(int(np.argmax(missing)), "missing value")
    if pd.api.types.is_unsigned_integer_dtype(series):
        _check_int64_range(series.to_numpy(np.uint64), series, column)
    if pd.api.types.is_integer_dtype(series):
        return series.to_numpy(np.int64)
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy(np.float64)
        bad = ~np.isfinite(values) | (values != np.floor(values))
        if bad.any():
            raise column.error(int(np.argmax(bad)), f"{values[bad][0].item()!r} is not an integer")
        _check_int64_range(values, series, column)
        return values.astype(np.int64)
    text = series.astype(str)
    bad = ~text.str.fullmatch(_INTEGER).to_numpy(bool)
    if bad.any():
        first = int(np.argmax(bad))
        raise column.error(first, f"{series.iloc[first]!r} is not an integer")
    long = text.str.len().to_numpy() > 18  # only integers of 19 digits or more can be outside int64
    if long.any():
        values = np.zeros(len(text), dtype=object)
        values[long] = [int(value) for value in text[long]]
        _check_int64_range(values, series, column)
    return text.to_numpy(dtype=str).astype(np.int64)


def _check_int64_range(values: np.ndarray, series: pd.Series, column: _Column) -> None:
    """Raises naming the first of ``values`` (the numbers in ``series``) outside int64."""
    outside = (values < _INT64_MIN) | (values >= _INT64_MAX + 1)  # exact for floats too: 2**63 is a float64
    if outside.any():
        first = int(np.argmax(outside))
        value = series.iloc[first : first + 1].tolist()[0]  # a Python scalar: its repr is the file's text
        raise column.error(first, f"{value!r} does not fit in int64 (from {_INT64_MIN} to {_INT64_MAX})")


def _to_float32(series: pd.Series, column: _Column) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.to_numpy(np.float32, na_value=np.nan)
    values = pd.to_numeric(series.astype(str), errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = np.isnan(values)
    if bad.any():
        first = int(np.argmax(bad))
        raise column.error(first, f"{series.iloc[first]!r} is not a number")
    return values.astype(np.float32)


def _to_string(series: pd.Series) -> np.ndarray:
    missing = series.isna()
    if missing.any():
        series = series.astype(object).where(~missing, "")
    return series.astype(str).to_numpy(dtype=object)


def _to_int64_rows(series: pd.Series, column: _Column) -> tuple[np.ndarray, np.ndarray]:
    """``(values, lengths)`` of a column of ``"3|17"`` strings or of list-like cells."""
    cells = series.to_numpy(dtype=object)
    missing = pd.isna(series).to_numpy(bool)
    if not pd.api.types.is_string_dtype(series) and not all(
        isinstance(cell, str) or absent for cell, absent in zip(cells, missing)
    ):
        rows = []
        for index, (cell, absent) in enumerate(zip(cells, missing)):
            row = np.zeros(0, np.int64) if absent else np.asarray(cell).ravel()
            integral = row.dtype.kind in "iu" or (row.dtype.kind == "f" and bool(np.all(row == np.floor(row))))
            if not integral:
                raise column.error(index, f"{cell!r} is not a list of integers")
            rows.append(row.astype(np.int64))
        return np.concatenate(rows), np.array([len(row) for row in rows], np.int64)
    text = np.where(missing, "", cells).astype(object)
    strings = pd.Series(text, dtype=object).str
    bad = ~strings.fullmatch(_INTEGER_LIST).to_numpy(bool)
    if bad.any():
        first = int(np.argmax(bad))
        raise column.error(first, f"{cells[first]!r} is not a '{LIST_SEPARATOR}'-separated list of integers")
    empty = text == ""
    lengths = np.where(empty, 0, strings.count(re.escape(LIST_SEPARATOR)).to_numpy(np.int64) + 1)
    if empty.all():
        return np.zeros(0, np.int64), lengths
    return np.array(LIST_SEPARATOR.join(text[~empty]).split(LIST_SEPARATOR)).astype(np.int64), lengths


def _check_unique(values: np.ndarray, column: _Column) -> None:
    """Raises naming the first value of ``column`` that repeats an earlier one, and both places."""
    _, first_index, inverse = np.unique(values, return_index=True, return_inverse=True)
    repeats = np.ones(len(values), bool)
    repeats[first_index] = False
    if repeats.any():
        row = int(np.argmax(repeats))
        earlier = column.first_row + int(first_index[inverse[row]])
        raise column.error(
            row,
            f"{values[row : row + 1].tolist()[0]!r} already appears on {column.row_unit} {earlier}; each "
            f"{column.name} must appear once ({column.row_unit}s repeating an earlier one: {int(repeats.sum())})",
        )


def _decoding_error(path: Path, encoding: str, error: UnicodeDecodeError) -> DataError:
    """The first line of ``path`` that is not valid ``encoding`` text, in words (read in chunks)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    lines_before = 0
    with path.open("rb") as file:
        while True:
            chunk = file.read(_DECODE_CHUNK_BYTES)
            try:
                lines_before += decoder.decode(chunk, final=not chunk).count("\n")
            except UnicodeDecodeError as e:  # e.object: the undecoded bytes, from the last complete character
                lines_before += e.object[: e.start].decode(encoding).count("\n")
                bad = " ".join(f"0x{byte:02x}" for byte in e.object[e.start : e.end])
                return DataError(
                    f"{path}: line {lines_before + 1} is not valid {encoding} text ({bad}: {e.reason}); "
                    f"expected a {encoding}-encoded file."
                )
            if not chunk:
                return DataError(f"{path} is not valid {encoding} text: {error}")


def _unreadable_parquet_error(path: Path, dataset: pa_dataset.Dataset, columns: list, error: Exception) -> DataError:
    """Names the Parquet file of ``dataset`` that cannot be read (one file or one of a directory)."""
    for fragment in dataset.get_fragments():
        try:
            fragment.to_table(schema=dataset.schema, columns=columns)
        except Exception as e:  # as in read_parquet: OSError, ArrowInvalid, ...
            return DataError(f"{fragment.path} is not a readable Parquet file: {e}")
    return DataError(f"{path}: its Parquet files cannot be read together: {error}")


def _tfrecord_error(file: str, column_types: Mapping[str, ColumnType], error: Exception) -> DataError:
    """The first record of ``file`` that does not match ``column_types``, in words."""
    expected_kind = {"int64": "int64_list", "int64_list": "int64_list", "float32": "float_list", "string": "bytes_list"}
    for index, raw in enumerate(tf.data.TFRecordDataset(file).as_numpy_iterator()):
        example = tf.train.Example.FromString(raw).features.feature
        for name, column_type in column_types.items():
            if name not in example:
                if column_type != "int64_list":
                    return DataError(f"{file}: record {index} has no feature '{name}' (expected {column_type}).")
                continue
            kind = example[name].WhichOneof("kind")
            if kind != expected_kind[column_type]:
                return DataError(f"{file}: record {index}, feature '{name}' holds {kind}, expected {column_type}.")
            count = len(getattr(example[name], kind).value)
            if column_type != "int64_list" and count != 1:
                return DataError(
                    f"{file}: record {index}, feature '{name}' holds {count} values, expected one {column_type}."
                )
    return DataError(f"{file}: the records do not match {_describe(column_types)}: {error}")


def _check_column_types(column_types: Mapping[str, ColumnType]) -> None:
    if not column_types:
        raise ValueError("`column_types` must name at least one column. Received: {}")
    for name, column_type in column_types.items():
        if column_type not in _COLUMN_TYPES:
            raise ValueError(f"Column '{name}' has unknown type {column_type!r}; expected one of {_COLUMN_TYPES}.")


def _check_max_length(max_length: Optional[int]) -> None:
    if max_length is not None and (
        not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool) or max_length < 1
    ):
        raise ValueError(f"`max_length` must be a positive int or None. Received: {max_length!r}")


def _check_field_count(path: Path, fields: int, names: list, column_types: Mapping[str, ColumnType]) -> None:
    if fields == len(names):
        return
    if fields < len(names):
        absent = names[fields]
        expected = f" ({column_types[absent]})" if absent in column_types else ""
        raise DataError(
            f"{path} has {fields} fields per line, expected {len(names)} ({', '.join(names)}): "
            f"column '{absent}'{expected} is missing."
        )
    raise DataError(f"{path} has {fields} fields per line, expected {len(names)} ({', '.join(names)}).")


def _describe(column_types: Mapping[str, ColumnType]) -> str:
    return ", ".join(f"{name} ({column_type})" for name, column_type in column_types.items())

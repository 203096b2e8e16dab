"""Input side of the batch embedding job: feature files → validated row chunks, bad rows → dead letters.

The job reads *read units*: a Parquet row group, or a whole CSV or TFRecord file (shard big corpora
into many files). :class:`ListReadUnits` opens each file once to list its units; :class:`ReadRowChunks`
reads a unit in chunks of at most ``chunk_rows`` rows and checks every value against the reader
column type of the signature input it feeds (:func:`tfrec_pipelines.candidate_table.column_types`), or
of the id column. Valid rows leave as :class:`RowChunk`; every row or record that cannot be embedded,
and every file that cannot be read, leaves on the ``dead_letter`` output as a :func:`dead_letter`
dictionary (source file, row, the row or record, the reason), so nothing is dropped silently and no
bad input fails the job. A row's reason names the file, the row, each bad column and what it expected.

What a value must be. A value passes when the input holds it exactly; otherwise (and for every null)
its row is a dead letter. Parquet values and TFRecord features are typed, and the type must fit:

==============  ======================================================================================
column type     accepted values
==============  ======================================================================================
``int64``       integers within the int64 range (unsigned ones up to 2**63 - 1) and floats without a
                fraction within it (``3.0`` is 3; ``2.5``, ``nan`` and ``1e19`` are not)
``float32``     floats, rounded to the nearest float32 when that is finite (``nan``, ``inf`` and
                ``1e39`` are not); integers of magnitude up to 2**24, each exactly a float32
``string``      text, or bytes that are UTF-8 text. A list of strings only for a feature the export's
                ``feature_spec`` (in its metadata) declares multi-valued with a separator, e.g.
                ``genres`` read as ``"Action|Comedy"``: the list is joined with that separator when no
                element is empty or holds it (the model splits the text back into the same values);
                ``[]`` is ``""``. Without such a declaration a list is a dead letter.
``int64_list``  lists of values accepted as ``int64`` (a null element is not); ``[]`` is no items
==============  ======================================================================================

A string is never read as a number, a number never as a string, and a boolean as neither. TFRecord
features must hold the matching kind (``int64_list``, ``float_list``, ``bytes_list``) and one value,
except ``int64_list`` inputs (any number; an absent feature is ``[]``) and separator-declared string
features (several values are joined as above, none is ``""``). CSV cells are text, read with the
rules of :mod:`tfrec_pipelines.readers`: an integer literal for ``int64``, a number for ``float32`` (finite
as a float32), ``"3|17"`` for ``int64_list`` (an empty field is no items), any text for ``string``
(an empty field is ``""``); an empty field is no value for ``int64`` and ``float32``. The id column,
when it is not a signature input, follows the same rules for its id dtype, and is written with that
type.

A file that cannot be opened or decoded (a damaged Parquet footer, a CSV that is not UTF-8 or has no
header line, a TFRecord file whose first record is corrupt) is one dead letter naming it, wherever it
comes in the inputs (a Parquet row group that cannot be decoded: one naming the file and the row
group); :func:`check_source_columns` skips such files when it checks the columns before
the job starts. Files are opened through Beam's ``FileSystems``, so local paths and ``gs://``/``s3://``
work alike.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tfrec_towers.extras import missing_extra

try:
    import apache_beam as beam
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.metrics import Metrics
except ModuleNotFoundError as e:
    raise missing_extra("beam", "The batch embedding job's readers", e) from e

from tfrec_pipelines.data import ColumnType, DataError
from tfrec_pipelines.formats import csv_delimiter, suffix_format, unknown_suffix_message
from tfrec_pipelines.readers import convert_columns, left_pad

METRICS_NAMESPACE = "tfrec_towers.embed_job"
DEAD_LETTER = "dead_letter"
_FORMAT_NAMES = {"parquet": "Parquet", "csv": "CSV", "tfrecord": "TFRecord"}
_ROW_UNITS = {"parquet": "row", "csv": "line", "tfrecord": "record"}
_EXAMPLE_KINDS = {"int64": "int64_list", "int64_list": "int64_list", "float32": "float_list", "string": "bytes_list"}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
MAX_EXACT_FLOAT32_INTEGER = 2**24
"""Integers up to this magnitude are exact float32 values, so they pass for a ``float32`` input."""
_PLACEHOLDERS = {"int64": 0, "float32": 0.0, "string": "", "int64_list": []}
MAX_RECORD_BYTES = 4096
"""Unparsable TFRecord records are kept in the dead letter base64-encoded, up to this many bytes."""

Column = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]
"""A checked column of a chunk: the reader array, or ``(values, lengths)`` for an ``int64_list``."""


def file_format(path: str) -> str:
    """``"parquet"``, ``"csv"`` or ``"tfrecord"`` from a file suffix (:data:`~tfrec_pipelines.formats.SUFFIX_FORMATS`).

    Raises:
      ValueError: for any other suffix.
    """
    fmt = suffix_format(path)
    if fmt is None:
        raise ValueError(unknown_suffix_message(path, "input", "pass the input format"))
    return fmt


@dataclasses.dataclass(frozen=True)
class ReadUnit:
    """A piece of one file read by one worker: a Parquet row group (``first_row`` = its offset) or a file."""

    path: str
    file_format: str
    row_group: Optional[int] = None
    first_row: int = 0


@dataclasses.dataclass
class RowChunk:
    """Validated rows of one read unit.

    Attributes:
      ids: ``int64 [n]`` or ``object [n]`` of ``str``, the id column.
      features: the signature's raw inputs, ``{feature: [n, ...]}`` in the reader dtypes.
      source: the file the rows come from.
      rows: ``int64 [n]`` each row's row/line/record number in ``source`` (for dead letters).
    """

    ids: np.ndarray
    features: Dict[str, np.ndarray]
    source: str
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def dead_letter(source: str, reason: str, row: Optional[int] = None, value: Any = None) -> Dict[str, Any]:
    """One dead-letter entry: ``{"source", "row", "value", "reason"}`` (``row``/``value`` None for a whole file)."""
    return {"source": source, "row": row, "value": value, "reason": reason}


def dead_letter_json(entry: Mapping[str, Any]) -> str:
    """A dead-letter entry as one JSON line (numpy values and bytes as text)."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, bytes):
            return value.decode("utf-8", "backslashreplace")
        return str(value)

    return json.dumps(dict(entry), default=plain, ensure_ascii=False)


def _kind(value: Any) -> str:
    for kinds, word in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (bytes, "bytes"),
        ((list, tuple), "a list"),
        (dict, "a struct"),
    ):
        if isinstance(value, kinds):
            return word
    return f"a {type(value).__name__}"


def _int64_value(value: Any) -> Tuple[Optional[int], Optional[str]]:
    if isinstance(value, float) and not value.is_integer():
        return None, f"{value!r} is not an integer"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"{value!r} is {_kind(value)}, expected an integer"
    if not _INT64_MIN <= value <= _INT64_MAX:
        return None, f"{value!r} is outside the int64 range"
    return int(value), None


def _float32_value(value: Any) -> Tuple[Optional[float], Optional[str]]:
    if isinstance(value, float):
        with np.errstate(over="ignore"):
            single = np.float32(value)
        if not np.isfinite(single):
            return None, f"{value!r} is not a finite float32 number"
        return float(single), None
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_EXACT_FLOAT32_INTEGER:
            return None, f"{value!r} is an integer beyond 2**24, not exactly a float32"
        return float(value), None
    return None, f"{value!r} is {_kind(value)}, expected a number"


def _string_value(value: Any, separator: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    if isinstance(value, str):
        return value, None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, f"{value!r} is not UTF-8 text"
    if not isinstance(value, (list, tuple)):
        return None, f"{value!r} is {_kind(value)}, expected a string"
    if separator is None:
        return None, f"{value!r} is a list, expected a string (the export declares no separator to join it with)"
    texts = []
    for position, item in enumerate(value):
        text, problem = _string_value(item, None) if item is not None else (None, "is missing (null)")
        if text is not None and problem is None and (text == "" or separator in text):
            problem = "is empty" if text == "" else f"holds the separator {separator!r}"
        if text is None or problem is not None:
            return None, f"{list(value)!r} cannot be joined with {separator!r}: element {position} {problem}"
        texts.append(text)
    return separator.join(texts), None


def _int64_list_value(value: Any) -> Tuple[Optional[List[int]], Optional[str]]:
    if not isinstance(value, (list, tuple)):
        return None, f"{value!r} is {_kind(value)}, expected a list of integers"
    items = []
    for position, item in enumerate(value):
        number, problem = _int64_value(item) if item is not None else (None, "is missing (null)")
        if number is None or problem is not None:
            return None, f"{list(value)!r}: element {position} {problem}"
        items.append(number)
    return items, None


def typed_value(value: Any, column_type: ColumnType, separator: Optional[str] = None) -> Tuple[Any, Optional[str]]:
    """The input value of one typed cell (Parquet or TFRecord), by the rules of this module's docstring.

    Args:
      value: the cell as a Python value (``None`` for a null).
      column_type: the reader column type of the input it feeds.
      separator: for a ``string`` input declared multi-valued, the separator a list is joined with.

    Returns:
      ``(value, None)``, or ``(None, why the value cannot be represented)``.
    """
    if value is None:
        return None, "missing value (null)"
    if column_type == "int64":
        return _int64_value(value)
    if column_type == "float32":
        return _float32_value(value)
    if column_type == "string":
        return _string_value(value, separator)
    return _int64_list_value(value)


def _as_column(values: Sequence[Any], column_type: ColumnType) -> Column:
    if column_type == "int64_list":
        lengths = np.array([len(v) for v in values], np.int64)
        return np.fromiter((x for v in values for x in v), np.int64, int(lengths.sum())), lengths
    return np.array(values, dtype={"int64": np.int64, "float32": np.float32, "string": object}[column_type])


def _take(column: Column, good: np.ndarray) -> np.ndarray:
    """The rows ``good`` (a mask) of a checked column as a reader array (``int64_list``: left-0-padded)."""
    if isinstance(column, tuple):
        values, lengths = column
        return left_pad(values[np.repeat(good, lengths)], lengths[good])
    return column if good.all() else column[good]


def _arrow_column(array: pa.Array, column_type: ColumnType) -> Optional[Column]:
    """The column when Arrow already holds it in the input's type, without nulls or bad values, else None.

    The fast path for typed Parquet: signed integers for ``int64``, finite floats for ``float32``,
    strings for ``string`` and lists of signed integers for ``int64_list``. Anything else is checked
    value by value.
    """
    kind = array.type
    if array.null_count:
        return None
    if column_type == "int64" and pa.types.is_signed_integer(kind):
        return array.to_numpy().astype(np.int64, copy=False)
    if column_type == "float32" and pa.types.is_floating(kind):
        with np.errstate(over="ignore"):
            values = array.to_numpy().astype(np.float32, copy=False)
        return values if np.isfinite(values).all() else None
    if column_type == "string" and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return array.to_numpy(zero_copy_only=False).astype(object, copy=False)
    if column_type == "int64_list" and (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        values = array.flatten()
        if pa.types.is_signed_integer(values.type) and not values.null_count:
            lengths = pc.list_value_length(array).to_numpy().astype(np.int64)
            return values.to_numpy().astype(np.int64, copy=False), lengths
    return None


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _error_text(error: Exception) -> str:
    return getattr(error, "message", None) or str(error) or type(error).__name__


def _unreadable(path: str, fmt: str, error: Exception) -> str:
    return f"{path} is not a readable {_FORMAT_NAMES[fmt]} file: {_error_text(error)}"


def _missing_columns(path: str, present: List[str], column_types: Mapping[str, ColumnType]) -> Optional[str]:
    missing = [name for name in column_types if name not in present]
    if not missing:
        return None
    return f"{path} has no column '{missing[0]}' (expected {column_types[missing[0]]}); its columns are {present}."


def _csv_reader(path: str, f: Any) -> Any:
    """A ``csv.reader`` over the binary file ``f`` of ``path``, split at its delimiter (tabs for ``.tsv``)."""
    return csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline=""), delimiter=csv_delimiter(path))


def _csv_header(path: str, reader: Any) -> List[str]:
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path} is empty: a CSV input needs a header line naming its columns.")
    return header


def _source_columns(path: str, fmt: str) -> Optional[List[str]]:
    """The column names of a Parquet or CSV file, or None for TFRecord (whose first record is read).

    Raises:
      Exception: whatever pyarrow, the csv module, TensorFlow or the file system raise for a file that
        cannot be read; DataError for a CSV file without a header line.
    """
    if fmt == "tfrecord":
        import tensorflow as tf  # after tfrec_towers (imported by pipelines/__init__)

        next(iter(tf.data.TFRecordDataset(path)), None)
        return None
    with _open(path) as f:
        if fmt == "parquet":
            return pq.ParquetFile(f).schema_arrow.names
        return _csv_header(path, _csv_reader(path, f))


def check_source_columns(paths: Sequence[str], formats: Sequence[str], column_types: Mapping[str, ColumnType]) -> None:
    """Checks that the first readable input has every needed column (TFRecord: readable is enough).

    The job calls it before it starts, so a wrong ``id_column`` or a file of another table fails at
    once instead of sending every row to the dead letter. Files that cannot be read are skipped (the
    job sends each to the dead letter).

    Args:
      paths: the input files, in the job's order.
      formats: the format of each file.
      column_types: ``{column: reader column type}`` of the columns the job reads.

    Raises:
      DataError: the first readable Parquet or CSV file lacks a column (naming it and the file's
        columns), or no input file can be read (naming every file and why).
    """
    unreadable = []
    for path, fmt in zip(paths, formats):
        try:
            present = _source_columns(path, fmt)
        except Exception as e:  # pyarrow, csv, TensorFlow and file-system errors of a damaged file
            unreadable.append(str(e) if isinstance(e, DataError) else _unreadable(path, fmt, e))
            continue
        problem = None if present is None else _missing_columns(path, present, column_types)
        if problem:
            raise DataError(problem)
        return
    raise DataError(f"None of the {len(unreadable)} input files can be read: " + "; ".join(unreadable))


class ListReadUnits(beam.DoFn):
    """File path → its :class:`ReadUnit` s (Parquet row groups; CSV/TFRecord whole files).

    An unreadable Parquet file, or one without a needed column, goes to the dead letter.
    """

    def __init__(self, fmt: Optional[str], column_types: Mapping[str, ColumnType]) -> None:
        self._format = fmt
        self._column_types = dict(column_types)
        self._files_rejected = Metrics.counter(METRICS_NAMESPACE, "files_rejected")

    def process(self, path: str) -> Iterator[Any]:
        fmt = self._format or file_format(path)
        if fmt != "parquet":
            yield ReadUnit(path, fmt)
            return
        try:
            with _open(path) as f:
                parquet = pq.ParquetFile(f)
                problem = _missing_columns(path, parquet.schema_arrow.names, self._column_types)
                sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged or non-Parquet file
            problem = _unreadable(path, fmt, e)
        if problem:
            self._files_rejected.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(path, problem))
            return
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        for group, first_row in enumerate(offsets[:-1].tolist()):
            yield ReadUnit(path, fmt, group, first_row)


Piece = Tuple[Union[pd.DataFrame, Dict[str, Any]], np.ndarray, List[Dict[str, Any]]]
"""What :meth:`ReadRowChunks._read` yields: ``(CSV text frame, or {column: Arrow array or list of
typed values}, row numbers, dead letters)``, not yet checked."""


class ReadRowChunks(beam.DoFn):
    """:class:`ReadUnit` → :class:`RowChunk` s of valid rows; bad rows and files → ``dead_letter``.

    Args:
      column_types: ``{column: reader column type}`` of the signature inputs and the id column.
      id_column: the column written next to each embedding.
      feature_names: the signature's inputs (the id column may be one of them).
      chunk_rows: rows per chunk.
      separators: ``{string input: separator}`` of the inputs the export declares multi-valued
        (a list value is joined with it); other string inputs take no list.
    """

    def __init__(
        self,
        column_types: Mapping[str, ColumnType],
        id_column: str,
        feature_names: Tuple[str, ...],
        chunk_rows: int,
        separators: Optional[Mapping[str, str]] = None,
    ) -> None:
        self._column_types = dict(column_types)
        self._id_column = id_column
        self._feature_names = tuple(feature_names)
        self._chunk_rows = chunk_rows
        self._separators = dict(separators or {})
        self._rows_read = Metrics.counter(METRICS_NAMESPACE, "rows_read")
        self._rows_rejected = Metrics.counter(METRICS_NAMESPACE, "rows_rejected")
        self._files_rejected = Metrics.counter(METRICS_NAMESPACE, "files_rejected")

    def process(self, unit: ReadUnit) -> Iterator[Any]:
        try:
            pieces = list(self._read(unit))
        except Exception as e:  # an unreadable file: one dead letter for the file, the job goes on
            self._files_rejected.inc()
            if isinstance(e, DataError):
                reason = str(e)
            elif unit.row_group is not None:
                reason = (
                    f"{unit.path}: row group {unit.row_group} (from row {unit.first_row}) cannot be read: "
                    f"{_error_text(e)}"
                )
            else:
                reason = _unreadable(unit.path, unit.file_format, e)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(unit.path, reason))
            return
        for data, rows, rejected in pieces:
            self._rows_read.inc(len(rows) + len(rejected))
            for entry in rejected:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, entry)
            self._rows_rejected.inc(len(rejected))
            for start in range(0, len(rows), self._chunk_rows):
                part = slice(start, start + self._chunk_rows)
                if isinstance(data, pd.DataFrame):
                    yield from self._check_text(unit, data.iloc[part].reset_index(drop=True), rows[part])
                else:
                    part_data = {name: values[part] for name, values in data.items()}
                    yield from self._check_typed(unit, part_data, rows[part])

    def _read(self, unit: ReadUnit) -> Iterator[Piece]:
        columns = list(self._column_types)
        if unit.file_format == "parquet":
            with _open(unit.path) as f:
                table = pq.ParquetFile(f).read_row_group(unit.row_group, columns=columns)
            first = unit.first_row
            for batch in table.to_batches(max_chunksize=self._chunk_rows):
                yield {name: batch.column(name) for name in columns}, np.arange(first, first + batch.num_rows), []
                first += batch.num_rows
        elif unit.file_format == "csv":
            yield self._read_csv(unit.path)
        else:
            yield self._read_tfrecord(unit.path)

    def _read_csv(self, path: str) -> Piece:
        """Every line with as many fields as the header is a row; other lines are dead letters."""
        with _open(path) as f:
            reader = _csv_reader(path, f)
            header = _csv_header(path, reader)
            problem = _missing_columns(path, header, self._column_types)
            if problem:
                raise DataError(problem)
            records, rows, rejected = [], [], []
            for fields in reader:
                if not fields:
                    continue  # a blank line
                if len(fields) == len(header):
                    records.append(fields)
                    rows.append(reader.line_num)
                else:
                    reason = (
                        f"{path}: line {reader.line_num}: the line has {len(fields)} fields, the header {len(header)}"
                    )
                    rejected.append(dead_letter(path, reason, reader.line_num, fields))
        frame = pd.DataFrame(records, columns=header, dtype=object)[list(self._column_types)]
        return frame, np.asarray(rows, np.int64), rejected

    def _read_tfrecord(self, path: str) -> Piece:
        """Records with the expected features are rows; other records are dead letters.

        Raises:
          tf.errors.OpError: the first record cannot be read (the file is not TFRecord).
        """
        import tensorflow as tf  # after tfrec_towers (imported by pipelines/__init__)

        records: List[Dict[str, Any]] = []
        rows: List[int] = []
        rejected: List[Dict[str, Any]] = []
        index = -1
        try:
            for index, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
                row, problem = self._example_row(raw, tf.train.Example)
                if problem is None:
                    records.append(row)
                    rows.append(index)
                else:
                    rejected.append(dead_letter(path, f"{path}: record {index}: {problem}", index, row))
        except tf.errors.OpError as e:
            if index < 0:
                raise
            reason = f"{path}: the file is corrupt after record {index}: {e.message}"
            rejected.append(dead_letter(path, reason, index + 1))
        columns = {name: [record[name] for record in records] for name in self._column_types}
        return columns, np.asarray(rows, np.int64), rejected

    def _example_row(self, raw: bytes, example_type: Any) -> Tuple[Any, Optional[str]]:
        """``(row of feature values, None)`` of a ``tf.train.Example`` record, or ``(what is known, reason)``.

        The values are not checked yet (:func:`typed_value` does): one value per scalar feature, a
        list for an ``int64_list`` input and for several values of a separator-declared string input.
        """
        try:
            features = example_type.FromString(raw).features.feature
        except Exception as e:  # protobuf DecodeError
            encoded = base64.b64encode(raw[:MAX_RECORD_BYTES]).decode("ascii")
            return {"record_base64": encoded, "record_bytes": len(raw)}, f"not a tf.train.Example: {e}"
        row: Dict[str, Any] = {}
        for name, column_type in self._column_types.items():
            if name not in features:
                if column_type == "int64_list":
                    row[name] = []
                    continue
                return row, f"feature '{name}' ({column_type}) is missing"
            kind = features[name].WhichOneof("kind")
            values = list(getattr(features[name], kind).value) if kind else []
            if kind is not None and kind != _EXAMPLE_KINDS[column_type]:
                return row, f"feature '{name}' holds {kind}, expected {column_type}"
            if column_type == "int64_list" or (name in self._separators and len(values) != 1):
                row[name] = values
            elif len(values) != 1:
                return row, f"feature '{name}' holds {len(values)} values, expected one {column_type}"
            else:
                row[name] = values[0]
        return row, None

    def _chunk(self, unit: ReadUnit, columns: Mapping[str, np.ndarray], rows: np.ndarray) -> RowChunk:
        features = {name: columns[name] for name in self._feature_names}
        return RowChunk(columns[self._id_column], features, unit.path, rows)

    def _reject(self, unit: ReadUnit, reason: str, row: int, value: Any) -> beam.pvalue.TaggedOutput:
        self._rows_rejected.inc()
        return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(unit.path, reason, row, value))

    def _check_typed(self, unit: ReadUnit, data: Mapping[str, Any], rows: np.ndarray) -> Iterator[Any]:
        """Checks typed values (Arrow arrays or lists) with :func:`typed_value`; a bad row is a dead letter."""
        where = "feature" if unit.file_format == "tfrecord" else "column"
        problems: Dict[int, List[str]] = {}
        columns: Dict[str, Column] = {}
        for name, column_type in self._column_types.items():
            values = data[name]
            column = _arrow_column(values, column_type) if isinstance(values, pa.Array) else None
            if column is None:
                cells = values.to_pylist() if isinstance(values, pa.Array) else values
                checked = []
                for position, cell in enumerate(cells):
                    value, problem = typed_value(cell, column_type, self._separators.get(name))
                    if problem is not None:
                        row = f"{_ROW_UNITS[unit.file_format]} {rows[position]}"
                        problems.setdefault(position, []).append(
                            f"{unit.path}: {where} '{name}' ({column_type}), {row}: {problem}"
                        )
                        value = _PLACEHOLDERS[column_type]
                    checked.append(value)
                column = _as_column(checked, column_type)
            columns[name] = column
        good = np.ones(len(rows), bool)
        for position in sorted(problems):
            good[position] = False
            value = {
                name: values[position].as_py() if isinstance(values, pa.Array) else values[position]
                for name, values in data.items()
            }
            yield self._reject(unit, "; ".join(problems[position]), int(rows[position]), value)
        if good.any():
            yield self._chunk(unit, {name: _take(column, good) for name, column in columns.items()}, rows[good])

    def _check_text(self, unit: ReadUnit, frame: pd.DataFrame, rows: np.ndarray) -> Iterator[Any]:
        """Converts CSV text with the readers' rules; rows that fail are sent to the dead letter one by one."""
        try:
            columns = self._convert_text(unit, frame, rows)
            good = np.ones(len(frame), bool)
        except DataError:
            good = np.zeros(len(frame), bool)
            for position in range(len(frame)):
                try:
                    self._convert_text(unit, frame.iloc[[position]], rows[position:])
                    good[position] = True
                except DataError as e:
                    yield self._reject(unit, str(e), int(rows[position]), frame.iloc[position].to_dict())
            if not good.any():
                return
            columns = self._convert_text(unit, frame[good].reset_index(drop=True), rows[good])
        yield self._chunk(unit, columns, rows[good])

    def _convert_text(self, unit: ReadUnit, frame: pd.DataFrame, rows: np.ndarray) -> Dict[str, np.ndarray]:
        """:func:`tfrec_pipelines.readers.convert_columns`, and finite ``float32`` values.

        Raises:
          DataError: naming the file, the column and the line of a value that does not convert.
        """
        first_row = int(rows[0]) if len(rows) else 0
        with np.errstate(over="ignore"):  # a value beyond the float32 range becomes inf, rejected below
            columns = convert_columns(
                frame, self._column_types, source=unit.path, row_unit="line", first_row=first_row, max_length=None
            )
        for name in (name for name, column_type in self._column_types.items() if column_type == "float32"):
            finite = np.isfinite(columns[name])
            if not finite.all():
                position = int(np.argmin(finite))
                raise DataError(
                    f"{unit.path}: column '{name}' (float32), line {rows[position]}: "
                    f"{frame[name].iloc[position]!r} is not a finite float32 number"
                )
        return columns

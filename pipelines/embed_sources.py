"""Input side of the batch embedding job: feature files → validated row chunks, bad rows → dead letters.

The job reads *read units*: a Parquet row group, or a whole CSV or TFRecord file (shard big corpora
into many files). :class:`ListReadUnits` opens each file once to list its units; :class:`ReadRowChunks`
reads a unit in chunks of at most ``chunk_rows`` rows and validates every row against the reader
column types of the signature's inputs (:func:`tfrec_towers.candidate_table.column_types`) with the
same conversion as :mod:`pipelines.readers`. Valid rows leave as :class:`RowChunk`; every row or
record that cannot be embedded, and every file that cannot be read, leaves on the ``dead_letter``
output as a :func:`dead_letter` dictionary (source file, row, the row or record, the reason), so
nothing is dropped silently and no bad input fails the job.

Files are opened through Beam's ``FileSystems``, so local paths and ``gs://``/``s3://`` work alike.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines.data import ColumnType, DataError
from pipelines.readers import convert_columns

METRICS_NAMESPACE = "tfrec_towers.embed_job"
DEAD_LETTER = "dead_letter"
FORMATS = ("parquet", "csv", "tfrecord")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tfrecord": "tfrecord",
             ".tfrecords": "tfrecord", ".tfrec": "tfrecord"}
_ROW_UNITS = {"parquet": "row", "csv": "line", "tfrecord": "record"}
_EXAMPLE_KINDS = {"int64": "int64_list", "int64_list": "int64_list", "float32": "float_list", "string": "bytes_list"}
MAX_RECORD_BYTES = 4096
"""Unparsable TFRecord records are kept in the dead letter base64-encoded, up to this many bytes."""


def file_format(path: str) -> str:
    """``"parquet"``, ``"csv"`` or ``"tfrecord"`` from a file suffix.

    Raises:
      ValueError: for any other suffix.
    """
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if suffix not in _SUFFIXES:
        raise ValueError(
            f"Cannot tell the format of {path} from its suffix {suffix!r}: use one of {sorted(_SUFFIXES)} "
            f"or pass the input format (one of {list(FORMATS)})."
        )
    return _SUFFIXES[suffix]


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


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _missing_columns(path: str, present: List[str], column_types: Mapping[str, ColumnType]) -> Optional[str]:
    missing = [name for name in column_types if name not in present]
    if not missing:
        return None
    return f"{path} has no column '{missing[0]}' (expected {column_types[missing[0]]}); its columns are {present}."


def check_source_columns(path: str, fmt: str, column_types: Mapping[str, ColumnType]) -> None:
    """Checks that a Parquet or CSV file has every needed column (TFRecord: not checked here).

    The job calls it on the first input file before it starts, so a wrong ``id_column`` or a file
    of another table fails at once instead of sending every row to the dead letter.

    Raises:
      DataError: naming the missing column and the file's columns.
    """
    if fmt == "parquet":
        with _open(path) as f:
            present = pq.ParquetFile(f).schema_arrow.names
    elif fmt == "csv":
        with _open(path) as f:
            present = list(pd.read_csv(f, nrows=0).columns)
    else:
        return
    problem = _missing_columns(path, present, column_types)
    if problem:
        raise DataError(problem)


def _arrow_columns(batch: pa.RecordBatch, column_types: Mapping[str, ColumnType]) -> Optional[Dict[str, np.ndarray]]:
    """The columns as reader arrays when Arrow already holds them typed and without nulls, else None.

    The fast path for typed Parquet: signed integer columns for ``int64``, floating for ``float32``,
    strings for ``string``. Anything else (nulls, text numbers, lists) takes the checked pandas path.
    """
    columns = {}
    for name, column_type in column_types.items():
        array = batch.column(name)
        kind = array.type
        if array.null_count:
            return None
        if column_type == "int64" and pa.types.is_signed_integer(kind):
            columns[name] = array.to_numpy().astype(np.int64, copy=False)
        elif column_type == "float32" and pa.types.is_floating(kind):
            columns[name] = array.to_numpy().astype(np.float32, copy=False)
        elif column_type == "string" and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            columns[name] = array.to_numpy(zero_copy_only=False).astype(object, copy=False)
        else:
            return None
    return columns


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
            problem = f"{path} is not a readable Parquet file: {e}"
        if problem:
            self._files_rejected.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(path, problem))
            return
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        for group, first_row in enumerate(offsets[:-1].tolist()):
            yield ReadUnit(path, fmt, group, first_row)


class ReadRowChunks(beam.DoFn):
    """:class:`ReadUnit` → :class:`RowChunk` s of valid rows; bad rows and files → ``dead_letter``.

    Args:
      column_types: ``{column: reader column type}`` of the signature inputs and the id column.
      id_column: the column written next to each embedding.
      feature_names: the signature's inputs (the id column may be one of them).
      chunk_rows: rows per chunk.
    """

    def __init__(
        self, column_types: Mapping[str, ColumnType], id_column: str, feature_names: Tuple[str, ...], chunk_rows: int
    ) -> None:
        self._column_types = dict(column_types)
        self._id_column = id_column
        self._feature_names = tuple(feature_names)
        self._chunk_rows = chunk_rows
        self._rows_read = Metrics.counter(METRICS_NAMESPACE, "rows_read")
        self._rows_rejected = Metrics.counter(METRICS_NAMESPACE, "rows_rejected")
        self._files_rejected = Metrics.counter(METRICS_NAMESPACE, "files_rejected")

    def process(self, unit: ReadUnit) -> Iterator[Any]:
        try:
            pieces = list(self._read(unit))
        except Exception as e:  # an unreadable file: one dead letter for the file, the job goes on
            self._files_rejected.inc()
            reason = str(e) if isinstance(e, DataError) else f"cannot read {unit.path}: {e}"
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(unit.path, reason))
            return
        for frame, rows, rejected in pieces:
            self._rows_read.inc(len(rows) + len(rejected))
            for entry in rejected:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, entry)
            self._rows_rejected.inc(len(rejected))
            if isinstance(frame, pa.RecordBatch):
                columns = _arrow_columns(frame, self._column_types)
                if columns is not None:
                    features = {name: columns[name] for name in self._feature_names}
                    yield RowChunk(columns[self._id_column], features, unit.path, rows)
                    continue
            table = frame.to_pandas() if isinstance(frame, pa.RecordBatch) else frame
            for start in range(0, len(table), self._chunk_rows):
                yield from self._validate(unit, table.iloc[start : start + self._chunk_rows], rows[start:])

    def _read(self, unit: ReadUnit) -> Iterator[Tuple[Any, np.ndarray, List[Dict[str, Any]]]]:
        """``(DataFrame or Arrow record batch, row numbers, dead letters)`` pieces of the unit, not yet validated."""
        columns = list(self._column_types)
        if unit.file_format == "parquet":
            with _open(unit.path) as f:
                table = pq.ParquetFile(f).read_row_group(unit.row_group, columns=columns)
            first = unit.first_row
            for batch in table.to_batches(max_chunksize=self._chunk_rows):
                yield batch, np.arange(first, first + batch.num_rows), []
                first += batch.num_rows
        elif unit.file_format == "csv":
            yield self._read_csv(unit.path)
        else:
            yield self._read_tfrecord(unit.path)

    def _read_csv(self, path: str) -> Tuple[pd.DataFrame, np.ndarray, List[Dict[str, Any]]]:
        """Every line with as many fields as the header is a row; other lines are dead letters."""
        with _open(path) as f:
            reader = csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
            header = next(reader, [])
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
                    reason = f"the line has {len(fields)} fields, the header {len(header)}"
                    rejected.append(dead_letter(path, reason, reader.line_num, fields))
        frame = pd.DataFrame(records, columns=header, dtype=object)[list(self._column_types)]
        return frame, np.asarray(rows, np.int64), rejected

    def _read_tfrecord(self, path: str) -> Tuple[pd.DataFrame, np.ndarray, List[Dict[str, Any]]]:
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
                    rejected.append(dead_letter(path, problem, index, row))
        except tf.errors.OpError as e:
            rejected.append(dead_letter(path, f"the file is corrupt after record {index}: {e.message}", index + 1))
        frame = pd.DataFrame(records, columns=list(self._column_types))
        return frame, np.asarray(rows, np.int64), rejected

    def _example_row(self, raw: bytes, example_type: Any) -> Tuple[Any, Optional[str]]:
        """``(row dict, None)`` of a ``tf.train.Example`` record, or ``(what is known, reason)``."""
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
            if column_type == "int64_list":
                row[name] = values
                continue
            if len(values) != 1:
                return row, f"feature '{name}' holds {len(values)} values, expected one {column_type}"
            value = values[0]
            if column_type == "string":
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    return row, f"feature '{name}' is not UTF-8 text: {value!r}"
            row[name] = value
        return row, None

    def _validate(self, unit: ReadUnit, frame: pd.DataFrame, rows: np.ndarray) -> Iterator[Any]:
        """Converts a frame with the readers' rules; rows that fail are sent to the dead letter one by one."""
        rows = rows[: len(frame)]
        frame = frame.reset_index(drop=True)
        missing_id = frame[self._id_column].isna().to_numpy(bool)
        try:
            if missing_id.any():
                raise DataError("missing id")
            columns = self._convert(unit, frame, int(rows[0]) if len(rows) else 0)
            good = np.ones(len(frame), bool)
        except DataError:
            good = np.zeros(len(frame), bool)
            for position in range(len(frame)):
                row = frame.iloc[[position]]
                reason = f"column '{self._id_column}' (the id): missing value" if missing_id[position] else None
                if reason is None:
                    try:
                        self._convert(unit, row, int(rows[position]))
                        good[position] = True
                        continue
                    except DataError as e:
                        reason = str(e)
                self._rows_rejected.inc()
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER, dead_letter(unit.path, reason, int(rows[position]), row.iloc[0].to_dict())
                )
            if not good.any():
                return
            columns = self._convert(unit, frame[good].reset_index(drop=True), int(rows[good][0]))
        features = {name: columns[name] for name in self._feature_names}
        yield RowChunk(columns[self._id_column], features, unit.path, rows[good])

    def _convert(self, unit: ReadUnit, frame: pd.DataFrame, first_row: int) -> Dict[str, np.ndarray]:
        return convert_columns(
            frame, self._column_types, source=unit.path, row_unit=_ROW_UNITS[unit.file_format],
            first_row=first_row, max_length=None,
        )

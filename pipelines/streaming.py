"""Interactions beyond memory: Parquet or TFRecord shards streamed through ``tf.data``.

The in-memory path (:mod:`tfrec_pipelines.interactions`) reads a whole log into pandas and derives the
histories itself. Here a log of any length is read in chunks of :data:`CHUNK_ROWS` rows inside the
input pipeline; memory depends on the chunk, the shuffle buffer and the number of distinct values,
not on the number of rows:

    files ─► [shuffle] ─► interleave(per shard: Parquet record batches | TFRecord records
             → tf.io.parse_example) ─► row filter ─► features ─► [unbatch → shuffle] ─► batch

Each feature is a :class:`~tfrec_towers.data_config.FeatureDeclaration` (the same ones as the
in-memory path) and comes out in the layout of :mod:`tfrec_pipelines.data`, under the feature's name:

==================================  =========================================================
declared kind                       column → batch tensor
==================================  =========================================================
``id``, ``categorical``, ``hashed``  integers or text → ``int64 [B]`` / ``string [B]``
``numeric``, ``bucketized``          numbers → ``int64 [B]`` / ``float32 [B]``
``multi_valued``                     text (``"Action|Comedy"``) or a list column (its values
                                     joined by the separator) → ``string [B]``
``history``                          a list column of the previous items, most recent last:
                                     its last ``max_history`` items, left-padded with 0 or
                                     ``""`` → ``int64 [B, L]`` / ``string [B, L]``
==================================  =========================================================

:func:`stream_statistics` makes one streamed pass for the vocabularies (value counts), the
numeric moments and the row count, validating every row; :func:`adapted_spec` turns them into the
adapted :class:`~tfrec_towers.features.FeatureSpec` that :func:`tfrec_towers.features.adapt` would
learn from the same rows in memory; :func:`stream_examples` gives the training batches.

Bad input is a :class:`~tfrec_pipelines.data.DataError` naming the file, the column (and the row where
there is one) and what was expected. :func:`stream_examples` checks what the shards' footers and
first records tell (columns, types, Parquet null counts) before it returns; a fault found later
while training (a corrupt block, a missing TFRecord feature, a negative weight) stops the pipeline
with a ``tf.errors.OpError`` carrying the same message. :func:`stream_statistics` reads every row,
so running it first reports any such fault as a ``DataError``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf
from google.protobuf.message import DecodeError

from tfrec_pipelines.data import DataError, RetrievalData, TrainingExamples
from tfrec_pipelines.declarations import Declarations, feature_spec
from tfrec_pipelines.tables import table_files, table_format
from tfrec_towers.config import FeaturesConfig
from tfrec_towers.data_config import FeatureDeclaration, RowFilter
from tfrec_towers.features import FeatureSpec, NumericFeature, _VocabularyFeature

CHUNK_ROWS = 16_384
"""Rows read at once from a shard (a Parquet record batch, a batch of TFRecord records)."""
MAX_INTERLEAVED_SHARDS = 8
"""Shards read at the same time when shuffling."""
TALLY_PENDING = 1 << 20
"""Per-chunk distinct values a tally holds before folding them in (and at least twice its distinct values)."""

SCALAR_KINDS = ("id", "categorical", "hashed", "numeric", "bucketized")
VOCABULARY_KINDS = ("id", "categorical", "multi_valued", "history")
_EXPECTED = {  # kind → (the column types it reads, as "dtype" or "list of dtype"; what to tell the user)
    "id": ({"int64", "string"}, "integers or text"),
    "categorical": ({"int64", "string"}, "integers or text"),
    "hashed": ({"int64", "string"}, "integers or text"),
    "numeric": ({"int64", "float32"}, "numbers"),
    "bucketized": ({"int64", "float32"}, "numbers"),
    "multi_valued": ({"string", "list of int64", "list of string"}, "text or a list of integers or text"),
    "history": ({"list of int64", "list of string"}, "a list of item ids (the previous items, most recent last)"),
    "filter": ({"int64", "string"}, "integers or text"),
    "weight": ({"int64", "float32"}, "numbers"),
}


@dataclasses.dataclass(frozen=True)
class _Column:
    """A column's type in the stream: its element dtype and whether each row holds a list."""

    dtype: str  # "int64" | "float32" | "string"
    is_list: bool

    def __str__(self) -> str:
        return f"list of {self.dtype}" if self.is_list else self.dtype


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What to read from which files, and how each column becomes a feature."""

    files: Tuple[Path, ...]
    format: str
    columns: Dict[str, _Column]
    features: Tuple[FeatureDeclaration, ...]
    row_filter: Optional[RowFilter]
    weight_column: Optional[str]
    max_history: int

    def never_null(self, column: str) -> bool:
        """Ids, integers and weights have no value to stand for a missing one."""
        ids = {d.source for d in self.features if d.kind in ("id", "history")}
        return column in ids or column == self.weight_column or self.columns[column].dtype == "int64"


@dataclasses.dataclass(frozen=True)
class ValueCounts:
    """The distinct values of a feature and how often the stream gave each, most frequent first.

    Attributes:
      values: ``[V]`` int64 ids, or ``str`` (an object array), by descending count, ties by value.
      counts: ``int64 [V]``.
    """

    values: np.ndarray
    counts: np.ndarray


@dataclasses.dataclass(frozen=True)
class Moments:
    """Count, mean and (population) variance of a numeric feature's finite values (after ``log1p``
    when declared)."""

    count: int
    mean: float
    variance: float


@dataclasses.dataclass(frozen=True)
class StreamStatistics:
    """One streamed pass over an interactions table (:func:`stream_statistics`).

    Attributes:
      rows: rows that passed the filter (the training examples of one epoch).
      rows_read: rows read.
      value_counts: per ``id``, ``categorical``, ``multi_valued`` (its separated values) and
        ``history`` feature (its items, padding left out): the values and their counts. The
        candidate id's are the corpus and its exact frequencies.
      moments: per ``numeric`` feature.
      dtypes: every feature's dtype: ``int64``, ``float32`` or ``string``.
      declarations: the declarations the pass read, by feature name.
    """

    rows: int
    rows_read: int
    value_counts: Dict[str, ValueCounts]
    moments: Dict[str, Moments]
    dtypes: Dict[str, str]
    declarations: Dict[str, FeatureDeclaration]


def stream_examples(
    path: Union[str, Path],
    *,
    format: Optional[str] = None,
    columns: Sequence[FeatureDeclaration],
    filter: Optional[RowFilter] = None,
    weight_column: Optional[str] = None,
    max_history: int = 50,
    batch_size: int,
    shuffle_buffer: int = 50_000,
    seed: int = 0,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Training batches streamed from an interactions table's shards, for ``model.fit``.

    Args:
      path: a file, a directory of shards or a glob, in Parquet or TFRecord (``tf.train.Example``).
      format: ``parquet`` or ``tfrecord``; default from the file suffixes.
      columns: the features to read, each from its column (see the module table).
      filter: keep only the rows whose column holds one of the values (compared as text).
      weight_column: a column of non-negative numbers: each example's weight in the loss.
      max_history: the history width ``L``.
      batch_size: examples per batch (the last one partial).
      shuffle_buffer: rows shuffled together: the shards are read in a shuffled order, up to
        :data:`MAX_INTERLEAVED_SHARDS` at once, and the rows they give are cut into blocks of
        this many rows, each put in a random order (a permutation of whole blocks is several
        times faster than a row-by-row ``tf.data`` shuffle buffer). 0: no shuffling, the rows
        in file order then row order (one shard after the other).
      seed: the shuffle seed; the same seed gives the same order, and each pass over the
        stream (each epoch) another one.
      repeat: repeat forever (each pass reshuffled; give ``model.fit`` its ``steps_per_epoch``).

    Returns:
      A dataset of ``{feature name: tensor [B] or [B, L]}``, or ``(features, sample_weight
      float32 [B])`` with a ``weight_column``.

    Raises:
      DataError: no file matches ``path``, a shard is unreadable, lacks a column or holds it in
        another type than the first shard, a column's type does not fit its kind, a Parquet
        footer counts nulls in an id, integer or weight column.
      ValueError: ``batch_size``, ``shuffle_buffer`` or ``max_history`` is not an int in range.
    """
    for name, value, low in (("batch_size", batch_size, 1), ("shuffle_buffer", shuffle_buffer, 0)):
        _check_int(name, value, low)
    plan = _plan(path, format, columns, filter, weight_column, max_history)
    if plan.format == "parquet":
        _check_footer_nulls(plan)
    shuffle = shuffle_buffer > 0
    files = tf.data.Dataset.from_tensor_slices([str(f) for f in plan.files])
    if shuffle:
        files = files.shuffle(len(plan.files), seed=seed, reshuffle_each_iteration=True)
    read = functools.partial(_shard_chunks, plan=plan)
    chunks = (
        files.interleave(
            read,
            cycle_length=min(len(plan.files), MAX_INTERLEAVED_SHARDS),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if shuffle
        else files.flat_map(read)
    )
    examples = chunks.map(
        lambda raw: _examples(_chunk(raw, plan), plan), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if shuffle:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        examples = tf.data.Dataset.zip(examples.rebatch(shuffle_buffer), seeds).map(
            _permuted, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    return (examples.repeat() if repeat else examples).rebatch(batch_size).prefetch(tf.data.AUTOTUNE)


def _permuted(block: Any, seed: tf.Tensor) -> Any:
    """The rows of ``block`` (features, or features and weights) in the random order of ``seed``."""
    rows = tf.shape(tf.nest.flatten(block)[0])[0]
    order = tf.argsort(tf.random.stateless_uniform([rows], seed=seed))
    return tf.nest.map_structure(lambda values: tf.gather(values, order), block)


def stream_statistics(
    path: Union[str, Path],
    *,
    format: Optional[str] = None,
    columns: Sequence[FeatureDeclaration],
    filter: Optional[RowFilter] = None,
    max_history: int = 50,
) -> StreamStatistics:
    """One pass over every row the stream gives: value counts, numeric moments and row counts.

    Memory grows with the number of distinct values, not of rows. The features are those of
    :func:`stream_examples` with the same arguments (histories cut to ``max_history``), so the
    counts are those :func:`tfrec_towers.features.adapt` would make on the streamed examples.

    Args:
      path, format, columns, filter, max_history: as for :func:`stream_examples`.

    Returns:
      The statistics (:class:`StreamStatistics`).

    Raises:
      DataError: any fault :func:`stream_examples` reports, and, naming the file, column and
        row: a null id, integer or list item, a corrupt shard, a missing or ill-typed TFRecord
        feature; or no row passes the filter.
    """
    plan = _plan(path, format, columns, filter, None, max_history)
    raw_signature = tf.TensorSpec([None], tf.string) if plan.format == "tfrecord" else _wire_signature(plan)
    summarise = tf.function(lambda raw: _chunk_summary(raw, plan), input_signature=[raw_signature], autograph=False)
    dtypes = {d.name: "string" if d.kind == "multi_valued" else plan.columns[d.source].dtype for d in plan.features}
    tallies = {d.name: _Tally(dtypes[d.name]) for d in plan.features if d.kind in VOCABULARY_KINDS}
    moments: Dict[str, Tuple[int, float, float]] = {d.name: (0, 0.0, 0.0) for d in plan.features if d.kind == "numeric"}
    rows = rows_read = 0
    for file in plan.files:
        for start, raw in _python_chunks(file, plan):
            try:
                summary = summarise(raw)
            except tf.errors.InvalidArgumentError as e:
                if plan.format != "tfrecord":
                    raise
                raise _record_error(e, file, start, raw, plan) from None
            rows_read += int(summary.pop("rows_read"))
            rows += int(summary.pop("rows"))
            for name, (values, counts) in summary.pop("counts").items():
                tallies[name].add(values, counts)
            for name, (count, mean, m2) in summary.items():
                moments[name] = _merged_moments(moments[name], (int(count), float(mean), float(m2)))
    if rows == 0 and plan.row_filter is not None:
        raise DataError(f"{path}: no row has {plan.row_filter.column!r} in {list(plan.row_filter.values)}.")
    if rows == 0:
        raise DataError(f"The interactions table {path} has no rows.")
    return StreamStatistics(
        rows=rows,
        rows_read=rows_read,
        value_counts={name: tally.result() for name, tally in tallies.items()},
        moments={
            name: Moments(count, mean, m2 / count if count else math.nan) for name, (count, mean, m2) in moments.items()
        },
        dtypes=dtypes,
        declarations={d.name: d for d in plan.features},
    )


def adapted_spec(
    declarations: Declarations, statistics: StreamStatistics, features: FeaturesConfig = FeaturesConfig()
) -> FeatureSpec:
    """The adapted feature spec of ``declarations`` from streamed statistics.

    The same spec as :func:`tfrec_pipelines.declarations.feature_spec` then
    :func:`tfrec_towers.features.adapt` on the streamed examples: vocabularies by descending count
    (ties by value), above each table owner's ``min_count`` and capped at its
    ``max_vocabulary_size``, pooled over the features sharing an embedding table; numeric means
    and variances.

    Args:
      declarations: each tower's features; every one was read by the statistics pass.
      statistics: :func:`stream_statistics` of those features.
      features: the embedding options (``embedding_dim``, ``num_oov_buckets``, ``history_pooling``,
        ``share_item_embeddings``).

    Returns:
      The adapted spec, for :func:`tfrec_towers.build.build_model`.

    Raises:
      DataError: a feature was not read by the statistics pass (or read as another kind), the
        history's ids are not of the item id's type, a ``bucketized`` feature has no
        ``boundaries`` (quantiles need the whole column), or a declaration does not fit its column.
    """
    for declaration in declarations.query + declarations.candidate:
        read = statistics.declarations.get(declaration.name)
        if read is None or _role(read) != _role(declaration):
            raise DataError(
                f"Feature {declaration.name!r} ({declaration.kind} of column {declaration.source!r}) is not one the "
                f"statistics were gathered for ({sorted(statistics.declarations)}): pass the same declarations to "
                "stream_statistics."
            )
        if declaration.kind == "bucketized" and declaration.boundaries is None:
            raise DataError(
                f"Feature {declaration.name!r}: a streamed `kind: bucketized` feature needs `boundaries` "
                "(its quantiles would need the whole column in memory)."
            )
    dtypes = statistics.dtypes
    ids = [d for d in declarations.candidate if d.kind == "id"]
    for history in (d for d in declarations.query if d.kind == "history"):
        if ids and dtypes[history.name] != dtypes[ids[0].name]:
            raise DataError(
                f"Feature {history.name!r}: the history holds {dtypes[history.name]} ids but the item id "
                f"{ids[0].name!r} is {dtypes[ids[0].name]}; they must be of one type."
            )
    empty: Dict[str, np.ndarray] = {
        "int64": np.zeros(0, np.int64),
        "float32": np.zeros(0, np.float32),
        "string": np.zeros(0, object),
    }
    schema = {
        side: {d.source: empty[dtypes[d.name]] for d in getattr(declarations, side)} for side in ("query", "candidate")
    }
    columns_only = RetrievalData(
        name="stream",
        train=TrainingExamples.of({}),
        eval_queries=schema["query"],
        eval_targets=np.zeros(0),
        seen_indptr=np.zeros(1, np.int64),
        seen_ids=np.zeros(0),
        candidates=schema["candidate"],
        query_features=tuple(schema["query"]),
        candidate_features=tuple(schema["candidate"]),
        candidate_id=ids[0].source if ids else "",
        column_types={},
    )
    spec = feature_spec(
        declarations,
        columns_only,
        embedding_dim=features.embedding_dim,
        num_oov_buckets=features.num_oov_buckets,
        history_pooling=features.history_pooling,
        share_item_embeddings=features.share_item_embeddings,
    )
    owners: Dict[str, Any] = {}
    pooled: Dict[str, List[ValueCounts]] = {}
    for feature in spec.all_features:
        if isinstance(feature, _VocabularyFeature):
            pooled.setdefault(feature.table, []).append(statistics.value_counts[feature.name])
            if feature.name == feature.table or feature.table not in owners:
                owners[feature.table] = feature
    vocabularies = {
        table: owner.vocabulary or _vocabulary(pooled[table], owner.min_count, owner.max_vocabulary_size)
        for table, owner in owners.items()
    }

    def adapted(feature: Any) -> Any:
        if isinstance(feature, _VocabularyFeature):
            return dataclasses.replace(feature, vocabulary=vocabularies[feature.table])
        if isinstance(feature, NumericFeature) and feature.mean is None:
            moments = statistics.moments[feature.name]
            return dataclasses.replace(feature, mean=moments.mean, variance=moments.variance)
        return feature

    return FeatureSpec(
        query=tuple(adapted(f) for f in spec.query),
        candidate=tuple(adapted(f) for f in spec.candidate),
        candidate_id=spec.candidate_id,
    )


def _role(declaration: FeatureDeclaration) -> tuple:
    """What a declaration makes of its column, as far as the statistics depend on it."""
    return declaration.source, declaration.kind, declaration.separator, declaration.log1p


def _vocabulary(parts: Sequence[ValueCounts], min_count: int, max_size: Optional[int]) -> Tuple:
    """Values by descending summed count (ties by value), counted at least ``min_count`` times."""
    values = np.concatenate([p.values for p in parts])
    counts = np.concatenate([p.counts for p in parts])
    summed = pd.Series(counts).groupby(values, sort=False).sum()
    unique = np.asarray(summed.index, np.int64) if values.dtype.kind in "iu" else np.asarray(summed.index).astype(str)
    counts = summed.to_numpy(np.int64)
    order = np.lexsort((unique, -counts))
    return tuple(unique[order][counts[order] >= min_count][:max_size].tolist())


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{name}` must be an int ≥ {low}. Received: {value!r}")


def _plan(
    path: Union[str, Path],
    format: Optional[str],
    declarations: Sequence[FeatureDeclaration],
    row_filter: Optional[RowFilter],
    weight_column: Optional[str],
    max_history: int,
) -> _Plan:
    _check_int("max_history", max_history, 1)
    declarations = tuple(declarations)
    if not declarations or not all(isinstance(d, FeatureDeclaration) for d in declarations):
        raise DataError(f"`columns` must be a non-empty list of FeatureDeclaration. Received: {declarations!r}")
    names = [d.name for d in declarations]
    if len(set(names)) < len(names):
        raise DataError(f"`columns` declares the features {sorted({n for n in names if names.count(n) > 1})} twice.")
    try:
        files = table_files(path, "interactions table")
    except FileNotFoundError as e:
        raise DataError(str(e)) from None
    kind = table_format(files, format, "interactions table")
    if kind == "csv":
        raise DataError(f"{files[0]}: a streamed table is Parquet or TFRecord; read CSV with the in-memory path.")
    roles: Dict[str, List[str]] = {}
    for declaration in declarations:
        roles.setdefault(declaration.source, []).append(declaration.kind)
    for column, role in ((row_filter.column if row_filter else None, "filter"), (weight_column, "weight")):
        if column is not None:
            roles.setdefault(column, []).append(role)
    listed = {c for c, kinds in roles.items() if {"history", "multi_valued"} & set(kinds)}
    schema_of = (
        functools.partial(_parquet_schema, columns=list(roles))
        if kind == "parquet"
        else functools.partial(_tfrecord_schema, listed=listed)
    )
    schemas = [(file, schema) for file in files if (schema := schema_of(file)) is not None]
    if not schemas:
        raise DataError(f"The interactions table {path} has no rows.")
    first_file, first = schemas[0]
    for file, schema in schemas:
        for column in roles:
            if column not in schema:
                raise DataError(
                    f"{file}: the interactions table has no column {column!r}; its columns are {sorted(schema)}."
                )
            if schema[column] != first[column]:
                raise DataError(
                    f"{file}: column {column!r} is {schema[column]} here but {first[column]} in {first_file}; "
                    "a column has one type in every shard."
                )
    for column, kinds in roles.items():
        for role in kinds:
            allowed, wanted = _EXPECTED[role]
            if str(first[column]) not in allowed:
                raise DataError(
                    f"{first_file}: column {column!r} is {first[column]}, but a {role} column holds {wanted}."
                )
    streamed = {c: stream_type for c in roles if (stream_type := first[c]) is not None}  # all: checked above
    return _Plan(tuple(files), kind, streamed, declarations, row_filter, weight_column, int(max_history))


def _arrow_column(arrow_type: Any) -> Optional[_Column]:
    """The stream type of a Parquet column's arrow type, or None when it has none."""

    def element(t: Any) -> Optional[str]:
        if pa.types.is_integer(t) or pa.types.is_boolean(t):
            return "int64"
        if pa.types.is_floating(t):
            return "float32"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "string"
        return None

    if pa.types.is_dictionary(arrow_type):  # e.g. a pandas categorical column
        arrow_type = arrow_type.value_type
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        dtype = element(arrow_type.value_type)
        return None if dtype is None or dtype == "float32" else _Column(dtype, True)
    dtype = element(arrow_type)
    return None if dtype is None else _Column(dtype, False)


def _parquet_schema(file: Path, columns: Sequence[str]) -> Dict[str, Optional[_Column]]:
    """The stream types of a Parquet shard's columns (from its footer); None for a column not streamed that
    no stream type holds."""
    try:
        schema = pq.read_schema(file)
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
        raise DataError(f"{file} is not a readable Parquet file: {e}") from None
    types: Dict[str, Optional[_Column]] = {}
    for name in schema.names:
        column = _arrow_column(schema.field(name).type)
        if column is None and name in columns:
            raise DataError(
                f"{file}: column {name!r} is {schema.field(name).type}; a streamed column holds integers, floats, "
                "text, or lists of integers or text."
            )
        types[name] = column
    return types


def _tfrecord_schema(file: Path, listed: set) -> Optional[Mapping[str, Optional[_Column]]]:
    """The features of the shard's first record (lists: the ``listed`` ones), or None for an empty shard."""
    try:
        records = list(tf.data.TFRecordDataset(str(file)).take(1).as_numpy_iterator())
    except tf.errors.OpError as e:
        raise DataError(f"{file} is not a valid TFRecord file: {e.message}") from None
    if not records:
        return None
    try:
        example = tf.train.Example.FromString(records[0])
    except DecodeError as e:
        raise DataError(f"{file} does not hold tf.train.Example records: {e}") from None
    dtypes = {"int64_list": "int64", "float_list": "float32", "bytes_list": "string"}
    return {
        name: _Column(dtypes[kind], name in listed)
        for name, feature in example.features.feature.items()
        if (kind := feature.WhichOneof("kind")) is not None
    }


def _check_footer_nulls(plan: _Plan) -> None:
    """Nulls counted in the Parquet footers' statistics, where no value can stand for them."""
    for file in plan.files:
        metadata = pq.ParquetFile(file).metadata
        first_row = 0
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            for index in range(row_group.num_columns):
                chunk = row_group.column(index)
                name = chunk.path_in_schema
                if name in plan.columns and not plan.columns[name].is_list and plan.never_null(name):
                    statistics = chunk.statistics
                    if statistics is not None and statistics.has_null_count and statistics.null_count:
                        values = pq.ParquetFile(file).read_row_group(group, columns=[name]).column(0)
                        row = first_row + int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
                        raise DataError(_null_message(file, name, row, plan))
            first_row += row_group.num_rows


def _null_message(file: Path, column: str, row: int, plan: _Plan) -> str:
    what = (
        "an id"
        if column in {d.source for d in plan.features if d.kind == "id"}
        else "a weight"
        if column == plan.weight_column
        else "an integer"
    )
    return f"{file}: column {column!r}, row {row} is null; {what} column needs a value in every row."


def _shard_chunks(file: tf.Tensor, plan: _Plan) -> tf.data.Dataset:
    """The raw chunks of one shard: Parquet record batches in wire form, or serialized records."""
    if plan.format == "tfrecord":
        return tf.data.TFRecordDataset(file).batch(CHUNK_ROWS)
    return tf.data.Dataset.from_generator(
        lambda name: (wire for _, wire in _parquet_chunks(Path(name.decode()), plan)),
        args=(file,),
        output_signature=_wire_signature(plan),
    )


def _python_chunks(file: Path, plan: _Plan) -> Iterator[Tuple[int, Any]]:
    """``(first row, raw chunk)`` of one shard, read in Python so that faults are :class:`DataError`."""
    if plan.format == "parquet":
        yield from _parquet_chunks(file, plan)
        return
    start = 0
    iterator = iter(tf.data.TFRecordDataset(str(file)).batch(CHUNK_ROWS))
    while True:
        try:
            records = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise DataError(f"{file} is not a valid TFRecord file after record {start}: {e.message}") from None
        yield start, records
        start += int(records.shape[0])


def _wire_signature(plan: _Plan) -> Dict[str, Dict[str, tf.TensorSpec]]:
    """A Parquet chunk as it leaves Python: strings as one buffer plus offsets, lists as values plus lengths."""
    signature = {}
    for name, column in plan.columns.items():
        values = (
            {"data": tf.TensorSpec([], tf.string), "offsets": tf.TensorSpec([None], tf.int64)}
            if column.dtype == "string"
            else {"values": tf.TensorSpec([None], tf.as_dtype(column.dtype))}
        )
        signature[name] = {**values, "lengths": tf.TensorSpec([None], tf.int64)} if column.is_list else values
    return signature


def _parquet_chunks(file: Path, plan: _Plan) -> Iterator[Tuple[int, Dict[str, Dict[str, Any]]]]:
    """``(first row, wire chunk)`` per record batch of ``file`` (see :func:`_wire_signature`)."""
    start = 0
    try:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=CHUNK_ROWS, columns=list(plan.columns)):
            wire = {}
            for name, column in plan.columns.items():
                array = batch.column(name)
                if pa.types.is_dictionary(array.type):
                    array = array.dictionary_decode()
                if column.is_list:
                    values = pc.list_flatten(array)
                    if values.null_count:
                        nulls = values.is_null().to_numpy(zero_copy_only=False)
                        parent = pc.list_parent_indices(array).to_numpy()[nulls]
                        raise DataError(
                            f"{file}: column {name!r}, row {start + int(parent[0])} holds a null item; "
                            "a list column holds values only."
                        )
                    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy().astype(np.int64)
                    wire[name] = {**_wire_values(values, column), "lengths": lengths}
                    continue
                if array.null_count:
                    if plan.never_null(name):
                        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
                        raise DataError(_null_message(file, name, start + row, plan))
                    array = pc.fill_null(array, "" if column.dtype == "string" else math.nan)
                wire[name] = _wire_values(array, column)
            yield start, wire
            start += batch.num_rows
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{file} is not a readable Parquet file (after row {start}): {e}") from None


def _wire_values(array: Any, column: _Column) -> Dict[str, Any]:
    """An arrow array without nulls as numpy values, or strings as their data buffer and offsets."""
    if column.dtype != "string":
        if pa.types.is_boolean(array.type):
            array = array.cast(pa.int64())
        return {"values": array.to_numpy(zero_copy_only=False).astype(column.dtype, copy=False)}
    if len(array) == 0:
        return {"data": b"", "offsets": np.zeros(1, np.int64)}
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    _, offsets_buffer, data = array.buffers()
    offsets = np.frombuffer(offsets_buffer, width)[array.offset : array.offset + len(array) + 1].astype(np.int64)
    first, last = int(offsets[0]), int(offsets[-1])
    payload = data.slice(first, last - first).to_pybytes() if data is not None else b""
    return {"data": payload, "offsets": offsets - first}


def _chunk(raw: Any, plan: _Plan) -> Dict[str, Union[tf.Tensor, tf.RaggedTensor]]:
    """A raw chunk as its columns: ``[n]`` tensors, lists as ``[n, None]`` ragged tensors."""
    if plan.format == "tfrecord":
        spec = {
            name: tf.io.RaggedFeature(tf.as_dtype(c.dtype), row_splits_dtype=tf.int64)
            if c.is_list
            else tf.io.FixedLenFeature([], tf.as_dtype(c.dtype))
            for name, c in plan.columns.items()
        }
        return tf.io.parse_example(raw, spec)
    columns = {}
    for name, column in plan.columns.items():
        wire = raw[name]
        if column.dtype == "string":
            offsets = wire["offsets"]
            values = tf.strings.substr(wire["data"], offsets[:-1], offsets[1:] - offsets[:-1])
        else:
            values = wire["values"]
        if column.is_list:
            values = tf.RaggedTensor.from_row_lengths(values, wire["lengths"], validate=False)
        columns[name] = values
    return columns


def _examples(chunk: Mapping[str, Any], plan: _Plan) -> Any:
    """The chunk's rows that pass the filter, as ``{feature name: [n] or [n, L]}`` (and weights ``[n]``)."""
    if plan.row_filter is not None:
        column = chunk[plan.row_filter.column]
        text = column if column.dtype == tf.string else tf.strings.as_string(column)
        keep = tf.reduce_any(tf.equal(text[:, None], tf.constant(plan.row_filter.values)[None, :]), axis=1)
        chunk = {
            name: tf.ragged.boolean_mask(values, keep)
            if isinstance(values, tf.RaggedTensor)
            else tf.boolean_mask(values, keep)
            for name, values in chunk.items()
        }
    features = {}
    for declaration in plan.features:
        values = chunk[declaration.source]
        if declaration.kind == "history":
            padding = "" if values.dtype == tf.string else tf.constant(0, values.dtype)
            values = _left_padded(values, plan.max_history, padding)
        elif isinstance(values, tf.RaggedTensor):  # a multi-valued list column
            text = values if values.dtype == tf.string else tf.strings.as_string(values)
            values = tf.strings.reduce_join(text, axis=1, separator=declaration.separator)
        features[declaration.name] = values
    if plan.weight_column is None:
        return features
    weights = tf.cast(chunk[plan.weight_column], tf.float32)
    valid = tf.debugging.assert_equal(
        tf.reduce_all(tf.math.is_finite(weights) & (weights >= 0.0)),
        True,
        message=f"weight column {plan.weight_column}: a weight must be a finite number ≥ 0",
    )
    with tf.control_dependencies([valid]):
        return features, tf.identity(weights)


def _left_padded(lists: tf.RaggedTensor, width: int, padding: Any) -> tf.Tensor:
    """``[n, width]``: each row's last ``width`` values, most recent last, left-padded with ``padding``."""
    limits, starts = lists.row_limits(), lists.row_starts()
    newest_first = tf.ragged.range(limits - 1, tf.maximum(limits - width, starts) - 1, -1)
    return tf.reverse(tf.gather(lists.values, newest_first).to_tensor(padding, shape=[None, width]), axis=[1])


def _chunk_summary(raw: Any, plan: _Plan) -> Dict[str, Any]:
    """Rows read and kept, ``(distinct values, counts)`` per vocabulary feature, ``(count, mean, M2)``
    per numeric feature (float64, finite values only)."""
    chunk = _chunk(raw, plan)
    features = _examples(chunk, plan)
    read = next(iter(chunk.values()))
    summary: Dict[str, Any] = {
        "rows_read": read.nrows() if isinstance(read, tf.RaggedTensor) else tf.shape(read, out_type=tf.int64)[0],
        "rows": tf.shape(features[plan.features[0].name], out_type=tf.int64)[0],
        "counts": {},
    }
    for declaration in plan.features:
        values = features[declaration.name]
        if declaration.kind in VOCABULARY_KINDS:
            if declaration.kind == "history":
                values = tf.reshape(values, [-1])
                values = tf.boolean_mask(values, tf.not_equal(values, "" if values.dtype == tf.string else 0))
            elif declaration.kind == "multi_valued":
                values = tf.strings.split(values, declaration.separator).flat_values
                values = tf.boolean_mask(values, tf.not_equal(values, ""))
            unique, _, counts = tf.unique_with_counts(values, out_idx=tf.int64)
            summary["counts"][declaration.name] = (unique, counts)
        elif declaration.kind == "numeric":
            x = tf.cast(values, tf.float64)
            if declaration.log1p:
                x = tf.math.log1p(tf.maximum(x, 0.0))
            x = tf.boolean_mask(x, tf.math.is_finite(x))
            count = tf.size(x, out_type=tf.int64)
            mean = tf.math.divide_no_nan(tf.reduce_sum(x), tf.cast(count, tf.float64))
            summary[declaration.name] = (count, mean, tf.reduce_sum(tf.square(x - mean)))
    return summary


def _merged_moments(a: Tuple[int, float, float], b: Tuple[int, float, float]) -> Tuple[int, float, float]:
    """Chan et al.'s pairwise update of ``(count, mean, M2)``: M2 = M2_a + M2_b + δ² n_a n_b / n."""
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    if n == 0:
        return a
    delta = mb - ma
    return n, ma + delta * nb / n, sa + sb + delta * delta * na * nb / n


class _Tally:
    """Counts of values, merged from per-chunk ``(distinct values, counts)``: the pending parts are
    folded in once they outnumber twice the distinct values so far (and :data:`TALLY_PENDING`),
    so memory stays ∝ distinct values."""

    def __init__(self, dtype: str) -> None:
        self._dtype = dtype
        self._parts: List[Tuple[tf.Tensor, tf.Tensor]] = []
        self._pending = 0
        self._distinct = 0

    def add(self, values: tf.Tensor, counts: tf.Tensor) -> None:
        self._parts.append((values, counts))
        self._pending += int(values.shape[0])
        if self._pending > max(2 * self._distinct, TALLY_PENDING):
            self._fold()

    def _fold(self) -> None:
        values = tf.concat([v for v, _ in self._parts], 0)
        unique, index = tf.unique(values, out_idx=tf.int64)
        counts = tf.math.unsorted_segment_sum(tf.concat([c for _, c in self._parts], 0), index, tf.size(unique))
        self._parts, self._distinct = [(unique, counts)], int(unique.shape[0])
        self._pending = self._distinct

    def result(self) -> ValueCounts:
        if not self._parts:
            return ValueCounts(np.zeros(0, np.int64 if self._dtype == "int64" else object), np.zeros(0, np.int64))
        self._fold()
        values, counts = (t.numpy() for t in self._parts[0])
        if values.dtype == object:
            values = np.array([v.decode("utf-8") for v in values], dtype=object)
        order = np.lexsort((values.astype(str) if values.dtype == object else values, -counts))
        return ValueCounts(values[order], counts[order].astype(np.int64))


def _record_error(
    error: tf.errors.InvalidArgumentError, file: Path, start: int, records: tf.Tensor, plan: _Plan
) -> DataError:
    """The :class:`DataError` of a chunk of TFRecord records that does not parse: its first bad record."""
    expected = ", ".join(f"{name}: {column}" for name, column in plan.columns.items())
    for offset, record in enumerate(records.numpy()):
        try:
            _chunk(tf.constant([record]), plan)
        except tf.errors.InvalidArgumentError as e:
            return DataError(f"{file}: record {start + offset}: {e.message.splitlines()[0]} (expected {expected}).")
    return DataError(
        f"{file}: records {start}–{start + len(records) - 1}: {error.message.splitlines()[0]} (expected {expected})."
    )

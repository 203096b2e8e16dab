"""A user's own interaction log (plus optional user and item attribute tables) → a retrieval data set.

The generic data path: every source, the user's files, a MovieLens release or the synthetic
generator, ends as :class:`InteractionTables` (pandas tables with named id columns), which
:func:`interaction_data` validates and splits (by the leave-last-out protocol of docs/contracts.md
unless configured otherwise, :mod:`tfrec_pipelines.splits`) into a :class:`~tfrec_pipelines.data.RetrievalData`.

Columns keep their own types: integer or string ids stay what they are in the histories, the
catalogue, the training examples and the exported model. Attribute columns become feature
columns of one :data:`~tfrec_pipelines.data.ColumnType` each: integers (and booleans) ``int64``, other
numbers ``float32``, text ``string`` (nulls ``""``), and list columns the values joined by
``|`` (a multi-valued feature, ``"Action|Comedy"``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
import pandas as pd

from tfrec_pipelines.data import (
    CodedIds,
    ColumnType,
    DataError,
    FeatureDict,
    HoldOut,
    LastInteraction,
    RetrievalData,
    split_interactions,
)
from tfrec_pipelines.splits import TestTable, time_cut, validation_rule
from tfrec_pipelines.tables import read_table
from tfrec_towers.data_config import InteractionsConfig, RowFilter, SplitConfig, TableConfig

logger = logging.getLogger(__name__)

LIST_SEPARATOR = "|"
HISTORY = "history"
UnknownItems = Literal["drop", "error"]


@dataclasses.dataclass
class InteractionTables:
    """The tables of a data set, before the split.

    Attributes:
      name: the data set's name in reports.
      interactions: one row per interaction, with the user and item columns, the timestamp column
        if any and any other column.
      users, items: attribute tables keyed by the user / item column (one row per id), or None.
      user_column, item_column: the id columns' names (the same in the attribute tables).
      timestamp_column: the time column of ``interactions``, or None for file order.
      weight_column: a per-interaction weight column of ``interactions``, or None.
      test: interactions to evaluate (``data.split.kind: given``), with the columns of
        ``interactions``, or None.
      sources: where each table came from, for messages (``{"interactions": "logs/*.parquet"}``).
    """

    name: str
    interactions: pd.DataFrame
    users: Optional[pd.DataFrame] = None
    items: Optional[pd.DataFrame] = None
    user_column: str = "user_id"
    item_column: str = "item_id"
    timestamp_column: Optional[str] = "timestamp"
    weight_column: Optional[str] = None
    sources: Dict[str, str] = dataclasses.field(default_factory=dict)
    test: Optional[pd.DataFrame] = None

    def source(self, table: str) -> str:
        return self.sources.get(table, f"the {table} table")


def read_interaction_tables(
    interactions: InteractionsConfig,
    users: TableConfig = TableConfig(),
    items: TableConfig = TableConfig(),
    name: Optional[str] = None,
    test: TableConfig = TableConfig(),
) -> InteractionTables:
    """Reads the configured tables and applies the interactions' row filter (to the test table too).

    Raises:
      FileNotFoundError: a path or glob matches nothing.
      DataError: a file is unreadable, a configured column is missing, or no row passes the filter.
    """
    if interactions.path is None:
        raise DataError("`data.interactions.path` is not set: give the interactions file, directory or glob.")
    log = read_table(interactions.path, format=interactions.format, what="interactions table")
    for role in ("user_column", "item_column", "weight_column"):
        column = getattr(interactions, role)
        if column is not None and column not in log.columns:
            raise DataError(
                f"{interactions.path}: the interactions table has no column {column!r} (`data.interactions.{role}`); "
                f"its columns are {list(log.columns)}."
            )
    timestamp = interactions.timestamp_column
    if timestamp is not None and timestamp not in log.columns:
        if timestamp != InteractionsConfig.timestamp_column:
            raise DataError(
                f"{interactions.path}: the interactions table has no column {timestamp!r} "
                f"(`data.interactions.timestamp_column`); its columns are {list(log.columns)}."
            )
        logger.info(
            "%s has no %r column: each user's interactions are taken in file order.", interactions.path, timestamp
        )
        timestamp = None
    if interactions.filter is not None:
        log = _filtered(log, interactions.filter, interactions.path)
    sources = {"interactions": interactions.path}
    test_log = None
    if test.path is not None:
        test_log = read_table(test.path, format=test.format, what="test table")
        for role in ("user_column", "item_column") + (("timestamp_column",) if timestamp is not None else ()):
            column = getattr(interactions, role)
            if column not in test_log.columns:
                raise DataError(
                    f"{test.path}: the test table (`data.test.path`) has no column {column!r} (`data.interactions.{role}`); "
                    f"its columns are {list(test_log.columns)}."
                )
        if interactions.filter is not None:
            test_log = _filtered(test_log, interactions.filter, test.path)
        sources["test"] = test.path
    attribute_tables: Dict[str, Optional[pd.DataFrame]] = {}
    for role, table, key in (("users", users, interactions.user_column), ("items", items, interactions.item_column)):
        if table.path is None:
            attribute_tables[role] = None
            continue
        frame = read_table(table.path, format=table.format, what=f"{role} table")
        if key not in frame.columns:
            raise DataError(
                f"{table.path}: the {role} table has no column {key!r} (its key, the interactions' "
                f"`{'user' if role == 'users' else 'item'}_column`); its columns are {list(frame.columns)}."
            )
        attribute_tables[role] = frame
        sources[role] = table.path
    return InteractionTables(
        name=name or _name_of(interactions.path),
        interactions=log,
        users=attribute_tables["users"],
        items=attribute_tables["items"],
        user_column=interactions.user_column,
        item_column=interactions.item_column,
        timestamp_column=timestamp,
        weight_column=interactions.weight_column,
        sources=sources,
        test=test_log,
    )


def _name_of(path: str) -> str:
    """A data set name from its path: the directory holding the file or the glob's files
    (``amazon-beauty`` for ``amazon-beauty/interactions.csv``), or the directory of shards."""
    from pathlib import Path

    cut = min((path.find(c) for c in "*?[" if c in path), default=-1)
    if cut >= 0:
        fixed = path[:cut]
        directory = Path(fixed) if fixed.endswith(("/", "\\")) else Path(fixed).parent
    else:
        directory = Path(path).parent if Path(path).suffix else Path(path)
    return directory.resolve().name or "interactions"


def _filtered(log: pd.DataFrame, row_filter: RowFilter, source: str) -> pd.DataFrame:
    if row_filter.column not in log.columns:
        raise DataError(
            f"{source}: `data.interactions.filter.column` {row_filter.column!r} is not a column of the "
            f"interactions table; its columns are {list(log.columns)}."
        )
    keep = log[row_filter.column].astype(str).isin(row_filter.values)
    logger.info(
        "Filter %s in %s: kept %d of %d interactions.",
        row_filter.column,
        list(row_filter.values),
        int(keep.sum()),
        len(log),
    )
    if not keep.any():
        seen = log[row_filter.column].astype(str).value_counts().index[:10].tolist()
        raise DataError(
            f"{source}: no interaction has {row_filter.column!r} in {list(row_filter.values)}; "
            f"its most frequent values are {seen}."
        )
    return log[keep].reset_index(drop=True)


def interaction_data(
    tables: InteractionTables,
    max_history: int = 50,
    unknown_items: UnknownItems = "drop",
    split: SplitConfig = SplitConfig(),
    validation: Literal["none", "last", "time"] = "none",
    validation_fraction: float = 0.1,
) -> RetrievalData:
    """Validates the tables and splits them into training examples and evaluated interactions.

    Every interaction is an implicit positive; each user's interactions are ordered by
    (timestamp, item id) — file order without a timestamp. ``split`` says which are evaluated:
    by default each user's last one (leave-last-out), or those from a global time cut on, or the
    test table's (:mod:`tfrec_pipelines.splits`); ``validation`` holds some training interactions out
    to validate on. The catalogue is the items table (every item, interacted or not) or, without
    one, the items of the interactions (and of the test table).

    Args:
      tables: the data set's tables (with ``test`` for ``split.kind`` ``given``).
      max_history: the history width ``L`` (items before each example, most recent last).
      unknown_items: ``drop`` (logged, counted in ``summary``) or ``error`` for interactions whose
        item is not in the items table; likewise for users missing from the users table.
      split: the ``data.split`` section.
      validation: ``none``, ``last`` or ``time`` (``data.validation``).
      validation_fraction: the share of the training time range ``validation: time`` holds out.

    Returns:
      The split; query features: the user id, ``history`` and the users table's columns;
      candidate features: the item id and the items table's columns. With a weight column, the
      training examples also hold each interaction's weight under that column's name.

    Raises:
      DataError: a null or ill-typed id, ids of different types in two tables, duplicate keys in
        an attribute table, unknown items with ``unknown_items='error'``, a timestamp that is
        neither numeric nor a date, a negative or non-numeric weight, no interaction left, a
        ``given`` split without a test table, a ``time`` cut that does not fit the timestamps.
    """
    user, item = tables.user_column, tables.item_column
    source = tables.source("interactions")
    logs = [(tables.interactions, source)]
    if split.kind == "given":
        if tables.test is None:
            raise DataError(f"{tables.name}: `data.split.kind` 'given' needs a test table (`data.test.path`).")
        logs.append((tables.test, tables.source("test")))
    user_parts: List[CodedIds] = []
    item_parts: List[CodedIds] = []
    timestamp_parts: List[np.ndarray] = []
    phase_parts: List[np.ndarray] = []
    for phase, (log, where) in enumerate(logs):
        user_parts.append(_id_column(log[user], user, where))
        item_parts.append(_id_column(log[item], item, where))
        if item_parts[-1].dtype.kind in "iu" and (item_parts[-1].values <= 0).any():
            row = _first_row(item_parts[-1], item_parts[-1].values <= 0)
            raise DataError(
                f"{where}: column {item!r}, row {row}: integer item ids must be positive (0 pads histories); "
                f"found {item_parts[-1].decode([row])[0]}. Read the ids as strings (e.g. quote them in CSV) if 0 is a "
                "real id."
            )
        timestamp_parts.append(
            _timestamps(log[tables.timestamp_column], tables.timestamp_column, where)
            if tables.timestamp_column is not None
            else np.arange(len(log), dtype=np.int64)
        )
        phase_parts.append(np.full(len(log), phase, np.int64))
    for role, parts in (("user", user_parts), ("item", item_parts)):
        if len(parts) > 1 and (parts[0].dtype.kind in "iu") != (parts[1].dtype.kind in "iu"):
            kinds = ["integers" if a.dtype.kind in "iu" else "strings" for a in parts]
            raise DataError(
                f"{tables.source('test')}: the test table's {role} ids are {kinds[1]} but the interactions' {kinds[0]}; "
                "the ids must be of one type in every table."
            )
    user_ids, item_ids = CodedIds.concatenate(user_parts), CodedIds.concatenate(item_parts)
    timestamps, phases = np.concatenate(timestamp_parts), np.concatenate(phase_parts)
    summary: Dict[str, int] = {"interactions_read": len(tables.interactions)}
    if split.kind == "given" and tables.test is not None:  # given: a test table (checked above)
        summary["test_interactions_read"] = len(tables.test)
    weights = None
    if tables.weight_column is not None:
        weights = np.ones(len(item_ids), np.float32)  # a test interaction is never a training example
        weights[: len(tables.interactions)] = _weights(
            tables.interactions[tables.weight_column], tables.weight_column, source
        )
    test: HoldOut = LastInteraction()
    if split.kind == "time":
        column = tables.timestamp_column
        test = time_cut(split, None if column is None else tables.interactions[column], column, source, timestamps)
    elif split.kind == "given":
        test = TestTable(tables.source("test"))

    users = _attribute_table(tables.users, user, user_ids, "users", tables.source("users"))
    items = _attribute_table(tables.items, item, item_ids, "items", tables.source("items"))
    keep = np.ones(len(item_ids), bool)
    for role, table, ids, key in (("item", items, item_ids, item), ("user", users, user_ids, user)):
        known = (pd.Index(table[key]).get_indexer(ids.values) >= 0)[ids.codes]  # hashed, once a distinct id
        missing = int(np.sum(~known & keep))
        summary[f"interactions_dropped_unknown_{role}"] = missing
        if missing:
            example = ids.decode(np.flatnonzero(~known)[:1])[0]
            where = tables.source("items" if role == "item" else "users")
            message = f"{missing} interactions have a {role} missing from {where} (e.g. {key} {example!r})"
            if unknown_items == "error":
                raise DataError(f"{source}: {message}; set `data.unknown_items: drop` to leave them out.")
            logger.warning("%s: dropped %s.", source, message)
        keep &= known
    if not keep.any():
        raise DataError(f"{source}: no interaction is left after dropping unknown users and items.")
    kept = slice(None) if keep.all() else keep  # all kept: views, not copies

    column_types = {**_column_types(users), **_column_types(items)}
    data = split_interactions(
        name=tables.name,
        user_ids=user_ids.take(kept),
        item_ids=item_ids.take(kept),
        timestamps=timestamps[kept],
        users=users,
        candidates=items,
        user_id=user,
        candidate_id=item,
        column_types=column_types,
        max_history=max_history,
        history=HISTORY,
        interaction_columns=(
            None if weights is None or tables.weight_column is None else {tables.weight_column: weights[kept]}
        ),
        test=test,
        validation=validation_rule(validation, validation_fraction),
        phases=phases[kept],
    )
    data.summary.update(summary)
    logger.info("%s: %s", data.name, data.summary)
    return data


def _id_column(values: pd.Series, column: str, source: str) -> CodedIds:
    """An id column coded (:class:`~tfrec_pipelines.data.CodedIds`: each distinct id made once, not once a
    row) with ``int64`` or ``object`` (str) values; nulls, fractions, mixed types and ``""`` are
    errors naming the first row that holds one."""
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"{source}: column {column!r}, row {row}: the id is null; every interaction needs one.")
    ids = CodedIds.of(values)
    if ids.dtype.kind in "iu":
        return ids
    if pd.api.types.is_float_dtype(values):
        numbers = ids.values.astype(np.float64)
        fractional = numbers != np.round(numbers)
        if fractional.any():
            row = _first_row(ids, fractional)
            raise DataError(
                f"{source}: column {column!r}, row {row}: ids must be integers or strings; "
                f"found {numbers[ids.codes[row]]!r}."
            )
        return CodedIds(ids.codes, numbers.astype(np.int64))
    not_text = np.array([not isinstance(v, str) for v in ids.values], bool)
    if not_text.any():
        row = _first_row(ids, not_text)
        bad = ids.decode([row])[0]
        raise DataError(
            f"{source}: column {column!r}, row {row}: ids must all be integers or all be strings; "
            f"found {type(bad).__name__} {bad!r} among strings."
        )
    empty = ids.values == ""
    if empty.any():
        raise DataError(
            f'{source}: column {column!r}, row {_first_row(ids, empty)}: the id is empty ("" pads histories).'
        )
    return ids


def _first_row(ids: CodedIds, bad: np.ndarray) -> int:
    """The first row of ``ids`` holding one of the values flagged in ``bad`` (``bool [U]``)."""
    return int(np.flatnonzero(bad[ids.codes])[0])


def _weights(values: pd.Series, column: str, source: str) -> np.ndarray:
    """Per-interaction weights as ``float32``: finite and non-negative numbers."""
    if not (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)):
        raise DataError(f"{source}: the weight column {column!r} must hold numbers; it holds {values.dtype}.")
    array = values.to_numpy(np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if len(bad):
        raise DataError(
            f"{source}: column {column!r}, row {int(bad[0])}: a weight must be a finite number ≥ 0; found {array[bad[0]]}."
        )
    return array.astype(np.float32)


def _timestamps(values: pd.Series, column: str, source: str) -> np.ndarray:
    """Event times as ``int64``: numbers as they are (floats by rank), dates as nanoseconds."""
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"{source}: column {column!r}, row {row}: the timestamp is null.")
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(np.int64)
    if pd.api.types.is_float_dtype(values):  # order-preserving integers: the dense rank
        return pd.Series(values).rank(method="dense").to_numpy(np.int64)
    if pd.api.types.is_datetime64_any_dtype(values):
        return _datetime_nanoseconds(values)
    parsed = pd.to_datetime(values.astype(str), errors="coerce", utc=True, format="mixed")
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError(
            f"{source}: column {column!r}, row {row}: {values.iloc[row]!r} is neither a number nor a date "
            "and time (e.g. 1700000000 or 2024-03-01T12:00:00)."
        )
    return _datetime_nanoseconds(parsed)


def _datetime_nanoseconds(values: pd.Series) -> np.ndarray:
    values = pd.Series(values)
    if values.dt.tz is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values.astype("datetime64[ns]").to_numpy().astype(np.int64)


def _attribute_table(
    frame: Optional[pd.DataFrame], key: str, interaction_ids: CodedIds, role: str, source: str
) -> FeatureDict:
    """An attribute table as feature columns keyed by ``key``; without one, the interactions' ids."""
    if frame is None:
        return {key: np.unique(interaction_ids.values[interaction_ids.used()])}
    ids = _id_column(frame[key], key, source).decode()
    if (ids.dtype.kind in "iu") != (interaction_ids.dtype.kind in "iu"):
        kinds = ["integers" if a.dtype.kind in "iu" else "strings" for a in (ids, interaction_ids)]
        raise DataError(
            f"{source}: the {role} table's {key!r} holds {kinds[0]} but the interactions' {kinds[1]}; "
            "the ids must be of one type in every table."
        )
    order = np.argsort(ids, kind="stable")
    repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(repeated):
        first, second = sorted(order[repeated[0] : repeated[0] + 2])
        raise DataError(
            f"{source}: the {role} table has {key} {ids[first]!r} twice (rows {first} and {second}); "
            "an attribute table holds one row per id."
        )
    columns: FeatureDict = {key: ids}
    for column in frame.columns:
        if column != key:
            columns[column] = _feature_column(frame[column], column, source)
    return columns


def _feature_column(values: pd.Series, column: str, source: str) -> np.ndarray:
    """An attribute column as ``int64``, ``float32`` or ``object`` (str) numpy."""
    if pd.api.types.is_bool_dtype(values):
        return values.fillna(False).to_numpy(np.int64)
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(np.int64)
    if pd.api.types.is_float_dtype(values):
        return values.to_numpy(np.float32)
    if pd.api.types.is_datetime64_any_dtype(values):
        return (_datetime_nanoseconds(values) // 10**9).astype(np.int64)
    cells = values.to_numpy(object)
    text = np.empty(len(cells), dtype=object)
    for row, cell in enumerate(cells):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            text[row] = ""
        elif isinstance(cell, str):
            text[row] = cell
        elif isinstance(cell, (list, tuple, np.ndarray)):
            text[row] = LIST_SEPARATOR.join(str(v) for v in cell if v is not None)
        else:
            raise DataError(
                f"{source}: column {column!r}, row {row}: {cell!r} ({type(cell).__name__}) in a column of text; "
                "a column holds one type."
            )
    return text


def _column_types(table: FeatureDict) -> Dict[str, ColumnType]:
    def kind(values: np.ndarray) -> ColumnType:
        if values.dtype.kind in "iu":
            return "int64"
        if values.dtype.kind == "f":
            return "float32"
        return "string"

    return {name: kind(values) for name, values in table.items()}


def id_types(data: RetrievalData, user_column: str) -> Tuple[str, str]:
    """``("int64" | "string", "int64" | "string")``: the dtypes of the user and item ids."""
    return (
        "int64" if np.asarray(data.eval_queries[user_column]).dtype.kind in "iu" else "string",
        "int64" if np.asarray(data.candidates[data.candidate_id]).dtype.kind in "iu" else "string",
    )

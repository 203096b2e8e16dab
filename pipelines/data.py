"""The in-memory contract every reader produces: feature dictionaries of numpy arrays.

A *feature dictionary* maps a feature name to a numpy array whose first axis is the
example axis. Dtypes and shapes follow the raw-feature contract of the exported SavedModel
(docs/contracts.md):

=============  ==========================  ===========================================
column type    numpy array                 example
=============  ==========================  ===========================================
``int64``      ``int64 [N]``               ``user_id``, ``movie_id``, ``age``
``float32``    ``float32 [N]``             a numeric side feature
``string``     ``object [N]`` of ``str``   ``gender``, ``genres`` ("Action|Comedy")
``int64_list`` ``int64 [N, L]``, 0-padded  ``history`` (most recent last, padded left)
``string_list`` ``object [N, L]``, ""-pad. ``history`` of string ids
=============  ==========================  ===========================================

The training examples of a split are a :class:`TrainingExamples`: a read-only mapping with the
same columns, which stores each example's user row, item row and history position (a few bytes)
instead of copies of the attribute tables and an ``[N, L]`` history matrix (``8 · L`` bytes a
row), and builds a column when it is read.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Iterator, Literal, Mapping, Optional, Protocol, Sequence, Tuple, Union, overload

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

ColumnType = Literal["int64", "float32", "string", "int64_list", "string_list"]
FeatureDict = Dict[str, np.ndarray]

logger = logging.getLogger(__name__)

HISTORY_CHUNK_ROWS = 1 << 18  # rows of [N, L] codes built at a time when histories are flattened


class DataError(ValueError):
    """Input data does not match what a reader expects: the message names the file,
    the column, the row and what was expected."""


def num_rows(features: Mapping[str, np.ndarray]) -> int:
    """Number of examples in a feature dictionary (all columns must agree) or :class:`TrainingExamples`."""
    if isinstance(features, TrainingExamples):
        return features.num_rows
    lengths = {name: len(values) for name, values in features.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Feature columns have different lengths: {lengths}")
    return next(iter(lengths.values()), 0)


@overload
def take_rows(features: Dict[str, np.ndarray], index: np.ndarray) -> FeatureDict: ...
@overload
def take_rows(features: Mapping[str, np.ndarray], index: np.ndarray) -> Mapping[str, np.ndarray]: ...
def take_rows(features: Mapping[str, np.ndarray], index: np.ndarray) -> Mapping[str, np.ndarray]:
    """Rows ``index`` of every column (of :class:`TrainingExamples`: the same kind of table, still unbuilt)."""
    if isinstance(features, TrainingExamples):
        return features.take(index)
    return {name: values[index] for name, values in features.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class CodedIds:
    """An id column as codes into its values: row ``r`` holds ``values[codes[r]]``.

    A log of ``R`` interactions with ``U`` distinct ids is ``R`` small integers and ``U`` ids,
    not ``R`` Python strings. ``values`` may repeat an id (e.g. after :meth:`concatenate`) or
    hold ids no row uses any more (after :meth:`take`).

    Attributes:
      codes: ``int32 [R]`` (``int64`` beyond 2**31 values) each row's position in ``values``.
      values: ``[U]`` the ids, ``int64`` or ``object`` (``str``).
    """

    codes: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, ids: Union[np.ndarray, pd.Series, "CodedIds"]) -> "CodedIds":
        """``ids`` coded (coded ids as they are): integers (and booleans) as ``int64`` values, anything
        else as ``object``; a pandas column is coded where it is stored (no Python object a row)."""
        if isinstance(ids, CodedIds):
            return ids
        ids = ids if isinstance(ids, pd.Series) else np.asarray(ids)
        integers = pd.api.types.is_integer_dtype(ids.dtype) or pd.api.types.is_bool_dtype(ids.dtype)
        codes, values = pd.factorize(ids, use_na_sentinel=False)
        return cls(_narrow(codes, len(values)), np.asarray(values, np.int64 if integers else object))

    @classmethod
    def concatenate(cls, parts: Sequence["CodedIds"]) -> "CodedIds":
        """The rows of ``parts`` one after the other (their values side by side)."""
        offsets = np.cumsum([0] + [len(part.values) for part in parts])
        values = np.concatenate([part.values for part in parts])
        codes = np.concatenate([part.codes.astype(np.int64) + offset for part, offset in zip(parts, offsets)])
        return cls(_narrow(codes, len(values)), values)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def take(self, rows: Union[np.ndarray, slice]) -> "CodedIds":
        """The rows ``rows`` (positions, or a boolean mask)."""
        return CodedIds(self.codes[rows], self.values)

    def decode(self, rows: Union[np.ndarray, Sequence[int], slice] = slice(None)) -> np.ndarray:
        """The ids of the rows ``rows`` (default all)."""
        return self.values[self.codes[rows]]

    def used(self) -> np.ndarray:
        """``bool [U]``: which values some row holds."""
        return np.bincount(self.codes, minlength=len(self.values)) > 0


def _narrow(codes: np.ndarray, count: int) -> np.ndarray:
    """Codes into ``count`` values (:class:`CodedIds`) as ``int32`` when they fit, else ``int64``."""
    return codes.astype(np.int32 if count < 2**31 else np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class Lookup:
    """A column read through a per-example index: ``table[rows]``, or the index itself without a table.

    Attributes:
      index: the position of the index in :attr:`TrainingExamples.indexes`.
      table: ``[T]`` the values (an attribute column of the users or the items table), or None:
        the index holds the column's values (e.g. an interaction's weight).
    """

    index: int
    table: Optional[np.ndarray] = None

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The column of the examples whose index entries are ``rows``."""
        return rows if self.table is None else self.table[rows]

    def tokens(self, rows: np.ndarray, separator: str) -> np.ndarray:
        """``object [T]`` the non-empty pieces of the texts of ``rows`` split at ``separator``, row by
        row (what ``[t for text in read(rows) for t in str(text).split(separator) if t]`` holds),
        each table row split once: the examples share its pieces."""
        if self.table is None:
            return _split_texts(rows, separator)[0]
        pieces, counts = _split_texts(self.table, separator)
        per_row = counts[rows]
        starts = np.cumsum(counts) - counts
        within = np.arange(int(per_row.sum())) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        return pieces[np.repeat(starts[rows], per_row) + within]


def _split_texts(texts: np.ndarray, separator: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(pieces, counts)``: the non-empty pieces of every text split at ``separator``, in order
    (``object``), and how many each text gave (``int64``)."""
    split = [[piece for piece in str(text).split(separator) if piece] for text in texts]
    pieces = np.empty(sum(len(p) for p in split), object)
    pieces[:] = [piece for p in split for piece in p]
    return pieces, np.array([len(p) for p in split], np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class HistoryWindows:
    """Histories as windows of one padded item sequence: an example's history is
    ``ids[sequence[end - width : end]]``, its index entry being ``end``.

    The sequence holds ``width`` zeros, then a user's items (as 1-based catalogue rows) in time
    order, for every user in turn; an example's window ends just before its own item, so it
    holds the user's up-to-``width`` previous items, most recent last, left-padded with 0.

    Attributes:
      index: the position of the windows' ends in :attr:`TrainingExamples.indexes`.
      sequence: ``int32 [P]`` the padded item sequence (0: padding).
      ids: ``[C + 1]`` the padding value (0 or ``""``), then the candidate id of each catalogue row.
      width: ``L``, the history width.
    """

    index: int
    sequence: np.ndarray
    ids: np.ndarray
    width: int

    def codes(self, ends: np.ndarray) -> np.ndarray:
        """``int32 [len(ends), L]``: the windows ending at ``ends`` as 1-based catalogue rows (0: padding)."""
        return sliding_window_view(self.sequence, self.width)[np.asarray(ends) - self.width]

    def read(self, ends: np.ndarray) -> np.ndarray:
        """``[len(ends), L]`` the histories of the windows ending at ``ends``, as candidate ids."""
        return self.ids[self.codes(ends)]

    def most_recent(self, ends: np.ndarray) -> np.ndarray:
        """``[len(ends)]`` the latest item of each history: the padding value for an empty one."""
        return self.ids[self.sequence[np.asarray(ends) - 1]]

    def flattened(self, ends: np.ndarray) -> np.ndarray:
        """``[M]`` the items of the histories, row by row, padding left out: what
        ``read(ends).reshape(-1)`` holds besides the padding, without building the ``[N, L]`` matrix."""
        chunks = range(0, len(ends), HISTORY_CHUNK_ROWS)
        counts = [int(np.count_nonzero(self.codes(ends[a : a + HISTORY_CHUNK_ROWS]))) for a in chunks]
        values = np.empty(sum(counts), self.ids.dtype)
        position = 0
        for first, count in zip(chunks, counts):
            codes = self.codes(ends[first : first + HISTORY_CHUNK_ROWS])
            values[position : position + count] = self.ids[codes[codes != 0]]
            position += count
        return values


Column = Union[Lookup, HistoryWindows]


class TrainingExamples(Mapping[str, np.ndarray]):
    """Training examples as a read-only feature dictionary whose columns are built when read.

    Each example is a few per-example *indexes* (its user's row of the users table, its item's
    row of the catalogue, the end of its history window, its interaction columns); a column is
    one :class:`Lookup` or :class:`HistoryWindows` over one of them. ``examples[name]`` builds
    the column, every time it is read (nothing is cached): the arrays, dtypes and shapes of a
    plain feature dictionary. :meth:`take` and :meth:`select` give other examples still unbuilt,
    and a ``tf.data`` pipeline can batch the indexes and look the columns up per batch
    (:func:`tfrec_pipelines.checkpointing.training_batches`).

    Args:
      indexes: the per-example indexes, ``[N]`` each.
      columns: ``{name: column}`` in column order, each reading one of ``indexes``.

    Raises:
      ValueError: the indexes differ in length, or a column reads an index that does not exist.
    """

    def __init__(self, indexes: Sequence[np.ndarray], columns: Mapping[str, Column]) -> None:
        self.indexes: Tuple[np.ndarray, ...] = tuple(indexes)
        self.columns: Dict[str, Column] = dict(columns)
        lengths = {len(index) for index in self.indexes}
        if len(lengths) > 1:
            raise ValueError(f"The indexes of training examples have different lengths: {sorted(lengths)}")
        unknown = {name: c.index for name, c in self.columns.items() if not 0 <= c.index < len(self.indexes)}
        if unknown:
            raise ValueError(f"Columns {unknown} read indexes beyond the {len(self.indexes)} given.")
        self.num_rows = lengths.pop() if lengths else 0

    @classmethod
    def of(cls, features: Mapping[str, np.ndarray]) -> "TrainingExamples":
        """The examples of a plain feature dictionary: each column its own index.

        Raises:
          ValueError: the columns differ in length.
        """
        if isinstance(features, TrainingExamples):
            return features
        num_rows(features)
        return cls(
            [np.asarray(values) for values in features.values()],
            {name: Lookup(position) for position, name in enumerate(features)},
        )

    def __getitem__(self, name: str) -> np.ndarray:
        column = self.columns[name]
        return column.read(self.indexes[column.index])

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    def __repr__(self) -> str:
        kinds = {name: type(column).__name__ for name, column in self.columns.items()}
        return f"TrainingExamples({self.num_rows} rows, {kinds})"

    def take(self, rows: np.ndarray) -> "TrainingExamples":
        """The examples ``rows`` (positions, or a boolean mask), in that order."""
        return TrainingExamples([index[rows] for index in self.indexes], self.columns)

    def select(self, names: Sequence[str]) -> "TrainingExamples":
        """The columns ``names``, in that order, with only the indexes they read.

        Raises:
          KeyError: a name is not a column (the message lists the columns).
        """
        missing = [name for name in names if name not in self.columns]
        if missing:
            raise KeyError(
                f"The training examples have no column {missing[0]!r}; their columns are {list(self.columns)}."
            )
        used = sorted({self.columns[name].index for name in names})
        position = {old: new for new, old in enumerate(used)}
        return TrainingExamples(
            [self.indexes[i] for i in used],
            {name: dataclasses.replace(self.columns[name], index=position[self.columns[name].index]) for name in names},
        )

    def history_windows(self, name: str) -> Optional[Tuple[HistoryWindows, np.ndarray]]:
        """``(windows, ends)`` when column ``name`` is a history stored as windows, else None."""
        column = self.columns[name]
        return (column, self.indexes[column.index]) if isinstance(column, HistoryWindows) else None

    def counted(self, separators: Mapping[str, str]) -> Mapping[str, np.ndarray]:
        """The columns as a vocabulary counts their values, each built when read, its values in the
        order it would read them but without the ``[N, L]`` or per-example text copies:

        * a history (:class:`HistoryWindows`): the ``[M]`` items of its rows, row by row, padding
          left out (what the matrix holds besides its padding);
        * a text column named in ``separators`` (multi-valued): the ``[T]`` non-empty pieces of its
          rows split at its separator, row by row (:meth:`Lookup.tokens`);
        * any other column: as it is.

        :func:`tfrec_towers.features.adapt` learns from these the vocabularies and statistics it
        learns from the columns themselves (it counts an id matrix's non-padding entries and a
        multi-valued text's non-empty pieces, and a piece splits into itself).

        Args:
          separators: ``{column: separator}`` of the multi-valued text columns.
        """
        return _CountedColumns(self, dict(separators))


class _CountedColumns(Mapping[str, np.ndarray]):
    """The read-only view of :meth:`TrainingExamples.counted`, built column by column."""

    def __init__(self, examples: TrainingExamples, separators: Dict[str, str]) -> None:
        self.examples, self.separators = examples, separators

    def __getitem__(self, name: str) -> np.ndarray:
        column = self.examples.columns[name]
        rows = self.examples.indexes[column.index]
        if isinstance(column, HistoryWindows):
            return column.flattened(rows)
        if name in self.separators:
            return column.tokens(rows, self.separators[name])
        return column.read(rows)

    def __contains__(self, name: object) -> bool:
        return name in self.examples

    def __iter__(self) -> Iterator[str]:
        return iter(self.examples)

    def __len__(self) -> int:
        return len(self.examples)


@dataclasses.dataclass
class EvaluationSet:
    """Evaluated interactions: one query row per held-out interaction (several per user are allowed).

    Attributes:
      queries: query features of each evaluated interaction, with the history before it (the
        last ``max_history`` items, most recent last).
      targets: ``[E]`` the held-out candidate id of each query.
      seen_indptr, seen_ids: the items each query's user interacted with before its history's end,
        in CSR form: ``seen_ids[seen_indptr[e]:seen_indptr[e + 1]]`` are filtered out at evaluation.
    """

    queries: FeatureDict
    targets: np.ndarray
    seen_indptr: np.ndarray
    seen_ids: np.ndarray


@dataclasses.dataclass
class RetrievalData:
    """A retrieval data set split into training examples and evaluated interactions (:func:`split_interactions`).

    Attributes:
      name: a short name for reports, e.g. ``"ml-100k"`` or ``"synthetic-10000"``.
      train: training examples, one row per (query features, history) -> candidate;
        holds the query *and* the candidate feature columns (a :class:`TrainingExamples`; a
        plain feature dictionary given here is wrapped in one).
      eval_queries: one row per evaluated interaction (leave-last-out: one per user): query
        features with the history before it (the last ``max_history`` items, most recent last).
      eval_targets: ``[E]`` the held-out candidate id of each eval query.
      seen_indptr, seen_ids: the items each eval query's user had before it, in CSR form:
        ``seen_ids[seen_indptr[e]:seen_indptr[e + 1]]`` are filtered out at evaluation.
      candidates: the whole catalogue, one row per candidate id (unique), with the
        candidate feature columns.
      query_features, candidate_features: column names of each side.
      candidate_id: the candidate id column (in ``candidates`` and ``train``).
      column_types: the :data:`ColumnType` of every column.
      summary: counts for reports and logs (interactions read, rows dropped and why, ...).
      validation: interactions held out of training to validate on after each epoch, or None.
    """

    name: str
    train: TrainingExamples
    eval_queries: FeatureDict
    eval_targets: np.ndarray
    seen_indptr: np.ndarray
    seen_ids: np.ndarray
    candidates: FeatureDict
    query_features: tuple[str, ...]
    candidate_features: tuple[str, ...]
    candidate_id: str
    column_types: Dict[str, ColumnType]
    summary: Dict[str, int] = dataclasses.field(default_factory=dict)
    validation: Optional[EvaluationSet] = None

    def __post_init__(self) -> None:
        self.train = TrainingExamples.of(self.train)

    def seen(self, query_index: int) -> np.ndarray:
        """Item ids filtered out for eval query ``query_index``."""
        return self.seen_ids[self.seen_indptr[query_index] : self.seen_indptr[query_index + 1]]

    def validation_data(self) -> "RetrievalData":
        """The same data with the validation interactions as its eval queries (to evaluate them alike).

        Raises:
          ValueError: the data has no validation interactions.
        """
        if self.validation is None:
            raise ValueError(f"{self.name}: the data has no validation interactions (`data.validation` is 'none').")
        held = self.validation
        return dataclasses.replace(
            self,
            eval_queries=held.queries,
            eval_targets=held.targets,
            seen_indptr=held.seen_indptr,
            seen_ids=held.seen_ids,
            validation=None,
        )

    def without_seen(self) -> "RetrievalData":
        """The same data with empty seen lists: evaluation then ranks the target among every candidate."""

        def unfiltered(queries: EvaluationSet) -> EvaluationSet:
            return dataclasses.replace(
                queries, seen_indptr=np.zeros(len(queries.targets) + 1, np.int64), seen_ids=self.seen_ids[:0]
            )

        test = unfiltered(EvaluationSet(self.eval_queries, self.eval_targets, self.seen_indptr, self.seen_ids))
        return dataclasses.replace(
            self,
            seen_indptr=test.seen_indptr,
            seen_ids=test.seen_ids,
            validation=None if self.validation is None else unfiltered(self.validation),
        )


@dataclasses.dataclass(frozen=True)
class Timeline:
    """The interactions sorted by (user, phase, timestamp, item id): what a hold-out rule reads.

    Attributes:
      group: ``int64 [n]`` the user of each sorted row (0-based, in user id order).
      num_users: the number of users with an interaction.
      timestamps: ``int64 [n]`` each sorted row's timestamp.
      phases: ``int64 [n]`` 0 for an interaction of the training table, 1 for one of a separate
        test table (which comes after every training interaction of its user).
    """

    group: np.ndarray
    num_users: int
    timestamps: np.ndarray
    phases: np.ndarray


class HoldOut(Protocol):
    """A rule choosing the interactions a split holds out of training to evaluate.

    A held-out interaction is evaluated when its user keeps a training interaction, with the
    history (and seen items) of the user's interactions before the user's first held-out one.
    """

    @property
    def unevaluated_key(self) -> Optional[str]:
        """The ``summary`` key counting held-out interactions without history (not evaluated), or None."""

    def held(self, timeline: Timeline, known: np.ndarray) -> np.ndarray:
        """``bool [n]``: the rows of ``known`` (``bool [n]``, the rows still training) to hold out."""

    def nothing_evaluated(self, name: str, timeline: Timeline) -> str:
        """The message of the DataError raised when no held-out interaction can be evaluated."""


@dataclasses.dataclass(frozen=True)
class LastInteraction:
    """Holds out each user's last known interaction (leave-last-out).

    Attributes:
      min_known: only users with at least this many known interactions give one (2: every user
        keeps one to train on).
      unevaluated_key: see :class:`HoldOut`.
      purpose: what the held-out interactions are for, in messages.
    """

    min_known: int = 1
    unevaluated_key: Optional[str] = None
    purpose: str = "test"

    def held(self, timeline: Timeline, known: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(known)
        users = timeline.group[rows]
        is_last = np.r_[users[1:] != users[:-1], True] if len(rows) else np.zeros(0, bool)
        counts = np.bincount(users, minlength=timeline.num_users)
        held = np.zeros(len(known), bool)
        held[rows[is_last & (counts[users] >= self.min_known)]] = True
        return held

    def nothing_evaluated(self, name: str, timeline: Timeline) -> str:
        if self.purpose != "test":
            return (
                f"{name}: no user has two or more training interactions, so none can give its last one to "
                f"{self.purpose} (`data.validation` 'last')."
            )
        return (
            f"{name}: no user has two or more interactions, so there is nothing to train on "
            f"(the last interaction of each of the {timeline.num_users} users is held out)."
        )


def split_interactions(
    *,
    name: str,
    user_ids: Union[np.ndarray, CodedIds],
    item_ids: Union[np.ndarray, CodedIds],
    timestamps: np.ndarray,
    users: FeatureDict,
    candidates: FeatureDict,
    user_id: str,
    candidate_id: str,
    column_types: Mapping[str, ColumnType],
    max_history: int,
    history: str = "history",
    interaction_columns: Optional[Mapping[str, np.ndarray]] = None,
    test: HoldOut = LastInteraction(),
    validation: Optional[HoldOut] = None,
    phases: Optional[np.ndarray] = None,
) -> RetrievalData:
    """Splits implicit interactions into training examples and evaluated interactions.

    Each user's interactions are sorted by (phase, timestamp, item id). The ``test`` rule holds
    some out (default: each user's last, the leave-last-out protocol of docs/contracts.md), then the ``validation``
    rule holds out some of the rest; every other interaction is a training example whose
    ``history`` holds the up-to-``max_history`` items before it, most recent last, left-padded
    with 0 for integer ids and ``""`` for string ids (the first interaction has an all-padding
    history). A held-out interaction is evaluated if its user keeps a training interaction
    (before it: every rule holds out the end of a user's sequence): its query has the history of
    the user's interactions before the user's first held-out one, and its seen set their unique
    items. The others (users with one interaction under leave-last-out) are counted in
    ``summary``.

    An exact duplicate (the same user, item, timestamp and phase as an earlier row) is taken
    for a logging artefact, not a second positive: it is dropped, counted in
    ``summary["duplicate_interactions"]`` and logged as a warning with an example; the
    first occurrence is kept. (Kept, it would put the item in its own history and, as a
    user's last interaction, make the test target one of the user's training items,
    which evaluation filters out.) The same item at another timestamp is kept: it is
    another interaction.

    Built from sorted arrays and offsets, without a loop over users or interactions:
    the item sequence (as 1-based catalogue rows) is laid out with ``max_history`` zeros
    in front of every user, each history is the window of the ``max_history`` slots just
    before its end, and the rows are mapped back to ids (0 to the padding). The training
    examples (:class:`TrainingExamples`) keep each example's user row, item row and window end,
    and build a column (attributes, histories) only when it is read.

    Args:
      name: the data set name for reports.
      user_ids, item_ids: ``[R]`` the interactions' ids, integers (item ids > 0) or strings
        (not empty), as arrays or :class:`CodedIds`; timestamps: ``int64 [R]``. Exact duplicate
        rows are dropped (see above).
      users: the query feature table, one row per user, keyed by ``users[user_id]``.
      candidates: the catalogue, one row per item, keyed by ``candidates[candidate_id]``.
      user_id, candidate_id: the key columns of ``users`` and ``candidates``.
      column_types: the :data:`ColumnType` of every column of ``users`` and ``candidates``.
      max_history: the history width ``L``.
      history: the name of the history column added to the query features.
      interaction_columns: per-interaction columns (``[R]`` each, e.g. a sample weight) added
        to the training examples.
      test: the rule holding out the evaluated interactions (:class:`HoldOut`).
      validation: the rule holding out validation interactions from the remaining ones, or None.
      phases: ``int64 [R]``: 1 for the interactions of a separate test table, 0 otherwise (default).

    Returns:
      The split, with candidates sorted by id and eval queries sorted by user id, then time. Its
      ``summary`` counts the ``interactions`` kept, the ``duplicate_interactions``
      dropped, ``users``, ``users_with_one_interaction``, ``train_examples``,
      ``eval_queries`` and ``candidates``; and the rules' own counts (``validation_queries``, ...).

    Raises:
      DataError: no interactions, no held-out interaction that can be evaluated, no training
        example, an item id <= 0, an id missing from its table, a duplicate id in a table, or a
        column name used by both tables.
      ValueError: ``max_history`` is not a positive int.
    """
    if not isinstance(max_history, (int, np.integer)) or isinstance(max_history, bool) or max_history < 1:
        raise ValueError(f"`max_history` must be a positive int. Received: {max_history!r}")
    user_ids, item_ids = CodedIds.of(user_ids), CodedIds.of(item_ids)
    timestamps = np.asarray(timestamps, np.int64)
    phases = np.zeros(len(item_ids), np.int64) if phases is None else np.asarray(phases, np.int64)
    if len(item_ids) == 0:
        raise DataError(f"{name}: there are no interactions to split.")
    integer_ids = item_ids.dtype.kind in "iu"
    if integer_ids:
        lowest = item_ids.values[item_ids.used()].min()
        if lowest <= 0:
            raise DataError(f"{name}: item ids must be positive (0 pads histories). Found {lowest}.")
    shared = (set(users) | {history}) & set(candidates)
    if shared:
        raise DataError(f"{name}: columns {sorted(shared)} are both query and candidate features.")
    users = _sorted_by_key(users, user_id, f"{name}: the user")
    candidates = _sorted_by_key(candidates, candidate_id, f"{name}: the candidate")
    item_rows = _rows_of(candidates[candidate_id], item_ids, f"{name}: item")
    all_user_rows = _rows_of(users[user_id], user_ids, f"{name}: user")
    order = _chronological_order(
        all_user_rows, timestamps, item_rows, len(candidates[candidate_id]), len(users[user_id])
    )
    if phases.any():  # a test table's interactions after every training one of their user
        order = order[np.argsort(all_user_rows[order] * 2 + phases[order], kind="stable")]
    repeats = _repeats_previous(order, (all_user_rows, item_rows, timestamps, phases))  # rows: one per id
    if repeats.any():
        row = order[np.argmax(repeats)]
        user, item = (ids.decode(slice(row, row + 1)).tolist()[0] for ids in (user_ids, item_ids))
        timestamp = timestamps[row : row + 1].tolist()[0]
        logger.warning(
            "%s: dropped exact duplicate interactions (the same %s, %s and timestamp as an earlier row; the first "
            "occurrence is kept): %d of %d, e.g. %s %r, %s %r, timestamp %r.",
            name,
            user_id,
            candidate_id,
            int(repeats.sum()),
            len(repeats),
            user_id,
            user,
            candidate_id,
            item,
            timestamp,
        )
        order = order[~repeats]
    user_rows, item_rows = all_user_rows[order], item_rows[order]
    n = len(item_rows)
    is_first = np.r_[True, user_rows[1:] != user_rows[:-1]]
    starts = np.flatnonzero(is_first)
    counts = np.diff(np.r_[starts, n])
    group = np.cumsum(is_first) - 1
    timeline = Timeline(group=group, num_users=len(starts), timestamps=timestamps[order], phases=phases[order])

    slot = np.arange(n) + max_history * (group + 1)
    sequence = np.zeros(n + max_history * len(starts), np.int32)
    sequence[slot] = item_rows + 1
    padding = np.zeros(1, candidates[candidate_id].dtype) if integer_ids else np.array([""], object)
    histories = HistoryWindows(0, sequence, np.r_[padding, candidates[candidate_id]], max_history)
    num_candidates = len(candidates[candidate_id])

    def evaluated(rule: HoldOut, known: np.ndarray) -> tuple[EvaluationSet, np.ndarray, int]:
        """The rule's evaluation set, the rows still training after it, and its unevaluated count."""
        held = rule.held(timeline, known) & known
        kept = known & ~held
        held_rows = np.flatnonzero(held)
        first_held = np.full(timeline.num_users, n, np.int64)
        held_users = group[held_rows]
        is_first_held = np.r_[True, held_users[1:] != held_users[:-1]] if len(held_rows) else np.zeros(0, bool)
        first_held[held_users[is_first_held]] = held_rows[is_first_held]
        has_history = np.bincount(group[kept], minlength=timeline.num_users) > 0
        rows = np.flatnonzero(held & has_history[group])
        if len(rows) == 0:
            raise DataError(rule.nothing_evaluated(name, timeline))
        ends = first_held[group[rows]]
        queries = {**take_rows(users, user_rows[rows]), history: histories.read(slot[ends])}
        lengths = ends - starts[group[rows]]
        owner = np.repeat(np.arange(len(rows)), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        seen = _distinct(owner * num_candidates + item_rows[starts[group[rows]][owner] + within])  # (query, item)
        seen_counts = np.bincount(seen // num_candidates, minlength=len(rows))
        queries_set = EvaluationSet(
            queries=queries,
            targets=item_ids.decode(order[rows]),
            seen_indptr=np.r_[0, np.cumsum(seen_counts)].astype(np.int64),
            seen_ids=candidates[candidate_id][seen % num_candidates],
        )
        return queries_set, kept, int(np.sum(held & ~has_history[group]))

    extra: Dict[str, int] = {}
    test_set, is_train, unevaluated = evaluated(test, np.ones(n, bool))
    if test.unevaluated_key is not None:
        extra[test.unevaluated_key] = unevaluated
    validation_set = None
    if validation is not None:
        validation_set, is_train, unevaluated = evaluated(validation, is_train)
        extra["validation_queries"] = len(validation_set.targets)
        if validation.unevaluated_key is not None:
            extra[validation.unevaluated_key] = unevaluated
    train_rows = np.flatnonzero(is_train)
    if len(train_rows) == 0:
        raise DataError(f"{name}: every interaction is held out, so there is nothing to train on.")

    interactions = {
        column: np.asarray(values)[order[train_rows]] for column, values in (interaction_columns or {}).items()
    }
    indexes = [
        slot[train_rows],
        user_rows[train_rows].astype(np.int32),
        item_rows[train_rows].astype(np.int32),
        *interactions.values(),
    ]
    train = TrainingExamples(
        indexes,
        {
            **{column: Lookup(1, values) for column, values in users.items()},
            history: histories,
            **{column: Lookup(2, values) for column, values in candidates.items()},
            **{column: Lookup(3 + position) for position, column in enumerate(interactions)},
        },
    )
    summary = {
        "interactions": n,
        "duplicate_interactions": int(repeats.sum()),
        "users": len(starts),
        "users_with_one_interaction": int(np.sum(counts == 1)),
        "train_examples": len(train_rows),
        "eval_queries": len(test_set.targets),
        "candidates": num_candidates,
        **extra,
    }
    return RetrievalData(
        name=name,
        train=train,
        eval_queries=test_set.queries,
        eval_targets=test_set.targets,
        seen_indptr=test_set.seen_indptr,
        seen_ids=test_set.seen_ids,
        candidates=candidates,
        query_features=(*users, history),
        candidate_features=tuple(candidates),
        candidate_id=candidate_id,
        column_types={**column_types, history: "int64_list" if integer_ids else "string_list"},
        summary=summary,
        validation=validation_set,
    )


def leave_last_out(**arguments: Any) -> RetrievalData:
    """Splits implicit interactions by the leave-last-out protocol (docs/contracts.md):
    :func:`split_interactions` with its default rule, each user's last interaction the test target.

    Users with fewer than 2 interactions have no training example and are not evaluated (counted
    in ``summary["users_with_one_interaction"]``). The eval query of a user has the last
    ``max_history`` training items as history; its seen set is its unique training items.

    Args:
      arguments: those of :func:`split_interactions` (``test`` is the leave-last-out rule).

    Returns, Raises: see :func:`split_interactions`.
    """
    return split_interactions(**arguments, test=LastInteraction())


def _chronological_order(
    user_rows: np.ndarray, timestamps: np.ndarray, item_rows: np.ndarray, num_items: int, num_users: int
) -> np.ndarray:
    """``np.lexsort((item_rows, timestamps, user_rows))``, faster: one stable argsort of an int64
    key when (user, timestamp, item) packs into one (a year of second timestamps for 1M users and
    200K items does), else two when (timestamp, item) does (always for second timestamps).
    Rows of the id-sorted tables order like the ids themselves."""
    earliest = int(timestamps.min())
    span = int(timestamps.max()) - earliest + 1
    if span * num_items >= 2**63:
        return np.lexsort((item_rows, timestamps, user_rows))
    within = (timestamps - earliest) * num_items + item_rows
    if span * num_items * num_users < 2**63:
        return np.argsort(user_rows * (span * num_items) + within, kind="stable")
    order = np.argsort(within, kind="stable")
    return order[np.argsort(user_rows[order], kind="stable")]


def _distinct(keys: np.ndarray) -> np.ndarray:
    """``np.unique(keys)`` of integer keys: one sort, then the first of each run (numpy's own unique
    hashes first, many times slower on tens of millions of keys)."""
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys


def _repeats_previous(order: np.ndarray, columns: tuple[np.ndarray, ...]) -> np.ndarray:
    """``bool [R]``: whether row ``order[i]`` equals row ``order[i - 1]`` in every one of ``columns``
    (gathered one at a time, to hold a single reordered copy)."""
    repeats = np.ones(len(order), bool)
    repeats[0] = False
    for column in columns:
        ordered = column[order]
        repeats[1:] &= ordered[1:] == ordered[:-1]
    return repeats


def _sorted_by_key(table: Mapping[str, np.ndarray], key: str, what: str) -> FeatureDict:
    """``table`` sorted by its ``key`` column, which must be unique (a repeat names both rows)."""
    order = np.argsort(table[key], kind="stable")
    sorted_table = take_rows(dict(table), order)
    ids = sorted_table[key]
    repeated = np.flatnonzero(ids[1:] == ids[:-1])
    if len(repeated):
        first, second = order[repeated[0]], order[repeated[0] + 1]
        raise DataError(
            f"{what} table has {key} {ids[repeated[0]]} in rows {first} and {second} (counting from 0); "
            f"each {key} must appear once."
        )
    return sorted_table


def _rows_of(sorted_ids: np.ndarray, ids: CodedIds, what: str) -> np.ndarray:
    """Row of each of ``ids`` in the sorted unique ``sorted_ids`` (its values looked up once each)."""
    if len(sorted_ids) == 0:
        raise DataError(f"{what} feature table is empty.")
    rows = pd.Index(sorted_ids).get_indexer(ids.values)[ids.codes]  # hashed: searchsorted on strings compares in Python
    missing = rows < 0
    if missing.any():
        first = np.flatnonzero(missing)[:1]
        raise DataError(f"{what} id {ids.decode(first)[0]} is not in its feature table ({int(missing.sum())} rows).")
    return rows

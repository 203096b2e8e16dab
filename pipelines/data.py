"""The in-memory contract every reader produces: feature dictionaries of numpy arrays.

A *feature dictionary* maps a feature name to a numpy array whose first axis is the
example axis. Dtypes and shapes follow the raw-feature contract of the exported SavedModel:

=============  ==========================  ===========================================
column type    numpy array                 example
=============  ==========================  ===========================================
``int64``      ``int64 [N]``               ``user_id``, ``movie_id``, ``age``
``float32``    ``float32 [N]``             a numeric side feature
``string``     ``object [N]`` of ``str``   ``gender``, ``genres`` ("Action|Comedy")
``int64_list`` ``int64 [N, L]``, 0-padded  ``history`` (most recent last, padded left)
``string_list`` ``object [N, L]``, ""-pad. ``history`` of string ids
=============  ==========================  ===========================================
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Literal, Mapping, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ColumnType = Literal["int64", "float32", "string", "int64_list", "string_list"]
FeatureDict = Dict[str, np.ndarray]

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Input data does not match what a reader expects: the message names the file,
    the column, the row and what was expected."""


def num_rows(features: Mapping[str, np.ndarray]) -> int:
    """Number of examples in a feature dictionary (all columns must agree)."""
    lengths = {name: len(values) for name, values in features.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Feature columns have different lengths: {lengths}")
    return next(iter(lengths.values()), 0)


def take_rows(features: Mapping[str, np.ndarray], index: np.ndarray) -> FeatureDict:
    """Rows ``index`` of every column."""
    return {name: values[index] for name, values in features.items()}


@dataclasses.dataclass
class RetrievalData:
    """A retrieval data set split by the leave-last-out protocol (:func:`leave_last_out`).

    Attributes:
      name: a short name for reports, e.g. ``"ml-100k"`` or ``"synthetic-10000"``.
      train: training examples, one row per (query features, history) -> candidate;
        holds the query *and* the candidate feature columns.
      eval_queries: one row per evaluated user: query features with the full
        training history (the last ``max_history`` items, most recent last).
      eval_targets: ``int64 [U]`` the held-out candidate id of each eval query.
      seen_indptr, seen_ids: the training items of each eval query in CSR form:
        ``seen_ids[seen_indptr[u]:seen_indptr[u + 1]]`` are filtered out at evaluation.
      candidates: the whole catalogue, one row per candidate id (unique), with the
        candidate feature columns.
      query_features, candidate_features: column names of each side.
      candidate_id: the candidate id column (in ``candidates`` and ``train``).
      column_types: the :data:`ColumnType` of every column.
      summary: counts for reports and logs (interactions read, rows dropped and why, ...).
    """

    name: str
    train: FeatureDict
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

    def seen(self, user_index: int) -> np.ndarray:
        """Training item ids of eval query ``user_index``."""
        return self.seen_ids[self.seen_indptr[user_index] : self.seen_indptr[user_index + 1]]


def leave_last_out(
    *,
    name: str,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    timestamps: np.ndarray,
    users: FeatureDict,
    candidates: FeatureDict,
    user_id: str,
    candidate_id: str,
    column_types: Mapping[str, ColumnType],
    max_history: int,
    history: str = "history",
    interaction_columns: Optional[Mapping[str, np.ndarray]] = None,
) -> RetrievalData:
    """Splits implicit interactions by the leave-last-out protocol.

    Each user's interactions are sorted by (timestamp, item id). The last one is the
    user's test target; every earlier one is a training example whose ``history`` holds
    the up-to-``max_history`` items before it, most recent last, left-padded with 0 for
    integer ids and ``""`` for string ids (the first interaction has an all-padding history). Users with fewer than 2
    interactions have no training example and are not evaluated (counted in
    ``summary["users_with_one_interaction"]``). The eval query of a user has the last
    ``max_history`` training items as history; its seen set is its unique training items.

    An exact duplicate (the same user, item and timestamp as an earlier row) is taken
    for a logging artefact, not a second positive: it is dropped, counted in
    ``summary["duplicate_interactions"]`` and logged as a warning with an example; the
    first occurrence is kept. (Kept, it would put the item in its own history and, as a
    user's last interaction, make the test target one of the user's training items,
    which evaluation filters out.) The same item at another timestamp is kept: it is
    another interaction.

    Built from sorted arrays and offsets, without a loop over users or interactions:
    the item sequence (as 1-based catalogue rows) is laid out with ``max_history`` zeros
    in front of every user, each history is the window of the ``max_history`` slots just
    before its row, and the rows are mapped back to ids (0 to the padding).

    Args:
      name: the data set name for reports.
      user_ids, item_ids: ``[R]`` the interactions' ids, integers (item ids > 0) or strings
        (not empty); timestamps: ``int64 [R]``. Exact duplicate rows are dropped (see above).
      users: the query feature table, one row per user, keyed by ``users[user_id]``.
      candidates: the catalogue, one row per item, keyed by ``candidates[candidate_id]``.
      user_id, candidate_id: the key columns of ``users`` and ``candidates``.
      column_types: the :data:`ColumnType` of every column of ``users`` and ``candidates``.
      max_history: the history width ``L``.
      history: the name of the history column added to the query features.
      interaction_columns: per-interaction columns (``[R]`` each, e.g. a sample weight) added
        to the training examples.

    Returns:
      The split, with candidates sorted by id and eval queries sorted by user id. Its
      ``summary`` counts the ``interactions`` kept, the ``duplicate_interactions``
      dropped, ``users``, ``users_with_one_interaction``, ``train_examples``,
      ``eval_queries`` and ``candidates``.

    Raises:
      DataError: no interactions, no user with two or more interactions, an item id <= 0, an id missing from its table, a
        duplicate id in a table, or a column name used by both tables.
      ValueError: ``max_history`` is not a positive int.
    """
    if not isinstance(max_history, (int, np.integer)) or isinstance(max_history, bool) or max_history < 1:
        raise ValueError(f"`max_history` must be a positive int. Received: {max_history!r}")
    user_ids, item_ids = (_id_array(a) for a in (user_ids, item_ids))
    timestamps = np.asarray(timestamps, np.int64)
    if len(item_ids) == 0:
        raise DataError(f"{name}: there are no interactions to split.")
    if item_ids.dtype.kind in "iu" and item_ids.min() <= 0:
        raise DataError(f"{name}: item ids must be positive (0 pads histories). Found {item_ids.min()}.")
    shared = (set(users) | {history}) & set(candidates)
    if shared:
        raise DataError(f"{name}: columns {sorted(shared)} are both query and candidate features.")
    users = _sorted_by_key(users, user_id, f"{name}: the user")
    candidates = _sorted_by_key(candidates, candidate_id, f"{name}: the candidate")
    item_rows = _rows_of(candidates[candidate_id], item_ids, f"{name}: item")
    all_user_rows = _rows_of(users[user_id], user_ids, f"{name}: user")
    order = _chronological_order(all_user_rows, timestamps, item_rows, len(candidates[candidate_id]))
    repeats = _repeats_previous(order, (user_ids, item_ids, timestamps))
    if repeats.any():
        row = order[np.argmax(repeats)]
        user, item, timestamp = (column[row : row + 1].tolist()[0] for column in (user_ids, item_ids, timestamps))
        logger.warning(
            "%s: dropped exact duplicate interactions (the same %s, %s and timestamp as an earlier row; the first "
            "occurrence is kept): %d of %d, e.g. %s %r, %s %r, timestamp %r.",
            name, user_id, candidate_id, int(repeats.sum()), len(repeats), user_id, user, candidate_id, item, timestamp,
        )
        order = order[~repeats]
    user_rows = all_user_rows[order]
    item_rows, items = item_rows[order], item_ids[order]
    n = len(items)
    is_first = np.r_[True, user_rows[1:] != user_rows[:-1]]
    starts = np.flatnonzero(is_first)
    counts = np.diff(np.r_[starts, n])
    last = starts + counts - 1
    group = np.cumsum(is_first) - 1

    slot = np.arange(n) + max_history * (group + 1)
    padded = np.zeros(n + max_history * len(starts), np.int64)
    padded[slot] = item_rows + 1
    windows = sliding_window_view(padded, max_history)  # windows[p] = padded[p : p + L]
    item_of_code = np.r_[np.zeros(1, candidates[candidate_id].dtype) if items.dtype.kind in "iu" else np.array([""], object),
                         candidates[candidate_id]]

    is_train = np.ones(n, bool)
    is_train[last] = False
    train_rows = np.flatnonzero(is_train)
    evaluated = last[counts >= 2]
    if len(evaluated) == 0:
        raise DataError(
            f"{name}: no user has two or more interactions, so there is nothing to train on "
            f"(the last interaction of each of the {len(starts)} users is held out)."
        )

    train = {
        **take_rows(users, user_rows[train_rows]),
        history: item_of_code[windows[slot[train_rows] - max_history]],
        **take_rows(candidates, item_rows[train_rows]),
        **{column: np.asarray(values)[order][train_rows] for column, values in (interaction_columns or {}).items()},
    }
    eval_queries = {
        **take_rows(users, user_rows[evaluated]),
        history: item_of_code[windows[slot[evaluated] - max_history]],
    }

    num_candidates = len(candidates[candidate_id])
    seen = np.sort(group[train_rows] * num_candidates + item_rows[train_rows])  # (user, item) pairs
    seen = seen[np.r_[True, seen[1:] != seen[:-1]]]
    seen_counts = np.bincount(seen // num_candidates, minlength=len(starts))[counts >= 2]

    summary = {
        "interactions": n,
        "duplicate_interactions": int(repeats.sum()),
        "users": len(starts),
        "users_with_one_interaction": int(np.sum(counts == 1)),
        "train_examples": len(train_rows),
        "eval_queries": len(evaluated),
        "candidates": num_candidates,
    }
    return RetrievalData(
        name=name,
        train=train,
        eval_queries=eval_queries,
        eval_targets=items[evaluated],
        seen_indptr=np.r_[0, np.cumsum(seen_counts)].astype(np.int64),
        seen_ids=candidates[candidate_id][seen % num_candidates],
        candidates=candidates,
        query_features=(*users, history),
        candidate_features=tuple(candidates),
        candidate_id=candidate_id,
        column_types={**column_types, history: "int64_list" if items.dtype.kind in "iu" else "string_list"},
        summary=summary,
    )


def _chronological_order(
    user_rows: np.ndarray, timestamps: np.ndarray, item_rows: np.ndarray, num_items: int
) -> np.ndarray:
    """``np.lexsort((item_rows, timestamps, user_rows))``, faster: two stable argsorts of
    int64 keys when (timestamp, item) packs into one int64 (always for second timestamps).
    Rows of the id-sorted tables order like the ids themselves."""
    earliest = int(timestamps.min())
    if (int(timestamps.max()) - earliest + 1) * num_items >= 2**63:
        return np.lexsort((item_rows, timestamps, user_rows))
    order = np.argsort((timestamps - earliest) * num_items + item_rows, kind="stable")
    return order[np.argsort(user_rows[order], kind="stable")]


def _id_array(ids: np.ndarray) -> np.ndarray:
    """Integer ids as ``int64``, anything else as an ``object`` array of the values."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iub":
        return ids.astype(np.int64)
    return ids.astype(object)


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
    sorted_table = take_rows(table, order)
    ids = sorted_table[key]
    repeated = np.flatnonzero(ids[1:] == ids[:-1])
    if len(repeated):
        first, second = order[repeated[0]], order[repeated[0] + 1]
        raise DataError(
            f"{what} table has {key} {ids[repeated[0]]} in rows {first} and {second} (counting from 0); "
            f"each {key} must appear once."
        )
    return sorted_table


def _rows_of(sorted_ids: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """Row of each of ``ids`` in the sorted unique ``sorted_ids``."""
    if len(sorted_ids) == 0:
        raise DataError(f"{what} feature table is empty.")
    rows = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    missing = sorted_ids[rows] != ids
    if missing.any():
        raise DataError(f"{what} id {ids[missing][0]} is not in its feature table ({int(missing.sum())} rows).")
    return rows

"""The in-memory contract every reader produces: feature dictionaries of numpy arrays.

A *feature dictionary* maps a feature name to a numpy array whose first axis is the
example axis. Dtypes and shapes follow the raw-feature contract of DESIGN §5:

=============  ==========================  ===========================================
column type    numpy array                 example
=============  ==========================  ===========================================
``int64``      ``int64 [N]``               ``user_id``, ``movie_id``, ``age``
``float32``    ``float32 [N]``             a numeric side feature
``string``     ``object [N]`` of ``str``   ``gender``, ``genres`` ("Action|Comedy")
``int64_list`` ``int64 [N, L]``, 0-padded  ``history`` (most recent last, padded left)
=============  ==========================  ===========================================
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Literal, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ColumnType = Literal["int64", "float32", "string", "int64_list"]
FeatureDict = Dict[str, np.ndarray]


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
    """A retrieval data set split by the leave-last-out protocol (DESIGN §4).

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
) -> RetrievalData:
    """Splits implicit interactions by the leave-last-out protocol of DESIGN §4.

    Each user's interactions are sorted by (timestamp, item id). The last one is the
    user's test target; every earlier one is a training example whose ``history`` holds
    the up-to-``max_history`` items before it, most recent last, left-padded with 0
    (the first interaction has an all-zero history). Users with fewer than 2
    interactions have no training example and are not evaluated (counted in
    ``summary["users_with_one_interaction"]``). The eval query of a user has the last
    ``max_history`` training items as history; its seen set is its unique training items.

    Built from sorted arrays and offsets, without a loop over users or interactions:
    the item sequence is laid out with ``max_history`` zeros in front of every user,
    and each history is the window of the ``max_history`` slots just before its row.

    Args:
      name: the data set name for reports.
      user_ids, item_ids, timestamps: ``int64 [R]`` the interactions; item ids > 0.
      users: the query feature table, one row per user, keyed by ``users[user_id]``.
      candidates: the catalogue, one row per item, keyed by ``candidates[candidate_id]``.
      user_id, candidate_id: the key columns of ``users`` and ``candidates``.
      column_types: the :data:`ColumnType` of every column of ``users`` and ``candidates``.
      max_history: the history width ``L``.
      history: the name of the history column added to the query features.

    Returns:
      The split, with candidates sorted by id and eval queries sorted by user id.

    Raises:
      DataError: no interactions, no user with two or more interactions, an item id <= 0, an id missing from its table, a
        duplicate id in a table, or a column name used by both tables.
      ValueError: ``max_history`` is not a positive int.
    """
    if not isinstance(max_history, (int, np.integer)) or isinstance(max_history, bool) or max_history < 1:
        raise ValueError(f"`max_history` must be a positive int. Received: {max_history!r}")
    user_ids, item_ids, timestamps = (np.asarray(a, np.int64) for a in (user_ids, item_ids, timestamps))
    if len(item_ids) == 0:
        raise DataError(f"{name}: there are no interactions to split.")
    if item_ids.min() <= 0:
        raise DataError(f"{name}: item ids must be positive (0 pads histories). Found {item_ids.min()}.")
    shared = (set(users) | {history}) & set(candidates)
    if shared:
        raise DataError(f"{name}: columns {sorted(shared)} are both query and candidate features.")
    users = _sorted_by_key(users, user_id, "user")
    candidates = _sorted_by_key(candidates, candidate_id, "candidate")
    item_rows = _rows_of(candidates[candidate_id], item_ids, f"{name}: item")
    order = _chronological_order(user_ids, timestamps, item_rows, len(candidates[candidate_id]))
    user_rows = _rows_of(users[user_id], user_ids[order], f"{name}: user")
    item_rows, items = item_rows[order], item_ids[order]
    n = len(items)
    is_first = np.r_[True, user_rows[1:] != user_rows[:-1]]
    starts = np.flatnonzero(is_first)
    counts = np.diff(np.r_[starts, n])
    last = starts + counts - 1
    group = np.cumsum(is_first) - 1

    slot = np.arange(n) + max_history * (group + 1)
    padded = np.zeros(n + max_history * len(starts), np.int64)
    padded[slot] = items
    windows = sliding_window_view(padded, max_history)  # windows[p] = padded[p : p + L]

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
        history: windows[slot[train_rows] - max_history],
        **take_rows(candidates, item_rows[train_rows]),
    }
    eval_queries = {**take_rows(users, user_rows[evaluated]), history: windows[slot[evaluated] - max_history]}

    num_candidates = len(candidates[candidate_id])
    seen = np.sort(group[train_rows] * num_candidates + item_rows[train_rows])  # (user, item) pairs
    seen = seen[np.r_[True, seen[1:] != seen[:-1]]]
    seen_counts = np.bincount(seen // num_candidates, minlength=len(starts))[counts >= 2]

    summary = {
        "interactions": n,
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
        column_types={**column_types, history: "int64_list"},
        summary=summary,
    )


def _chronological_order(
    user_ids: np.ndarray, timestamps: np.ndarray, item_rows: np.ndarray, num_items: int
) -> np.ndarray:
    """``np.lexsort((item_rows, timestamps, user_ids))``, faster: two stable argsorts of
    int64 keys when (timestamp, item) packs into one int64 (always for second timestamps)."""
    earliest = int(timestamps.min())
    if (int(timestamps.max()) - earliest + 1) * num_items >= 2**63:
        return np.lexsort((item_rows, timestamps, user_ids))
    order = np.argsort((timestamps - earliest) * num_items + item_rows, kind="stable")
    return order[np.argsort(user_ids[order], kind="stable")]


def _sorted_by_key(table: Mapping[str, np.ndarray], key: str, what: str) -> FeatureDict:
    """``table`` sorted by its ``key`` column, which must be unique."""
    sorted_table = take_rows(table, np.argsort(table[key], kind="stable"))
    ids = sorted_table[key]
    duplicated = ids[1:][ids[1:] == ids[:-1]]
    if len(duplicated):
        raise DataError(f"The {what} table has duplicate {key} values, e.g. {duplicated[0]}.")
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

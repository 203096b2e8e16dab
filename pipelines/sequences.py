"""Sequence examples for every-position training, built from per-prefix training examples.

A per-prefix example is (query features, history of up to L items) → one item. A sequence example
holds one user's consecutive training items ``x_i … x_{i+L−1}`` as ``history`` and, in every
candidate column, the item that follows each of them: position ``l`` predicts ``x_{i+l+1}``. A
user with items ``x_1 … x_n`` (the held-out last item excluded) gives the ``n − 1`` pairs
``(x_{≤t}, x_{t+1})``, cut from the most recent end into sequences of ``max_length`` positions,
each left-padded with 0 (``""`` in string columns): every training item but the first is a target
exactly once, and the latest sequence ends with the latest item, as the evaluation query does.

==============================  =======================  =========================================
column                          shape                    value
==============================  =======================  =========================================
query side features             ``[S]``                  the user's (taken from the sequence's
                                                         last target row)
``history``                     ``[S, L]``               the items, most recent last, padded with
                                                         0 (int64 ids) or ``""`` (string ids)
candidate features              ``[S, L]``               the next item's features, padded
==============================  =======================  =========================================
"""

from __future__ import annotations

from typing import Mapping, Sequence, Tuple

import numpy as np

from tfrec_pipelines.data import DataError, FeatureDict, TrainingExamples, num_rows


def sequence_examples(
    train: Mapping[str, np.ndarray],
    candidate_features: Sequence[str],
    candidate_id: str,
    max_length: int,
    history: str = "history",
) -> FeatureDict:
    """Every-position sequence examples from per-prefix rows (:func:`tfrec_pipelines.data.leave_last_out`).

    The rows must hold each user's examples consecutively and in time order, as the leave-last-out
    split writes them: a user's first row has an all-padding history, and every other row's most
    recent history item is the previous row's candidate.

    Args:
      train: the per-prefix training columns (query features, ``history``, candidate features).
      candidate_features: the candidate columns (moved to the positions they follow).
      candidate_id: the candidate id column (an item id of the history).
      max_length: ``L``, positions per sequence.
      history: the history column.

    Returns:
      A feature dictionary of ``S`` sequence examples (see the module docstring).

    Raises:
      ValueError: ``max_length`` is not a positive int.
      DataError: a column is missing, or the rows are not in the order described above.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"`max_length` must be a positive int. Received: {max_length!r}")
    missing = [c for c in (history, candidate_id, *candidate_features) if c not in train]
    if missing:
        raise DataError(f"Sequence examples need the columns {missing}; the training data has {sorted(train)}.")
    rows = num_rows(train)
    items = np.asarray(train[candidate_id])
    starts, most_recent = _history_ends(train, history)
    continues = most_recent[1:] == items[:-1]
    broken = np.flatnonzero(~starts[1:] & ~continues)
    if rows and (not starts[0] or len(broken)):
        row = 0 if not starts[0] else int(broken[0]) + 1
        raise DataError(
            f"Training row {row} neither starts a user (an empty `{history}`) nor continues the row before it "
            f"(its most recent `{history}` item is not that row's `{candidate_id}`): sequence examples need each "
            "user's rows together and in time order, as the leave-last-out split writes them."
        )

    user = np.cumsum(starts) - 1
    targets = np.flatnonzero(~starts)  # rows t whose item follows row t − 1 of the same user
    last = np.r_[np.flatnonzero(starts)[1:], rows] - 1  # each user's last row
    from_end = last[user[targets]] - targets  # 0 for a user's latest target
    chunks_per_user = np.bincount(user[targets], minlength=int(user[-1]) + 1 if rows else 0)
    chunks_per_user = (chunks_per_user + max_length - 1) // max_length
    first_chunk = np.r_[0, np.cumsum(chunks_per_user)[:-1]]
    chunk = first_chunk[user[targets]] + chunks_per_user[user[targets]] - 1 - from_end // max_length
    slot = max_length - 1 - from_end % max_length
    num_sequences = int(chunks_per_user.sum())

    def padded(values: np.ndarray) -> np.ndarray:
        fill = "" if values.dtype.kind in "OUS" else 0
        out = np.full((num_sequences, max_length), fill, dtype=object if values.dtype.kind in "OUS" else values.dtype)
        out[chunk, slot] = values
        return out

    examples: FeatureDict = {history: padded(items[targets - 1])}
    for name in candidate_features:
        examples[name] = padded(np.asarray(train[name])[targets])
    sequence_row = np.zeros(num_sequences, np.int64)
    sequence_row[chunk[slot == max_length - 1]] = targets[slot == max_length - 1]
    for name in train:
        if name not in examples:
            examples[name] = np.asarray(train[name])[sequence_row]
    return examples


def _history_ends(train: Mapping[str, np.ndarray], history: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(empty, most recent)``: ``bool [N]`` whether each row's history is all padding, and ``[N]``
    its most recent item; of :class:`~tfrec_pipelines.data.TrainingExamples` windows without building the
    ``[N, L]`` matrix (a window is left-padded: it is empty when its most recent slot is padding)."""
    windows = train.history_windows(history) if isinstance(train, TrainingExamples) else None
    if windows is not None:
        most_recent = windows[0].most_recent(windows[1])
        return most_recent == windows[0].ids[0], most_recent
    histories = np.asarray(train[history])
    padding = "" if histories.dtype.kind in "OUS" else 0
    return ~(histories != padding).any(axis=1), histories[:, -1]


def valid_positions(examples: Mapping[str, np.ndarray], candidate_id: str) -> np.ndarray:
    """``bool [S, L]`` the valid positions of sequence examples: candidate ids that are not padding."""
    ids = np.asarray(examples[candidate_id])
    return ids != ("" if ids.dtype.kind in "OUS" else 0)


def sequence_lengths(examples: Mapping[str, np.ndarray], candidate_id: str) -> np.ndarray:
    """``int64 [S]`` the valid positions of each sequence example (:func:`valid_positions`)."""
    return valid_positions(examples, candidate_id).sum(axis=1).astype(np.int64)


def num_targets(examples: Mapping[str, np.ndarray], candidate_id: str) -> int:
    """Training targets in a feature dictionary: rows of per-prefix examples, valid positions of
    sequence examples (:func:`sequence_lengths`)."""
    ids = np.asarray(examples[candidate_id])
    if ids.ndim == 1:
        return len(ids)
    return int(sequence_lengths(examples, candidate_id).sum())

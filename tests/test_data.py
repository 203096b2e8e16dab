"""The leave-last-out split of tfrec_pipelines.data on hand-made interactions: exact duplicates, repeated keys, and
the training examples it stores (columns built when read, against a loop over each user; its memory)."""

import dataclasses
import logging
import re
import tracemalloc

import numpy as np
import pytest

from tfrec_pipelines.data import (
    CodedIds,
    DataError,
    TrainingExamples,
    leave_last_out,
    num_rows,
    split_interactions,
    take_rows,
)

# (user, item, timestamp), shuffled. User 1: 5@1, 6@2, 6@2 again (exact duplicate), 5@3 (the same item
# later: a second interaction). User 2: 7@1, 8@2, 8@2 again: the duplicate is its last interaction.
INTERACTIONS = [(2, 8, 2), (1, 6, 2), (1, 5, 3), (2, 7, 1), (1, 6, 2), (1, 5, 1), (2, 8, 2), (2, 8, 2)]


def split(interactions=INTERACTIONS, users=(1, 2), items=(5, 6, 7, 8)):
    user_ids, item_ids, timestamps = (np.array(column, np.int64) for column in zip(*interactions))
    return leave_last_out(
        name="tiny",
        user_ids=user_ids,
        item_ids=item_ids,
        timestamps=timestamps,
        users={"user_id": np.array(users, np.int64)},
        candidates={"item_id": np.array(items, np.int64)},
        user_id="user_id",
        candidate_id="item_id",
        column_types={"user_id": "int64", "item_id": "int64"},
        max_history=2,
    )


def test_exact_duplicates_are_dropped_and_the_same_item_later_is_kept(caplog):
    with caplog.at_level(logging.WARNING, logger="tfrec_pipelines.data"):
        data = split()

    # Hand-derived. User 1: 5, 6 | 5. User 2: 7 | 8 (not 7, 8 | 8, whose target 8 would be a seen item).
    assert data.train["user_id"].tolist() == [1, 1, 2]
    assert data.train["item_id"].tolist() == [5, 6, 7]
    assert data.train["history"].tolist() == [[0, 0], [0, 5], [0, 0]]
    assert data.eval_targets.tolist() == [5, 8]
    assert data.eval_queries["history"].tolist() == [[5, 6], [0, 7]]
    assert [data.seen(u).tolist() for u in range(2)] == [[5, 6], [7]]
    assert data.summary == {
        "interactions": 5,
        "duplicate_interactions": 3,
        "users": 2,
        "users_with_one_interaction": 0,
        "train_examples": 3,
        "eval_queries": 2,
        "candidates": 4,
    }
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert record.getMessage() == (
        "tiny: dropped exact duplicate interactions (the same user_id, item_id and timestamp as an earlier row; "
        "the first occurrence is kept): 3 of 8, e.g. user_id 1, item_id 6, timestamp 2."
    )


def test_no_duplicates_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="tfrec_pipelines.data"):
        data = split([(1, 5, 1), (1, 5, 2), (1, 6, 2)])
    assert data.summary["duplicate_interactions"] == 0
    assert data.summary["interactions"] == 3
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize(
    "users, items, message",
    [
        ((2, 1, 2), (5, 6, 7, 8), "tiny: the user table has user_id 2 in rows 0 and 2 (counting from 0)"),
        ((1, 2), (8, 5, 6, 7, 6), "tiny: the candidate table has item_id 6 in rows 2 and 4 (counting from 0)"),
    ],
)
def test_repeated_key_names_both_rows(users, items, message):
    with pytest.raises(DataError, match=re.escape(message)):
        split(users=users, items=items)


def _reference_split(users, items, times, width):
    """Per-prefix examples by a loop over each user's interactions sorted by (time, item): the
    independent reference of the split's training rows (the last interaction held out)."""
    rows = []
    for user in sorted(set(users)):
        events = sorted((t, i) for u, i, t in zip(users, items, times) if u == user)
        sequence = [i for _, i in events]
        for position in range(len(sequence) - 1):
            previous = sequence[max(0, position - width) : position]
            rows.append((user, [""] * (width - len(previous)) + previous, sequence[position]))
    return rows


def _random_log(seed=0, num_users=40, num_items=12, per_user=9):
    rng = np.random.default_rng(seed)
    users = [f"u{k:02d}" for k in rng.integers(0, num_users, num_users * per_user)]
    items = [f"i{k:02d}" for k in rng.integers(0, num_items, len(users))]
    times = rng.permutation(len(users)).tolist()  # distinct: no exact duplicates
    catalogue = sorted({f"i{k:02d}" for k in range(num_items)})
    genres = {item: "|".join(f"g{(int(item[1:]) + j) % 5}" for j in range(int(item[1:]) % 3)) for item in catalogue}
    return users, items, times, catalogue, genres


def test_training_examples_build_the_columns_of_a_loop_over_each_user():
    users, items, times, catalogue, genres = _random_log()
    data = split_interactions(
        name="random",
        user_ids=np.array(users, object),
        item_ids=np.array(items, object),
        timestamps=np.array(times),
        users={"user_id": np.array(sorted(set(users)), object)},
        candidates={"item_id": np.array(catalogue, object), "genres": np.array([genres[c] for c in catalogue], object)},
        user_id="user_id",
        candidate_id="item_id",
        column_types={},
        max_history=3,
    )
    expected = _reference_split(users, items, times, 3)
    assert isinstance(data.train, TrainingExamples) and num_rows(data.train) == len(expected)
    assert list(data.train) == ["user_id", "history", "item_id", "genres"]
    assert data.train["user_id"].tolist() == [u for u, _, _ in expected]
    assert data.train["history"].tolist() == [h for _, h, _ in expected]
    assert data.train["item_id"].tolist() == [i for _, _, i in expected]
    assert data.train["genres"].tolist() == [genres[i] for _, _, i in expected]

    picked = np.array([5, 0, 17, 5])
    taken = take_rows(data.train, picked)
    assert taken["history"].tolist() == [expected[p][1] for p in picked]
    assert list(data.train.select(["item_id", "history"])) == ["item_id", "history"]
    assert data.train.select(["item_id", "history"])["history"].tolist() == [h for _, h, _ in expected]
    with pytest.raises(KeyError, match="no column 'age'"):
        data.train.select(["age"])

    counted = data.train.counted({"genres": "|"})  # what a vocabulary counts, in reading order
    assert counted["history"].tolist() == [v for _, h, _ in expected for v in h if v != ""]
    assert counted["genres"].tolist() == [t for _, _, i in expected for t in genres[i].split("|") if t]
    assert counted["user_id"].tolist() == [u for u, _, _ in expected]


def test_a_plain_feature_dictionary_is_wrapped_as_training_examples():
    data = split()
    plain = dataclasses.replace(data, train={"item_id": np.array([3, 4]), "history": np.array([[0, 0], [0, 3]])})
    assert isinstance(plain.train, TrainingExamples) and num_rows(plain.train) == 2
    assert plain.train["history"].tolist() == [[0, 0], [0, 3]]
    with pytest.raises(ValueError, match="different lengths"):
        dataclasses.replace(data, train={"item_id": np.array([3, 4]), "user_id": np.array([1])})


def test_coded_ids_split_like_the_ids_themselves():
    user_ids, item_ids, timestamps = (np.array(column, np.int64) for column in zip(*INTERACTIONS))
    head, tail = CodedIds.of(item_ids[:3]), CodedIds.of(item_ids[3:])
    coded = CodedIds.concatenate([head, tail])
    assert coded.decode().tolist() == item_ids.tolist() and coded.codes.dtype == np.int32
    assert coded.take(np.array([1, 0])).decode().tolist() == [6, 8]
    data = leave_last_out(
        name="tiny",
        user_ids=CodedIds.of(user_ids),
        item_ids=coded,
        timestamps=timestamps,
        users={"user_id": np.array((1, 2), np.int64)},
        candidates={"item_id": np.array((5, 6, 7, 8), np.int64)},
        user_id="user_id",
        candidate_id="item_id",
        column_types={},
        max_history=2,
    )
    assert data.train["history"].tolist() == [[0, 0], [0, 5], [0, 0]]  # as in the hand-derived test above
    assert data.eval_targets.tolist() == [5, 8] and data.eval_targets.dtype == np.int64


def test_the_split_holds_a_fraction_of_one_history_matrix():
    rng = np.random.default_rng(0)
    rows, width = 100_000, 50
    users, items = rng.integers(1, 2_001, rows), rng.integers(1, 501, rows)
    tracemalloc.start()
    try:
        data = leave_last_out(
            name="log",
            user_ids=users,
            item_ids=items,
            timestamps=rng.integers(0, 10**9, rows),
            users={"user_id": np.arange(1, 2_001)},
            candidates={"item_id": np.arange(1, 501)},
            user_id="user_id",
            candidate_id="item_id",
            column_types={},
            max_history=width,
        )
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    matrix = data.summary["train_examples"] * width * 8  # one [N, L] history of 8-byte ids
    assert peak < matrix / 2 and held < matrix / 4, (peak, held, matrix)
    assert data.train["history"].shape == (data.summary["train_examples"], width)


@pytest.mark.parametrize("span", [1_000, 10**12, 2**62])  # one packed key, two, or lexsort
def test_chronological_order_is_the_stable_lexsort_of_user_time_item(span):
    from tfrec_pipelines.data import _chronological_order

    rng = np.random.default_rng(span % 97)
    users, items = rng.integers(0, 50, 5_000), rng.integers(0, 30, 5_000)
    times = rng.integers(0, 40, 5_000) * (span // 40)  # repeated (user, time, item) triples: ties keep row order
    np.testing.assert_array_equal(_chronological_order(users, times, items, 30, 50), np.lexsort((items, times, users)))

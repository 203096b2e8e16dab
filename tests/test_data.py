"""The leave-last-out split of pipelines.data on hand-made interactions: exact duplicates and repeated keys."""

import logging
import re

import numpy as np
import pytest

from pipelines.data import DataError, leave_last_out

pytestmark = pytest.mark.fast

# (user, item, timestamp), shuffled. User 1: 5@1, 6@2, 6@2 again (exact duplicate), 5@3 (the same item
# later: a second interaction). User 2: 7@1, 8@2, 8@2 again: the duplicate is its last interaction.
INTERACTIONS = [(2, 8, 2), (1, 6, 2), (1, 5, 3), (2, 7, 1), (1, 6, 2), (1, 5, 1), (2, 8, 2), (2, 8, 2)]


def split(interactions=INTERACTIONS, users=(1, 2), items=(5, 6, 7, 8)):
    user_ids, item_ids, timestamps = (np.array(column, np.int64) for column in zip(*interactions))
    return leave_last_out(
        name="tiny", user_ids=user_ids, item_ids=item_ids, timestamps=timestamps,
        users={"user_id": np.array(users, np.int64)}, candidates={"item_id": np.array(items, np.int64)},
        user_id="user_id", candidate_id="item_id", column_types={"user_id": "int64", "item_id": "int64"},
        max_history=2,
    )


def test_exact_duplicates_are_dropped_and_the_same_item_later_is_kept(caplog):
    with caplog.at_level(logging.WARNING, logger="pipelines.data"):
        data = split()

    # Hand-derived. User 1: 5, 6 | 5. User 2: 7 | 8 (not 7, 8 | 8, whose target 8 would be a seen item).
    assert data.train["user_id"].tolist() == [1, 1, 2]
    assert data.train["item_id"].tolist() == [5, 6, 7]
    assert data.train["history"].tolist() == [[0, 0], [0, 5], [0, 0]]
    assert data.eval_targets.tolist() == [5, 8]
    assert data.eval_queries["history"].tolist() == [[5, 6], [0, 7]]
    assert [data.seen(u).tolist() for u in range(2)] == [[5, 6], [7]]
    assert data.summary == {"interactions": 5, "duplicate_interactions": 3, "users": 2,
                            "users_with_one_interaction": 0, "train_examples": 3, "eval_queries": 2,
                            "candidates": 4}
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert record.getMessage() == (
        "tiny: dropped exact duplicate interactions (the same user_id, item_id and timestamp as an earlier row; "
        "the first occurrence is kept): 3 of 8, e.g. user_id 1, item_id 6, timestamp 2.")


def test_no_duplicates_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pipelines.data"):
        data = split([(1, 5, 1), (1, 5, 2), (1, 6, 2)])
    assert data.summary["duplicate_interactions"] == 0
    assert data.summary["interactions"] == 3
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("users, items, message", [
    ((2, 1, 2), (5, 6, 7, 8), "tiny: the user table has user_id 2 in rows 0 and 2 (counting from 0)"),
    ((1, 2), (8, 5, 6, 7, 6), "tiny: the candidate table has item_id 6 in rows 2 and 4 (counting from 0)"),
])
def test_repeated_key_names_both_rows(users, items, message):
    with pytest.raises(DataError, match=re.escape(message)):
        split(users=users, items=items)

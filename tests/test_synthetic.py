"""The synthetic data set: determinism, schema, popularity, history signal and the split."""

import re

import numpy as np
import pytest

from tfrec_pipelines.synthetic import COUNTRIES, make_synthetic

SMALL = dict(num_items=300, num_users=40, interactions_per_user=12, max_history=8, embedding_dim=8, seed=3)


@pytest.fixture(scope="module")
def small():
    return make_synthetic(**SMALL)


@pytest.fixture(scope="module")
def medium():
    return make_synthetic(num_items=2000, num_users=600, interactions_per_user=20, max_history=10, seed=0)


def tables(data):
    return {"train": data.train, "eval_queries": data.eval_queries, "candidates": data.candidates}


def test_same_seed_same_data_other_seed_other_data(small):
    again = make_synthetic(**SMALL)
    other = make_synthetic(**{**SMALL, "seed": 4})

    for name, table in tables(small).items():
        for column, values in table.items():
            np.testing.assert_array_equal(values, tables(again)[name][column], err_msg=f"{name}.{column}")
    for field in ("eval_targets", "seen_indptr", "seen_ids"):
        np.testing.assert_array_equal(getattr(small, field), getattr(again, field))
    assert not np.array_equal(small.train["item_id"], other.train["item_id"])


def test_shapes_and_dtypes(small):
    rows, users, length = 40 * 11, 40, 8
    assert small.name == "synthetic-300"
    assert small.query_features == ("user_id", "age", "country", "history")
    assert small.candidate_features == ("item_id", "category")
    assert small.candidate_id == "item_id"
    assert small.column_types == {
        "user_id": "int64",
        "age": "int64",
        "country": "string",
        "history": "int64_list",
        "item_id": "int64",
        "category": "string",
    }
    expected = {
        "user_id": (np.int64, (rows,)),
        "age": (np.int64, (rows,)),
        "country": (object, (rows,)),
        "history": (np.int64, (rows, length)),
        "item_id": (np.int64, (rows,)),
        "category": (object, (rows,)),
    }
    for column, (dtype, shape) in expected.items():
        assert small.train[column].dtype == dtype and small.train[column].shape == shape, column
    for column in small.query_features:
        assert small.eval_queries[column].dtype == expected[column][0], column
        assert small.eval_queries[column].shape == (users, *expected[column][1][1:]), column
    assert small.eval_targets.shape == (users,) and small.eval_targets.dtype == np.int64
    assert small.seen_indptr.tolist() == list(range(0, 11 * users + 1, 11))
    assert small.candidates["item_id"].tolist() == list(range(1, 301))
    assert all(c.startswith("category_") for c in small.candidates["category"])
    assert set(small.eval_queries["country"]) <= set(COUNTRIES)
    assert small.eval_queries["user_id"].tolist() == list(range(1, 41))
    assert np.all((small.eval_queries["age"] >= 18) & (small.eval_queries["age"] < 75))
    assert small.train["item_id"].min() >= 1 and small.train["item_id"].max() <= 300


def test_split_invariants(small):
    """Rebuilds every user's sequence from its training rows and checks histories, targets and seen sets."""
    train = small.train
    for u, user in enumerate(small.eval_queries["user_id"]):
        rows = np.flatnonzero(train["user_id"] == user)
        items = train["item_id"][rows].tolist()
        target = int(small.eval_targets[u])
        assert target not in items
        assert len(set(items)) == len(items) == 11
        for k, row in enumerate(rows):
            previous = items[max(0, k - 8) : k]
            assert train["history"][row].tolist() == [0] * (8 - len(previous)) + previous
        assert small.eval_queries["history"][u].tolist() == items[-8:]
        assert small.seen(u).tolist() == sorted(items)
        for column in ("age", "country"):
            assert set(train[column][rows]) == {small.eval_queries[column][u]}
    category = dict(zip(small.candidates["item_id"], small.candidates["category"]))
    assert all(category[i] == c for i, c in zip(train["item_id"], train["category"]))


def test_popularity_is_heavy_tailed(medium):
    counts = np.bincount(np.r_[medium.train["item_id"], medium.eval_targets], minlength=2001)[1:]
    top = np.sort(counts)[::-1][: len(counts) // 100]
    assert top.sum() / counts.sum() > 0.10  # the top 1% of items: > 10x their uniform share


def test_history_carries_signal(medium):
    """The target shares the category of the last history item far more often than chance."""
    category = medium.candidates["category"]
    target = category[medium.eval_targets - 1]
    last = category[medium.eval_queries["history"][:, -1] - 1]
    chance = np.mean(target[:, None] == category[np.random.default_rng(0).integers(2000, size=2000)][None, :])
    assert np.mean(target == last) > 1.5 * chance


def test_the_sampler_scores_a_million_item_catalogue_as_it_scores_a_small_one(monkeypatch):
    """Each step scores every group of 32 users against 512 proposals in one matrix product, whatever the
    catalogue size: never users × items. The products are counted and their shapes recorded."""
    products = []
    matmul = np.matmul

    def recorded(a, b, *args, **kwargs):
        result = matmul(a, b, *args, **kwargs)
        products.append(result.shape)
        return result

    monkeypatch.setattr(np, "matmul", recorded)
    shapes = {}
    for num_items in (1_000, 1_000_000):
        products.clear()
        data = make_synthetic(num_items=num_items, num_users=20, interactions_per_user=10, max_history=5)
        shapes[num_items] = list(products)
    assert shapes[1_000_000] == shapes[1_000] == [(1, 32, 512)] * 10  # one group of 20 users, one product a step
    assert len(data.candidates["item_id"]) == 1_000_000
    assert data.train["history"].shape == (20 * 9, 5)


def test_every_item_consumed_when_users_take_the_whole_catalogue():
    data = make_synthetic(num_items=15, num_users=6, interactions_per_user=15, max_history=4)
    for u in range(6):
        assert sorted([*data.seen(u).tolist(), int(data.eval_targets[u])]) == list(range(1, 16))


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("num_items", 0, "`num_items` must be a positive int. Received: 0"),
        ("num_users", -1, "`num_users` must be a positive int. Received: -1"),
        ("max_history", 2.5, "`max_history` must be a positive int. Received: 2.5"),
        ("embedding_dim", 0, "`embedding_dim` must be a positive int. Received: 0"),
        ("interactions_per_user", 1, "`interactions_per_user` must be between 2 and `num_items`"),
        ("interactions_per_user", 301, "`interactions_per_user` must be between 2 and `num_items`"),
        ("zipf_exponent", -0.5, "`zipf_exponent` must be a non-negative float. Received: -0.5"),
        ("seed", "a", "`seed` must be an int. Received: 'a'"),
    ],
)
def test_arguments_are_validated(argument, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_synthetic(**{**SMALL, argument: value})

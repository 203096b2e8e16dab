"""Full-catalogue evaluation against a brute-force numpy ranking and a hand-checked case."""

import numpy as np
import pytest

from tfrec_towers.evaluation import METRIC_KEYS, metrics_from_ranks, target_ranks


def _reference_ranks(q, c, ids, targets, seen):
    """Sort every unseen candidate by score (ties against the target) and find the target."""
    ranks = []
    for u in range(len(q)):
        scores = c @ q[u]
        t = int(np.flatnonzero(ids == targets[u])[0])
        others = [j for j in range(len(ids)) if j != t and ids[j] not in set(seen[u])]
        ranks.append(sum(scores[j] >= scores[t] for j in others))
    return np.array(ranks)


def test_hand_checked_case():
    # 1 query, 4 items; scores 4, 3, 2, 1 for ids 10, 20, 30, 40; target 30; 10 was seen.
    q = np.array([[1.0, 0.0]], np.float32)
    c = np.array([[4, 0], [3, 0], [2, 0], [1, 0]], np.float32)
    ranks = target_ranks(q, c, np.array([10, 20, 30, 40]), np.array([30]), np.array([0, 1]), np.array([10]))
    assert ranks.tolist() == [1]  # only id 20 is above it once 10 is filtered
    metrics = metrics_from_ranks(ranks, ks=(1, 2))
    assert metrics["HR@1"] == 0.0 and metrics["HR@2"] == 1.0
    assert metrics["NDCG@2"] == pytest.approx(1 / np.log2(3))


def test_ties_count_against_the_target():
    q = np.array([[1.0]], np.float32)
    c = np.array([[1.0], [1.0], [1.0]], np.float32)
    ranks = target_ranks(q, c, np.array([1, 2, 3]), np.array([2]), np.array([0, 0]), np.array([], np.int64))
    assert ranks.tolist() == [2]


@pytest.mark.parametrize("seed", range(5))
def test_matches_bruteforce_reference_across_chunks(seed):
    rng = np.random.default_rng(seed)
    users, items, dim = 37, 211, 8
    q = rng.normal(size=(users, dim)).astype(np.float32)
    c = np.round(rng.normal(size=(items, dim)), 1).astype(np.float32)
    ids = rng.permutation(np.arange(1000, 1000 + items))
    targets = rng.choice(ids, users)
    seen = [rng.choice(ids, rng.integers(0, 20), replace=False) for _ in range(users)]
    seen[0] = np.append(seen[0], targets[0])  # a target also in the seen list is still ranked
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    got = target_ranks(q, c, ids, targets, indptr, np.concatenate(seen), query_chunk=5, candidate_chunk=17)
    np.testing.assert_array_equal(got, _reference_ranks(q, c, ids, targets, seen))


def test_metrics_keys_and_values():
    metrics = metrics_from_ranks(np.array([0, 9, 10, 49, 99, 100]))
    assert tuple(metrics) == METRIC_KEYS
    assert metrics["HR@10"] == pytest.approx(2 / 6)
    assert metrics["HR@100"] == pytest.approx(5 / 6)
    expected = (1 / np.log2(2) + 1 / np.log2(11)) / 6
    assert metrics["NDCG@10"] == pytest.approx(expected)


def test_errors_name_the_problem():
    q = np.zeros((1, 2), np.float32)
    c = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="not in the candidate catalogue"):
        target_ranks(q, c, np.array([1, 2]), np.array([3]), np.array([0, 0]), np.array([], np.int64))
    with pytest.raises(ValueError, match="No evaluation queries"):
        metrics_from_ranks(np.array([]))

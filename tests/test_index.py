"""Tests for tfrec_towers.index: exact and ScaNN top-k against a numpy reference, config, validation."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from tfrec_towers.index import PADDING_SCORE, IndexConfig, build_index


def numpy_top_k(queries, embeddings, ids, k):
    """Exact reference: scores = Q · Cᵀ, sorted descending."""
    scores = queries @ embeddings.T
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def recall(found, exact):
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found.tolist(), exact.tolist())]))


def random_corpus(seed, num_candidates=300, dim=12, num_queries=7):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(num_candidates, dim)).astype(np.float32)
    queries = rng.normal(size=(num_queries, dim)).astype(np.float32)
    ids = rng.permutation(10 * num_candidates)[:num_candidates].astype(np.int64)
    return embeddings, queries, ids


@pytest.mark.parametrize("seed", range(5))
def test_brute_force_matches_numpy(seed):
    embeddings, queries, ids = random_corpus(seed)
    index = build_index(IndexConfig(kind="brute-force", k=10), embeddings, ids)
    scores, found = index(tf.constant(queries))
    expected_scores, expected_ids = numpy_top_k(queries, embeddings, ids, 10)
    assert scores.shape == (7, 10) and found.dtype == tf.int64
    np.testing.assert_array_equal(found.numpy(), expected_ids)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-5, atol=1e-5)


def test_hand_computed_top_k_with_string_ids_and_clamped_k():
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    index = build_index(IndexConfig(k=10), embeddings, np.array(["a", "b", "c"]))
    scores, found = index(tf.constant([[2.0, 1.0], [0.0, -1.0]]))
    # Row 1: a=2, b=1, c=3. Row 2: a=0, b=-1, c=-1 (tie: lower row first).
    assert index.k == 3 and index.config.k == 3
    assert found.numpy().tolist() == [[b"c", b"a", b"b"], [b"a", b"b", b"c"]]
    np.testing.assert_allclose(scores.numpy(), [[3.0, 2.0, 1.0], [0.0, -1.0, -1.0]])


def test_brute_force_saved_model_and_checkpoint_round_trip(tmp_path):
    embeddings, queries, ids = random_corpus(0)
    index = build_index(IndexConfig(k=4), embeddings, ids)
    expected = [t.numpy() for t in index(tf.constant(queries))]
    tf.saved_model.save(index, str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    for actual, wanted in zip(loaded(tf.constant(queries)), expected):
        np.testing.assert_array_equal(actual.numpy(), wanted)

    checkpoint = tf.train.Checkpoint(index=index).save(str(tmp_path / "ckpt"))
    other_embeddings, _, other_ids = random_corpus(1)
    other = build_index(IndexConfig(k=4), other_embeddings, other_ids)
    tf.train.Checkpoint(index=other).restore(checkpoint).assert_consumed()
    for actual, wanted in zip(other(tf.constant(queries)), expected):
        np.testing.assert_array_equal(actual.numpy(), wanted)


def test_scann_recall_on_random_corpus_and_saved_model(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(2000, 16)).astype(np.float32)
    queries = rng.normal(size=(100, 16)).astype(np.float32)
    ids = np.arange(2000, dtype=np.int64) + 1000
    # Isotropic random data has no cluster structure: search two thirds of the leaves. ScaNN's
    # k-means is not seeded; over repeated builds recall@10 was 0.96-0.98 here (0.93-0.95 at 25 leaves).
    index = build_index(IndexConfig(kind="scann", k=10, num_leaves=45, num_leaves_to_search=30), embeddings, ids)
    scores, found = (t.numpy() for t in index(tf.constant(queries)))
    expected_scores, expected_ids = numpy_top_k(queries, embeddings, ids, 10)
    assert found.shape == scores.shape == (100, 10)
    assert recall(found, expected_ids) >= 0.9
    assert np.all(np.diff(scores, axis=1) <= 0)
    # Re-ordering makes every returned score the exact dot product of the returned candidate.
    position = {i: row for row, i in enumerate(ids.tolist())}
    exact = np.array([[queries[q] @ embeddings[position[i]] for i in row] for q, row in enumerate(found.tolist())])
    np.testing.assert_allclose(scores, exact, rtol=1e-4, atol=1e-4)

    tf.saved_model.save(index, str(tmp_path / "scann"))
    loaded = tf.saved_model.load(str(tmp_path / "scann"))
    loaded_scores, loaded_ids = loaded(tf.constant(queries))
    np.testing.assert_array_equal(loaded_ids.numpy(), found)
    np.testing.assert_allclose(loaded_scores.numpy(), scores, rtol=1e-6)


@pytest.mark.parametrize("build", range(3))  # ScaNN's partition training is not seeded: several builds
def test_scann_default_parameters_on_clustered_corpus(build):
    """Embedding-like data (40 clusters, 44 points a leaf): the derived defaults reach recall@10 >= 0.95.

    With ScaNN's default minimum partition size of 50 this corpus gave 0.84-0.98 from build to build.
    """
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(40, 16))
    embeddings = (centers[rng.integers(0, 40, 2000)] + 0.2 * rng.normal(size=(2000, 16))).astype(np.float32)
    queries = (centers[rng.integers(0, 40, 100)] + 0.2 * rng.normal(size=(100, 16))).astype(np.float32)
    ids = np.arange(2000, dtype=np.int64)
    index = build_index(IndexConfig(kind="scann", k=10), embeddings, ids)
    assert (index.config.num_leaves, index.config.num_leaves_to_search) == (45, 9)
    _, found = index(tf.constant(queries))
    assert recall(found.numpy(), numpy_top_k(queries, embeddings, ids, 10)[1]) >= 0.95


@pytest.mark.parametrize("ids, padding", [(np.arange(200, dtype=np.int64), -1), (np.arange(200).astype(str), b"")])
def test_scann_pads_when_searched_leaves_hold_fewer_than_k(ids, padding):
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(200, 8)).astype(np.float32)
    config = IndexConfig(kind="scann", k=60, num_leaves=20, num_leaves_to_search=1)
    scores, found = (t.numpy() for t in build_index(config, embeddings, ids)(tf.constant(embeddings[:3])))
    assert scores.shape == found.shape == (3, 60)
    padded = scores == PADDING_SCORE
    assert padded[:, -1].all() and not padded[:, 0].any()
    assert (found[padded] == padding).all() and not (found[~padded] == padding).any()
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_resolve_derives_hand_computed_parameters():
    assert IndexConfig(kind="scann", k=10).resolve(2000) == IndexConfig(
        kind="scann", k=10, num_leaves=45, num_leaves_to_search=9
    )
    # N = 1,000,000, k = 100: 1000 leaves, reorder 1000, search max(100, ceil(4·1000·1000/1e6) = 4).
    resolved = IndexConfig(kind="scann", k=100).resolve(1_000_000)
    assert (resolved.num_leaves, resolved.num_leaves_to_search) == (1000, 100)
    assert IndexConfig(kind="scann", k=10).resolve(30).num_leaves_to_search == round(math.sqrt(30))
    assert IndexConfig(kind="brute-force", k=10, num_leaves=4).resolve(3) == IndexConfig(k=3)
    assert IndexConfig.for_corpus(5_000, k=20) == IndexConfig(kind="brute-force", k=20)
    assert IndexConfig.for_corpus(5_001).kind == "scann"


def test_config_dict_round_trip():
    config = IndexConfig(kind="scann", k=7, num_leaves=30, num_leaves_to_search=3, reordering_multiplier=4)
    assert IndexConfig(**config.to_dict()) == config
    assert config.to_dict() == {
        "kind": "scann",
        "k": 7,
        "num_leaves": 30,
        "num_leaves_to_search": 3,
        "dimensions_per_block": 2,
        "reordering_multiplier": 4,
        "anisotropic_quantization_threshold": 0.2,
        "training_iterations": 12,
    }
    assert dataclasses.replace(config, k=8).k == 8


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(kind="annoy"), r"`kind` must be one of \['brute-force', 'scann'\]. Received: 'annoy'"),
        (dict(k=0), "`k` must be a positive int. Received: 0"),
        (dict(k=2.5), "`k` must be a positive int"),
        (dict(num_leaves=-1), "`num_leaves` must be a positive int"),
        (dict(num_leaves=4, num_leaves_to_search=5), "`num_leaves_to_search` must not exceed `num_leaves` \\(4\\)"),
        (dict(anisotropic_quantization_threshold=1.5), "`anisotropic_quantization_threshold` must be in"),
    ],
)
def test_config_validation(kwargs, error):
    with pytest.raises(ValueError, match=error):
        IndexConfig(**kwargs)


def test_num_leaves_larger_than_corpus():
    with pytest.raises(ValueError, match=r"`num_leaves` must not exceed the number of candidates \(3\)"):
        IndexConfig(kind="scann", num_leaves=4).resolve(3)


@pytest.mark.parametrize(
    "embeddings, ids, error",
    [
        (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), "is empty"),
        (np.zeros((3, 4), np.float32), np.arange(4), "`candidate_ids` has 4 entries but `candidate_embeddings` has 3"),
        (np.zeros((4, 2), np.float32), np.array([5, 6, 5, 6]), r"2 ids repeat, e.g. \[5, 6\]"),
        (np.zeros((2, 2), np.float32), np.array(["x", "x"]), r"1 ids repeat, e.g. \[b'x'\]"),
        (np.zeros((2, 2), np.float32), np.array([0.5, 1.5]), "must be integers or strings"),
        (np.zeros((4,), np.float32), np.arange(4), r"float matrix \[num_candidates, dim\]"),
        (np.array([[0.0, np.nan], [1.0, 1.0]], np.float32), np.arange(2), r"NaN or inf, e.g. rows \[0\]"),
    ],
)
def test_corpus_validation(embeddings, ids, error):
    with pytest.raises(ValueError, match=error):
        build_index(IndexConfig(), embeddings, ids)


def test_scann_block_larger_than_dimension():
    embeddings, _, ids = random_corpus(0, dim=2)
    with pytest.raises(ValueError, match=r"`dimensions_per_block` must not exceed the embedding dimension \(2\)"):
        build_index(IndexConfig(kind="scann", dimensions_per_block=3), embeddings, ids)


def test_scann_below_its_minimum_corpus_is_exact_search():
    """ScaNN's hashing trains 16 centres per block: 15 candidates resolve to brute force, 16 stay ScaNN."""
    assert IndexConfig(kind="scann", k=5).resolve(15) == IndexConfig(kind="brute-force", k=5)
    assert IndexConfig(kind="scann", k=5).resolve(16).kind == "scann"
    embeddings, queries, ids = random_corpus(4, num_candidates=6)
    index = build_index(IndexConfig(kind="scann", k=10), embeddings, ids)
    assert index.config == IndexConfig(kind="brute-force", k=6)
    scores, found = (t.numpy() for t in index(tf.constant(queries)))
    expected_scores, expected_ids = numpy_top_k(queries, embeddings, ids, 6)
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)


def test_a_scann_index_of_an_unresolved_config_names_the_resolve_step():
    from tfrec_towers.index import ScannIndex

    embeddings, _, ids = random_corpus(3)
    with pytest.raises(
        ValueError,
        match=r"`num_leaves` and `num_leaves_to_search` are unset: build the ScaNN index "
        r"from `IndexConfig.resolve\(num_candidates\)`\.",
    ):
        ScannIndex(embeddings, ids, IndexConfig(kind="scann", k=5))
    config = IndexConfig(kind="scann", k=5).resolve(len(ids))
    # N = 300, k = 5: round(√300) = 17 leaves; max(⌈17/10⌉, ⌈4 · 50 · 17 / 300⌉) = 12 searched
    assert config.resolved_leaves == (17, 12)

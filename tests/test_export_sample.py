"""The verification sample's pieces against hand-computed values and a numpy brute force."""

import numpy as np

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from tfrec_towers.export.sample import (
    NUM_SAMPLE_CANDIDATES,
    sampled_candidate_positions,
    search_with_exact,
    verification_sample,
)
from tfrec_towers.index import IndexConfig, build_index


def test_sampled_positions_are_the_first_rows_then_the_retrieved_ones_each_once():
    ids = np.arange(100, 120, dtype=np.int64)
    top_ids = np.array([[119, 101, 115, 118], [115, 100, 110, 117]], np.int64)
    positions = sampled_candidate_positions(ids, top_ids)
    # the first NUM_SAMPLE_CANDIDATES rows, then the 3 best of each query not among them: ids 110,
    # 115, 119 at rows 10, 15, 19 in corpus order (118 and 117 are 4th, 100 and 101 already in)
    assert NUM_SAMPLE_CANDIDATES == 8
    assert positions.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 10, 15, 19]


def test_search_with_exact_matches_a_numpy_brute_force_with_and_without_history():
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(12, 3)).astype(np.float32)
    queries = rng.normal(size=(2, 3)).astype(np.float32)
    ids = np.arange(1, 13, dtype=np.int64)
    index = build_index(IndexConfig(kind="brute-force", k=3), candidates, ids)
    order = np.argsort(-(queries @ candidates.T), axis=1, kind="stable")

    scores, top_ids, exact_ids = search_with_exact(index, queries, candidates, index.candidate_ids.numpy())
    assert top_ids.tolist() == exact_ids.tolist() == ids[order[:, :3]].tolist()
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ candidates.T, order[:, :3], axis=1), rtol=1e-5)

    history = np.stack([ids[order[0, :2]], [ids[order[1, 0]], 0]])  # row 1 pads its history with 0
    _, top_ids, exact_ids = search_with_exact(index, queries, candidates, index.candidate_ids.numpy(), history)
    expected = [ids[order[0, 2:5]].tolist(), ids[order[1, 1:4]].tolist()]
    assert top_ids.tolist() == exact_ids.tolist() == expected


def test_the_sample_holds_json_values_and_the_recall_of_the_retrieved_ids():
    queries = {"user": np.array([b"a\xff", b"b"], dtype=object)}
    candidates = {"item": np.array([7, 8], np.int64)}
    retrieved = (
        np.array([[0.5, 0.25], [1.0, 0.0]], np.float32),
        np.array([[7, 8], [8, 7]], np.int64),
        np.array([[7, 9], [8, 7]], np.int64),
    )
    embeddings = np.eye(2, dtype=np.float32)
    sample = verification_sample(queries, embeddings, candidates, embeddings, retrieved)
    assert sample["queries"] == {"user": ["a\udcff", "b"]}
    assert sample["candidates"] == {"item": [7, 8]}
    assert sample["top_k"] == {"candidate_ids": [[7, 8], [8, 7]], "scores": [[0.5, 0.25], [1.0, 0.0]]}
    assert sample["exact_top_k_candidate_ids"] == [[7, 9], [8, 7]]
    assert sample["index_recall"] == 0.75

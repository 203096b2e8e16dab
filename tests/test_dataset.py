"""tf.data pipelines over feature dictionaries: batch shapes, dtypes, order and seeded shuffling."""

import re

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from tfrec_pipelines.data import DataError
from tfrec_pipelines.dataset import epoch_batches

ROWS = 10


@pytest.fixture
def features():
    return {
        "user_id": np.arange(1, ROWS + 1, dtype=np.int64),
        "country": np.array([f"c{i}é" for i in range(ROWS)], dtype=object),
        "score": np.linspace(0, 1, ROWS, dtype=np.float32),
        "history": np.arange(ROWS * 3, dtype=np.int64).reshape(ROWS, 3),
    }


def epoch_ids(dataset):
    return np.concatenate([batch["user_id"].numpy() for batch in dataset]).tolist()


def test_training_batches_shapes_and_dtypes(features):
    batches = list(epoch_batches(features, 4, seed=1, epochs=1))
    assert [len(b["user_id"]) for b in batches] == [4, 4, 2]
    first = batches[0]
    assert set(first) == set(features)
    assert first["user_id"].dtype == tf.int64 and first["user_id"].shape == (4,)
    assert first["country"].dtype == tf.string and first["country"].shape == (4,)
    assert first["score"].dtype == tf.float32 and first["score"].shape == (4,)
    assert first["history"].dtype == tf.int64 and first["history"].shape == (4, 3)


def test_rows_stay_together_through_the_shuffle(features):
    for batch in epoch_batches(features, 3, seed=5, epochs=2):
        columns = (batch[k].numpy() for k in ("user_id", "country", "score", "history"))
        for user, country, score, history in zip(*columns):
            row = user - 1
            assert country.decode() == features["country"][row]
            assert score == features["score"][row]
            assert history.tolist() == features["history"][row].tolist()


def test_same_seed_same_order_each_epoch_a_permutation(features):
    ids = epoch_ids(epoch_batches(features, 4, seed=7, epochs=3))
    epochs = [ids[i : i + ROWS] for i in range(0, 3 * ROWS, ROWS)]
    assert ids == epoch_ids(epoch_batches(features, 4, seed=7, epochs=3))
    assert all(sorted(epoch) == list(range(1, ROWS + 1)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled every epoch
    assert epoch_ids(epoch_batches(features, 4, seed=8, epochs=1)) != epochs[0]


def test_batches_never_span_two_epochs(features):
    """10 rows in batches of 4 an epoch ends on a partial batch of 2, and the next starts afresh."""
    batches = list(epoch_batches(features, 4, seed=3, epochs=3))
    assert [len(b["user_id"]) for b in batches] == [4, 4, 2] * 3


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True])
def test_batch_size_is_validated(features, batch_size):
    message = f"`batch_size` must be a positive int. Received: {batch_size!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        epoch_batches(features, batch_size, seed=0, epochs=1)


def test_bad_columns(features):
    with pytest.raises(DataError, match="different lengths"):
        epoch_batches({**features, "user_id": features["user_id"][:3]}, 4, seed=0, epochs=1)
    with pytest.raises(DataError, match="Column 'flag' has unsupported dtype bool"):
        epoch_batches({**features, "flag": np.ones(ROWS, bool)}, 4, seed=0, epochs=1)
    with pytest.raises(DataError, match="Column 'country' must hold only strings"):
        epoch_batches({**features, "country": np.array([1] * ROWS, dtype=object)}, 4, seed=0, epochs=1)

"""The benchmarks' independent SASRec yardstick: causal, padding-blind, and it learns."""

import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_transformer import MinimalSASRec, train_and_evaluate  # noqa: E402
from tfrec_pipelines.synthetic import make_synthetic  # noqa: E402


def _model():
    tf.keras.utils.set_random_seed(0)
    return MinimalSASRec(num_items=30, max_length=6, dim=8, num_layers=2, num_heads=2, dropout=0.1)


def test_changing_a_future_item_never_changes_an_earlier_position():
    model = _model()
    items = np.array([[0, 0, 3, 7, 9, 4], [5, 6, 7, 8, 9, 10]], np.int32)
    changed = items.copy()
    changed[:, 4] = [20, 21]
    before, after = model(items).numpy(), model(changed).numpy()
    np.testing.assert_allclose(before[:, :4], after[:, :4], atol=1e-6)
    assert not np.allclose(before[:, 4:], after[:, 4:])


def test_the_padding_row_never_reaches_a_valid_position():
    model = _model()
    items = np.array([[0, 0, 3, 7, 9, 4], [0, 0, 0, 0, 0, 2]], np.int32)
    before = model(items).numpy()
    table = model.items.embeddings
    table.assign(tf.tensor_scatter_nd_update(table, [[0]], [tf.fill([8], 5.0)]))
    after = model(items).numpy()
    valid = items > 0
    np.testing.assert_allclose(before[valid], after[valid], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["in_batch_logq", "full_softmax"])
def test_it_learns_the_synthetic_structure_beyond_chance(loss):
    data = make_synthetic(num_items=200, num_users=300, interactions_per_user=20, max_history=10, seed=0)
    result = train_and_evaluate(data, seed=0, loss=loss, epochs=8, max_length=10, dim=16)
    assert set(result["metrics"]) == {"HR@10", "HR@50", "HR@100", "NDCG@10", "NDCG@50", "NDCG@100"}
    # a random ranking of the ≈ 181 unseen items puts the target in the top 50 with probability ≈ 0.28
    assert result["metrics"]["HR@50"] > 0.45
    assert result["train_seconds"] > 0 and result["examples_per_second"] > 0


def test_unknown_loss_is_named():
    data = make_synthetic(num_items=50, num_users=20, interactions_per_user=5, max_history=4, seed=0)
    with pytest.raises(ValueError, match="`loss` must be one of"):
        train_and_evaluate(data, seed=0, loss="hinge", epochs=1)

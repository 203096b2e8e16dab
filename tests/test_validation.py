"""Per-epoch validation metrics and early stopping: the best epoch's weights, also across a resume."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from helpers import tiny_config, trainable
from tfrec_pipelines.checkpointing import fit_resumably
from tfrec_pipelines.train import fit_model
from tfrec_pipelines.validation import EarlyStopping
from tfrec_towers.config import ConfigError, ExperimentConfig, apply_overrides
from tfrec_towers.towers import compute_embeddings

CONFIG = tiny_config(
    "data.num_items=120",
    "data.num_users=60",
    "data.interactions_per_user=8",
    "data.max_history=4",
    "data.validation=last",
    "model.history.encoder=pooling",
    "loss.mixed_negatives=8",
    "training.epochs=5",
    "training.batch_size=64",
)
VALUES = [0.1, 0.5, 0.3, 0.2, 0.9]  # best at epoch 2; patience 2 stops after epoch 4, before the 0.9


@pytest.fixture(scope="module")
def small():
    return trainable(CONFIG)


def _towers(model):
    return [v.numpy() for v in model.query_tower.variables + model.candidate_tower.variables]


class StubMetric(tf.keras.callbacks.Callback):
    """Logs ``VALUES[epoch]`` as ``val_HR@10`` and records the towers at each epoch end; optionally crashes."""

    def __init__(self, crash_at_step=None):
        super().__init__()
        self.towers, self.steps, self.crash_at_step = {}, 0, crash_at_step

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.crash_at_step:
            raise RuntimeError("crash")

    def on_epoch_end(self, epoch, logs=None):
        logs["val_HR@10"] = VALUES[epoch]
        self.towers[epoch] = _towers(self.model)


def _fit(model, columns, checkpoints=None, stub=None):
    stub = stub or StubMetric()
    history, steps = fit_resumably(
        model,
        columns,
        CONFIG.training,
        checkpoints,
        0,
        epoch_callbacks=[stub],
        early_stopping=EarlyStopping("val_HR@10", patience=2),
    )
    return history, steps, stub


def test_the_rule_by_hand():
    rule = EarlyStopping("val_HR@10", patience=2, min_delta=0.05)
    assert rule.decide({}) == (None, False)
    assert rule.decide({"val_HR@10": [0.1, 0.5]}) == (1, False)
    assert rule.decide({"val_HR@10": [0.1, 0.5, 0.54]}) == (1, False)  # +0.04 is not more than min_delta
    assert rule.decide({"val_HR@10": [0.1, 0.5, 0.54, 0.5]}) == (1, True)
    assert rule.decide({"val_HR@10": [0.1, 0.5, 0.56, 0.5]}) == (2, False)


@pytest.mark.parametrize("checkpoints", [False, True], ids=["in-memory", "checkpointed"])
def test_early_stopping_stops_and_restores_the_best_epochs_weights(small, checkpoints, tmp_path):
    make_model, columns, _ = small
    model = make_model()
    history, _, stub = _fit(model, columns, tmp_path / "checkpoints" if checkpoints else None)
    assert history["val_HR@10"] == VALUES[:4] and len(history["loss"]) == 4
    assert sorted(stub.towers) == [0, 1, 2, 3]
    assert any(not np.array_equal(a, b) for a, b in zip(stub.towers[3], stub.towers[1]))
    for got, best in zip(_towers(model), stub.towers[1]):
        np.testing.assert_array_equal(got, best)


@pytest.mark.slow
def test_a_resumed_run_with_early_stopping_ends_like_an_uninterrupted_one(small, tmp_path):
    make_model, columns, _ = small
    uninterrupted = make_model()
    expected_history, _, _ = _fit(uninterrupted, columns, tmp_path / "full")
    per_epoch = int(np.ceil(len(columns["item_id"]) / CONFIG.training.batch_size))
    directory = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="crash"):  # in epoch 4, after the best epoch 2 and the epoch-3 checkpoint
        _fit(make_model(), columns, directory, StubMetric(crash_at_step=3 * per_epoch + 1))
    resumed = make_model()
    history, steps, _ = _fit(resumed, columns, directory)
    assert history == expected_history and steps == per_epoch  # only epoch 4 is trained again
    for got, expected in zip(_towers(resumed), _towers(uninterrupted)):
        np.testing.assert_array_equal(got, expected)
    again = make_model()  # the stopped run resumed once more: nothing is trained, the best weights are restored
    history, steps, _ = _fit(again, columns, directory)
    assert steps == 0 and history == expected_history
    for got, expected in zip(_towers(again), _towers(uninterrupted)):
        np.testing.assert_array_equal(got, expected)


def test_validation_metrics_are_logged_each_epoch_as_numpy_computes_them(small):
    make_model, columns, data = small
    model = make_model()
    training = apply_overrides(CONFIG, ["training.epochs=1"]).training
    history, _, _ = fit_model(model, columns, training, 0, validation=data)
    assert set(history) >= {"loss", "val_HR@10", "val_HR@50", "val_HR@100", "val_NDCG@10"}

    held = data.validation
    queries = compute_embeddings(model.query_tower, held.queries)
    items = compute_embeddings(model.candidate_tower, data.candidates)
    ids = list(data.candidates["item_id"])
    ranks = []
    for q, target in enumerate(held.targets):
        scores = items @ queries[q]
        beats = scores >= scores[ids.index(target)]
        beats[ids.index(target)] = False
        for seen in held.seen_ids[held.seen_indptr[q] : held.seen_indptr[q + 1]]:
            beats[ids.index(seen)] = False
        ranks.append(int(beats.sum()))
    ranks = np.array(ranks)
    assert history["val_HR@10"] == [pytest.approx(np.mean(ranks < 10))]
    assert history["val_NDCG@10"] == [pytest.approx(np.mean(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0)))]


def test_early_stopping_needs_validation_interactions(small):
    make_model, columns, data = small
    with pytest.raises(
        ConfigError, match=r"`training.early_stopping` watches a validation metric: set `data.validation`"
    ):
        apply_overrides(ExperimentConfig(), ["training.early_stopping={}"])
    training = apply_overrides(CONFIG, ["training.early_stopping={metric: NDCG@20}"]).training
    with pytest.raises(ConfigError, match=r"the data holds no validation interactions"):
        fit_model(make_model(), columns, training, 0)
    with pytest.raises(ConfigError, match=r"`training.early_stopping.metric` must be HR@K or NDCG@K"):
        apply_overrides(CONFIG, ["training.early_stopping={metric: MRR}"])

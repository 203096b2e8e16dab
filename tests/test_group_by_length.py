"""``training.group_by_length``: every-position batches of similar-length sequences, and each batch cut
to its longest sequence without changing a query."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401
from tfrec_pipelines.dataset import GROUPING_WINDOW_BATCHES, epoch_batches, epoch_order, length_grouped_order
from tfrec_towers.config import ConfigError, TrainingConfig
from tfrec_towers.features import CategoricalFeature, FeatureSpec, SequenceFeature, adapt
from tfrec_towers.history_encoders import HistoryEncoderConfig
from tfrec_towers.model import TwoTowerModel, build_towers
from tfrec_towers.towers import TowerConfig

BATCH = 8


def _lengths(rows=1000, seed=0):
    return np.random.default_rng(seed).integers(1, 51, rows)


def test_the_grouped_order_is_a_permutation_of_the_epoch_with_its_partial_batch_last():
    lengths = _lengths(1003)
    order = length_grouped_order(lengths, BATCH, seed=4, epoch=2)
    assert sorted(order.tolist()) == list(range(1003))
    np.testing.assert_array_equal(order[-3:], epoch_order(1003, 4, 2)[-3:])  # 1003 = 125 batches of 8 + 3
    np.testing.assert_array_equal(order, length_grouped_order(lengths, BATCH, seed=4, epoch=2))
    assert not np.array_equal(order, length_grouped_order(lengths, BATCH, seed=4, epoch=3))


def test_each_window_of_the_epoch_is_sorted_by_length_then_cut_into_batches():
    lengths = _lengths(1000)
    base = epoch_order(1000, 0, 0)
    window = BATCH * GROUPING_WINDOW_BATCHES
    window_of = {row: i // window for i, row in enumerate(base)}  # each row's window of the epoch's order
    batches = length_grouped_order(lengths, BATCH, seed=0, epoch=0).reshape(-1, BATCH)
    by_window = {}
    for batch in batches:
        (w,) = {window_of[row] for row in batch}  # a batch never mixes two windows
        by_window.setdefault(w, []).append(lengths[batch])
    for cut in by_window.values():  # sorted then cut: the batches' length ranges do not overlap
        cut.sort(key=lambda b: (-b.max(), -b.min()))
        assert all(a.min() >= b.max() for a, b in zip(cut, cut[1:]))
    spread = np.mean([b.max() - b.min() for b in (lengths[batch] for batch in batches)])
    unsorted = np.mean([b.max() - b.min() for b in lengths[base].reshape(-1, BATCH)])
    assert spread < unsorted / 5


def test_a_resumed_epoch_yields_the_remaining_grouped_batches():
    lengths = _lengths(100)
    features = {"row": np.arange(100, dtype=np.int64)}
    whole = [b["row"].numpy() for b in epoch_batches(features, BATCH, seed=1, epochs=2, lengths=lengths)]
    resumed = [
        b["row"].numpy() for b in epoch_batches(features, BATCH, seed=1, epochs=2, start_step=17, lengths=lengths)
    ]
    assert len(whole) == 26 and len(resumed) == 9
    for a, b in zip(whole[17:], resumed):
        np.testing.assert_array_equal(a, b)
    expected = length_grouped_order(lengths, BATCH, seed=1, epoch=0)
    np.testing.assert_array_equal(np.concatenate(whole[:13]), expected)
    with pytest.raises(ValueError, match="`lengths` must have one entry per example"):
        epoch_batches(features, BATCH, seed=1, epochs=1, lengths=lengths[:5])


def _model(positions):
    rng = np.random.default_rng(0)
    data = {"history": rng.integers(0, 20, (40, 6)).astype(np.int64), "item_id": np.arange(1, 21, dtype=np.int64)}
    spec = adapt(
        FeatureSpec(
            query=(SequenceFeature("history", embedding_dim=8, embedding_table="item_id"),),
            candidate=(CategoricalFeature("item_id", embedding_dim=8),),
            candidate_id="item_id",
        ),
        data,
    )
    history = HistoryEncoderConfig(encoder="transformer", num_layers=2, dropout=0.0, max_length=12, positions=positions)
    query, candidate = build_towers(
        spec, TowerConfig(hidden_units=(8,), output_dim=8), TowerConfig(output_dim=8), history
    )
    return TwoTowerModel(query, candidate, "item_id")


@pytest.mark.parametrize("positions", ["from_oldest", "from_newest"])
def test_cutting_the_slots_every_sequence_pads_changes_no_query(positions):
    model = _model(positions)
    # Three sequences of 12 slots, left-padded: their valid positions start at slots 7, 9 and 11.
    history = np.zeros((3, 12), np.int64)
    targets = np.zeros((3, 12), np.int64)
    for row, start in enumerate((7, 9, 11)):
        history[row, start:] = np.arange(1, 13 - start) + row
        targets[row, start:] = np.arange(2, 14 - start) + row
    batch = {"history": tf.constant(history), "item_id": tf.constant(targets)}
    full_queries, full_candidates, full_ids = model._every_position(batch, training=False)
    model.trim_sequence_padding = True
    trimmed, valid = model._without_padding_slots(batch, tf.not_equal(batch["item_id"], 0), ["item_id"])
    assert trimmed["history"].shape[1] == valid.shape[1] == 5  # slots 7 … 11
    queries, candidates, ids = model._every_position(batch, training=False)
    np.testing.assert_allclose(queries.numpy(), full_queries.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ids.numpy(), full_ids.numpy())
    np.testing.assert_array_equal(ids.numpy(), targets[targets > 0])


def test_grouping_by_length_needs_every_position_examples():
    with pytest.raises(ConfigError, match=r"`training\.group_by_length`.*every_position"):
        TrainingConfig(group_by_length=True)
    assert TrainingConfig(group_by_length=True, example_format="every_position").group_by_length


@pytest.mark.slow
def test_a_grouped_run_trains_from_the_command_line(tmp_path, capsys):
    import json

    import pandas as pd

    from helpers import TINY_TOWERS, cli_sets
    from tfrec_towers.cli import main

    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"item-{rng.integers(30):02d}", t) for u in range(60) for t in range(rng.integers(4, 20))]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(tmp_path / "log.csv", index=False)
    sets = cli_sets(
        *TINY_TOWERS,
        "model.history.encoder=transformer",
        "training.example_format=every_position",
        "training.group_by_length=true",
        "training.batch_size=8",
        "training.epochs=2",
    )
    run = tmp_path / "run"
    assert main(["train", "--interactions", str(tmp_path / "log.csv"), "--output", str(run), *sets]) == 0
    capsys.readouterr()
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 2
    assert json.loads((run / "verification.json").read_text())["ok"]


def _sequence_batch():
    """Three left-padded sequences of 12 slots with 5, 3 and 1 valid positions (9 targets)."""
    history, targets = np.zeros((3, 12), np.int64), np.zeros((3, 12), np.int64)
    for row, start in enumerate((7, 9, 11)):
        history[row, start:] = np.arange(1, 13 - start) + row
        targets[row, start:] = np.arange(2, 14 - start) + row
    return history, targets


@pytest.mark.parametrize("weighted", [False, True])
def test_over_a_fixed_target_count_a_batch_loss_is_its_positions_sum_not_their_mean(weighted):
    model = _model("from_newest")
    history, targets = _sequence_batch()
    batch = {"history": tf.constant(history), "item_id": tf.constant(targets)}
    total = 9.0
    if weighted:
        weights = np.where(targets > 0, np.linspace(0.5, 2.0, 36).reshape(3, 12), 0.0).astype(np.float32)
        batch["weight"] = tf.constant(weights)
        model.sample_weight_feature = "weight"
        total = float(weights[targets > 0].sum())
    mean = float(model.compute_loss(batch, training=True))  # dropout 0: the same loss each call
    model.targets_per_batch = 4.5
    np.testing.assert_allclose(float(model.compute_loss(batch, training=True)), mean * total / 4.5, rtol=1e-5)
    np.testing.assert_allclose(float(model.compute_loss(batch, training=False)), mean, rtol=1e-5)  # training only


def test_grouped_training_divides_each_batch_by_the_epochs_mean_targets_per_batch():
    from helpers import tiny_config
    from tfrec_pipelines.sources import prepare_data
    from tfrec_pipelines.train import build_model, fit_model, training_columns

    config = tiny_config(
        "model.history.encoder=transformer",
        "training.example_format=every_position",
        "training.group_by_length=true",
        "training.batch_size=16",
    )
    prepared = prepare_data(config)
    data, spec = prepared.data, prepared.adapted_spec()
    tf.keras.utils.set_random_seed(0)
    model = build_model(spec, config, data)
    fit_model(model, training_columns(data, spec, prepared.weight_column), config.training, 0)
    # 120 users of 11 training items, each one sequence (windows of 50), its first item without a history:
    # 10 targets per sequence, 120 sequences in 8 batches of 16
    assert model.targets_per_batch == pytest.approx(120 * 10 / 8)
    ungrouped = build_model(spec, tiny_config("model.history.encoder=transformer"), data)
    assert ungrouped.targets_per_batch == 0.0  # without grouping: each batch's mean, as before

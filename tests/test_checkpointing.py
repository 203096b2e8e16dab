"""The batches training reads (tfrec_pipelines.checkpointing.training_batches) against a numpy reference."""

import numpy as np
import pytest

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from tfrec_pipelines.checkpointing import training_batches
from tfrec_pipelines.data import HistoryWindows, Lookup, leave_last_out


def _split():
    """String ids: 6 users, 30 interactions, a multi-valued text attribute and a weight per interaction."""
    rng = np.random.default_rng(3)
    users = np.array([f"u{k}" for k in rng.integers(0, 6, 30)], object)
    items = np.array([f"i{k}" for k in rng.integers(0, 8, 30)], object)
    catalogue = np.array([f"i{k}" for k in range(8)], object)
    return leave_last_out(
        name="tiny",
        user_ids=users,
        item_ids=items,
        timestamps=rng.permutation(30),
        users={"user_id": np.array([f"u{k}" for k in range(6)], object), "age": np.arange(20, 26)},
        candidates={"item_id": catalogue, "tags": np.array([f"t{k % 3}|t{k % 2}" for k in range(8)], object)},
        user_id="user_id",
        candidate_id="item_id",
        column_types={},
        max_history=3,
        interaction_columns={"weight": np.linspace(0.5, 2.0, 30).astype(np.float32)},
    )


def _as_numpy(value):
    value = value.numpy()
    return value.astype(str).astype(object) if value.dtype == object else value


@pytest.mark.parametrize("start_step", [0, 3])
def test_batches_are_the_rows_of_each_epochs_seeded_order(start_step):
    train = _split().train
    built = {name: train[name] for name in train}
    batch_size, seed, epochs = 4, 7, 2
    rows = len(built["item_id"])
    expected = []  # numpy: epoch e visits the rows in default_rng([seed, e]).permutation(rows), in batches
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(rows)
        expected += [order[i : i + batch_size] for i in range(0, rows, batch_size)]
    got = list(training_batches(train, batch_size, seed=seed, epochs=epochs, start_step=start_step))
    assert len(got) == len(expected) - start_step
    for batch, index in zip(got, expected[start_step:]):
        assert list(batch) == list(built)
        for name, values in built.items():
            np.testing.assert_array_equal(_as_numpy(batch[name]), values[index], err_msg=name)
    assert got[0]["history"].dtype.name == "string" and got[0]["age"].dtype.name == "int64"
    assert got[0]["weight"].dtype.name == "float32" and got[0]["history"].shape.as_list() == [batch_size, 3]


def test_batches_look_columns_up_without_building_them(monkeypatch):
    train = _split().train.select(["history", "tags", "weight"])
    expected = {name: train[name] for name in train}
    for column in (HistoryWindows, Lookup):
        monkeypatch.setattr(column, "read", lambda *args: pytest.fail("a whole column was built"))
    batches = list(training_batches(train, 64, seed=0, epochs=1))
    assert len(batches) == 1
    order = np.random.default_rng([0, 0]).permutation(len(expected["weight"]))
    for name, values in expected.items():
        np.testing.assert_array_equal(_as_numpy(batches[0][name]), values[order], err_msg=name)


def test_training_batches_run_without_autotuning_for_built_and_looked_up_columns():
    # Deleting an autotuned iterator waits for the autotuner's sleeping thread (idle seconds after fit).
    train = _split().train
    built = {name: train[name] for name in train}
    for features in (train, built):
        dataset = training_batches(features, 4, seed=0, epochs=1)
        assert dataset.options().autotune.enabled is False


def test_early_stopping_on_a_metric_that_is_never_a_number_stops_without_a_best_epoch(caplog):
    import tensorflow as tf

    from tfrec_pipelines.checkpointing import ResumableTraining
    from tfrec_pipelines.validation import EarlyStopping

    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    callback = ResumableTraining(
        model, None, per_epoch=1, epochs=3, early_stopping=EarlyStopping("val_HR@10", patience=1)
    )
    callback.set_model(model)
    weights = [w.copy() for w in model.get_weights()]
    with caplog.at_level("INFO", logger="tfrec_pipelines.checkpointing"):
        callback.on_epoch_end(0, {"val_HR@10": float("nan")})
    assert model.stop_training is True
    assert "Early stopping after epoch 1: val_HR@10 is not a number in any epoch." in caplog.text
    callback.restore_best()  # no best epoch: the weights stay
    for kept, now in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)

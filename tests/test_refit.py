"""Early stopping with a refit: the epochs chosen on validation, the model retrained on training + validation."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from helpers import tiny_config
from tfrec_pipelines import train as train_module
from tfrec_pipelines.run_directory import partial_directory
from tfrec_pipelines.sources import prepare_data
from tfrec_pipelines.train import SELECTION_FILE, evaluate_run, train
from tfrec_towers.config import ConfigError, apply_overrides

CONFIG = tiny_config(
    "data.validation=last",
    "model.history.encoder=pooling",
    "loss.mixed_negatives=16",
    "training.epochs=4",
    "training.batch_size=64",
    "training.learning_rate=0.02",
    "export.verify=false",
)
REFIT = apply_overrides(CONFIG, ["training.early_stopping={metric: HR@10, patience: 1, refit: true}"])


def _weights(run_dir):
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoint" / "model"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if "model/" in name}


def _first_best(values):
    """The 0-based epoch of the first highest value, as numpy finds it."""
    return int(np.argmax(np.asarray(values)))


@pytest.fixture(scope="module")
def refitted(tmp_path_factory):
    output = tmp_path_factory.mktemp("refit") / "run"
    return train(REFIT, output, verbose=0)


def test_refit_trains_the_best_epochs_on_training_and_validation_interactions(refitted, tmp_path):
    selection = json.loads((refitted.run_dir / SELECTION_FILE).read_text())
    validation = selection["history"]["val_HR@10"]
    assert selection["metric"] == "val_HR@10"
    assert selection["best_epoch"] == _first_best(validation) + 1
    assert selection["best_value"] == pytest.approx(max(validation))
    assert selection["epochs_trained"] == len(validation) <= 4
    history = json.loads((refitted.run_dir / "history.json").read_text())
    assert len(history["loss"]) == selection["best_epoch"]
    assert not any(key.startswith("val_") for key in history)  # the refit has no validation split left

    # The same model trained directly on every interaction but the last, for that many epochs, from the seed.
    direct = apply_overrides(CONFIG, ["data.validation=none", f"training.epochs={selection['best_epoch']}"])
    reference = train(direct, tmp_path / "direct", verbose=0)
    ours, theirs = _weights(refitted.run_dir), _weights(reference.run_dir)
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        if ours[name].dtype.kind in "fc":
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)
        else:  # vocabularies, counts
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    for key, value in reference.metrics.items():
        assert refitted.metrics[key] == pytest.approx(value, abs=1e-6), key
    assert evaluate_run(refitted.run_dir) == pytest.approx(refitted.metrics)  # re-evaluating the run agrees


def test_the_refit_keeps_the_validation_runs_schedule_and_stops_at_the_best_epoch(tmp_path):
    config = apply_overrides(REFIT, ["training.learning_rate_decay=cosine"])
    result = train(config, tmp_path / "run", verbose=0)
    best = json.loads((result.run_dir / SELECTION_FILE).read_text())["best_epoch"]
    rows = len(
        prepare_data(apply_overrides(config, ["training.early_stopping=null", "data.validation=none"])).data.train[
            "item_id"
        ]
    )
    per_epoch = math.ceil(rows / 64)
    total = 4 * per_epoch  # the configured epochs, not the refit's
    expected = [0.02 * 0.5 * (1 + math.cos(math.pi * (e * per_epoch - 1) / (total - 1))) for e in range(1, best + 1)]
    history = json.loads((result.run_dir / "history.json").read_text())
    assert history["learning_rate"] == pytest.approx(expected, rel=1e-5)


def test_a_refit_interrupted_after_selection_resumes_without_repeating_it(tmp_path, monkeypatch):
    calls = []
    real_fit = train_module.fit_model

    def crash_in_refit(model, columns, training, *args, **kwargs):
        calls.append(training.epochs)
        if len(calls) == 2:
            raise RuntimeError("killed during the refit")
        return real_fit(model, columns, training, *args, **kwargs)

    monkeypatch.setattr(train_module, "fit_model", crash_in_refit)
    output = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed during the refit"):
        train(REFIT, output, verbose=0)
    kept = partial_directory(output) / "checkpoints" / SELECTION_FILE
    selection = json.loads(kept.read_text())

    calls.clear()
    monkeypatch.setattr(train_module, "fit_model", lambda *a, **k: (calls.append(a[2].epochs), real_fit(*a, **k))[1])
    result = train(REFIT, output, verbose=0)
    assert calls == [selection["best_epoch"]]  # only the refit trained
    assert json.loads((result.run_dir / SELECTION_FILE).read_text()) == selection


def test_refit_is_a_boolean_of_early_stopping():
    assert apply_overrides(CONFIG, ["training.early_stopping={}"]).training.early_stopping.refit is False
    with pytest.raises(ConfigError, match=r"training\.early_stopping\.refit"):
        apply_overrides(CONFIG, ["training.early_stopping={refit: 3}"])

"""Collapse detection: both statistics against numpy on hand-made embeddings, the monitor's values in the
history, a cold-started hinge run that collapses (flagged, or stopped with its last good checkpoint kept),
a healthy run that is not flagged, and the configuration keys."""

import json
import logging
import math
import re

import matplotlib.image
import numpy as np
import pytest

import tfrec_towers  # noqa: F401
from helpers import TINY, cli_sets, tiny_config, trainable
from tfrec_pipelines.checkpointing import fit_resumably, latest_checkpoint, restore_towers
from tfrec_pipelines.run_directory import CHECKPOINTS_DIR, partial_directory
from tfrec_pipelines.train import RunError, collapse_monitor, fit_model, load_run, train, training_collapse
from tfrec_towers.collapse import (
    MEAN_RESULTANT_LENGTH,
    SCORE_SPREAD,
    CollapseCriteria,
    CollapseMonitor,
    mean_resultant_length,
    score_spread,
)
from tfrec_towers.config import (
    ConfigError,
    EarlyStoppingConfig,
    ExperimentConfig,
    TrainingConfig,
    apply_overrides,
    config_from_dict,
)
from tfrec_towers.config_template import commented_yaml
from tfrec_towers.evaluation import METRIC_KEYS
from tfrec_towers.report import collect_run, render_report
from tfrec_towers.towers import compute_embeddings

COLD_HINGE = (
    "loss.mode=hinge",
    "loss.margin=0.5",
    "loss.hardest_negative_only=true",
    "loss.logq=none",
    "loss.mixed_negatives=0",
    "training.learning_rate=0.05",
    "training.epochs=3",
)
"""A hinge loss on each row's hardest in-batch negative, started cold at a high learning rate: on the tiny
data every candidate embedding turns one way and the scores flatten (the loss falls towards the margin)."""


def numpy_mean_resultant_length(rows):
    """‖mean of the unit rows‖, rows without zeros."""
    rows = np.asarray(rows, np.float64)
    return float(np.linalg.norm(np.mean(rows / np.linalg.norm(rows, axis=1, keepdims=True), axis=0)))


def numpy_score_spread(queries, candidates):
    """Per query: std of its scores over the candidates / (2 ‖q‖ max ‖c‖); the mean over queries."""
    queries, candidates = np.asarray(queries, np.float64), np.asarray(candidates, np.float64)
    largest = max(np.linalg.norm(c) for c in candidates)
    terms = []
    for q in queries:
        scores = np.array([q @ c for c in candidates])
        terms.append(np.sqrt(np.mean((scores - scores.mean()) ** 2)) / (2 * np.linalg.norm(q) * largest))
    return float(np.mean(terms))


def sample_statistics(model, monitor):
    """Both statistics of the model's current weights on the monitor's samples, by numpy."""
    candidates = compute_embeddings(model.candidate_tower, monitor.candidate_features)
    queries = compute_embeddings(model.query_tower, monitor.query_features)
    return numpy_mean_resultant_length(candidates), numpy_score_spread(queries, candidates)


# --- the statistics --------------------------------------------------------------------------------------


def test_mean_resultant_length_of_hand_made_rows():
    direction = np.array([0.6, -0.8, 0.0])
    assert mean_resultant_length(np.outer([1.0, 2.0, 0.5, 7.0], direction)) == pytest.approx(1.0)
    signed_basis = np.concatenate([np.eye(4), -np.eye(4)]) * np.array([[1.0], [3.0], [0.2], [5.0]] * 2)
    assert mean_resultant_length(signed_basis) == pytest.approx(0.0, abs=1e-12)
    # e1, 2·e1, e2 → unit rows e1, e1, e2 → resultant (2, 1) / 3
    assert mean_resultant_length([[1.0, 0.0], [2.0, 0.0], [0.0, 4.0]]) == pytest.approx(math.sqrt(5.0) / 3.0)
    # four rows at ±30° from e1 → mean unit vector (cos 30°, 0)
    angles = np.radians([30.0, -30.0, 30.0, -30.0])
    assert mean_resultant_length(np.stack([np.cos(angles), np.sin(angles)], 1)) == pytest.approx(math.sqrt(3) / 2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        rows = rng.normal(size=(50, 6)) + rng.normal(size=6)
        assert mean_resultant_length(rows) == pytest.approx(numpy_mean_resultant_length(rows), rel=1e-12)


def test_zero_rows_count_as_collapsed():
    # a zero row points along the resultant of the others: (‖e1 − e1‖ + 2 zero rows) / 4
    assert mean_resultant_length([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]) == pytest.approx(0.5)
    assert mean_resultant_length([[0.0, 3.0], [0.0, 0.0]]) == pytest.approx(1.0)
    assert mean_resultant_length(np.zeros((3, 4))) == pytest.approx(1.0)
    assert math.isnan(mean_resultant_length([[np.nan, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="non-empty matrix"):
        mean_resultant_length(np.zeros((0, 3)))


def test_score_spread_of_hand_made_rows():
    queries = [[1.0, 0.0], [0.0, 2.0]]
    candidates = [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]
    # q1 scores (1, −1, 0): std √(2/3), range 2·1·1; q2 scores (0, 0, 2): std √(8/9), range 2·2·1
    expected = (math.sqrt(2 / 3) / 2 + math.sqrt(8 / 9) / 4) / 2
    assert score_spread(queries, candidates) == pytest.approx(expected)
    assert score_spread(queries, np.tile([[0.3, 0.4]], (5, 1))) == pytest.approx(0.0, abs=1e-12)
    # the temperature (a common scale of either side) cancels; a zero query adds a term of 0
    assert score_spread(np.multiply(queries, 20.0), np.multiply(candidates, 0.5)) == pytest.approx(expected)
    assert score_spread([*queries, [0.0, 0.0]], candidates) == pytest.approx(expected * 2 / 3)
    rng = np.random.default_rng(1)
    for _ in range(5):
        q, c = rng.normal(size=(20, 5)), rng.normal(size=(30, 5)) * rng.uniform(0.1, 3, size=(30, 1))
        assert score_spread(q, c) == pytest.approx(numpy_score_spread(q, c), rel=1e-12)
    with pytest.raises(ValueError, match="one width"):
        score_spread(np.ones((2, 3)), np.ones((2, 4)))


def test_criteria_name_what_collapsed():
    criteria = CollapseCriteria(max_mean_resultant_length=0.9, min_score_spread=0.01)
    assert criteria.findings(0.5, 0.2) == ()
    direction, scores = criteria.findings(0.95, 0.001)
    assert "point one way" in direction and "0.9500 > 0.9" in direction
    assert "scores about the same" in scores and "0.00100 < 0.01" in scores
    for bad in ({"max_mean_resultant_length": 0.0}, {"min_score_spread": 0.6}):
        with pytest.raises(ValueError):
            CollapseCriteria(**bad)


def test_monitor_config_holds_the_hyper_parameters_only():
    features = {"x": np.arange(3)}
    monitor = CollapseMonitor(features, features, every_steps=5, min_score_spread=0.01, stop_on_collapse=True)
    config = monitor.get_config()
    assert config == {
        "every_steps": 5,
        "max_mean_resultant_length": 0.99,
        "min_score_spread": 0.01,
        "stop_on_collapse": True,
        "batch_size": 4096,
    }
    assert CollapseMonitor(features, features, **config).get_config() == config
    with pytest.raises(ValueError, match="every_steps"):
        CollapseMonitor(features, features, every_steps=-1)
    with pytest.raises(ValueError, match="at least one row"):
        CollapseMonitor({"x": np.zeros(0)}, features)


def test_the_run_summary_judges_the_model_the_run_ends_with():
    history = {
        "loss": [3.0, 2.0, 1.5],
        MEAN_RESULTANT_LENGTH: [0.5, 0.995, 0.6],
        SCORE_SPREAD: [0.05, 0.001, 0.04],
        "val_HR@10": [0.1, 0.3, 0.2],
    }
    recovered = training_collapse(history, TrainingConfig())
    assert recovered["collapsed"] is False and recovered["collapsed_epochs"] == [2]
    assert recovered["final"] == {"epoch": 3, MEAN_RESULTANT_LENGTH: 0.6, SCORE_SPREAD: 0.04, "findings": []}
    best_epoch = training_collapse(history, TrainingConfig(early_stopping=EarlyStoppingConfig(patience=1)))
    assert best_epoch["collapsed"] is True and best_epoch["final"]["epoch"] == 2  # early stopping ends with epoch 2
    assert len(best_epoch["final"]["findings"]) == 2
    strict = training_collapse(history, TrainingConfig(collapse_max_mean_resultant_length=0.55))
    assert strict["collapsed"] is True and strict["collapsed_epochs"] == [2, 3]
    assert training_collapse({"loss": [1.0]}, TrainingConfig())["collapsed"] is None  # a run without the checks


# --- the configuration -----------------------------------------------------------------------------------


def test_configuration_keys_are_validated_and_documented():
    training = ExperimentConfig().training
    assert (training.stop_on_collapse, training.collapse_check_every_steps) == (False, 0)
    for key, value, expected in (
        ("collapse_check_every_steps", -1, "≥ 0"),
        ("collapse_max_mean_resultant_length", 0.0, "in (0, 1]"),
        ("collapse_max_mean_resultant_length", 1.5, "in (0, 1]"),
        ("collapse_max_mean_resultant_length", float("nan"), "in (0, 1]"),
        ("collapse_min_score_spread", -0.1, "in [0, 0.5]"),
        ("collapse_min_score_spread", 0.7, "in [0, 0.5]"),
    ):
        with pytest.raises(ConfigError, match=re.escape(f"`training.{key}` must be {expected}")):
            TrainingConfig(**{key: value})
    with pytest.raises(ConfigError, match="training.stop_on_collapse"):
        config_from_dict({"training": {"stop_on_collapse": "sometimes"}})
    overridden = apply_overrides(ExperimentConfig(), ["training.stop_on_collapse=true"])
    assert overridden.training.stop_on_collapse is True
    template = commented_yaml()
    for key in ("stop_on_collapse: false", "collapse_check_every_steps: 0", "collapse_min_score_spread: 0.005"):
        assert key in template
    assert "# stop the run with an error at the collapse check" in template


# --- the monitor during training -------------------------------------------------------------------------


@pytest.mark.slow
def test_monitor_values_reach_the_history_and_do_not_change_training(tmp_path):
    config = tiny_config("training.epochs=2", "training.collapse_check_every_steps=4")
    make_model, columns, data = trainable(config)
    unmonitored = make_model()
    fit_resumably(unmonitored, columns, config.training)
    model = make_model()
    monitor = collapse_monitor(model, columns, config.training, data)
    assert len(monitor.candidate_features["item_id"]) == 300  # the whole tiny catalogue (< 2,048 rows)
    assert len(np.unique(monitor.candidate_features["item_id"])) == 300
    assert len(monitor.query_features["user_id"]) == 256
    again = collapse_monitor(model, columns, config.training, data)
    np.testing.assert_array_equal(again.query_features["history"], monitor.query_features["history"])

    history, steps = fit_resumably(model, columns, config.training, collapse=monitor)
    for trained, reference in zip(model.get_weights(), unmonitored.get_weights()):
        np.testing.assert_array_equal(trained, reference)  # measuring reads the weights only
    assert len(history[MEAN_RESULTANT_LENGTH]) == len(history[SCORE_SPREAD]) == len(history["loss"]) == 2
    length, spread = sample_statistics(model, monitor)  # the last epoch's values: the final weights
    assert history[MEAN_RESULTANT_LENGTH][-1] == pytest.approx(length, rel=1e-9)
    assert history[SCORE_SPREAD][-1] == pytest.approx(spread, rel=1e-9)
    every_fourth = set(range(4, steps + 1, 4))
    assert [check.step for check in monitor.checks] == sorted(every_fourth | {steps // 2, steps})
    assert not any(check.collapsed for check in monitor.checks)


def test_a_healthy_default_run_is_not_flagged(tiny_run, tmp_path):
    history = json.loads((tiny_run / "history.json").read_text())
    collapse = json.loads((tiny_run / "collapse.json").read_text())
    assert len(history[MEAN_RESULTANT_LENGTH]) == 1
    assert history[MEAN_RESULTANT_LENGTH][0] < 0.99 and history[SCORE_SPREAD][0] > 0.005
    assert collapse["collapsed"] is False and collapse["collapsed_epochs"] == []
    assert collapse["final"]["epoch"] == 1 and collapse["final"][SCORE_SPREAD] == history[SCORE_SPREAD][0]
    page = render_report([collect_run(tiny_run)], tmp_path / "report").read_text()
    assert "<td>no</td>" in page and "class='warning'" not in page


@pytest.mark.slow
def test_a_cold_hinge_run_that_collapses_is_flagged(tmp_path, caplog):
    config = tiny_config(*COLD_HINGE, "export.verify=false")
    with caplog.at_level(logging.WARNING):
        result = train(config, tmp_path / "run", verbose=0)
    history = json.loads((result.run_dir / "history.json").read_text())
    assert len(history["loss"]) == 3  # training went on
    assert history[MEAN_RESULTANT_LENGTH][-1] > 0.99 and history[SCORE_SPREAD][-1] < 0.005
    assert history[SCORE_SPREAD][-1] < history[SCORE_SPREAD][0] / 2  # the scores flatten as training goes on
    _, _, data = trainable(config)
    _, _, model = load_run(result.run_dir)
    monitor = collapse_monitor(model, data.train, config.training, data)
    length, spread = sample_statistics(model, monitor)
    assert history[MEAN_RESULTANT_LENGTH][-1] == pytest.approx(length, rel=1e-6)
    assert history[SCORE_SPREAD][-1] == pytest.approx(spread, rel=1e-5)
    collapse = json.loads((result.run_dir / "collapse.json").read_text())
    assert collapse == result.collapse
    assert collapse["collapsed"] is True and 3 in collapse["collapsed_epochs"]
    assert any("point one way" in finding for finding in collapse["final"]["findings"])
    assert tuple(json.loads((result.run_dir / "metrics.json").read_text())) == METRIC_KEYS
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("The model collapsed at step") and "loss.memory_bank_warmup_steps" in m for m in warnings)
    final = next(m for m in warnings if m.startswith("The trained model is collapsed (epoch 3"))
    assert str(result.run_dir / "collapse.json") in final and "training.learning_rate" in final

    report = collect_run(result.run_dir)  # the report: both values per epoch beside the loss, and the flag
    assert report.collapse_history == {key: history[key] for key in (MEAN_RESULTANT_LENGTH, SCORE_SPREAD)}
    page = render_report([report], tmp_path / "report")
    text = page.read_text()
    assert "<td><b>yes</b> (epoch 3)</td>" in text and "<b>run collapsed</b> (epoch 3)" in text
    assert "Training loss and collapse checks" in text
    assert matplotlib.image.imread(page.parent / "loss.png").shape[1] == 1400  # three panels, 14 in at 100 dpi


@pytest.mark.slow
def test_stop_on_collapse_fails_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    from tfrec_towers.cli import main

    overrides = (
        *TINY,
        *COLD_HINGE,
        "training.stop_on_collapse=true",
        "training.collapse_check_every_steps=2",
        "training.checkpoint_every_steps=3",
        "export.verify=false",
    )
    run = tmp_path / "run"
    assert main(["--quiet", "train", "--output", str(run), *cli_sets(*overrides)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    message = re.search(r"error: Training collapsed at step (\d+) \(epoch (\d+)\): (.*)", error)
    assert message, error
    step, reason = int(message.group(1)), message.group(3)
    values = re.findall(r"mean resultant length ([\d.]+) > 0.99|score spread ([\d.]+) < 0.005", reason)
    assert values and all(float(length or 1.0) > 0.99 and float(spread or 0.0) < 0.005 for length, spread in values)
    for advice in ("training.learning_rate", "loss.memory_bank_warmup_steps", "loss.mode: softmax", "temperature"):
        assert advice in reason
    assert not run.exists()

    kept = latest_checkpoint(partial_directory(run) / CHECKPOINTS_DIR)
    assert kept is not None and 0 < kept[1] < step
    assert f"The last good checkpoint is {kept[0]} (step {kept[1]})" in reason
    config = tiny_config(*COLD_HINGE)
    make_model, columns, data = trainable(config)
    model = make_model()
    restore_towers(model, kept[0])
    length, spread = sample_statistics(model, collapse_monitor(model, columns, config.training, data))
    assert length <= 0.99 and spread >= 0.005  # the kept weights are from before the collapse


def test_stop_on_collapse_without_checkpoints_raises_a_run_error():
    config = tiny_config(*COLD_HINGE, "training.stop_on_collapse=true")
    make_model, columns, data = trainable(config)
    with pytest.raises(RunError, match=r"Training collapsed at step \d+ \(epoch 1\): .*No checkpoint was written"):
        fit_model(make_model(), columns, config.training, 0, validation=data)


def test_the_train_command_says_whether_the_model_collapsed(tmp_path, capsys):
    from tfrec_towers.cli import _print_collapse

    lines = []
    healthy = {
        "collapsed": False,
        "final": {"epoch": 3, MEAN_RESULTANT_LENGTH: 0.8812, SCORE_SPREAD: 0.0634, "findings": []},
    }
    _print_collapse(healthy, tmp_path, lines.append)
    assert lines == ["collapse: none (mean resultant length 0.881, score spread 0.0634)"]
    collapsed = {
        "collapsed": True,
        "final": {"epoch": 2, MEAN_RESULTANT_LENGTH: 0.998, SCORE_SPREAD: 0.001, "findings": ["a", "b"]},
    }
    _print_collapse(collapsed, tmp_path, lines.append)
    assert len(lines) == 1  # the collapse goes to stderr, even with --quiet
    assert capsys.readouterr().err == f"collapse: COLLAPSED at epoch 2 (a and b); see {tmp_path / 'collapse.json'}\n"
    _print_collapse({}, tmp_path, lines.append)  # a run without the values prints nothing
    assert len(lines) == 1

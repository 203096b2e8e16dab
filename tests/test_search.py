"""tfrec-towers tune: the search space's checks, one search on tiny synthetic data that never reads the
test split, its outputs, resuming, refusing another search, and the pruner's wiring."""

import configparser
import csv
import dataclasses
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from helpers import tiny_config
from tfrec_pipelines import search
from tfrec_pipelines.search import Choice, Range, parse_space
from tfrec_towers.cli import EXIT_OK, EXIT_USAGE, main
from tfrec_towers.config import ExperimentConfig, config_from_dict, config_to_dict, load_config
from tfrec_towers.extras import EXTRAS

ROOT = Path(__file__).resolve().parent.parent
SPACE = {
    "training.learning_rate": {"low": 0.001, "high": 0.03, "log": True},
    "model.temperature": {"low": 0.02, "high": 0.2},
    "loss.mixed_negatives": {"choices": [0, 64]},
}
OUTPUTS = {"study.db", "trials.csv", "results.md", "search.png", "best.yaml"}


def _study(directory: Path) -> optuna.Study:
    """The study of a search directory, read with Optuna alone."""
    return optuna.load_study(study_name="tfrec-towers", storage=f"sqlite:///{directory / 'study.db'}")


def _write_inputs(directory: Path, space=SPACE, *overrides: str):
    """``(base config path, space path)``: the tiny run of helpers.py for two epochs, no validation split."""
    directory.mkdir(parents=True, exist_ok=True)
    base, space_file = directory / "base.yaml", directory / "space.yaml"
    base.write_text(yaml.safe_dump(config_to_dict(tiny_config("training.epochs=2", *overrides))))
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    return base, space_file


def _tune(base, space_file, output, trials, *extra):
    return main(
        ["--quiet", "tune", "--config", str(base), "--space", str(space_file), "--trials", str(trials)]
        + ["--output", str(output), "--seed", "3", *extra]
    )


class _Untouchable(dict):
    """Stands in for the test split's arrays: any read fails the test."""

    def _touched(self, *args, **kwargs):
        raise AssertionError("the search read the test split")

    __getitem__ = __iter__ = __len__ = __contains__ = __array__ = keys = values = items = get = _touched


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A 3-trial search by the command line whose data's test split fails any read, and whose export fails."""
    directory = tmp_path_factory.mktemp("search")
    base, space_file = _write_inputs(directory / "inputs")
    real_prepare = search.prepare_data

    def prepare_without_test(config, tables=None):
        prepared = real_prepare(config, tables)
        untouchable = _Untouchable()
        prepared.data = dataclasses.replace(
            prepared.data,
            eval_queries=untouchable,
            eval_targets=untouchable,
            seen_indptr=untouchable,
            seen_ids=untouchable,
        )
        return prepared

    def no_export(*args, **kwargs):
        raise AssertionError("the search exported a model")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search, "prepare_data", prepare_without_test)
        patch.setattr("tfrec_pipelines.train.export_model", no_export)
        patch.setattr("tfrec_towers.export.export_retrieval_model", no_export)
        assert _tune(base, space_file, directory / "out", 3) == EXIT_OK
    return directory


# --- the search space, checked before any trial ------------------------------------------------------------


def test_a_space_reads_float_and_integer_ranges_and_choices():
    space = parse_space(
        {
            "training.learning_rate": {"low": 0.0003, "high": 0.01, "log": True},
            "model.temperature": {"low": "1e-2", "high": 0.2},  # YAML 1.1 reads 1e-2 as text
            "training.batch_size": {"low": 32, "high": 256, "step": 32},
            "loss.negative_weight": {"low": 1, "high": 3, "type": "float"},
            "loss.mixed_negatives": {"choices": [0, 256, 1024]},
            "model.history.encoder": {"choices": ["attention", "mean"]},
        },
        search.search_base(ExperimentConfig()),
    )
    assert space == {
        "training.learning_rate": Range("float", 0.0003, 0.01, log=True),
        "model.temperature": Range("float", 0.01, 0.2),
        "training.batch_size": Range("int", 32, 256, step=32),
        "loss.negative_weight": Range("float", 1.0, 3.0),
        "loss.mixed_negatives": Choice((0, 256, 1024)),
        "model.history.encoder": Choice(("attention", "mean")),
    }
    assert isinstance(space["training.batch_size"].distribution(), optuna.distributions.IntDistribution)


def test_the_worked_example_of_the_docs_is_a_valid_space_for_its_base():
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "tuning.md").read_text(encoding="utf-8"), re.S)
    base, space = (yaml.safe_load(block) for block in blocks[:2])
    parsed = parse_space(space, config_from_dict(base), "docs/tuning.md")
    assert parsed["training.batch_size"] == Range("int", 256, 2048, step=256)
    assert parsed["model.history.encoder"] == Choice(("attention", "gru"))


SPACE_ERRORS = {
    "unknown key": (
        {"training.learnin_rate": {"low": 0.001, "high": 0.01}},
        ["`training.learnin_rate`", "learning_rate"],
    ),
    "empty range": ({"model.temperature": {"low": 0.2, "high": 0.02}}, ["`model.temperature`", "the range is empty"]),
    "log from zero": ({"training.learning_rate": {"low": 0, "high": 0.01, "log": True}}, ["needs `low` > 0"]),
    "float bounds of an integer": (
        {"training.batch_size": {"low": 16.0, "high": 64.5}},
        ["`training.batch_size` must be an integer"],
    ),
    "beyond the key's range": ({"model.temperature": {"low": 0.1, "high": 200.0}}, ["`model.temperature` = 200.0"]),
    "no validation split": ({"data.validation": {"choices": ["last", "none"]}}, ["`data.validation`", "'none'"]),
    "neither range nor choices": ({"training.epochs": [1, 2]}, ["`training.epochs` must be a range"]),
    "empty choices": ({"loss.mixed_negatives": {"choices": []}}, ["`loss.mixed_negatives`", "non-empty list"]),
    "empty space": ({}, ["must map configuration keys"]),
}


@pytest.mark.parametrize("case", sorted(SPACE_ERRORS))
def test_a_bad_space_exits_2_naming_the_file_and_the_key_before_any_trial(case, tmp_path, capsys):
    space, expected = SPACE_ERRORS[case]
    base, space_file = _write_inputs(tmp_path, space)
    code = _tune(base, space_file, tmp_path / "out", 2)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.startswith("error: ") and str(space_file) in err and "Traceback" not in err
    assert all(text in err for text in expected), err
    assert not (tmp_path / "out").exists()


def test_a_metric_that_no_trial_reports_and_a_missing_space_file_exit_2(tmp_path, capsys):
    base, space_file = _write_inputs(tmp_path)
    assert _tune(base, space_file, tmp_path / "out", 2, "--metric", "HR@20") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "error: " in err and "'HR@20'" in err and "HR@10" in err
    assert _tune(base, tmp_path / "missing.yaml", tmp_path / "out", 2) == EXIT_USAGE
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_directory_holding_other_files_is_refused(tmp_path, capsys):
    base, space_file = _write_inputs(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine\n")
    assert _tune(base, space_file, tmp_path / "out", 2) == EXIT_USAGE
    assert "holds files but no study.db" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]


def test_trials_whose_values_do_not_combine_fail_do_not_count_and_leave_no_best(tmp_path, capsys):
    # each value is valid alone; together a symmetric loss with a memory bank is not
    space = {"loss.mode": {"choices": ["symmetric"]}, "loss.memory_bank_size": {"choices": [8]}}
    base, space_file = _write_inputs(tmp_path, space, "loss.mixed_negatives=0")
    for run in (1, 2):
        assert _tune(base, space_file, tmp_path / "out", 2) == EXIT_USAGE
        assert "error: no trial" in capsys.readouterr().err
        assert [t.state for t in _study(tmp_path / "out").trials] == [optuna.trial.TrialState.FAIL] * 2 * run
    assert {p.name for p in (tmp_path / "out").iterdir()} == OUTPUTS - {"best.yaml"}
    with open(tmp_path / "out" / "trials.csv", newline="") as table:
        assert [r["state"] for r in csv.DictReader(table)] == ["FAIL"] * 4


def test_tune_has_help_with_an_example(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["tune", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "tfrec-towers tune --config" in out and "--space" in out


def test_the_tune_extra_installs_optuna_and_the_tests_install_it_too():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    extras = {name: value.split() for name, value in setup["options.extras_require"].items()}
    assert EXTRAS["tune"] == "optuna"
    assert any(r.startswith("optuna") for r in extras["tune"]) and any(r.startswith("optuna") for r in extras["test"])
    assert "optuna" not in setup["options"]["install_requires"]


@pytest.mark.slow
def test_without_optuna_the_command_names_the_tune_extra(tmp_path):
    base, space_file = _write_inputs(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["optuna"] = None
        from tfrec_towers.cli import main
        sys.exit(main(["tune", "--config", {str(base)!r}, "--space", {str(space_file)!r}, "--trials", "1",
                       "--output", {str(tmp_path / "out")!r}]))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == EXIT_USAGE, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: The hyper-parameter search needs optuna")
    assert last.endswith("pip install 'tfrec-towers[tune]'") and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# --- one search, end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_search_writes_every_output_and_best_yaml_is_the_best_trial(searched):
    out = searched / "out"
    assert {p.name for p in out.iterdir()} == OUTPUTS  # no export, no checkpoint, no temporary file left
    trials = _study(out).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in trials:  # both epochs reported; no early stopping, so the value is the last epoch's
        assert sorted(trial.intermediate_values) == [1, 2]
        assert trial.value == trial.intermediate_values[2]
        assert 0.0 <= trial.value <= 1.0
        assert 0.001 <= trial.params["training.learning_rate"] <= 0.03
        assert trial.params["loss.mixed_negatives"] in (0, 64)
    best = max(trials, key=lambda t: t.value)

    config = load_config(out / "best.yaml")  # what `tfrec-towers train --config` reads
    assert config.training.learning_rate == best.params["training.learning_rate"]
    assert config.model.temperature == best.params["model.temperature"]
    assert config.loss.mixed_negatives == best.params["loss.mixed_negatives"]
    assert config.data.validation == "last"  # the base had none: the search held out each user's last item
    assert config.training.epochs == 2 and config.data.num_items == 300  # the rest is the base configuration

    with open(out / "trials.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert [float(r["HR@10"]) for r in rows] == [t.value for t in trials]
    assert [float(r["training.learning_rate"]) for r in rows] == [t.params["training.learning_rate"] for t in trials]
    assert all(int(r["epochs"]) == 2 and float(r["seconds"]) > 0 for r in rows)

    results = (out / "results.md").read_text()
    assert f"Best: trial {best.number}" in results
    assert sum(line.startswith(f"| {n} | COMPLETE |") for line in results.splitlines() for n in range(3)) == 3
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_running_again_with_more_trials_adds_exactly_that_many(searched, tmp_path, capsys):
    out = shutil.copytree(searched / "out", tmp_path / "out")
    before = _study(out).trials
    assert _tune(searched / "inputs" / "base.yaml", searched / "inputs" / "space.yaml", out, 4) == EXIT_OK
    after = _study(out).trials
    assert len(after) == 4 and after[3].state == optuna.trial.TrialState.COMPLETE
    assert [(t.params, t.value) for t in after[:3]] == [(t.params, t.value) for t in before]
    assert after[3].params != before[0].params  # the resumed sampler does not start over
    printed = capsys.readouterr().out
    best = max(after, key=lambda t: t.value)
    assert printed.startswith(f"best: trial {best.number}, validation HR@10 {best.value:.4f}")
    with open(out / "trials.csv", newline="") as table:
        assert len(list(csv.DictReader(table))) == 4


@pytest.mark.slow
def test_another_space_or_base_configuration_is_refused_naming_the_difference(searched, tmp_path, capsys):
    out = shutil.copytree(searched / "out", tmp_path / "out")
    wider = {**SPACE, "model.temperature": {"low": 0.02, "high": 0.5}}
    base, space_file = _write_inputs(tmp_path / "wider", wider)
    assert _tune(base, space_file, out, 4) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "another search space" in err and "`model.temperature.high`" in err

    base, space_file = _write_inputs(tmp_path / "longer", SPACE, "training.batch_size=64")
    assert _tune(base, space_file, out, 4) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "another base configuration" in err and "`training.batch_size`" in err
    assert len(_study(out).trials) == 3


@pytest.mark.slow
def test_a_trial_left_running_by_a_killed_search_is_recorded_as_failed(searched, tmp_path):
    out = shutil.copytree(searched / "out", tmp_path / "out")
    _study(out).ask()  # a trial that never finished, as a killed process leaves it
    assert _tune(searched / "inputs" / "base.yaml", searched / "inputs" / "space.yaml", out, 3) == EXIT_OK
    states = [t.state for t in _study(out).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 3 + [optuna.trial.TrialState.FAIL]
    with open(out / "trials.csv", newline="") as table:
        assert [r["state"] for r in csv.DictReader(table)][-1] == "FAIL"


@pytest.mark.slow
def test_the_pruner_stops_a_trial_below_the_median_after_its_first_epoch(searched, tmp_path):
    out = shutil.copytree(searched / "out", tmp_path / "out")
    study = _study(out)
    distributions = study.trials[0].distributions
    for _ in range(5):  # five earlier trials that were perfect at every epoch: the median is 1.0
        study.add_trial(
            optuna.trial.create_trial(
                params=study.trials[0].params,
                distributions=distributions,
                value=1.0,
                intermediate_values={1: 1.0, 2: 1.0},
            )
        )
    assert _tune(searched / "inputs" / "base.yaml", searched / "inputs" / "space.yaml", out, 9) == EXIT_OK
    new = _study(out).trials[-1]
    assert len(_study(out).trials) == 9
    assert new.state == optuna.trial.TrialState.PRUNED
    assert list(new.intermediate_values) == [1] and new.intermediate_values[1] < 1.0  # trained one epoch, not two
    with open(out / "trials.csv", newline="") as table:
        last = list(csv.DictReader(table))[-1]
    assert last["state"] == "PRUNED" and last["epochs"] == "1"
    assert float(last["HR@10"]) == new.intermediate_values[1]

"""The tfrec-towers command on malformed input: exit code 2, a message naming the culprit, no traceback.

Every case fails before any training starts (no model is trained in this module).
"""

import subprocess
import sys

import pytest

from tfrec_towers.cli import EXIT_USAGE, main


def _run(argv, capsys):
    """``(exit code, stdout + stderr)`` of the command run in this process (argparse errors exit too)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def files(tmp_path):
    """Malformed inputs on disk: a directory, a Latin-1 YAML, a list YAML, a broken YAML, a plain file."""
    (tmp_path / "a_directory").mkdir()
    (tmp_path / "latin1.yaml").write_bytes("export:\n  model_name: modèle\n".encode("latin-1"))
    (tmp_path / "list.yaml").write_text("- training\n- epochs: 3\n")
    (tmp_path / "broken.yaml").write_text("training:\n  epochs: 3\n  seed: [1,\n")
    (tmp_path / "nested.yaml").write_text("loss:\n  frequency:\n    learning_rate: 1.5\n")
    (tmp_path / "a_file").write_text("not a directory\n")
    return tmp_path


def _train(files, *arguments):
    return ["train", "--output", str(files / "run"), *arguments]


CASES = {
    "unknown key": (lambda f: _train(f, "--set", "training.epoch=2"), ["`training.epoch`", "Did you mean `epochs`?"]),
    "wrong type": (
        lambda f: _train(f, "--set", "training.batch_size=large"),
        ["`training.batch_size` must be an integer. Received: 'large'"],
    ),
    "NaN float": (
        lambda f: _train(f, "--set", "model.temperature=.nan"),
        ["`model.temperature` must be a finite number. Received: nan"],
    ),
    "infinite float": (
        lambda f: _train(f, "--set", "training.learning_rate=.inf"),
        ["`training.learning_rate` must be a finite number. Received: inf"],
    ),
    "negative hinge margin": (
        lambda f: _train(f, "--set", "loss.mode=hinge", "--set", "loss.margin=-0.5"),
        ["`loss.margin` must be a positive float", "Received: -0.5"],
    ),
    "mismatched tower sizes": (
        lambda f: _train(f, "--set", "model.query_tower.output_dim=32"),
        ["`model.query_tower.output_dim` (32)", "`model.candidate_tower.output_dim` (64)"],
    ),
    "out-of-range dropout": (
        lambda f: _train(f, "--set", "model.history.dropout=1.5"),
        ["`model.history`", "`dropout` must be in [0, 1)"],
    ),
    "invalid YAML in --set": (
        lambda f: _train(f, "--set", "model.query_tower.hidden_units=[1,"),
        ["Override 'model.query_tower.hidden_units=[1,'", "is not valid YAML"],
    ),
    "--set without a value": (
        lambda f: _train(f, "--set", "training.epochs"),
        ["Override 'training.epochs' must look like `section.key=value`"],
    ),
    "--set inside a value": (
        lambda f: _train(f, "--set", "model.query_tower.hidden_units.0=8"),
        ["`model.query_tower.hidden_units` is a value, not a section"],
    ),
    "--config is a directory": (
        lambda f: _train(f, "--config", str(f / "a_directory")),
        ["a_directory is a directory: expected a YAML or JSON file"],
    ),
    "--config is missing": (lambda f: _train(f, "--config", str(f / "missing.yaml")), ["missing.yaml does not exist"]),
    "--config is not UTF-8": (
        lambda f: _train(f, "--config", str(f / "latin1.yaml")),
        ["latin1.yaml is not UTF-8 text (byte 0xe8 at offset 25)"],
    ),
    "--config holds a list": (
        lambda f: _train(f, "--config", str(f / "list.yaml")),
        ["list.yaml must hold a mapping of sections", "Received: a list"],
    ),
    "--config is broken YAML": (
        lambda f: _train(f, "--config", str(f / "broken.yaml")),
        ["broken.yaml is not valid YAML (line 4, column 1"],
    ),
    "--config with a bad nested value": (
        lambda f: _train(f, "--config", str(f / "nested.yaml")),
        ["nested.yaml: `loss.frequency.learning_rate` (α) must be in (0, 1]"],
    ),
    "--data-dir is missing": (
        lambda f: _train(f, "--data-dir", str(f / "no_such_release")),
        ["no_such_release does not exist"],
    ),
    "--data-dir is a file": (lambda f: _train(f, "--data-dir", str(f / "a_file")), ["a_file is not a directory"]),
    "--data-dir is empty": (lambda f: _train(f, "--data-dir", ""), ["argument --data-dir: must be a non-empty path"]),
    "--seed out of range": (
        lambda f: _train(f, "--seed", "-3"),
        ["`training.seed` must be an integer in [0, 4294967295]. Received: -3"],
    ),
    "export --k 0 of a missing run": (
        lambda f: ["export", "--run", str(f / "no_run"), "--k", "0"],
        ["argument --k: must be an integer ≥ 1. Received: '0'"],
    ),
    "export of a missing run": (lambda f: ["export", "--run", str(f / "no_run")], ["no_run is not a tfrec-towers run"]),
    "tune-index --target-recall nan": (
        lambda f: ["tune-index", "--run", str(f / "no_run"), "--output", str(f / "t"), "--target-recall", "nan"],
        ["argument --target-recall: must be a number in (0, 1]. Received: 'nan'"],
    ),
    "verify on an empty directory": (lambda f: ["verify", str(f / "a_directory")], ["a_directory", "saved_model.pb"]),
    "verify on a missing path": (lambda f: ["verify", str(f / "no_export")], ["no_export does not exist"]),
    "evaluate --output is a directory": (
        lambda f: ["evaluate", "--run", str(f / "no_run"), "--output", str(f / "a_directory")],
        ["a_directory is a directory: expected the path of a file to write"],
    ),
    "init under a file": (
        lambda f: ["init", str(f / "a_file" / "experiment.yaml")],
        ["a_file is a file, not a directory"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_exits_2_naming_the_culprit(case, files, capsys):
    argv, expected = CASES[case]
    code, output = _run(argv(files), capsys)
    assert code == EXIT_USAGE, output
    for fragment in expected:
        assert fragment in output
    assert "Traceback" not in output
    assert not (files / "run").exists()


@pytest.mark.slow
def test_the_installed_command_prints_one_error_line_without_a_traceback(tmp_path):
    """In a fresh process, as a user runs it: the NaN temperature that used to end in a traceback."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfrec_towers.cli",
            "train",
            "--output",
            str(tmp_path / "run"),
            "--set",
            "model.temperature=.nan",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == EXIT_USAGE
    assert (
        completed.stderr.strip().splitlines()[-1] == "error: `model.temperature` must be a finite number. Received: nan"
    )
    assert "Traceback" not in completed.stderr + completed.stdout
    assert not (tmp_path / "run").exists()

"""The tfrec-towers command: help with examples, MovieLens end to end, exit codes and messages."""

import json

import numpy as np
import pytest

from tfrec_towers.cli import EXIT_OK, EXIT_USAGE, main

SMALL = [
    "--set", "features.embedding_dim=8",
    "--set", "model.query_tower.hidden_units=[16]",
    "--set", "model.candidate_tower.hidden_units=[16]",
    "--set", "model.query_tower.output_dim=8",
    "--set", "model.candidate_tower.output_dim=8",
    "--set", "training.batch_size=64",
    "--set", "export.k=10",
]


def _write_ml100k(directory, users=40, items=60, seed=0):
    """A tiny directory in the ml-100k layout (made here: the real data set is never used in tests)."""
    rng = np.random.default_rng(seed)
    directory.mkdir()
    genres = ["unknown", "Action", "Comedy", "Drama"]
    (directory / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
    (directory / "u.user").write_text(
        "".join(f"{u}|{20 + u % 30}|{'MF'[u % 2]}|{['student', 'writer'][u % 2]}|{10000 + u}\n" for u in range(1, users + 1))
    )
    item_lines = []
    for i in range(1, items + 1):
        flags = ["0"] * len(genres)
        flags[1 + i % 3] = "1"
        item_lines.append(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n")
    (directory / "u.item").write_text("".join(item_lines), encoding="latin-1")
    rows = []
    for u in range(1, users + 1):
        for t, i in enumerate(rng.choice(np.arange(1, items + 1), size=8, replace=False)):
            rows.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + 1000 * t + u}\n")
    (directory / "u.data").write_text("".join(rows))
    return directory


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "verify"])
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "example" in capsys.readouterr().out


def test_movielens_train_then_evaluate_export_verify(tmp_path, capsys):
    data_dir = _write_ml100k(tmp_path / "ml-100k")
    out = tmp_path / "run"
    code = main(["train", "--dataset", "movielens", "--data-dir", str(data_dir), "--output", str(out), "--epochs", "2", "--seed", "3", *SMALL])
    assert code == EXIT_OK
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"HR@10", "HR@50", "HR@100", "NDCG@10", "NDCG@50", "NDCG@100"}
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["seed"] == 3 and config["data"]["data_dir"] == str(data_dir)
    assert (out / "export" / "tfrec_towers" / "1" / "saved_model.pb").exists()
    capsys.readouterr()

    assert main(["--quiet", "evaluate", "--run", str(out), "--output", str(tmp_path / "m.json")]) == EXIT_OK
    assert json.loads((tmp_path / "m.json").read_text()) == pytest.approx(metrics, abs=1e-9)
    assert main(["export", "--run", str(out), "--output", str(tmp_path / "models"), "--k", "5"]) == EXIT_OK
    assert (tmp_path / "models" / "tfrec_towers" / "1" / "saved_model.pb").exists()
    assert main(["verify", str(tmp_path / "models" / "tfrec_towers" / "1"), "--report", str(tmp_path / "r.json")]) == EXIT_OK
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path / "a"), "--set", "training.epoch=2"]) == EXIT_USAGE
    assert "Did you mean `epochs`" in capsys.readouterr().err
    assert main(["train", "--dataset", "movielens", "--data-dir", str(tmp_path), "--output", str(tmp_path / "b")]) == EXIT_USAGE
    assert "u.data" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("model:\n  temperature: -1\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "c")]) == EXIT_USAGE
    assert "`model.temperature` must be a positive float" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing")]) == EXIT_USAGE
    assert main(["evaluate", "--run", str(tmp_path)]) == EXIT_USAGE
    assert "not a tfrec-towers run" in capsys.readouterr().err

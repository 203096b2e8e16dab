"""The tfrec-towers command: help with examples, MovieLens end to end, exit codes and messages."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import TINY_TOWERS, cli_sets
from tfrec_towers.cli import EXIT_OK, EXIT_USAGE, main

SMALL = cli_sets(*TINY_TOWERS, "training.batch_size=64", "export.k=10")


def _write_ml100k(directory, users=40, items=60, seed=0):
    """A tiny directory in the ml-100k layout (made here: the real data set is never used in tests)."""
    rng = np.random.default_rng(seed)
    directory.mkdir()
    genres = ["unknown", "Action", "Comedy", "Drama"]
    (directory / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
    (directory / "u.user").write_text(
        "".join(
            f"{u}|{20 + u % 30}|{'MF'[u % 2]}|{['student', 'writer'][u % 2]}|{10000 + u}\n" for u in range(1, users + 1)
        )
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


@pytest.mark.parametrize(
    "command",
    [
        "init",
        "train",
        "evaluate",
        "export",
        "tune",
        "tune-index",
        "verify",
        "report",
        "compare",
        "embed",
        "index-embeddings",
    ],
)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"tfrec-towers {command}" in out


def test_batch_jobs_pass_their_arguments_through_and_exit_2_on_bad_input(tmp_path, capsys):
    code = main(
        [
            "--quiet",
            "embed",
            "--model",
            str(tmp_path / "missing"),
            "--input",
            str(tmp_path / "x.parquet"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == EXIT_USAGE
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_movielens_train_then_evaluate_export_verify(tmp_path, capsys):
    data_dir = _write_ml100k(tmp_path / "ml-100k")
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            "movielens",
            "--data-dir",
            str(data_dir),
            "--output",
            str(out),
            "--epochs",
            "1",
            "--seed",
            "3",
            *SMALL,
        ]
    )
    assert code == EXIT_OK
    assert json.loads((out / "verification.json").read_text())["ok"] is True  # train verifies its export
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"HR@10", "HR@50", "HR@100", "NDCG@10", "NDCG@50", "NDCG@100"}
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["seed"] == 3 and config["data"]["data_dir"] == str(data_dir)
    assert (out / "export" / "tfrec_towers" / "1" / "saved_model.pb").exists()
    capsys.readouterr()

    assert main(["--quiet", "evaluate", "--run", str(out), "--output", str(tmp_path / "m.json")]) == EXIT_OK
    assert json.loads((tmp_path / "m.json").read_text()) == pytest.approx(metrics, abs=1e-9)
    export = ["export", "--run", str(out), "--output", str(tmp_path / "models"), "--k", "5", "--no-verify"]
    assert main(export) == EXIT_OK  # verified below, as `export` does without --no-verify
    assert (tmp_path / "models" / "tfrec_towers" / "1" / "saved_model.pb").exists()
    assert (
        main(["verify", str(tmp_path / "models" / "tfrec_towers" / "1"), "--report", str(tmp_path / "r.json")])
        == EXIT_OK
    )
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path / "a"), "--set", "training.epoch=2"]) == EXIT_USAGE
    assert "Did you mean `epochs`" in capsys.readouterr().err
    assert (
        main(["train", "--dataset", "movielens", "--data-dir", str(tmp_path), "--output", str(tmp_path / "b")])
        == EXIT_USAGE
    )
    assert "u.data" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("model:\n  temperature: -1\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "c")]) == EXIT_USAGE
    assert "`model.temperature` must be a positive float" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing")]) == EXIT_USAGE
    assert main(["evaluate", "--run", str(tmp_path)]) == EXIT_USAGE
    assert "not a tfrec-towers run" in capsys.readouterr().err


def _metadata(version_dir):
    return json.loads((version_dir / "assets.extra" / "tfrec_towers_metadata.json").read_text())


def test_export_and_tune_index_help_show_examples(capsys):
    for command, example in (("export", "--candidates catalogue.parquet"), ("tune-index", "--target-recall 0.95")):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0 and example in capsys.readouterr().out


def test_export_scann_from_a_candidate_table_returns_its_ids(tiny_run, tmp_path, capsys):
    """A table with every third catalogue item (100 rows): the index holds exactly those ids, with the flags' settings."""
    from tfrec_pipelines.train import load_data, load_run

    config, _, _ = load_run(tiny_run)
    catalogue = load_data(config).candidates
    table = pd.DataFrame({name: values[::3] for name, values in catalogue.items()})
    table.to_csv(tmp_path / "table.csv", index=False)
    code = main(
        [
            "export",
            "--run",
            str(tiny_run),
            "--output",
            str(tmp_path / "models"),
            "--index",
            "scann",
            "--candidates",
            str(tmp_path / "table.csv"),
            "--num-leaves",
            "8",
            "--leaves-to-search",
            "4",
            "--reordering-multiplier",
            "3",
            "--k",
            "5",
            "--no-verify",
        ]
    )
    assert code == EXIT_OK, capsys.readouterr().err
    version = tmp_path / "models" / "tfrec_towers" / "1"
    meta = _metadata(version)
    assert meta["corpus_size"] == 100 and meta["k"] == 5
    assert {
        key: meta["index"][key] for key in ("kind", "num_leaves", "num_leaves_to_search", "reordering_multiplier")
    } == {
        "kind": "scann",
        "num_leaves": 8,
        "num_leaves_to_search": 4,
        "reordering_multiplier": 3,
    }
    sample = json.loads((version / "assets.extra" / "verification_sample.json").read_text())
    returned = set(np.ravel(sample["top_k"]["candidate_ids"]).tolist()) - {-1}
    assert returned and returned <= set(table["item_id"].tolist())


def test_tune_index_then_export_with_its_choice(tiny_run, tmp_path, capsys):
    output = tmp_path / "tuning"
    code = main(
        [
            "tune-index",
            "--run",
            str(tiny_run),
            "--k",
            "5",
            "--target-recall",
            "0.9",
            "--num-leaves",
            "17",
            "--num-queries",
            "64",
            "--output",
            str(output),
        ]
    )
    printed = capsys.readouterr().out
    assert code == EXIT_OK
    report = json.loads((output / "tuning.json").read_text())
    assert (output / "tuning.png").read_bytes()[:4] == b"\x89PNG"
    assert report["target_met"] and report["chosen"]["recall"] >= 0.9 and report["num_queries"] == 64
    assert "| * |" in printed and f"--index-config {output / 'tuning.json'}" in printed
    chosen = report["chosen"]["config"]
    assert (
        main(
            [
                "--quiet",
                "export",
                "--run",
                str(tiny_run),
                "--output",
                str(tmp_path / "models"),
                "--index-config",
                str(output / "tuning.json"),
                "--no-verify",
            ]
        )
        == EXIT_OK
    )
    assert _metadata(tmp_path / "models" / "tfrec_towers" / "1")["index"] == chosen


def test_export_bad_input_exits_2_and_writes_nothing(tiny_run, tmp_path, capsys):
    from tfrec_pipelines.train import load_data, load_run

    config, _, _ = load_run(tiny_run)
    catalogue = load_data(config).candidates
    models = tmp_path / "models"
    base = ["export", "--run", str(tiny_run), "--output", str(models), "--no-verify"]

    duplicated = pd.DataFrame({name: np.concatenate([values[:5], values[:5]]) for name, values in catalogue.items()})
    duplicated.to_parquet(tmp_path / "dup.parquet")
    assert main([*base, "--candidates", str(tmp_path / "dup.parquet")]) == EXIT_USAGE
    assert "must be unique; 5 ids repeat, e.g. [1, 2, 3, 4, 5]" in capsys.readouterr().err
    pd.DataFrame({name: values[:0] for name, values in catalogue.items()}).to_csv(tmp_path / "empty.csv", index=False)
    assert main([*base, "--candidates", str(tmp_path / "empty.csv")]) == EXIT_USAGE
    assert "empty" in capsys.readouterr().err
    pd.DataFrame({"item_id": ["a", "b"], "category": ["x", "y"]}).to_csv(tmp_path / "strings.csv", index=False)
    assert main([*base, "--candidates", str(tmp_path / "strings.csv")]) == EXIT_USAGE
    assert "'item_id' (int64)" in capsys.readouterr().err
    assert main([*base, "--index", "brute-force", "--num-leaves", "4"]) == EXIT_USAGE
    assert "--num-leaves set ScaNN parameters, but the index is brute-force" in capsys.readouterr().err
    assert main([*base, "--index", "scann", "--index-config", str(tmp_path / "dup.parquet")]) == EXIT_USAGE
    assert "either --index or --index-config" in capsys.readouterr().err
    assert main([*base, "--index-config", str(tmp_path / "empty.csv")]) == EXIT_USAGE
    assert "is not JSON" in capsys.readouterr().err
    assert not models.exists()

    (tmp_path / "file").write_text("x")
    assert main([*base[:4], str(tmp_path / "file"), "--no-verify"]) == EXIT_USAGE
    assert "is a file" in capsys.readouterr().err
    assert main([*base, "--k", "1000"]) == EXIT_OK
    meta = _metadata(models / "tfrec_towers" / "1")
    assert meta["k"] == 300 and meta["warnings"] == [
        "k=1000 exceeds the corpus size (300 candidates); clamped to k=300."
    ]


@pytest.mark.slow
def test_verify_report_holds_recall_latency_and_throughput(tiny_run, tmp_path, capsys):
    report_file = tmp_path / "report.json"
    assert main(["verify", str(tiny_run / "export" / "tfrec_towers" / "1"), "--report", str(report_file)]) == EXIT_OK
    report = json.loads(report_file.read_text())
    metrics = report["metrics"]
    assert report["ok"] and metrics["recall_at_k"] == 1.0 and metrics["k"] == 10  # brute force: exact
    assert metrics["num_recall_queries"] == 120  # every held-out query of the 120 users (at most 256)
    assert metrics["latency_ms"]["p50"] > 0 and metrics["batched_qps"] > 0
    assert "recall@10 against exact search: 1.0000 (120 queries)" in capsys.readouterr().err


def test_report_and_compare(tiny_run, tmp_path, capsys):
    from html.parser import HTMLParser

    assert main(["--quiet", "report", "--run", str(tiny_run), "--output", str(tmp_path / "report")]) == EXIT_OK
    html_path = Path(capsys.readouterr().out.strip())
    assert html_path == tmp_path / "report" / "report.html"
    images = []

    class Images(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                images.append(dict(attrs)["src"])

    Images().feed(html_path.read_text())
    assert len(images) >= 5 and all(src.startswith("data:image/png;base64,") for src in images)

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    assert main(["--quiet", "compare", str(tiny_run), str(copy), "--output", str(tmp_path / "both")]) == EXIT_OK
    table = capsys.readouterr().out
    hr50 = json.loads((tiny_run / "metrics.json").read_text())["HR@50"]
    assert table.count(f"{hr50:.4f}") == 2
    assert (tmp_path / "both" / "report.html").is_file()


def test_init_writes_a_commented_default_configuration(tmp_path, capsys):
    from tfrec_towers.config import ExperimentConfig, load_config

    path = tmp_path / "conf" / "experiment.yaml"
    assert main(["init", str(path)]) == EXIT_OK
    text = path.read_text()
    assert load_config(path) == ExperimentConfig()
    assert "# width of every id and category embedding (a feature may set its own)." in text and "logq: counts" in text
    assert main(["--verbose", "init", str(path)]) == EXIT_USAGE
    assert "init never overwrites" in capsys.readouterr().err


def test_export_exclude_history_flag_leaves_the_requests_history_out(tiny_run, tmp_path, capsys):
    """``--exclude-history`` overrides the run's ``export.exclude_history``: the ids a request sends as its
    history (the plain export's top 5 for it) are absent from the new version's k results."""
    import tensorflow as tf

    assert (
        main(["--quiet", "export", "--run", str(tiny_run), "--output", str(tmp_path / "models"), "--no-verify"])
        == EXIT_OK
    )
    assert (
        main(
            [
                "--quiet",
                "export",
                "--run",
                str(tiny_run),
                "--output",
                str(tmp_path / "models"),
                "--no-verify",
                "--exclude-history",
            ]
        )
        == EXIT_OK
    ), capsys.readouterr().err
    plain_dir, excluding_dir = (tmp_path / "models" / "tfrec_towers" / version for version in ("1", "2"))
    assert _metadata(plain_dir)["exclude_history"] is None and _metadata(excluding_dir)["exclude_history"] == "history"
    plain, excluding = (
        tf.saved_model.load(str(path)).signatures["serving_default"] for path in (plain_dir, excluding_dir)
    )
    sample = json.loads((plain_dir / "assets.extra" / "verification_sample.json").read_text())
    inputs = plain.structured_input_signature[1]
    request = {name: tf.constant(values[:1], inputs[name].dtype) for name, values in sample["queries"].items()}
    top = plain(**request)["candidate_ids"].numpy()[0]
    request["history"] = tf.constant(top[None, :5], inputs["history"].dtype)
    served = excluding(**request)["candidate_ids"].numpy()[0]
    assert len(served) == 10 and not set(top[:5].tolist()) & set(served.tolist())

"""The shipped configuration files: each loads, and the presets train on a user's own table with
nothing but the tables added; the long-history one exports and serves right-aligned histories of any
width, the short-history one chooses its epochs on validation and refits."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import run_fresh_process
from tfrec_towers.cli import main
from tfrec_towers.config import ExperimentConfig, config_to_dict, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_configuration_loads(path):
    assert isinstance(load_config(path), ExperimentConfig)


def test_the_long_history_preset_is_sasrec_with_the_full_cross_entropy():
    config = load_config(CONFIGS / "long_history.yaml")
    assert config.data.dataset == ExperimentConfig().data.dataset  # any data set: it names none
    assert (config.model.history.encoder, config.model.history.positions) == ("transformer", "from_newest")
    assert (config.loss.mode, config.loss.logq, config.loss.mixed_negatives) == ("full_softmax", "none", 0)
    assert config.training.example_format == "every_position"
    assert config.model.temperature == 1.0 and not config.model.query_tower.l2_normalize
    assert config.data.validation == "last"


def test_the_short_history_preset_scores_items_by_their_own_embedding_and_refits():
    config = load_config(CONFIGS / "short_history.yaml")
    assert config.data.dataset == ExperimentConfig().data.dataset  # any data set: it names none
    assert config.model.query_tower.projection == config.model.candidate_tower.projection == "auto"
    assert config.model.query_tower.l2_normalize and config.model.temperature == ExperimentConfig().model.temperature
    assert (config.loss.mode, config.training.example_format) == ("full_softmax", "every_position")
    assert config.data.validation == "last" and config.training.early_stopping.refit


def _log(path):
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"item-{rng.integers(30):02d}", t) for u in range(40) for t in range(12)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)


@pytest.mark.slow
def test_the_long_history_preset_trains_exports_and_serves_any_history_width(tmp_path, capsys):
    _log(tmp_path / "log.csv")
    run = tmp_path / "run"
    preset = str(CONFIGS / "long_history.yaml")
    # Only the table, and two short epochs: everything else is the preset's.
    args = ["--interactions", str(tmp_path / "log.csv"), "--config", preset, "--set", "training.epochs=2"]
    assert main(["train", "--output", str(run), *args]) == 0
    capsys.readouterr()
    written = json.loads((run / "config.json").read_text())
    expected = config_to_dict(load_config(preset))
    assert written["model"] == expected["model"] and written["loss"] == expected["loss"]
    history = json.loads((run / "history.json").read_text())
    assert len(history["val_HR@10"]) == 2  # the validation split is evaluated after every epoch
    assert json.loads((run / "verification.json").read_text())["ok"]

    # In a process with TensorFlow alone: a history gives the same top k however much left padding it
    # has (the newest item keeps the last position), and an unknown id in it fails nothing.
    probe = textwrap.dedent(f"""
        import json, tensorflow as tf
        serve = tf.saved_model.load({str(run / "export" / "tfrec_towers" / "1")!r}).signatures["serving_default"]
        items = ["item-03", "item-07", "item-11"]
        out = {{}}
        for width in (3, 10, 60):
            history = tf.constant([[""] * (width - 3) + items, [""] * (width - 1) + ["never-seen"]])
            result = serve(history=history)
            out[width] = dict(ids=result["candidate_ids"].numpy().astype(str).tolist(),
                              scores=result["scores"].numpy().tolist())
        print(json.dumps(out))
    """)
    out = run_fresh_process(probe)
    for width in ("10", "60"):
        assert out[width]["ids"] == out["3"]["ids"]
        np.testing.assert_allclose(out[width]["scores"], out["3"]["scores"], rtol=1e-5, atol=1e-5)
    catalogue = {f"item-{i:02d}" for i in range(30)}
    assert all(set(row) <= catalogue for row in out["3"]["ids"])


@pytest.mark.slow
def test_the_short_history_preset_trains_on_a_users_own_tables_and_refits(tmp_path, capsys):
    _log(tmp_path / "log.csv")
    items = pd.DataFrame({"item_id": [f"item-{i:02d}" for i in range(30)], "brand": [f"b{i % 4}" for i in range(30)]})
    items.to_csv(tmp_path / "items.csv", index=False)  # attributes: the candidate tower projects id and brand
    run = tmp_path / "run"
    args = ["--interactions", str(tmp_path / "log.csv"), "--items", str(tmp_path / "items.csv")]
    args += ["--config", str(CONFIGS / "short_history.yaml")]
    assert main(["train", "--output", str(run), *args, "--set", "training.epochs=3"]) == 0
    capsys.readouterr()
    selection = json.loads((run / "selection.json").read_text())
    validation = selection["history"]["val_NDCG@10"]
    assert selection["best_epoch"] == int(np.argmax(validation)) + 1
    assert len(json.loads((run / "history.json").read_text())["loss"]) == selection["best_epoch"]
    assert json.loads((run / "verification.json").read_text())["ok"]

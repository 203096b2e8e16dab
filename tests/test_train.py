"""The main job end to end: train → evaluate → export → fresh-process load, and its failure modes."""

import json
import subprocess
import sys

import numpy as np
import pytest

import tfrec_towers  # noqa: F401
from pipelines.train import RunError, evaluate_run, export_run, load_data, load_run, train
from tfrec_towers.config import ExperimentConfig, apply_overrides
from tfrec_towers.evaluation import METRIC_KEYS
from tfrec_towers.towers import compute_embeddings

TINY = [
    "data.num_items=300",
    "data.num_users=120",
    "data.interactions_per_user=12",
    "data.max_history=8",
    "features.embedding_dim=8",
    "model.query_tower.hidden_units=[16]",
    "model.candidate_tower.hidden_units=[16]",
    "model.query_tower.output_dim=8",
    "model.candidate_tower.output_dim=8",
    "training.epochs=2",
    "training.batch_size=128",
    "export.k=20",
]

FRESH_LOAD = r"""
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
queries = {k: tf.constant(np.array(v)) for k, v in json.loads(sys.argv[2]).items()}
emb = loaded.signatures["query_embedding"](**queries)["embedding"].numpy()
top = loaded.signatures["serving_default"](**queries)
print(json.dumps({"modules": sorted(m for m in sys.modules if m.startswith("tfrec") or m.startswith("pipelines")),
                  "embedding": emb.tolist(), "ids": top["candidate_ids"].numpy().tolist(),
                  "scores": top["scores"].numpy().tolist()}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = apply_overrides(ExperimentConfig(), TINY)
    output = tmp_path_factory.mktemp("runs") / "tiny"
    return config, train(config, output, verbose=0)


def test_run_directory_holds_every_artifact(run):
    config, result = run
    for name in ("config.json", "feature_spec.json", "metrics.json", "history.json", "verification.json", "checkpoint"):
        assert (result.run_dir / name).exists(), name
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert tuple(metrics) == METRIC_KEYS
    assert 0.0 <= metrics["HR@10"] <= metrics["HR@50"] <= metrics["HR@100"] <= 1.0
    assert result.export_path == result.run_dir / "export" / "tfrec_towers" / "1"
    assert result.verification["ok"], result.verification
    assert not [p for p in result.run_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_export_matches_the_restored_model_in_a_fresh_process(run):
    config, result = run
    _, spec, model = load_run(result.run_dir)
    data = load_data(config)
    rows = {f.name: data.eval_queries[f.name][:5] for f in spec.query}
    expected_queries = compute_embeddings(model.query_tower, rows)
    candidates = compute_embeddings(model.candidate_tower, data.candidates)
    payload = json.dumps({k: v.tolist() for k, v in rows.items()})
    out = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(result.export_path), payload], capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["modules"] == []  # the fresh process never imported this package
    np.testing.assert_allclose(np.array(got["embedding"]), expected_queries, rtol=1e-5, atol=1e-6)
    scores = expected_queries @ candidates.T
    ids = data.candidates[spec.candidate_id]
    for row in range(5):
        best = np.argsort(-scores[row], kind="stable")[:20]
        np.testing.assert_allclose(np.array(got["scores"][row]), scores[row][best], rtol=1e-5, atol=1e-6)
        assert got["ids"][row] == ids[best].tolist()


def test_evaluate_and_reexport_a_finished_run(run):
    _, result = run
    metrics = evaluate_run(result.run_dir)
    assert metrics == pytest.approx(json.loads((result.run_dir / "metrics.json").read_text()), abs=1e-9)
    assert export_run(result.run_dir, k=5).name == "2"


def test_output_that_holds_a_run_is_refused(run):
    config, result = run
    with pytest.raises(RunError, match="already holds a run"):
        train(config, result.run_dir, verbose=0)


def test_a_failed_run_leaves_nothing_behind(tmp_path):
    config = apply_overrides(ExperimentConfig(), TINY + ["data.dataset=movielens", f"data.data_dir={tmp_path / 'empty'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a MovieLens directory"):
        train(config, tmp_path / "out", verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_tensorboard_logs_hold_the_epoch_losses_of_history_json(tmp_path):
    import json

    import numpy as np
    import tensorflow as tf

    from pipelines.train import train
    from tfrec_towers.config import ExperimentConfig, apply_overrides

    config = apply_overrides(ExperimentConfig(), [
        "data.num_items=150", "data.num_users=60", "data.interactions_per_user=8", "data.max_history=5",
        "training.epochs=2", "training.batch_size=64", "export.verify=false", "training.tensorboard=true",
    ])
    train(config, tmp_path / "run", verbose=0)
    losses = {}
    for events in (tmp_path / "run" / "tensorboard" / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag == "epoch_loss":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    history = json.loads((tmp_path / "run" / "history.json").read_text())["loss"]
    np.testing.assert_allclose([losses[step] for step in sorted(losses)], history, rtol=1e-6)

"""The main job end to end: train → evaluate → export → fresh-process load, and its failure modes."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401
from helpers import run_fresh_process, tiny_config
from tfrec_pipelines.sources import prepare_data
from tfrec_pipelines.train import (
    RunError,
    build_model,
    evaluate_run,
    export_run,
    fit_model,
    load_data,
    load_run,
    train,
    training_columns,
    training_steps,
)
from tfrec_towers.config import ConfigError, save_config
from tfrec_towers.evaluation import METRIC_KEYS
from tfrec_towers.towers import compute_embeddings

FRESH_LOAD = r"""
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
queries = {k: tf.constant(np.array(v)) for k, v in json.loads(sys.argv[2]).items()}
emb = loaded.signatures["query_embedding"](**queries)["embedding"].numpy()
top = loaded.signatures["serving_default"](**queries)
print(json.dumps({"modules": sorted(m for m in sys.modules if m.startswith("tfrec")),
                  "embedding": emb.tolist(), "ids": top["candidate_ids"].numpy().tolist(),
                  "scores": top["scores"].numpy().tolist()}))
"""


@pytest.fixture(scope="module")
def run(tiny_run):
    """``(configuration, directory)`` of the shared tiny run (conftest.py): read only."""
    return load_run(tiny_run)[0], tiny_run


def test_run_directory_holds_every_artifact(run):
    _, run_dir = run
    for name in ("config.json", "feature_spec.json", "metrics.json", "history.json", "checkpoint"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert tuple(metrics) == METRIC_KEYS
    assert 0.0 <= metrics["HR@10"] <= metrics["HR@50"] <= metrics["HR@100"] <= 1.0
    assert (run_dir / "export" / "tfrec_towers" / "1" / "saved_model.pb").is_file()
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_export_matches_the_restored_model_in_a_fresh_process(run):
    config, run_dir = run
    _, spec, model = load_run(run_dir)
    data = load_data(config)
    rows = {f.name: data.eval_queries[f.name][:5] for f in spec.query}
    expected_queries = compute_embeddings(model.query_tower, rows)
    candidates = compute_embeddings(model.candidate_tower, data.candidates)
    payload = json.dumps({k: v.tolist() for k, v in rows.items()})
    got = run_fresh_process(FRESH_LOAD, run_dir / "export" / "tfrec_towers" / "1", payload)
    assert got["modules"] == []  # the fresh process never imported this package
    np.testing.assert_allclose(np.array(got["embedding"]), expected_queries, rtol=1e-5, atol=1e-6)
    scores = expected_queries @ candidates.T
    ids = data.candidates[spec.candidate_id]
    for row in range(5):
        best = np.argsort(-scores[row], kind="stable")[: config.export.k]
        np.testing.assert_allclose(np.array(got["scores"][row]), scores[row][best], rtol=1e-5, atol=1e-6)
        assert got["ids"][row] == ids[best].tolist()


def test_evaluate_and_reexport_a_finished_run(run, tmp_path):
    run_dir = shutil.copytree(run[1], tmp_path / "run")  # a new version is written: into a copy
    metrics = evaluate_run(run_dir)
    assert metrics == pytest.approx(json.loads((run_dir / "metrics.json").read_text()), abs=1e-9)
    assert export_run(run_dir, k=5).name == "2"


def test_output_that_holds_a_run_is_refused(run):
    config, run_dir = run
    with pytest.raises(RunError, match="already holds a run"):
        train(config, run_dir, verbose=0)


def test_a_failed_run_leaves_nothing_behind(tmp_path):
    config = tiny_config("data.dataset=movielens", f"data.data_dir={tmp_path / 'empty'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a MovieLens directory"):
        train(config, tmp_path / "out", verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.slow
def test_tensorboard_logs_hold_the_epoch_losses_of_history_json(tmp_path):
    config = tiny_config(
        "data.num_items=150",
        "data.num_users=60",
        "data.interactions_per_user=8",
        "data.max_history=5",
        "training.epochs=2",
        "training.batch_size=64",
        "export.verify=false",
        "training.tensorboard=true",
    )
    train(config, tmp_path / "run", verbose=0)
    losses = {}
    for events in (tmp_path / "run" / "tensorboard" / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag == "epoch_loss":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    history = json.loads((tmp_path / "run" / "history.json").read_text())["loss"]
    np.testing.assert_allclose([losses[step] for step in sorted(losses)], history, rtol=1e-6)


def test_export_refuses_k_zero_and_an_empty_index_kind(run):
    _, run_dir = run
    versions = sorted(p.name for p in (run_dir / "export" / "tfrec_towers").iterdir())
    with pytest.raises(ValueError, match=r"`k` must be a positive int. Received: 0"):
        export_run(run_dir, k=0)
    with pytest.raises(ValueError, match=r"`kind` must be one of \['brute-force', 'scann'\]. Received: ''"):
        export_run(run_dir, index="")
    assert sorted(p.name for p in (run_dir / "export" / "tfrec_towers").iterdir()) == versions


def test_an_empty_export_base_is_the_current_directory_as_for_any_path(run, tmp_path, monkeypatch):
    _, run_dir = run
    monkeypatch.chdir(tmp_path)
    path = export_run(run_dir, export_base="", k=3)
    assert (tmp_path / path).resolve() == tmp_path / "tfrec_towers" / "1"
    meta = json.loads((tmp_path / "tfrec_towers" / "1" / "assets.extra" / "tfrec_towers_metadata.json").read_text())
    assert meta["k"] == 3


def _small(overrides=()):
    """The tiny configuration (helpers.TINY) with ``overrides``, its data and its adapted spec."""
    config = tiny_config(*overrides)
    prepared = prepare_data(config)
    return config, prepared.data, prepared.adapted_spec()


def test_build_model_without_the_data_its_loss_reads_is_refused():
    config, _, spec = _small(["loss.logq=counts", "loss.mixed_negatives=512"])
    with pytest.raises(ConfigError) as error:
        build_model(spec, config)
    message = str(error.value)
    assert "`loss.logq`='counts' counts the training data's candidate ids" in message
    assert "`loss.mixed_negatives`=512 draws negatives from its candidate corpus" in message
    assert "`build_model(spec, config, data)`" in message and "`for_inference=True`" in message
    config, _, spec = _small(["loss.logq=none", "loss.mixed_negatives=8"])
    with pytest.raises(ConfigError, match=r"\(`loss.mixed_negatives`=8 draws negatives from its candidate corpus\)"):
        build_model(spec, config)


def test_build_model_with_data_trains_the_configured_loss():
    config, data, spec = _small(["loss.logq=counts", "loss.mixed_negatives=512"])
    model = build_model(spec, config, data)
    ids, counts = np.unique(data.train["item_id"], return_counts=True)  # the numpy reference
    table = model.task.candidate_probability
    assert dict(zip(np.asarray(table.ids).tolist(), np.asarray(table.counts).tolist())) == dict(
        zip(ids.tolist(), counts.astype(float).tolist())
    )
    assert model.mixed_negatives.num_negatives == 512
    assert model.task.corpus_size == len(data.candidates["item_id"]) == 300
    assert model.optimizer is not None


def test_a_loss_that_reads_no_data_is_built_without_it():
    bank = ["loss.logq=streaming", "loss.mixed_negatives=0", "loss.memory_bank_size=64"]
    config, _, spec = _small([*bank, "loss.memory_bank_warmup_fraction=0", "loss.memory_bank_warmup_steps=7"])
    model = build_model(spec, config)
    assert type(model.task.candidate_probability).__name__ == "StreamingFrequencyEstimator"
    assert model.task.memory_bank.capacity == 64 and model.mixed_negatives is None
    assert model.task.memory_bank.warmup_steps == 7
    config, _, spec = _small(bank)  # the default warm-up is a share of the run's steps, counted on the data
    with pytest.raises(ConfigError, match=r"`loss.memory_bank_warmup_fraction` 0.5 of the run's steps .* pass it as"):
        build_model(spec, config)


def test_the_bank_warms_up_for_its_share_of_the_runs_steps():
    bank = ["loss.memory_bank_size=64", "training.epochs=3", "training.batch_size=32"]
    config, data, spec = _small(bank)
    total = 3 * -(-len(data.train[data.candidate_id]) // 32)  # epochs × ⌈rows / batch⌉, by hand
    assert training_steps(config, spec, data) == total
    assert build_model(spec, config, data).task.memory_bank.warmup_steps == total // 2  # default share 0.5
    for extra, expected in (
        (["loss.memory_bank_warmup_fraction=0.25"], int(0.25 * total)),
        (["loss.memory_bank_warmup_steps=5", "loss.memory_bank_warmup_fraction=0"], 5),
        ([f"loss.memory_bank_warmup_steps={total}"], total),  # the larger of the two
    ):
        config, data, spec = _small([*bank, *extra])
        assert build_model(spec, config, data).task.memory_bank.warmup_steps == expected, extra


def test_an_inference_model_holds_only_towers_and_cannot_be_trained():
    config, data, spec = _small(["loss.logq=counts", "loss.mixed_negatives=512"])
    model = build_model(spec, config, for_inference=True)
    assert model.mixed_negatives is None and model.optimizer is None
    with pytest.raises(RuntimeError, match="must compile your model"):
        model.fit({f.name: data.train[f.name] for f in spec.all_features}, epochs=1, verbose=0)


def _write_run(run_dir, overrides=()):
    """A run directory whose checkpoint holds a model of TINY + ``overrides`` (built, not trained)."""
    config, data, spec = _small(overrides)
    tf.keras.utils.set_random_seed(5)
    model = build_model(spec, config, data)
    compute_embeddings(model.query_tower, data.eval_queries)  # creates the towers' variables
    compute_embeddings(model.candidate_tower, data.candidates)
    run_dir.mkdir()
    save_config(config, run_dir / "config.json")
    (run_dir / "feature_spec.json").write_text(spec.to_json())
    tf.train.Checkpoint(model=model).write(str(run_dir / "checkpoint" / "model"))
    return data, model


def test_load_run_restores_the_towers_of_its_checkpoint(tmp_path):
    data, written = _write_run(tmp_path / "run")
    _, _, model = load_run(tmp_path / "run")
    for tower, rows in (("query_tower", data.eval_queries), ("candidate_tower", data.candidates)):
        expected = compute_embeddings(getattr(written, tower), rows)
        np.testing.assert_array_equal(compute_embeddings(getattr(model, tower), rows), expected)


@pytest.mark.parametrize(
    "saved, loaded, problem",
    [
        (
            [],
            ["model.query_tower.hidden_units=[32]"],
            r"it holds other shapes for .*query_tower/hidden/0/kernel \(saved \[\d+, 16\], here \[\d+, 32\]\)",
        ),
        (
            [],
            ["model.query_tower.hidden_units=[16, 16]"],
            r"it holds no value for query_tower/hidden/1/kernel, query_tower/hidden/1/bias\.",
        ),
        (
            ["model.candidate_tower.normalization=layer"],
            [],
            r"it holds candidate_tower/hidden/1/gamma, candidate_tower/hidden/1/beta, which this model does not have\.",
        ),
    ],
)
def test_load_run_refuses_a_checkpoint_of_other_towers(tmp_path, saved, loaded, problem):
    run_dir = tmp_path / "run"
    _write_run(run_dir, saved)
    config = tiny_config(*loaded)
    save_config(config, run_dir / "config.json")  # the run now describes another structure
    with pytest.raises(RunError, match=problem) as error:
        load_run(run_dir)
    assert str(run_dir / "checkpoint" / "model") in str(error.value)
    assert str(error.value).endswith("The run was trained with another model structure.")


def test_load_run_of_a_truncated_checkpoint_says_it_cannot_be_read(tmp_path):
    _write_run(tmp_path / "run")
    (data_file,) = (tmp_path / "run" / "checkpoint").glob("model.data-*")
    os.truncate(data_file, data_file.stat().st_size // 2)
    with pytest.raises(RunError, match=rf"The checkpoint {tmp_path / 'run' / 'checkpoint' / 'model'} cannot be read"):
        load_run(tmp_path / "run")


@pytest.mark.slow
def test_training_on_the_unbuilt_columns_gives_the_model_of_the_built_ones():
    config, data, spec = _small(["training.epochs=1"])
    columns = training_columns(data, spec)
    assert list(columns) == [f.name for f in spec.all_features] and len(columns.indexes) < len(columns)
    built = {name: columns[name] for name in columns}  # the plain feature dictionary
    weights = []
    for features in (columns, built):
        tf.keras.utils.set_random_seed(3)
        model = build_model(spec, config, data)
        history, _, _ = fit_model(model, features, config.training, verbose=0)
        weights.append(([v.numpy() for v in model.query_tower.variables + model.candidate_tower.variables], history))
    for got, expected in zip(weights[0][0], weights[1][0]):
        np.testing.assert_array_equal(got, expected)
    assert weights[0][1] == weights[1][1]

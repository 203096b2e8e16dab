"""Tests for tfrec_towers.export: layout, versions, atomicity, fresh-process load, saved_model_cli.

The tiny MovieLens-shaped towers exported here are those of helpers.py; ``toy_export`` (conftest.py)
is their one shared export.
"""

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from helpers import (
    CANDIDATE_SPEC,
    DIM,
    MOVIE_IDS,
    NUM_MOVIES,
    K,
    QueryTower,
    catalogue,
    export_models,
    make_candidate_tower,
    make_query_tower,
    queries,
    run_fresh_process,
)
from tfrec_towers import export, warmup
from tfrec_towers.index import IndexConfig

FRESH_LOAD_SCRIPT = """
    import json, sys
    import tensorflow as tf

    loaded = tf.saved_model.load(sys.argv[1])
    requests = json.load(open(sys.argv[2]))
    out = {"signatures": sorted(loaded.signatures.keys())}
    for name, features in requests.items():
        signature = loaded.signatures[name.split(":")[0]]
        specs = signature.structured_input_signature[1]
        tensors = {key: tf.constant(value, dtype=specs[key].dtype) for key, value in features.items()}
        outputs = signature(**tensors)
        out[name] = {
            key: [[v.decode() if isinstance(v, bytes) else v for v in row] for row in value.numpy().tolist()]
            for key, value in outputs.items()
        }
    out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "tfrec_towers")
    print(json.dumps(out))
"""


def as_json(features):
    return {key: value.tolist() for key, value in features.items()}


def test_layout_metadata_and_no_leftovers(toy_export):
    path, _, _ = toy_export
    assert path.name == "1" and path.parent.name == "movies"
    assert sorted(p.name for p in path.parent.iterdir()) == ["1"]
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    extra = sorted(p.name for p in (path / "assets.extra").iterdir())
    assert extra == ["tf_serving_warmup_requests", "tfrec_towers_metadata.json", "verification_sample.json"]
    meta = json.loads((path / "assets.extra" / "tfrec_towers_metadata.json").read_text())
    assert meta["model_name"] == "movies" and meta["version"] == 1
    assert meta["index"]["kind"] == "brute-force" and meta["k"] == K and meta["index"]["k"] == K
    assert meta["embedding_dim"] == DIM and meta["corpus_size"] == NUM_MOVIES
    assert meta["candidate_id_dtype"] == "int64" and meta["dataset"] == "toy"
    assert meta["tfrec_towers_version"] == tfrec_towers.__version__
    assert meta["query_input_spec"]["history"] == {"dtype": "int64", "shape": [None, None]}
    assert meta["candidate_input_spec"]["genres"] == {"dtype": "string", "shape": [None]}


@pytest.mark.slow
def test_versions_increment_and_explicit_version(tmp_path):
    assert export_models(tmp_path)[0] == tmp_path / "movies" / "1"
    assert export_models(tmp_path)[0] == tmp_path / "movies" / "2"
    assert export_models(tmp_path, version=7)[0] == tmp_path / "movies" / "7"
    assert export_models(tmp_path)[0] == tmp_path / "movies" / "8"
    with pytest.raises(FileExistsError, match="Version 2 of model 'movies' already exists"):
        export_models(tmp_path, version=2)
    assert sorted(p.name for p in (tmp_path / "movies").iterdir()) == ["1", "2", "7", "8"]


def test_export_base_that_is_a_file(tmp_path):
    base = tmp_path / "not_a_dir"
    base.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        export_models(base)


class RaisingCandidateTower(tf.keras.Model):
    def call(self, features):
        raise RuntimeError("tower exploded")


class GraphOnlyFailingQueryTower(QueryTower):
    """Works eagerly (the verification sample) but fails while the SavedModel is traced."""

    def call(self, features):
        if not tf.executing_eagerly():
            raise RuntimeError("tower exploded while tracing")
        return super().call(features)


def failing_warmup_writer(*args, **kwargs):
    raise OSError("disk full while writing warm-up requests")


@pytest.mark.parametrize("failure", ["candidate tower", "tracing", "warm-up file"])
def test_failed_export_leaves_only_previous_versions(toy_export, tmp_path, monkeypatch, failure):
    shutil.copytree(toy_export[0], tmp_path / "movies" / "1")  # a published version 1
    towers = (make_query_tower(), make_candidate_tower())
    if failure == "candidate tower":
        towers = (towers[0], RaisingCandidateTower())
    elif failure == "tracing":
        towers = (GraphOnlyFailingQueryTower(), towers[1])
    else:
        monkeypatch.setattr(warmup, "write_warmup_requests", failing_warmup_writer)
    with pytest.raises((RuntimeError, OSError), match="exploded|disk full"):
        export_models(tmp_path, towers=towers)
    assert sorted(os.listdir(tmp_path / "movies")) == ["1"]
    with pytest.raises(RuntimeError):
        export_models(tmp_path, model_name="brand_new", towers=(towers[0], RaisingCandidateTower()))
    assert sorted(os.listdir(tmp_path)) == ["movies"]


@pytest.mark.slow
def test_fresh_process_load_matches_numpy(toy_export, tmp_path):
    path, query_tower, candidate_tower = toy_export
    q = queries()
    cat = catalogue()
    query_embeddings = query_tower(q).numpy()
    candidate_embeddings = candidate_tower(cat).numpy()
    scores = query_embeddings @ candidate_embeddings.T
    top = np.argsort(-scores, axis=1)[:, :K]
    unknown_query = {
        "user_id": np.array([999, 2**40], np.int64),
        "gender": np.array(["X", ""]),
        "age": np.array([-1, 200], np.int64),
        "occupation": np.array(["astronaut", "??"]),
        "zip_code": np.array(["", "zzzzz"]),
        "history": np.array([[12345, 0, 0, 0], [7, 8, 9, 10]], np.int64),
    }
    unknown_candidate = {"movie_id": np.array([123456789, -5], np.int64), "genres": np.array(["Western|Noir", ""])}
    requests = {
        "serving_default": as_json(q),
        "query_embedding": as_json(q),
        "candidate_embedding": as_json(cat),
        "serving_default:unknown": as_json(unknown_query),
        "query_embedding:unknown": as_json(unknown_query),
        "candidate_embedding:unknown": as_json(unknown_candidate),
    }
    request_file = tmp_path / "requests.json"
    request_file.write_text(json.dumps(requests))
    out = run_fresh_process(FRESH_LOAD_SCRIPT, path, request_file)

    assert out["signatures"] == ["candidate_embedding", "query_embedding", "serving_default"]
    assert out["modules"] == []
    np.testing.assert_allclose(out["query_embedding"]["embedding"], query_embeddings, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["candidate_embedding"]["embedding"], candidate_embeddings, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["serving_default"]["candidate_ids"], MOVIE_IDS[top])
    np.testing.assert_allclose(
        out["serving_default"]["scores"], np.take_along_axis(scores, top, axis=1), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        out["query_embedding:unknown"]["embedding"], query_tower(unknown_query).numpy(), rtol=1e-5, atol=1e-6
    )
    expected_unknown = candidate_tower(unknown_candidate).numpy()
    np.testing.assert_allclose(out["candidate_embedding:unknown"]["embedding"], expected_unknown, rtol=1e-5, atol=1e-6)
    assert np.array(out["serving_default:unknown"]["candidate_ids"]).shape == (2, K)


def saved_model_cli(*args):
    cli = Path(sys.executable).with_name("saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_saved_model_cli_lists_the_three_signatures(toy_export):
    path, _, _ = toy_export
    result = saved_model_cli("show", "--dir", path, "--all")
    for name in export.SIGNATURE_NAMES:
        assert f"signature_def['{name}']" in result.stdout
    for name in ("user_id", "history", "movie_id", "genres", "candidate_ids", "scores", "embedding"):
        assert f"['{name}'] tensor_info" in result.stdout


@pytest.mark.slow
def test_saved_model_cli_run_uses_the_session_loader(toy_export, tmp_path):
    """``saved_model_cli run`` loads through a TF1 session (tables initialised by the SavedModel's
    init op), the way TF Serving's C++ loader does; one known and one unknown user."""
    path, query_tower, candidate_tower = toy_export
    user = {
        "user_id": np.array([1, 999999], np.int64),
        "gender": np.array(["F", "?"]),
        "age": np.array([25, 7], np.int64),
        "occupation": np.array(["12", "astronaut"]),
        "zip_code": np.array(["55414", ""]),
        "history": np.array([[10, 20, 0], [31337, 0, 0]], np.int64),
    }
    exprs = ";".join(f"{name}={values.tolist()!r}" for name, values in user.items())
    saved_model_cli(
        "run",
        "--dir",
        path,
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
        "--input_exprs",
        exprs,
        "--outdir",
        tmp_path,
    )
    scores = query_tower(user).numpy() @ candidate_tower(catalogue()).numpy().T
    top = np.argsort(-scores, axis=1)[:, :K]
    np.testing.assert_array_equal(np.load(tmp_path / "candidate_ids.npy"), MOVIE_IDS[top])
    np.testing.assert_allclose(
        np.load(tmp_path / "scores.npy"), np.take_along_axis(scores, top, axis=1), rtol=1e-5, atol=1e-6
    )


def test_k_clamped_to_corpus_size_with_a_recorded_warning(tmp_path, caplog):
    cat = catalogue()
    cat["genres"] = cat["genres"][:3]
    cat["movie_id"] = cat["movie_id"][:3]
    path, _, candidate_tower = export_models(tmp_path, candidates=cat, index=IndexConfig(k=50))
    meta = json.loads((path / "assets.extra" / "tfrec_towers_metadata.json").read_text())
    assert meta["k"] == 3 and meta["corpus_size"] == 3
    assert meta["warnings"] == ["k=50 exceeds the corpus size (3 candidates); clamped to k=3."]
    assert "clamped to k=3" in caplog.text


def test_sample_records_the_exact_top_k_of_every_sample_query(toy_export):
    path, query_tower, candidate_tower = toy_export
    sample = json.loads((path / "assets.extra" / export.VERIFICATION_SAMPLE_FILENAME).read_text())
    scores = query_tower(queries()).numpy() @ candidate_tower(catalogue()).numpy().T
    expected = MOVIE_IDS[np.argsort(-scores, axis=1, kind="stable")[:, :K]]
    np.testing.assert_array_equal(sample["exact_top_k_candidate_ids"], expected)
    assert sample["index_recall"] == 1.0 and len(sample["queries"]["user_id"]) == 5
    meta = json.loads((path / "assets.extra" / "tfrec_towers_metadata.json").read_text())
    assert meta["warnings"] == []


def test_model_directory_or_version_that_is_a_file(tmp_path):
    (tmp_path / "movies").write_text("x")
    with pytest.raises(NotADirectoryError, match="movies is a file"):
        export_models(tmp_path)
    (tmp_path / "movies").unlink()
    (tmp_path / "movies").mkdir()
    (tmp_path / "movies" / "3").write_text("x")
    with pytest.raises(FileExistsError, match=r"Version 3 of model 'movies' already exists .* \(a file\)"):
        export_models(tmp_path, version=3)
    assert export_models(tmp_path)[0] == tmp_path / "movies" / "4"


@pytest.mark.parametrize(
    "change, error",
    [
        (dict(candidates={"movie_id": MOVIE_IDS}), r"Missing: \['genres'\]"),
        (dict(candidates={"movie_id": MOVIE_IDS, "genres": np.array(["Action"] * 3)}), "same number of rows"),
        (
            dict(candidates={"movie_id": MOVIE_IDS.astype(float), "genres": catalogue()["genres"]}),
            "candidate id column 'movie_id' has dtype float64, but the candidate input spec declares it int64",
        ),
        (
            dict(candidates=catalogue(string_ids=True)),
            r"'movie_id' has dtype <U21, but .* declares it int64: convert the ids \(`ids.astype\(np.int64\)`\)",
        ),
        (
            dict(
                candidates=catalogue(), candidate_spec=dict(CANDIDATE_SPEC, movie_id=tf.TensorSpec([None], tf.string))
            ),
            r"'movie_id' has dtype int64, but .* declares it string: convert the ids \(`ids.astype\(str\)`\)",
        ),
        (
            dict(candidates={"movie_id": np.repeat(MOVIE_IDS[:20], 2), "genres": catalogue()["genres"]}),
            r"must be unique; 20 ids repeat, e.g. \[10, 20, 30, 40, 50\]",
        ),
        (
            dict(candidates={"movie_id": np.zeros(0, np.int64), "genres": np.zeros(0, str)}),
            "`candidates` is empty",
        ),
        (dict(metadata={"k": 3}), r"must not override .*\['k'\]"),
        (dict(metadata={"when": object()}), "JSON-serialisable"),
        (dict(version=0), "`version` must be a positive int"),
        (dict(model_name="a/b"), "`model_name`"),
    ],
)
def test_invalid_arguments(tmp_path, change, error):
    with pytest.raises(ValueError, match=error):
        export_models(tmp_path, **change)
    assert not (tmp_path / "movies").exists()


def test_metadata_keys_constant_matches_the_file(toy_export):
    path, _, _ = toy_export
    meta = json.loads((path / "assets.extra" / "tfrec_towers_metadata.json").read_text())
    assert sorted(meta) == sorted(export.METADATA_KEYS + ("dataset",))


def test_scann_over_a_tiny_corpus_is_exported_as_exact_search_with_a_warning(tmp_path, caplog):
    cat = {name: values[:10] for name, values in catalogue().items()}
    path = export_models(tmp_path, candidates=cat, index=IndexConfig(kind="scann", k=K))[0]
    meta = json.loads((path / "assets.extra" / "tfrec_towers_metadata.json").read_text())
    assert meta["index"]["kind"] == "brute-force" and meta["corpus_size"] == 10 and meta["k"] == K
    assert meta["warnings"] == [
        "index 'scann' needs at least 16 candidates; the corpus has 10, so it is searched exactly ('brute-force')."
    ]
    assert "searched exactly" in caplog.text


def _version_contents(model_dir):
    """``{version: (metadata version, metadata k, k served by serving_default)}`` of every version directory."""
    contents = {}
    for path in sorted(p for p in model_dir.iterdir() if p.name.isdigit()):
        meta = json.loads((path / "assets.extra" / "tfrec_towers_metadata.json").read_text())
        served = tf.saved_model.load(str(path)).signatures["serving_default"](
            **{name: tf.constant(values) for name, values in queries().items()}
        )["candidate_ids"]
        contents[int(path.name)] = (meta["version"], meta["k"], int(served.shape[1]))
    return contents


class _PausedWarmupWriter:
    """Stands in for ``warmup.write_warmup_requests``: the first call (the export being paused, in a
    thread) waits until ``resume`` is set, after ``reached`` tells that its version was chosen."""

    def __init__(self, write):
        self.write, self.reached, self.resume = write, threading.Event(), threading.Event()
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            self.reached.set()
            assert self.resume.wait(120)
        return self.write(*args, **kwargs)


def _export_in_thread(paused, base, **kwargs):
    outcome = {}

    def run():
        try:
            outcome["path"] = export_models(base, **kwargs)[0]
        except BaseException as error:  # reported to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    assert paused.reached.wait(120)
    return thread, outcome


@pytest.mark.slow
def test_two_concurrent_exports_into_one_base_take_versions_1_and_2(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="tfrec_towers.export")
    paused = _PausedWarmupWriter(warmup.write_warmup_requests)
    monkeypatch.setattr(warmup, "write_warmup_requests", paused)
    first, outcome = _export_in_thread(paused, tmp_path, index=IndexConfig(k=3))  # chose version 1, paused
    second = export_models(tmp_path, index=IndexConfig(k=5))[0]  # also chose version 1, and publishes it first
    paused.resume.set()
    first.join(120)
    assert "error" not in outcome, outcome.get("error")
    assert second == tmp_path / "movies" / "1" and outcome["path"] == tmp_path / "movies" / "2"
    assert sorted(os.listdir(tmp_path / "movies")) == ["1", "2"]  # no temporary directory left
    assert _version_contents(tmp_path / "movies") == {1: (1, 5, 5), 2: (2, 3, 3)}
    assert "this export becomes version 2" in caplog.text


@pytest.mark.slow
def test_an_explicit_version_published_meanwhile_by_another_export_is_refused(tmp_path, monkeypatch):
    paused = _PausedWarmupWriter(warmup.write_warmup_requests)
    monkeypatch.setattr(warmup, "write_warmup_requests", paused)
    first, outcome = _export_in_thread(paused, tmp_path, version=3, index=IndexConfig(k=3))
    export_models(tmp_path, version=3, index=IndexConfig(k=5))
    paused.resume.set()
    first.join(120)
    assert isinstance(outcome.get("error"), FileExistsError)
    assert "Version 3 of model 'movies' appeared in" in str(outcome["error"])
    assert sorted(os.listdir(tmp_path / "movies")) == ["3"]
    assert _version_contents(tmp_path / "movies") == {3: (3, 5, 5)}


def _temporary(model_dir, host, pid):
    """A leftover temporary version directory, named as the export names them."""
    path = model_dir / f".tmp-{host}-{pid}-{'ab' * 16}"
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"half a model")
    return path


def test_temporary_directories_of_exports_that_died_are_removed_by_the_next_export(tmp_path, caplog):
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(finished.stdout)  # a process that has exited: like an export killed with kill -9
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        model_dir = tmp_path / "movies"
        stale = _temporary(model_dir, host, gone)
        live = [_temporary(model_dir, host, os.getpid()), _temporary(model_dir, host, sleeper.pid)]
        elsewhere = _temporary(model_dir, "another-host", gone)  # a shared file system: not ours to judge
        unrelated = model_dir / ".tmp-notes"
        unrelated.mkdir()
        assert export_models(tmp_path)[0] == model_dir / "1"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not stale.exists()
    assert all(path.exists() for path in live + [elsewhere, unrelated])
    assert f"Removed {stale}: the unfinished export of process {gone}, which is no longer running." in caplog.text


# --- exclude_history: the request's history items are left out of serving_default's top k ---------


class UserOnlyQueryTower(tf.keras.Model):
    """Embeds the user id alone: the history is a signature input the embedding does not read, so
    a query's true top items stay the same whatever history the request carries."""

    def __init__(self, dim=DIM):
        super().__init__()
        self.lookup = tf.keras.layers.IntegerLookup(vocabulary=np.arange(1, 7, dtype=np.int64))
        self.embedding = tf.keras.layers.Embedding(7, dim)

    def call(self, features):
        return self.embedding(self.lookup(features["user_id"]))


def _histories_holding_the_top_items(top_ids, padding, outsider):
    """Per query: its 1st, 2nd and 4th best ids, one id outside the catalogue, then padding; the last
    query's history is all padding (nothing to exclude)."""
    rows = [[row[0], row[1], row[3], outsider, padding] for row in top_ids.tolist()]
    rows[-1] = [padding] * 5
    return np.array(rows, dtype=top_ids.dtype)


@pytest.mark.parametrize("kind", ["brute-force", "scann"])
@pytest.mark.parametrize("string_ids", [False, True], ids=["int64 ids", "string ids"])
def test_exclude_history_returns_k_results_outside_the_history(tmp_path, kind, string_ids):
    tf.keras.utils.set_random_seed(4)
    query_tower, candidate_tower = UserOnlyQueryTower(), make_candidate_tower(string_ids=string_ids)
    cat = catalogue(string_ids=string_ids)
    ids = cat["movie_id"]
    users = {"user_id": np.array([1, 2, 3, 4, 5], np.int64)}
    scores = query_tower(users).numpy() @ candidate_tower(cat).numpy().T  # the numpy reference
    top_ids = ids[np.argsort(-scores, axis=1, kind="stable")]
    padding, outsider = ("", "999999") if string_ids else (0, 999999)
    history = _histories_holding_the_top_items(top_ids, padding, outsider)
    id_dtype = tf.string if string_ids else tf.int64
    query_spec = {"user_id": tf.TensorSpec([None], tf.int64), "history": tf.TensorSpec([None, None], id_dtype)}
    candidate_spec = dict(CANDIDATE_SPEC, movie_id=tf.TensorSpec([None], id_dtype))
    path = export.export_retrieval_model(
        query_tower,
        candidate_tower,
        query_spec,
        candidate_spec,
        cat,
        "movie_id",
        tmp_path,
        "movies",
        IndexConfig(kind=kind, k=K),
        warmup_queries=dict(users, history=history),
        exclude_history="history",
    )

    served = tf.saved_model.load(str(path)).signatures["serving_default"](
        user_id=tf.constant(users["user_id"]), history=tf.constant(history, id_dtype)
    )
    served_ids = served["candidate_ids"].numpy()
    if string_ids:
        served_ids = served_ids.astype(str)
    assert served_ids.shape == (5, K) and served["scores"].shape == (5, K)
    for row in range(5):
        excluded = set(history[row].tolist()) - {padding}
        kept = [i for i in np.argsort(-scores[row], kind="stable") if ids[i] not in excluded][:K]
        np.testing.assert_array_equal(served_ids[row], ids[kept])
        np.testing.assert_allclose(served["scores"].numpy()[row], scores[row][kept], rtol=1e-5, atol=1e-6)
        assert not excluded & set(served_ids[row].tolist())
    np.testing.assert_array_equal(served_ids[-1], top_ids[-1][:K])  # an all-padding history excludes nothing
    assert served_ids[0][0] == top_ids[0][2]  # the best two are in the history: the third is served first
    meta = json.loads((path / "assets.extra" / "tfrec_towers_metadata.json").read_text())
    assert meta["exclude_history"] == "history" and meta["index"]["kind"] == kind


@pytest.mark.slow
def test_exclude_history_export_passes_the_fresh_process_verification(tmp_path):
    from tfrec_towers.verify import verify_export

    cat = catalogue()
    users = {"user_id": np.array([1, 2, 3, 4, 5], np.int64)}
    query_tower, candidate_tower = UserOnlyQueryTower(), make_candidate_tower()
    top_ids = MOVIE_IDS[np.argsort(-(query_tower(users).numpy() @ candidate_tower(cat).numpy().T), axis=1)]
    query_spec = {"user_id": tf.TensorSpec([None], tf.int64), "history": tf.TensorSpec([None, None], tf.int64)}
    path = export.export_retrieval_model(
        query_tower,
        candidate_tower,
        query_spec,
        CANDIDATE_SPEC,
        cat,
        "movie_id",
        tmp_path,
        "movies",
        IndexConfig(k=K),
        warmup_queries=dict(users, history=_histories_holding_the_top_items(top_ids, 0, 999999)),
        exclude_history="history",
    )
    report = verify_export(path)
    assert report["ok"], report["checks"]
    assert report["metrics"]["recall_at_k"] == 1.0


@pytest.mark.parametrize(
    "name, history_spec, error",
    [
        ("watched", tf.TensorSpec([None, None], tf.int64), r"Received: 'watched' \(no such query feature\)"),
        (
            "history",
            tf.TensorSpec([None, None], tf.string),
            r"candidate ids \(int64 \[None, None\], .* \(string \[None, None\]\)",
        ),
        ("history", tf.TensorSpec([None], tf.int64), r"Received: 'history' \(int64 \[None\]\)"),
    ],
)
def test_exclude_history_of_a_feature_that_is_no_id_matrix_is_refused(tmp_path, name, history_spec, error):
    query_spec = {"user_id": tf.TensorSpec([None], tf.int64), "history": history_spec}
    with pytest.raises(ValueError, match=error):
        export.export_retrieval_model(
            UserOnlyQueryTower(),
            make_candidate_tower(),
            query_spec,
            CANDIDATE_SPEC,
            catalogue(),
            "movie_id",
            tmp_path,
            "movies",
            IndexConfig(k=K),
            exclude_history=name,
        )
    assert not (tmp_path / "movies").exists()

"""Tests for tfrec_towers.verify: the fresh-process verification of an export."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from helpers import (
    CANDIDATE_SPEC,
    MOVIE_IDS,
    K,
    catalogue,
    export_models,
    make_candidate_tower,
    make_query_tower,
    queries,
)
from tfrec_towers import export, verify, warmup
from tfrec_towers.index import IndexConfig

EXPECTED_CHECKS = {
    "metadata and verification sample parse",
    "SavedModel loads",
    "signatures present",
    "signature inputs: serving_default",
    "signature outputs: serving_default",
    "signature inputs: query_embedding",
    "signature outputs: query_embedding",
    "signature inputs: candidate_embedding",
    "signature outputs: candidate_embedding",
    "query_embedding reproduces the in-memory model",
    "candidate_embedding reproduces the in-memory model",
    "serving_default output shapes",
    "serving_default scores sorted best first",
    "serving_default scores are query · candidate dot products",
    "serving_default runs on the sample",
    "serving_default recall against exact top-k",
    "serving_default latency and throughput measured",
    "unknown ids and strings: serving_default",
    "unknown ids and strings: query_embedding",
    "unknown ids and strings: candidate_embedding",
    "warm-up requests parse and run",
    "worker imported no tfrec_towers module",
}


def load_worker():
    spec = importlib.util.spec_from_file_location("verify_worker_under_test", verify.WORKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def failed(report):
    return {c["name"] for c in report["checks"] if not c["ok"]}


@pytest.fixture
def brute_force_export(toy_export):
    """The shared brute-force export's version directory (read only: a test that changes it copies it)."""
    return toy_export[0]


def check_metrics(metrics, num_queries):
    """The performance fields exist and are positive (their values are not asserted: timing varies)."""
    assert metrics["k"] == K and metrics["num_recall_queries"] == num_queries
    assert 0.0 < metrics["recall_at_k"] <= 1.0
    assert metrics["latency_ms"]["p99"] >= metrics["latency_ms"]["p50"] > 0
    assert metrics["latency_ms"]["num_requests"] > 0
    assert metrics["batched_qps"] > 0 and metrics["qps_batch_size"] > 0


@pytest.mark.slow
def test_good_brute_force_export_passes(brute_force_export):
    report = verify.verify_export(brute_force_export, raise_on_failure=True)
    assert report["ok"] and failed(report) == set()
    names = {c["name"] for c in report["checks"]}
    assert EXPECTED_CHECKS | {"serving_default reproduces the in-memory top-k"} == names
    assert report["export_path"] == str(brute_force_export.resolve())
    check_metrics(report["metrics"], num_queries=len(queries()["user_id"]))
    assert report["metrics"]["recall_at_k"] == 1.0


@pytest.mark.slow
def test_recall_is_measured_against_the_recorded_exact_top_k(brute_force_export, tmp_path):
    """Replace the recorded exact neighbours of 3 of the 5 queries by ids outside the top-k: the
    served top-k (unchanged) now matches only 2 queries' exact lists, so recall@k = 2/5."""
    tampered = tmp_path / "1"
    shutil.copytree(brute_force_export, tampered)
    sample_file = tampered / "assets.extra" / export.VERIFICATION_SAMPLE_FILENAME
    sample = json.loads(sample_file.read_text())
    top_k = sample["top_k"]["candidate_ids"]
    outside = [[i for i in MOVIE_IDS.tolist() if i not in row][:K] for row in top_k]
    sample["exact_top_k_candidate_ids"] = top_k[:2] + outside[2:]
    sample_file.write_text(json.dumps(sample))
    report = verify.verify_export(tampered)
    assert failed(report) == {"serving_default recall against exact top-k"}
    assert report["metrics"]["recall_at_k"] == pytest.approx(2 / 5)


@pytest.mark.slow
def test_scann_export_with_string_ids_passes(tmp_path):
    string_spec = dict(CANDIDATE_SPEC, movie_id=tf.TensorSpec([None], tf.string))
    path = export_models(
        tmp_path,
        index=IndexConfig(kind="scann", k=K),
        towers=(make_query_tower(), make_candidate_tower(string_ids=True)),
        candidates=catalogue(string_ids=True),
        candidate_spec=string_spec,
    )[0]
    report = verify.verify_export(path)
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    names = {c["name"] for c in report["checks"]}
    assert EXPECTED_CHECKS | {"scann ops load"} == names
    check_metrics(report["metrics"], num_queries=len(queries()["user_id"]))


@pytest.mark.slow
def test_tampered_export_fails_and_raises(brute_force_export, tmp_path):
    tampered = tmp_path / "1"
    shutil.copytree(brute_force_export, tampered)
    sample_file = tampered / "assets.extra" / export.VERIFICATION_SAMPLE_FILENAME
    sample = json.loads(sample_file.read_text())
    sample["query_embeddings"][0][0] += 0.5
    sample_file.write_text(json.dumps(sample))

    expected_failures = {
        "query_embedding reproduces the in-memory model",
        "serving_default scores are query · candidate dot products",
    }
    # One fresh-process run; without raise_on_failure the same report is returned (a failed report is
    # returned, not raised, in test_version_without_its_metadata_reports_failure).
    with pytest.raises(verify.ExportVerificationError, match="failed 2 check") as error:
        verify.verify_export(tampered, raise_on_failure=True)
    assert {c["name"] for c in error.value.failed_checks} == expected_failures
    assert "query_embedding reproduces the in-memory model: max |difference| = 0.5" in str(error.value)


@pytest.mark.slow
def test_version_without_its_metadata_reports_failure(brute_force_export, tmp_path):
    version = tmp_path / "1"
    shutil.copytree(brute_force_export, version)
    shutil.rmtree(version / "assets.extra")
    report = verify.verify_export(version)
    assert not report["ok"] and failed(report) == {"metadata and verification sample parse"}
    assert report["metrics"] == {}


@pytest.fixture
def no_worker(monkeypatch):
    """Fails the test if a verification worker is started."""
    monkeypatch.setattr(verify.subprocess, "run", lambda *args, **kwargs: pytest.fail("the worker was started"))


EXPECTED_LAYOUT = "expected a version directory <export_base>/<model_name>/<version> holding saved_model.pb"


def test_missing_path_and_empty_directory_are_not_exports(tmp_path, no_worker):
    with pytest.raises(FileNotFoundError) as error:
        verify.verify_export(tmp_path / "missing")
    assert str(error.value) == f"`export_path` {tmp_path / 'missing'} does not exist: {EXPECTED_LAYOUT}."
    with pytest.raises(FileNotFoundError) as error:
        verify.verify_export(tmp_path)
    assert str(error.value) == f"`export_path` {tmp_path} holds no saved_model.pb: {EXPECTED_LAYOUT}."


def test_model_base_directory_suggests_its_newest_version(tmp_path, no_worker):
    """Versions sort as integers (10 after 9); hidden temporaries, files and other names are not versions."""
    model_dir = tmp_path / "movies"
    for name in ("2", "9", "10", ".tmp-11-abc", "latest"):
        (model_dir / name).mkdir(parents=True)
        (model_dir / name / "saved_model.pb").write_bytes(b"")
    (model_dir / "12").write_text("not a version directory")
    with pytest.raises(FileNotFoundError) as error:
        verify.verify_export(model_dir)
    assert str(error.value) == (
        f"`export_path` {model_dir} holds no saved_model.pb: {EXPECTED_LAYOUT}. "
        f"It holds the version directories [2, 9, 10] of a model: pass one, e.g. the newest, {model_dir / '10'}."
    )


def test_file_is_not_an_export(brute_force_export, tmp_path, no_worker):
    text_file = tmp_path / "export.txt"
    text_file.write_text("")
    with pytest.raises(NotADirectoryError) as error:
        verify.verify_export(text_file)
    assert str(error.value) == f"`export_path` {text_file} is a file: {EXPECTED_LAYOUT}."
    saved_model = brute_force_export.resolve() / "saved_model.pb"
    with pytest.raises(NotADirectoryError) as error:
        verify.verify_export(saved_model)
    assert str(error.value) == (
        f"`export_path` {saved_model} is a file: {EXPECTED_LAYOUT}. Pass its directory, {brute_force_export.resolve()}."
    )


def test_worker_that_cannot_start_is_a_failed_check(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    report = verify.verify_export(tmp_path, python="/bin/false")
    assert not report["ok"]
    assert report["checks"] == [
        {"name": "verification worker", "ok": False, "detail": "exited with code 1 without a report:\n"}
    ]
    assert report["metrics"] == {}


def test_worker_constants_match_the_package():
    worker = load_worker()
    assert worker.METADATA_FILENAME == export.METADATA_FILENAME
    assert worker.VERIFICATION_SAMPLE_FILENAME == export.VERIFICATION_SAMPLE_FILENAME
    assert worker.WARMUP_FILENAME == warmup.WARMUP_FILENAME
    assert sorted(worker.SIGNATURE_INPUTS) == sorted(export.SIGNATURE_NAMES)


def test_worker_protobuf_reader_agrees_with_tf_serving_protos():
    spec = model_pb2.ModelSpec(name="movies", signature_name="query_embedding")
    request = predict_pb2.PredictRequest(model_spec=spec)
    request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(np.array([3, 2**40], np.int64)))
    request.inputs["history"].CopyFrom(tf.make_tensor_proto(np.array([[10, 0], [20, 30]], np.int64)))
    request.inputs["gender"].CopyFrom(tf.make_tensor_proto(np.array([b"F", "é".encode()], dtype=object)))
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    model_name, signature_name, inputs = load_worker().parse_warmup_record(record.SerializeToString())
    assert (model_name, signature_name) == ("movies", "query_embedding")
    assert sorted(inputs) == ["gender", "history", "user_id"]
    np.testing.assert_array_equal(inputs["user_id"].numpy(), [3, 2**40])
    np.testing.assert_array_equal(inputs["history"].numpy(), [[10, 0], [20, 30]])
    assert inputs["gender"].numpy().tolist() == [b"F", "é".encode()]
    classify = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog())
    with pytest.raises(ValueError, match="not a PredictionLog with a predict_log"):
        load_worker().parse_warmup_record(classify.SerializeToString())


def test_top_k_ids_may_differ_only_within_tied_scores():
    from tfrec_towers.verify_worker import same_ids_up_to_ties

    recorded_ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.8, 0.7, 0.3, 0.3]], np.float32)
    assert same_ids_up_to_ties(recorded_ids, recorded_ids, scores)
    # 2 and 3 tie: either order; 7 and 8 tie at the end: a tied id beyond k may replace one.
    assert same_ids_up_to_ties(np.array([[1, 3, 2, 4], [5, 6, 8, 9]]), recorded_ids, scores)
    # 1 and 2 do not tie; 4 is alone in the last run only if its score ties nothing: a swap is a failure.
    assert not same_ids_up_to_ties(np.array([[2, 1, 3, 4], [5, 6, 7, 8]]), recorded_ids, scores)
    assert not same_ids_up_to_ties(np.array([[1, 2, 3, 4], [6, 5, 7, 8]]), recorded_ids, scores)

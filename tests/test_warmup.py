"""Tests for tfrec_towers.warmup: TF Serving warm-up records, parsed back with the TF Serving protos."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from helpers import catalogue, queries
from tfrec_towers import warmup


def request_inputs(request):
    return {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}


def test_round_trip_one_request_per_signature(tmp_path):
    rows = {
        "serving_default": {"user_id": np.array([1, 2], np.int64), "history": np.array([[10, 0], [20, 30]], np.int64)},
        "candidate_embedding": {"movie_id": np.array([7], np.int64), "genres": np.array(["Action|Comedy"])},
    }
    path = warmup.write_warmup_requests(tmp_path / warmup.WARMUP_FILENAME, "movies", rows)
    records = tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
    raw = [prediction_log_pb2.PredictionLog.FromString(record) for record in records]
    assert [log.WhichOneof("log_type") for log in raw] == ["predict_log", "predict_log"]

    requests = warmup.read_warmup_requests(path)
    assert [(r.model_spec.name, r.model_spec.signature_name) for r in requests] == [
        ("movies", "serving_default"),
        ("movies", "candidate_embedding"),
    ]
    first, second = (request_inputs(r) for r in requests)
    assert first["user_id"].dtype == np.int64 and first["user_id"].tolist() == [1, 2]
    assert first["history"].tolist() == [[10, 0], [20, 30]]
    assert second["genres"].tolist() == [b"Action|Comedy"] and second["movie_id"].tolist() == [7]
    assert requests[1].inputs["genres"].dtype == tf.string.as_datatype_enum


def test_export_writes_a_request_per_signature_with_real_rows(toy_export):
    path = toy_export[0]
    requests = warmup.read_warmup_requests(path / "assets.extra" / warmup.WARMUP_FILENAME)
    by_signature = {r.model_spec.signature_name: request_inputs(r) for r in requests}
    assert len(requests) == 3 and {r.model_spec.name for r in requests} == {"movies"}
    assert sorted(by_signature) == ["candidate_embedding", "query_embedding", "serving_default"]
    q, cat = queries(), catalogue()
    for name in ("serving_default", "query_embedding"):
        assert sorted(by_signature[name]) == sorted(q)
        np.testing.assert_array_equal(by_signature[name]["history"], q["history"][:4])
        assert by_signature[name]["gender"].tolist() == [g.encode() for g in q["gender"][:4]]
    np.testing.assert_array_equal(by_signature["candidate_embedding"]["movie_id"], cat["movie_id"][:4])
    assert by_signature["candidate_embedding"]["genres"].tolist() == [g.encode() for g in cat["genres"][:4]]


def test_invalid_inputs(tmp_path):
    with pytest.raises(ValueError, match="at least one signature"):
        warmup.write_warmup_requests(tmp_path / "w", "movies", {})
    with pytest.raises(ValueError, match=r"`signature_inputs\['serving_default'\]` has no inputs"):
        warmup.write_warmup_requests(tmp_path / "w", "movies", {"serving_default": {}})
    with tf.io.TFRecordWriter(str(tmp_path / "classify")) as writer:
        classify = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog())
        writer.write(classify.SerializeToString())
    with pytest.raises(ValueError, match="record 0 is a 'classify_log', not a predict_log"):
        warmup.read_warmup_requests(tmp_path / "classify")

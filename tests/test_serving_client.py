"""Tests for serving/client.py: requests parsed back with the TF Serving protos, REST JSON, and sending.

``send_grpc`` is exercised against an in-process gRPC ``PredictionService`` that runs an exported
SavedModel (the part of TF Serving a client sees); ``send_rest`` against a recording HTTP server.
"""

import importlib.util
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_export import K, MOVIE_IDS, catalogue, export_models, queries  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_client():
    spec = importlib.util.spec_from_file_location("serving_client_under_test", REPO / "serving" / "client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client = load_client()

QUERY = {
    "user_id": [42, 7],
    "gender": ["M", "F"],
    "age": [25, 35],
    "occupation": ["12", "technician"],
    "zip_code": ["55414", "94110"],
    "history": [[1193, 661, 914], [2355, 0, 0]],
}
CANDIDATE = {"movie_id": [1193, 999999], "genres": ["Drama", "Western|Noir"]}


def parse(request):
    """Serialise, parse back with the TF Serving proto, and read every input as numpy."""
    parsed = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    return parsed, {name: tf.make_ndarray(proto) for name, proto in parsed.inputs.items()}


@pytest.mark.parametrize(
    "signature, features", [("serving_default", QUERY), ("query_embedding", QUERY), ("candidate_embedding", CANDIDATE)]
)
def test_grpc_request_for_each_signature_parses_back(signature, features):
    parsed, inputs = parse(client.predict_request("movies", signature, features))
    assert parsed.model_spec.name == "movies" and parsed.model_spec.signature_name == signature
    assert not parsed.model_spec.HasField("version")
    assert sorted(inputs) == sorted(features)
    for name, values in features.items():
        expected = np.array(values)
        if expected.dtype.kind == "U":
            assert inputs[name].tolist() == [[v.encode() for v in row] if isinstance(row, list) else row.encode() for row in values]
            assert parsed.inputs[name].dtype == tf.string.as_datatype_enum
        else:
            np.testing.assert_array_equal(inputs[name], expected)
            assert inputs[name].dtype == np.int64 and list(inputs[name].shape) == list(expected.shape)


def test_grpc_request_pins_a_version_and_sends_floats_as_float32():
    parsed, inputs = parse(client.predict_request("vectors", "query_embedding", {"query_vector": [[0.5, -1.25]]}, version=3))
    assert parsed.model_spec.version.value == 3
    assert inputs["query_vector"].dtype == np.float32 and inputs["query_vector"].tolist() == [[0.5, -1.25]]


def test_rest_bodies_row_and_columnar():
    assert client.rest_body("candidate_embedding", CANDIDATE) == {
        "signature_name": "candidate_embedding",
        "instances": [{"movie_id": 1193, "genres": "Drama"}, {"movie_id": 999999, "genres": "Western|Noir"}],
    }
    assert client.rest_body("serving_default", QUERY, columnar=True) == {"signature_name": "serving_default", "inputs": QUERY}
    body = client.rest_body("query_embedding", {"user_id": np.array([1], np.int64), "zip_code": np.array([b"\xff\x00"], object)})
    assert body["instances"] == [{"user_id": 1, "zip_code": {"b64": "/wA="}}]
    json.dumps(body)
    assert client.rest_url("http://localhost:8501/", "movies") == "http://localhost:8501/v1/models/movies:predict"
    assert client.rest_url("http://h:1", "movies", 2) == "http://h:1/v1/models/movies/versions/2:predict"


@pytest.mark.parametrize(
    "signature, features, error",
    [
        ("retrieve", QUERY, r"`signature_name` must be one of \['serving_default'"),
        ("serving_default", {}, "at least one input"),
        ("serving_default", {"user_id": [1, 2], "gender": ["M"]}, r"same number of rows. Received: \{'user_id': 2, 'gender': 1\}"),
        ("serving_default", {"user_id": []}, "at least one row"),
        ("serving_default", {"history": [[1, 2], [3]]}, "padded, not ragged"),
    ],
)
def test_bad_requests(signature, features, error):
    with pytest.raises(ValueError, match=error):
        client.predict_request("movies", signature, features)
    with pytest.raises(ValueError, match=error):
        client.rest_body(signature, features)


class SavedModelPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict of TF Serving over one loaded SavedModel: the signature named by the request, on its inputs."""

    def __init__(self, model_name, export_path):
        self.model_name = model_name
        self.loaded = tf.saved_model.load(str(export_path))

    def Predict(self, request, context):
        if request.model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request.model_spec.name}")
        signature = self.loaded.signatures[request.model_spec.signature_name or "serving_default"]
        outputs = signature(**{name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()})
        response = predict_pb2.PredictResponse()
        for name, tensor in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        return response


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory):
    path, query_tower, candidate_tower = export_models(tmp_path_factory.mktemp("exports"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(SavedModelPredictionService("movies", path), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", query_tower, candidate_tower
    server.stop(None)


def test_send_grpc_to_a_saved_model_service(grpc_server):
    target, query_tower, candidate_tower = grpc_server
    rows = {name: values.tolist() for name, values in queries().items()}
    outputs = client.send_grpc(client.predict_request("movies", "serving_default", rows), target)
    scores = query_tower(queries()).numpy() @ candidate_tower(catalogue()).numpy().T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(outputs["candidate_ids"], MOVIE_IDS[top])
    np.testing.assert_allclose(outputs["scores"], np.take_along_axis(scores, top, axis=1), rtol=1e-5, atol=1e-6)
    cat = {name: values.tolist() for name, values in catalogue().items()}
    embedded = client.send_grpc(client.predict_request("movies", "candidate_embedding", cat), target)
    np.testing.assert_allclose(embedded["embedding"], candidate_tower(catalogue()).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(grpc.RpcError) as error:
        client.send_grpc(client.predict_request("other", "serving_default", rows), target)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_send_rest_posts_json_to_the_predict_url():
    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.update(path=self.path, content_type=self.headers["Content-Type"])
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = json.dumps({"predictions": [[0.25, 0.5]]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body = client.rest_body("candidate_embedding", CANDIDATE)
        reply = client.send_rest(f"http://127.0.0.1:{server.server_port}", "movies", body, version=2)
    finally:
        server.shutdown()
    assert reply == {"predictions": [[0.25, 0.5]]}
    assert seen == {"path": "/v1/models/movies/versions/2:predict", "content_type": "application/json", "body": body}

"""Tests for serving/client.py: signatures, request checks, requests parsed back with the TF Serving protos, sending.

Signatures are read from an toy_export SavedModel and fetched from an in-process gRPC
``PredictionService`` (which also runs the SavedModel: the part of TF Serving a client sees) and a
REST metadata endpoint; request checks run against the signatures the export was given, without a
server. ``send_rest`` is exercised against a recording HTTP server.
"""

import contextlib
import importlib.util
import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from helpers import CANDIDATE_SPEC, MOVIE_IDS, QUERY_SPEC, K, catalogue, queries

REPO = Path(__file__).resolve().parents[1]


def load_client():
    spec = importlib.util.spec_from_file_location("serving_client_under_test", REPO / "serving" / "client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client = load_client()

SIGNATURES = {"serving_default": QUERY_SPEC, "query_embedding": QUERY_SPEC, "candidate_embedding": CANDIDATE_SPEC}
"""The input specs the test export is given (helpers.py): the reference for signatures read back."""
QUERY = {
    "user_id": [42, 7],
    "gender": ["M", "F"],
    "age": [25, 35],
    "occupation": ["12", "technician"],
    "zip_code": ["55414", "94110"],
    "history": [[1193, 661, 914], [2355, 0, 0]],
}
CANDIDATE = {"movie_id": [1193, 999999], "genres": ["Drama", "Western|Noir"]}
VECTORS = {"query_embedding": {"query_vector": tf.TensorSpec([None, 2], tf.float32)}}


def described(signatures):
    """``{signature: {feature: (dtype name, shape)}}``, comparable across sources."""
    return {
        name: {feature: (spec.dtype.name, spec.shape.as_list()) for feature, spec in inputs.items()}
        for name, inputs in signatures.items()
    }


def parse(request):
    """Serialise, parse back with the TF Serving proto, and read every input as numpy."""
    parsed = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    return parsed, {name: tf.make_ndarray(proto) for name, proto in parsed.inputs.items()}


def signature_def_map(export_path):
    """What TF Serving's GetModelMetadata describes: every SignatureDef of the serving meta graph."""
    saved_model = saved_model_pb2.SavedModel.FromString((Path(export_path) / "saved_model.pb").read_bytes())
    (meta_graph,) = saved_model.meta_graphs
    assert list(meta_graph.meta_info_def.tags) == ["serve"]
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in meta_graph.signature_def.items():
        signature_defs.signature_def[name].CopyFrom(signature)
    assert "__saved_model_init_op" in signature_defs.signature_def
    return signature_defs


@contextlib.contextmanager
def http_server(handler):
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


class JsonHandler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class SavedModelPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata of TF Serving over one loaded SavedModel."""

    def __init__(self, model_name, export_path):
        self.model_name = model_name
        self.export_path = export_path
        self.loaded = tf.saved_model.load(str(export_path))

    def check_model(self, request, context):
        if request.model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request.model_spec.name}")

    def Predict(self, request, context):
        self.check_model(request, context)
        signature = self.loaded.signatures[request.model_spec.signature_name or "serving_default"]
        outputs = signature(**{name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()})
        response = predict_pb2.PredictResponse()
        for name, tensor in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        return response

    def GetModelMetadata(self, request, context):
        self.check_model(request, context)
        assert list(request.metadata_field) == ["signature_def"]
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=request.model_spec)
        response.metadata["signature_def"].Pack(signature_def_map(self.export_path))
        return response


@pytest.fixture(scope="module")
def grpc_server(toy_export):
    path, query_tower, candidate_tower = toy_export
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        SavedModelPredictionService("movies", path), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", query_tower, candidate_tower
    server.stop(None)


def test_read_signatures_of_an_export(toy_export, tmp_path):
    signatures = client.read_signatures(toy_export[0])
    assert described(signatures) == described(SIGNATURES)
    assert all(spec.name == feature for inputs in signatures.values() for feature, spec in inputs.items())
    with pytest.raises(FileNotFoundError, match=r"saved_model.pb does not exist.*<export_base>/<model_name>/<version>"):
        client.read_signatures(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(saved_model_pb2.SavedModel().SerializeToString())
    with pytest.raises(ValueError, match="no meta graph tagged 'serve'"):
        client.read_signatures(tmp_path)


def test_fetch_signatures_grpc_from_the_server(grpc_server):
    target = grpc_server[0]
    assert described(client.fetch_signatures_grpc(target, "movies")) == described(SIGNATURES)
    with pytest.raises(grpc.RpcError) as error:
        client.fetch_signatures_grpc(target, "other")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_fetch_signatures_rest_from_the_metadata_endpoint(toy_export):
    signature_defs = json_format.MessageToDict(signature_def_map(toy_export[0]), preserving_proto_field_name=True)
    body = {
        "model_spec": {"name": "movies", "signature_name": "", "version": "1"},
        "metadata": {"signature_def": signature_defs},
    }
    seen = []

    class Handler(JsonHandler):
        def do_GET(self):
            seen.append(self.path)
            if self.path == "/v1/models/movies/versions/1/metadata":
                self.reply(200, body)
            else:
                self.reply(404, {"error": "Servable not found"})

    with http_server(Handler) as server:
        assert described(client.fetch_signatures_rest(server, "movies", version=1)) == described(SIGNATURES)
        with pytest.raises(client.urllib.error.HTTPError):
            client.fetch_signatures_rest(server, "movies")
    assert seen == ["/v1/models/movies/versions/1/metadata", "/v1/models/movies/metadata"]


@pytest.mark.parametrize(
    "signature, features", [("serving_default", QUERY), ("query_embedding", QUERY), ("candidate_embedding", CANDIDATE)]
)
def test_grpc_request_for_each_signature_parses_back(signature, features):
    parsed, inputs = parse(client.predict_request("movies", signature, features, SIGNATURES))
    assert parsed.model_spec.name == "movies" and parsed.model_spec.signature_name == signature
    assert not parsed.model_spec.HasField("version")
    assert sorted(inputs) == sorted(features)
    for name, values in features.items():
        expected = np.array(values)
        if expected.dtype.kind == "U":
            assert inputs[name].tolist() == [
                [v.encode() for v in row] if isinstance(row, list) else row.encode() for row in values
            ]
            assert parsed.inputs[name].dtype == tf.string.as_datatype_enum
        else:
            np.testing.assert_array_equal(inputs[name], expected)
            assert inputs[name].dtype == np.int64 and list(inputs[name].shape) == list(expected.shape)


def test_safely_convertible_values_become_the_exact_tensors():
    """numpy int32 and whole floats for int64, tuples, bytes beside str, rows as arrays; unknown ids stay."""
    features = {
        "user_id": np.array([42, 999999], np.int32),
        "gender": [b"M", "F"],
        "age": [25.0, np.float32(35)],
        "occupation": np.array(["12", "technician"]),
        "zip_code": ("55414", "é"),
        "history": [np.array([1193, 661, 914], np.int16), [2355, 0, 0]],
    }
    parsed, inputs = parse(client.predict_request("movies", "serving_default", features, SIGNATURES))
    expected = {
        "user_id": np.array([42, 999999], np.int64),
        "age": np.array([25, 35], np.int64),
        "history": np.array([[1193, 661, 914], [2355, 0, 0]], np.int64),
    }
    for name, values in expected.items():
        assert inputs[name].dtype == np.int64 and inputs[name].shape == values.shape
        np.testing.assert_array_equal(inputs[name], values)
        assert parsed.inputs[name].dtype == tf.int64.as_datatype_enum
    assert inputs["gender"].tolist() == [b"M", b"F"]
    assert inputs["occupation"].tolist() == [b"12", b"technician"]
    assert inputs["zip_code"].tolist() == [b"55414", b"\xc3\xa9"]
    assert {parsed.inputs[n].dtype for n in ("gender", "occupation", "zip_code")} == {tf.string.as_datatype_enum}
    body = client.rest_body("serving_default", features, SIGNATURES, columnar=True)["inputs"]
    assert body["age"] == [25, 35] and [type(v) for v in body["age"]] == [int, int]
    assert body["user_id"] == [42, 999999] and body["zip_code"] == ["55414", "é"]


def test_grpc_request_pins_a_version_and_sends_floats_as_float32():
    features = {"query_vector": [[0.5, -1.25], [2, 3]]}
    parsed, inputs = parse(client.predict_request("vectors", "query_embedding", features, VECTORS, version=3))
    assert parsed.model_spec.version.value == 3
    assert inputs["query_vector"].dtype == np.float32 and inputs["query_vector"].tolist() == [[0.5, -1.25], [2.0, 3.0]]


def test_rest_bodies_row_and_columnar():
    assert client.rest_body("candidate_embedding", CANDIDATE, SIGNATURES) == {
        "signature_name": "candidate_embedding",
        "instances": [{"movie_id": 1193, "genres": "Drama"}, {"movie_id": 999999, "genres": "Western|Noir"}],
    }
    assert client.rest_body("serving_default", QUERY, SIGNATURES, columnar=True) == {
        "signature_name": "serving_default",
        "inputs": QUERY,
    }
    features = {"movie_id": np.array([1], np.int64), "genres": np.array([b"\xff\x00"], object)}
    body = client.rest_body("candidate_embedding", features, SIGNATURES)
    assert body["instances"] == [{"movie_id": 1, "genres": {"b64": "/wA="}}]
    json.dumps(body)
    assert client.rest_url("http://localhost:8501/", "movies") == "http://localhost:8501/v1/models/movies:predict"
    assert client.rest_url("http://h:1", "movies", 2) == "http://h:1/v1/models/movies/versions/2:predict"


def query_with(**changes):
    """``QUERY`` with features replaced (``None`` drops one)."""
    features = dict(QUERY, **changes)
    return {name: values for name, values in features.items() if values is not None}


INT64 = "int64 [B] (rank 1)"
STRING = "string [B] (rank 1)"
HISTORY = "int64 [B, None] (rank 2)"


BAD_REQUESTS = {
    "missing": (query_with(age=None), ["missing feature 'age': " + INT64, "Received features: ['user_id'"]),
    "unknown": (query_with(agee=[25, 35]), ["unknown feature 'agee'", "age: " + INT64]),
    "string-for-int64": (query_with(age=["25", "35"]), ["Feature 'age'", INT64, "'25' (str) at [0]"]),
    "fraction": (query_with(age=[25, 35.5]), ["Feature 'age'", INT64, "not a whole number, 35.5 (float) at [1]"]),
    "nan": (
        query_with(age=np.array([25.0, np.nan])),
        ["Feature 'age'", INT64, "float64 values that are not whole numbers, e.g. nan (float) at [1]"],
    ),
    "bool-for-int64": (query_with(user_id=np.array([True, False])), ["Feature 'user_id'", INT64, "bool values"]),
    "beyond-int64": (
        query_with(user_id=[2**63, 1]),
        ["Feature 'user_id'", INT64, "outside the int64 range", "9223372036854775808 (int) at [0]"],
    ),
    "int-for-string": (
        query_with(occupation=[12, 5]),
        ["Feature 'occupation'", STRING, "int64 values, e.g. 12 (int) at [0]"],
    ),
    "none-for-string": (query_with(gender=["M", None]), ["Feature 'gender'", STRING, "None (NoneType) at [1]"]),
    "not-utf8": (query_with(zip_code=["\ud800", "x"]), ["Feature 'zip_code'", STRING, "cannot be encoded as UTF-8"]),
    "scalar-for-[B]": (
        query_with(user_id=42),
        ["Feature 'user_id'", INT64, "received shape [] (rank 0)", "wrap its value in a list"],
    ),
    "[B]-for-[B,L]": (query_with(history=[1193, 661]), ["Feature 'history'", HISTORY, "received shape [2] (rank 1)"]),
    "[B,1]-for-[B]": (
        query_with(gender=[["M"], ["F"]]),
        ["Feature 'gender'", STRING, "received shape [2, 1] (rank 2)"],
    ),
    "ragged": (query_with(history=[[1, 2], [3]]), ["Feature 'history'", HISTORY, "rows of different lengths"]),
    "empty": (query_with(user_id=[]), ["Feature 'user_id'", INT64, "empty batch (shape [0])", "at least one row"]),
    "batch-sizes": (
        query_with(gender=["M"]),
        ["Feature 'gender' has a batch size of 1 where 2 is expected (that of 'user_id')", "'gender': 1"],
    ),
}


@pytest.mark.parametrize("features, expected", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_name_the_feature_and_its_input(features, expected):
    for build in (
        lambda: client.predict_request("movies", "serving_default", features, SIGNATURES),
        lambda: client.rest_body("serving_default", features, SIGNATURES),
    ):
        with pytest.raises(client.RequestError) as error:
            build()
        assert isinstance(error.value, ValueError)
        message = str(error.value)
        assert all(part in message for part in expected), message


def test_bad_signature_float_and_unsupported_inputs():
    with pytest.raises(
        client.RequestError, match=r"`signature_name` must be one of \['serving_default', 'query_embedding', "
    ):
        client.predict_request("movies", "retrieve", QUERY, SIGNATURES)
    bad_vectors = [
        ([[0.5, "x"]], "float32 [B, 2] (rank 2); received a value that is not a number, 'x' (str) at [0, 1]"),
        (
            [[1e39, 0.0]],
            "float32 [B, 2] (rank 2); received values beyond the float32 range, e.g. 1e+39 (float) at [0, 0]",
        ),
        ([[1.0, 2.0, 3.0]], "float32 [B, 2] (rank 2); received shape [1, 3] (rank 2)"),
    ]
    for values, expected in bad_vectors:
        with pytest.raises(client.RequestError) as error:
            client.rest_body("query_embedding", {"query_vector": values}, VECTORS)
        assert str(error.value) == f"Feature 'query_vector' of signature 'query_embedding' must be {expected}."
    flags = {"query_embedding": {"flag": tf.TensorSpec([None], tf.bool)}}
    with pytest.raises(
        client.RequestError, match="'flag' of signature 'query_embedding' is bool: this client sends integer"
    ):
        client.predict_request("movies", "query_embedding", {"flag": [True]}, flags)


def test_send_grpc_to_a_saved_model_service(grpc_server):
    target, query_tower, candidate_tower = grpc_server
    signatures = client.fetch_signatures_grpc(target, "movies")
    rows = {name: values.tolist() for name, values in queries().items()}
    outputs = client.send_grpc(client.predict_request("movies", "serving_default", rows, signatures), target)
    scores = query_tower(queries()).numpy() @ candidate_tower(catalogue()).numpy().T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(outputs["candidate_ids"], MOVIE_IDS[top])
    np.testing.assert_allclose(outputs["scores"], np.take_along_axis(scores, top, axis=1), rtol=1e-5, atol=1e-6)
    cat = {name: values.tolist() for name, values in catalogue().items()}
    embedded = client.send_grpc(client.predict_request("movies", "candidate_embedding", cat, signatures), target)
    np.testing.assert_allclose(embedded["embedding"], candidate_tower(catalogue()).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(grpc.RpcError) as error:
        client.send_grpc(client.predict_request("other", "serving_default", rows, signatures), target)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_send_rest_posts_json_to_the_predict_url():
    seen = {}

    class Handler(JsonHandler):
        def do_POST(self):
            seen.update(path=self.path, content_type=self.headers["Content-Type"])
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.reply(200, {"predictions": [[0.25, 0.5]]})

    body = client.rest_body("candidate_embedding", CANDIDATE, SIGNATURES)
    with http_server(Handler) as server:
        reply = client.send_rest(server, "movies", body, version=2)
    assert reply == {"predictions": [[0.25, 0.5]]}
    assert seen == {"path": "/v1/models/movies/versions/2:predict", "content_type": "application/json", "body": body}

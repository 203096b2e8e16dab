"""A small TF Serving client for tfrec-towers exports: gRPC ``PredictRequest`` and REST JSON per signature.

Standalone (numpy, TensorFlow's tensor protos, ``tensorflow-serving-api``; ``grpcio`` for gRPC):
copy it next to your service. Every signature of an export (DESIGN §5) takes raw feature columns,
one row per example::

    from serving.client import predict_request, send_grpc, rest_body, send_rest

    features = {"user_id": [42], "gender": ["M"], "age": [25], "occupation": ["12"],
                "zip_code": ["55414"], "history": [[1193, 661, 914]]}
    request = predict_request("movies", "serving_default", features)
    outputs = send_grpc(request, "localhost:8500")        # {"candidate_ids": [1, k], "scores": [1, k]}
    reply = send_rest("http://localhost:8501", "movies", rest_body("serving_default", features))

Integers are sent as int64, floats as float32 and text as UTF-8 strings, the dtypes of the export's
input specs (``assets.extra/tfrec_towers_metadata.json``).
"""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any, Dict, Mapping, Optional

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2

SIGNATURES = ("serving_default", "query_embedding", "candidate_embedding")
"""The signatures of a tfrec-towers export."""
GRPC_PORT, REST_PORT = 8500, 8501


def _column(name: str, values: Any) -> np.ndarray:
    """A feature column as int64, float32 or a bytes object array; at least one row."""
    try:
        array = np.asarray(values)
    except ValueError as e:  # numpy refuses rows of different lengths
        raise ValueError(f"Feature {name!r} must be a rectangular batch (padded, not ragged): {e}") from e
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(f"Feature {name!r} must hold at least one row [batch, ...]. Received shape {array.shape}")
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind in "USO" and all(isinstance(v, (str, bytes)) for v in array.flat):
        encode = np.vectorize(lambda v: v.encode("utf-8") if isinstance(v, str) else v, otypes=[object])
        return encode(array)
    raise ValueError(f"Feature {name!r} must hold integers, floats or strings (padded, not ragged). Received dtype {array.dtype}")


def feature_columns(signature_name: str, features: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """Checks a request's features: a known signature, at least one feature, the same rows everywhere.

    Args:
      signature_name: one of :data:`SIGNATURES`.
      features: ``{feature: values [batch, ...]}`` (lists or numpy arrays).

    Returns:
      ``{feature: numpy array}`` as int64, float32 or bytes objects.

    Raises:
      ValueError: on an unknown signature, no features, a ragged or empty column, an unsupported
        dtype or columns with different numbers of rows.
    """
    if signature_name not in SIGNATURES:
        raise ValueError(f"`signature_name` must be one of {list(SIGNATURES)}. Received: {signature_name!r}")
    if not features:
        raise ValueError(f"`features` must name at least one input of {signature_name!r}.")
    columns = {name: _column(name, values) for name, values in features.items()}
    rows = {name: len(values) for name, values in columns.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"Every feature must have the same number of rows. Received: {rows}")
    return columns


def predict_request(
    model_name: str, signature_name: str, features: Mapping[str, Any], version: Optional[int] = None
) -> predict_pb2.PredictRequest:
    """The gRPC ``PredictRequest`` of one batch.

    Args:
      model_name: the model name TF Serving serves the export under.
      signature_name: one of :data:`SIGNATURES`.
      features: ``{feature: values [batch, ...]}``.
      version: a version to pin; ``None`` lets the server choose (the latest).

    Returns:
      The request; each feature a ``TensorProto``.

    Raises:
      ValueError: see :func:`feature_columns`.
    """
    spec = model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
    if version is not None:
        spec.version.value = int(version)
    request = predict_pb2.PredictRequest(model_spec=spec)
    for name, values in feature_columns(signature_name, features).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
    return request


def _json_value(value: Any) -> Any:
    """Numbers as they are; UTF-8 text as a string; other bytes as TF Serving's ``{"b64": ...}``."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def _json_column(values: np.ndarray) -> list:
    if values.dtype == object:
        return np.vectorize(_json_value, otypes=[object])(values).tolist()
    return values.tolist()


def rest_body(signature_name: str, features: Mapping[str, Any], columnar: bool = False) -> Dict[str, Any]:
    """The JSON body of a REST ``:predict`` call.

    Args:
      signature_name: one of :data:`SIGNATURES`.
      features: ``{feature: values [batch, ...]}``.
      columnar: ``False`` for the row format (``"instances"``: one object per example; the reply is
        ``{"predictions": [...]}``), ``True`` for the columnar format (``"inputs"``: one list per
        feature; the reply is ``{"outputs": {...}}``).

    Returns:
      ``{"signature_name": ..., "instances": [...]}`` or ``{"signature_name": ..., "inputs": {...}}``.

    Raises:
      ValueError: see :func:`feature_columns`.
    """
    columns = {name: _json_column(values) for name, values in feature_columns(signature_name, features).items()}
    if columnar:
        return {"signature_name": signature_name, "inputs": columns}
    num_rows = len(next(iter(columns.values())))
    instances = [{name: values[row] for name, values in columns.items()} for row in range(num_rows)]
    return {"signature_name": signature_name, "instances": instances}


def rest_url(server: str, model_name: str, version: Optional[int] = None) -> str:
    """``{server}/v1/models/{model_name}[/versions/{version}]:predict``, e.g. server ``http://localhost:8501``."""
    versioned = f"/versions/{int(version)}" if version is not None else ""
    return f"{server.rstrip('/')}/v1/models/{model_name}{versioned}:predict"


def send_grpc(request: predict_pb2.PredictRequest, target: str = f"localhost:{GRPC_PORT}", timeout: float = 5.0) -> Dict[str, np.ndarray]:
    """Sends a ``PredictRequest`` to ``PredictionService/Predict``; returns the outputs as numpy arrays.

    Raises:
      grpc.RpcError: if the server fails the call (unknown model or signature, bad input, timeout).
    """
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def send_rest(
    server: str, model_name: str, body: Mapping[str, Any], version: Optional[int] = None, timeout: float = 5.0
) -> Dict[str, Any]:
    """POSTs a :func:`rest_body` to the model's ``:predict`` URL; returns the decoded JSON reply.

    Raises:
      urllib.error.HTTPError: if the server answers with an error (its JSON ``"error"`` is in the body).
    """
    data = json.dumps(body).encode("utf-8")
    call = urllib.request.Request(
        rest_url(server, model_name, version), data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(call, timeout=timeout) as reply:
        return json.loads(reply.read().decode("utf-8"))

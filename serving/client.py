"""A small TF Serving client for tfrec-towers exports: checked gRPC ``PredictRequest`` and REST JSON per signature.

Standalone (numpy, TensorFlow's protos, ``tensorflow-serving-api``; ``grpcio`` for gRPC): copy it
next to your service. Every signature of an export takes raw feature columns, one row per example.
A request is checked against the inputs of the signature it is for, as the SavedModel declares
them (read from the export, or asked of the server), before anything is sent::

    from serving.client import read_signatures, predict_request, send_grpc, rest_body, send_rest

    signatures = read_signatures("exports/movies/1")      # or fetch_signatures_grpc / fetch_signatures_rest
    features = {"user_id": [42], "gender": ["M"], "age": [25], "occupation": ["12"],
                "zip_code": ["55414"], "history": [[1193, 661, 914]]}
    request = predict_request("movies", "serving_default", features, signatures)
    outputs = send_grpc(request, "localhost:8500")        # {"candidate_ids": [1, k], "scores": [1, k]}
    body = rest_body("serving_default", features, signatures)
    reply = send_rest("http://localhost:8501", "movies", body)

Each feature is sent in its input's dtype: Python or numpy integers (and whole floats such as
``25.0``) for integer inputs, numbers for floating-point inputs, ``str`` (sent as UTF-8) or
``bytes`` for string inputs; nested lists for ``[B, L]`` inputs. Anything else — a missing or unknown
feature, text for a number, a fraction for an integer, a wrong rank, ragged rows, batch sizes that
differ — raises :class:`RequestError` naming the feature, what its input expects and what was
received. Values the model does not know (new ids, new strings) are valid: the model maps them to
out-of-vocabulary buckets.
"""

from __future__ import annotations

import base64
import json
import math
import numbers
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, predict_pb2

GRPC_PORT, REST_PORT = 8500, 8501
SERVE_TAG = "serve"
"""The meta graph tag TF Serving loads."""
INIT_OP_SIGNATURE = "__saved_model_init_op"
"""TensorFlow's internal initialisation entry of a SavedModel's signature map; not a signature a client calls."""

Signatures = Mapping[str, Mapping[str, tf.TensorSpec]]
"""``{signature_name: {feature: tf.TensorSpec}}``: the inputs of each signature of a model."""


class RequestError(ValueError):
    """A request does not match the inputs of its signature; raised before anything is sent."""


def _signatures_from_defs(signature_defs: Mapping[str, Any]) -> Dict[str, Dict[str, tf.TensorSpec]]:
    """The inputs of each ``SignatureDef`` of a map, as ``tf.TensorSpec`` named after their feature."""
    return {
        name: {
            feature: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype), name=feature)
            for feature, info in sorted(signature.inputs.items())
        }
        for name, signature in sorted(signature_defs.items())
        if name != INIT_OP_SIGNATURE
    }


def read_signatures(export_path: Union[str, Path]) -> Dict[str, Dict[str, tf.TensorSpec]]:
    """The signatures of an export, read from its ``saved_model.pb`` (nothing is loaded or run).

    Args:
      export_path: a version directory ``<export_base>/<model_name>/<version>``.

    Returns:
      ``{signature_name: {feature: tf.TensorSpec}}`` of the meta graph TF Serving loads.

    Raises:
      FileNotFoundError: if ``export_path`` holds no ``saved_model.pb``.
      ValueError: if the SavedModel has no meta graph tagged ``serve``.
    """
    path = Path(export_path) / "saved_model.pb"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: `export_path` must be a version directory "
            "<export_base>/<model_name>/<version> holding saved_model.pb."
        )
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return _signatures_from_defs(meta_graph.signature_def)
    raise ValueError(f"{path} has no meta graph tagged {SERVE_TAG!r}, the one TF Serving loads.")


def _model_spec(model_name: str, version: Optional[int], signature_name: str = "") -> model_pb2.ModelSpec:
    """The ``ModelSpec`` of a model, a version (``None``: the server's choice) and a signature."""
    spec = model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
    if version is not None:
        spec.version.value = int(version)
    return spec


def _call_grpc(target: str, method: str, request: Any, timeout: float) -> Any:
    """Calls ``PredictionService/<method>`` on ``target``; returns the response proto."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        return getattr(prediction_service_pb2_grpc.PredictionServiceStub(channel), method)(request, timeout=timeout)


def fetch_signatures_grpc(
    target: str, model_name: str, version: Optional[int] = None, timeout: float = 5.0
) -> Dict[str, Dict[str, tf.TensorSpec]]:
    """The signatures of a served model, from ``PredictionService/GetModelMetadata``.

    Args:
      target: the server's gRPC address, e.g. ``localhost:8500``.
      model_name: the model name TF Serving serves the export under.
      version: the version to describe; ``None`` for the one the server serves by default (the latest).
      timeout: seconds before the call fails.

    Returns:
      ``{signature_name: {feature: tf.TensorSpec}}``.

    Raises:
      grpc.RpcError: if the server fails the call (unknown model or version, timeout).
    """
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=_model_spec(model_name, version), metadata_field=["signature_def"]
    )
    response = _call_grpc(target, "GetModelMetadata", request, timeout)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    return _signatures_from_defs(signature_defs.signature_def)


def _model_url(server: str, model_name: str, version: Optional[int]) -> str:
    """``{server}/v1/models/{model_name}[/versions/{version}]``."""
    versioned = f"/versions/{int(version)}" if version is not None else ""
    return f"{server.rstrip('/')}/v1/models/{model_name}{versioned}"


def _read_json(call: Union[str, urllib.request.Request], timeout: float) -> Dict[str, Any]:
    """Opens a URL or request; returns the decoded JSON reply."""
    with urllib.request.urlopen(call, timeout=timeout) as reply:
        return json.loads(reply.read().decode("utf-8"))


def fetch_signatures_rest(
    server: str, model_name: str, version: Optional[int] = None, timeout: float = 5.0
) -> Dict[str, Dict[str, tf.TensorSpec]]:
    """The signatures of a served model, from the REST ``GET .../metadata`` of the model.

    Args:
      server: e.g. ``http://localhost:8501``.
      model_name: the model name TF Serving serves the export under.
      version: the version to describe; ``None`` for the latest.
      timeout: seconds before the call fails.

    Returns:
      ``{signature_name: {feature: tf.TensorSpec}}``.

    Raises:
      urllib.error.HTTPError: if the server answers with an error (unknown model or version).
    """
    metadata = _read_json(_model_url(server, model_name, version) + "/metadata", timeout)
    signature_defs = json_format.ParseDict(
        metadata["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap(), ignore_unknown_fields=True
    )
    return _signatures_from_defs(signature_defs.signature_def)


def _describe(spec: tf.TensorSpec) -> str:
    """E.g. ``int64 [B, None] (rank 2)``: the dtype, the shape (``B`` the batch dimension) and the rank."""
    if spec.shape.rank is None:
        return f"{spec.dtype.name} of any shape"
    dims = ["B" if i == 0 and d is None else str(d) for i, d in enumerate(spec.shape.as_list())]
    return f"{spec.dtype.name} [{', '.join(dims)}] (rank {spec.shape.rank})"


def _example(array: np.ndarray, where: Optional[np.ndarray] = None) -> str:
    """The first value of ``array`` (where ``where`` holds), e.g. ``'25' (str) at [0]``."""
    position = tuple(int(i) for i in np.argwhere(np.ones(array.shape, bool) if where is None else where)[0])
    value = array[position]
    value = value.item() if isinstance(value, np.generic) else value
    return f"{value!r} ({type(value).__name__}) at [{', '.join(map(str, position))}]"


def _is_number(value: Any) -> bool:
    """A real number, not a bool (``True`` is an ``int`` in Python, but never a valid id or count)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_whole_number(value: Any) -> bool:
    """An integer, or a finite float without a fraction (``25.0``)."""
    if isinstance(value, numbers.Integral):
        return _is_number(value)
    return _is_number(value) and math.isfinite(value) and float(value).is_integer()


def _as_array(values: Any) -> np.ndarray:
    """``values`` as numpy: numbers with numpy's dtype; anything else as an object array of the values as given."""
    try:
        array = np.asarray(values)
    except ValueError:  # rows of different lengths, or bytes that are not text beside text
        return np.array(values, dtype=object)
    # numpy turns numbers beside text into text, and integers beyond int64 beside others into floats:
    # keep such values as they were given.
    as_given = array.dtype.kind in "US" or (array.dtype.kind == "f" and not isinstance(values, np.ndarray))
    return np.array(values, dtype=object) if as_given else array


def _as_integers(array: np.ndarray, dtype: np.dtype, mismatch: Callable[[str], RequestError]) -> np.ndarray:
    """Whole numbers within the range of ``dtype`` as ``dtype``; anything else raises ``mismatch``."""
    if array.dtype == object:
        whole = np.array([_is_whole_number(v) for v in array.flat], bool).reshape(array.shape)
        if not whole.all():
            raise mismatch(f"a value that is not a whole number, {_example(array, ~whole)}")
        array = np.array([int(v) for v in array.flat], dtype=object).reshape(array.shape)
    elif array.dtype.kind == "f":
        whole = np.isfinite(array) & (np.floor(array) == array)
        if not whole.all():
            raise mismatch(f"{array.dtype} values that are not whole numbers, e.g. {_example(array, ~whole)}")
    elif array.dtype.kind not in "iu":
        raise mismatch(f"{array.dtype} values, e.g. {_example(array)}")
    info = np.iinfo(dtype)
    outside = (array < info.min) | (array >= info.max + 1)
    if outside.any():
        bounds = f"[{info.min}, {info.max}]"
        raise mismatch(f"values outside the {info.dtype} range {bounds}, e.g. {_example(array, outside)}")
    return array.astype(dtype)


def _as_floats(array: np.ndarray, dtype: np.dtype, mismatch: Callable[[str], RequestError]) -> np.ndarray:
    """Numbers within the range of ``dtype`` as ``dtype``; anything else raises ``mismatch``."""
    if array.dtype == object:
        number = np.array([_is_number(v) for v in array.flat], bool).reshape(array.shape)
        if not number.all():
            raise mismatch(f"a value that is not a number, {_example(array, ~number)}")
        array = np.array(array.tolist(), np.float64)
    elif array.dtype.kind not in "iuf":
        raise mismatch(f"{array.dtype} values, e.g. {_example(array)}")
    with np.errstate(over="ignore"):
        converted = array.astype(dtype)
    overflow = np.isfinite(array) & ~np.isfinite(converted)
    if overflow.any():
        raise mismatch(f"values beyond the {np.dtype(dtype).name} range, e.g. {_example(array, overflow)}")
    return converted


def _as_strings(array: np.ndarray, mismatch: Callable[[str], RequestError]) -> np.ndarray:
    """``str`` (encoded as UTF-8) and ``bytes`` as a ``bytes`` object array; anything else raises ``mismatch``."""
    if array.dtype != object:
        raise mismatch(f"{array.dtype} values, e.g. {_example(array)} (send text as str or bytes)")
    text = np.array([isinstance(v, (str, bytes)) for v in array.flat], bool).reshape(array.shape)
    if not text.all():
        raise mismatch(f"a value that is not text, {_example(array, ~text)}")
    try:
        encoded = [v.encode("utf-8") if isinstance(v, str) else v for v in array.flat]
    except UnicodeEncodeError as e:
        raise mismatch(f"text that cannot be encoded as UTF-8 ({e})") from None
    return np.array(encoded, dtype=object).reshape(array.shape)


def _column(signature_name: str, name: str, spec: tf.TensorSpec, values: Any) -> np.ndarray:
    """One feature checked against its input and converted to the input's dtype."""

    def mismatch(received: str) -> RequestError:
        expected = f"Feature {name!r} of signature {signature_name!r} must be {_describe(spec)}"
        return RequestError(f"{expected}; received {received}.")

    array = _as_array(values)
    if array.dtype == object and any(isinstance(v, (list, tuple, np.ndarray)) for v in array.flat):
        raise mismatch("rows of different lengths: a request is a rectangular batch, pad every row to one length")
    if not spec.shape.is_compatible_with(array.shape):
        one_rank_short = spec.shape.rank == array.ndim + 1
        hint = "; a single example is a batch of one: wrap its value in a list" if one_rank_short else ""
        raise mismatch(f"shape {list(array.shape)} (rank {array.ndim}){hint}")
    if array.ndim and array.shape[0] == 0:
        raise mismatch(f"an empty batch (shape {list(array.shape)}): a request holds at least one row")
    if spec.dtype == tf.string:
        return _as_strings(array, mismatch)
    if spec.dtype.is_integer:
        return _as_integers(array, spec.dtype.as_numpy_dtype, mismatch)
    if spec.dtype.is_floating:
        return _as_floats(array, spec.dtype.as_numpy_dtype, mismatch)
    raise RequestError(
        f"Input {name!r} of signature {signature_name!r} is {spec.dtype.name}: this client sends integer, "
        "floating-point and string inputs only."
    )


def feature_columns(signature_name: str, features: Mapping[str, Any], signatures: Signatures) -> Dict[str, np.ndarray]:
    """Checks a request against its signature's inputs and converts each feature to its input's dtype.

    Args:
      signature_name: a signature of ``signatures``.
      features: ``{feature: values [batch, ...]}`` (lists or numpy arrays), one per input of the signature.
      signatures: ``{signature_name: {feature: tf.TensorSpec}}``, e.g. from :func:`read_signatures`.

    Returns:
      ``{feature: numpy array}`` in the order of ``features``: integers and floats in their input's
      dtype, text as UTF-8 ``bytes`` objects.

    Raises:
      RequestError: on an unknown signature; a missing or unknown feature; a value of the wrong type
        (text for a number, a fraction or an out-of-range value for an integer, a number for text);
        a wrong rank or dimension; ragged rows; an empty batch; or features with different batch sizes.
    """
    if signature_name not in signatures:
        raise RequestError(f"`signature_name` must be one of {list(signatures)}. Received: {signature_name!r}")
    inputs = signatures[signature_name]
    missing = [name for name in inputs if name not in features]
    unknown = [name for name in features if name not in inputs]
    if missing or unknown:
        problems = [f"missing feature {n!r}: {_describe(inputs[n])}" for n in missing]
        problems += [f"unknown feature {n!r}" for n in unknown]
        expected = ", ".join(f"{n}: {_describe(spec)}" for n, spec in inputs.items())
        raise RequestError(
            f"A request to signature {signature_name!r} must hold exactly its inputs: {'; '.join(problems)}. "
            f"Its inputs: {expected}. Received features: {list(features)}"
        )
    columns = {name: _column(signature_name, name, inputs[name], values) for name, values in features.items()}
    rows = {name: len(values) for name, values in columns.items() if values.ndim}
    if len(set(rows.values())) > 1:
        first, expected_rows = next(iter(rows.items()))
        other = next(name for name, num_rows in rows.items() if num_rows != expected_rows)
        raise RequestError(
            f"Feature {other!r} has a batch size of {rows[other]} where {expected_rows} is expected "
            f"(that of {first!r}): every feature of a request to {signature_name!r} has the same batch size B. "
            f"Received batch sizes: {rows}"
        )
    return columns


def predict_request(
    model_name: str,
    signature_name: str,
    features: Mapping[str, Any],
    signatures: Signatures,
    version: Optional[int] = None,
) -> predict_pb2.PredictRequest:
    """The gRPC ``PredictRequest`` of one batch, checked against its signature.

    Args:
      model_name: the model name TF Serving serves the export under.
      signature_name: a signature of ``signatures``.
      features: ``{feature: values [batch, ...]}``.
      signatures: ``{signature_name: {feature: tf.TensorSpec}}``, e.g. from :func:`read_signatures`.
      version: a version to pin; ``None`` lets the server choose (the latest).

    Returns:
      The request; each feature a ``TensorProto`` of its input's dtype.

    Raises:
      RequestError: see :func:`feature_columns`.
    """
    request = predict_pb2.PredictRequest(model_spec=_model_spec(model_name, version, signature_name))
    for name, values in feature_columns(signature_name, features, signatures).items():
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


def rest_body(
    signature_name: str, features: Mapping[str, Any], signatures: Signatures, columnar: bool = False
) -> Dict[str, Any]:
    """The JSON body of a REST ``:predict`` call, checked against its signature.

    Args:
      signature_name: a signature of ``signatures``.
      features: ``{feature: values [batch, ...]}``.
      signatures: ``{signature_name: {feature: tf.TensorSpec}}``, e.g. from :func:`read_signatures`.
      columnar: ``False`` for the row format (``"instances"``: one object per example; the reply is
        ``{"predictions": [...]}``), ``True`` for the columnar format (``"inputs"``: one list per
        feature; the reply is ``{"outputs": {...}}``).

    Returns:
      ``{"signature_name": ..., "instances": [...]}`` or ``{"signature_name": ..., "inputs": {...}}``.

    Raises:
      RequestError: see :func:`feature_columns`.
    """
    columns = {
        name: _json_column(values) for name, values in feature_columns(signature_name, features, signatures).items()
    }
    if columnar:
        return {"signature_name": signature_name, "inputs": columns}
    num_rows = len(next(iter(columns.values())))
    instances = [{name: values[row] for name, values in columns.items()} for row in range(num_rows)]
    return {"signature_name": signature_name, "instances": instances}


def rest_url(server: str, model_name: str, version: Optional[int] = None) -> str:
    """``{server}/v1/models/{model_name}[/versions/{version}]:predict``, e.g. server ``http://localhost:8501``."""
    return f"{_model_url(server, model_name, version)}:predict"


def send_grpc(
    request: predict_pb2.PredictRequest, target: str = f"localhost:{GRPC_PORT}", timeout: float = 5.0
) -> Dict[str, np.ndarray]:
    """Sends a ``PredictRequest`` to ``PredictionService/Predict``; returns the outputs as numpy arrays.

    Raises:
      grpc.RpcError: if the server fails the call (unknown model or signature, bad input, timeout).
    """
    response = _call_grpc(target, "Predict", request, timeout)
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
    return _read_json(call, timeout)

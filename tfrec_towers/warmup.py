"""TF Serving warm-up requests: ``assets.extra/tf_serving_warmup_requests`` in a SavedModel version.

TF Serving replays these ``PredictionLog`` records (a TFRecord file) when it loads a version, before
marking it available, so the first real request does not pay for graph initialisation, table
loading or the ScaNN searcher's construction. One ``PredictRequest`` per signature, each a small
batch of real rows (https://www.tensorflow.org/tfx/serving/saved_model_warmup).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Union

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_FILENAME = "tf_serving_warmup_requests"
"""The file name TF Serving looks for under ``<version>/assets.extra/``."""


def write_warmup_requests(
    path: Union[str, Path],
    model_name: str,
    signature_inputs: Mapping[str, Mapping[str, np.ndarray]],
) -> Path:
    """Writes one ``PredictRequest`` per signature as ``PredictionLog`` records.

    Args:
      path: the file to write (normally ``<version>/assets.extra/tf_serving_warmup_requests``).
      model_name: the model name TF Serving serves the export under.
      signature_inputs: ``{signature_name: {input_name: array [batch, ...]}}``; arrays keep their
        dtype (``int64``, strings, ``float32``) in the request's ``TensorProto``.

    Returns:
      ``path`` as a ``Path``.

    Raises:
      ValueError: if ``signature_inputs`` is empty or a signature has no inputs.
    """
    if not signature_inputs:
        raise ValueError("`signature_inputs` must name at least one signature.")
    for signature_name, inputs in signature_inputs.items():
        if not inputs:
            raise ValueError(f"`signature_inputs[{signature_name!r}]` has no inputs.")
    path = Path(path)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature_name, inputs in signature_inputs.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
            )
            for input_name, values in inputs.items():
                request.inputs[input_name].CopyFrom(tf.make_tensor_proto(np.asarray(values)))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path: Union[str, Path]) -> List[predict_pb2.PredictRequest]:
    """Reads back the ``PredictRequest`` of every ``PredictionLog`` record in a warm-up file.

    Args:
      path: a file written by :func:`write_warmup_requests` (or by any TF Serving tool).

    Returns:
      The requests in file order.

    Raises:
      ValueError: if a record is not a ``predict_log``.
    """
    requests: List[predict_pb2.PredictRequest] = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: record {len(requests)} is a {log.WhichOneof('log_type')!r}, not a predict_log.")
        requests.append(log.predict_log.request)
    return requests

"""Checks one tfrec-towers export in a fresh process: ``python verify_worker.py EXPORT_PATH REPORT_JSON``.

Run by :func:`tfrec_towers.verify.verify_export` by file path. It imports only TensorFlow, NumPy and
the standard library (plus ``scann`` when the export's index is ScaNN) and never ``tfrec_towers``,
so it sees the export exactly as a serving process would. It loads the SavedModel, checks the
three signatures against ``assets.extra/tfrec_towers_metadata.json``, replays the rows of
``assets.extra/verification_sample.json`` and compares with the in-memory model's recorded outputs,
measures ``serving_default``'s recall@k against the exact top-k recorded at export, its single-query
latency and its batched throughput, sends unknown ids and strings to every signature, and replays
the TF Serving warm-up requests.

The report is JSON: ``{"ok": bool, "export_path": str, "checks": [{"name", "ok", "detail"}],
"metrics": {...}}`` with the metrics of :func:`measure_serving` and ``recall_at_k``.

:func:`measure_batched_qps` and :func:`measure_latency_ms` are the package's one implementation of
these timings (``tfrec_towers.tuning`` and the benchmarks import them from here).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# Running by path puts this directory (the package's) first on sys.path: drop it, so that no
# module of the package can be imported, even by accident.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import tensor_pb2  # noqa: E402

# File names and signature contract (docs/contracts.md); they mirror tfrec_towers.export and tfrec_towers.warmup
# (tests/test_verify.py checks that they agree).
METADATA_FILENAME = "tfrec_towers_metadata.json"
VERIFICATION_SAMPLE_FILENAME = "verification_sample.json"
WARMUP_FILENAME = "tf_serving_warmup_requests"
SIGNATURE_INPUTS = {
    "serving_default": "query_input_spec",
    "query_embedding": "query_input_spec",
    "candidate_embedding": "candidate_input_spec",
}
EMBEDDING_ATOL = 1e-5
EMBEDDING_RTOL = 1e-5
SCORE_ATOL = 1e-4
SCORE_RTOL = 1e-4
RECALL_SLACK = 0.05
"""An export passes if its recall on the sample is within RECALL_SLACK of the in-memory index's."""
NUM_LATENCY_REQUESTS = 200
"""Single-row ``serving_default`` requests timed for the p50/p99 latency (after one untimed request)."""
QPS_BATCH_SIZE = 256
QPS_MIN_PASSES = 3
QPS_MIN_SECONDS = 1.0
"""Batched throughput: passes over the sample in batches of ``QPS_BATCH_SIZE`` rows, at least
``QPS_MIN_PASSES`` and until ``QPS_MIN_SECONDS`` have elapsed; the fastest pass counts."""
UNKNOWN_INT = 2**62 + 12345
UNKNOWN_STRING = "tfrec-towers-unknown-value"


class Report:
    """Collects named checks; ``check(name)`` records an exception inside it as a failure."""

    def __init__(self, export_path):
        self.export_path = export_path
        self.checks = []
        self.metrics = {}

    def add(self, name, ok, detail=""):
        self.checks.append({"name": name, "ok": bool(ok), "detail": str(detail)})
        return bool(ok)

    @contextlib.contextmanager
    def check(self, name):
        """Yields a dict; set ``result["ok"]``/``result["detail"]``. An exception fails the check."""
        result = {"ok": True, "detail": ""}
        try:
            yield result
        except Exception as e:  # the report must say what failed, whatever it was
            result = {"ok": False, "detail": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"}
        self.add(name, result["ok"], result["detail"])

    def as_dict(self):
        return {
            "ok": bool(self.checks) and all(c["ok"] for c in self.checks),
            "export_path": self.export_path,
            "checks": self.checks,
            "metrics": self.metrics,
        }


def to_tensor(values, dtype):
    """A JSON column (nested lists; text for strings) as a tensor of ``dtype``."""
    if dtype == tf.string:
        encode = np.vectorize(lambda v: v.encode("utf-8", "surrogateescape"), otypes=[object])
        return tf.constant(encode(np.array(values, dtype=object)), dtype=tf.string)
    return tf.constant(values, dtype=dtype)


def to_numpy(tensor):
    """A tensor as numpy; strings as text, as the sample records them."""
    values = tensor.numpy()
    if values.dtype == object:
        return np.vectorize(lambda v: v.decode("utf-8", "surrogateescape"), otypes=[object])(values)
    return values


def spec_dtypes(specs):
    return {name: tf.as_dtype(spec["dtype"]) for name, spec in specs.items()}


def to_features(columns, specs):
    dtypes = spec_dtypes(specs)
    return {name: to_tensor(columns[name], dtypes[name]) for name in specs}


def unknown_features(specs, num_rows=2):
    """Rows where every value is outside any vocabulary (inner dimensions of unknown size are 3)."""
    features = {}
    for name, spec in specs.items():
        shape = [num_rows] + [3 if dim is None else dim for dim in spec["shape"][1:]]
        dtype = tf.as_dtype(spec["dtype"])
        if dtype == tf.string:
            features[name] = tf.fill(shape, UNKNOWN_STRING)
        elif dtype.is_integer:
            features[name] = tf.fill(shape, tf.constant(min(UNKNOWN_INT, dtype.max), dtype))
        else:
            features[name] = tf.fill(shape, tf.constant(1e6, dtype))
    return features


def measure_batched_qps(run, batches, min_passes=QPS_MIN_PASSES, min_seconds=QPS_MIN_SECONDS):
    """Rows per second of ``run`` over ``batches``, from the fastest full pass.

    Args:
      run: called as ``run(batch)``; must return when the work is done (eager TensorFlow, numpy).
      batches: ``[(batch, num_rows)]``; one untimed call on the first batch warms up.
      min_passes: timed passes over all batches, at least.
      min_seconds: keep making passes until this much time has been spent.

    Returns:
      ``sum(num_rows) / fastest pass seconds``.
    """
    run(batches[0][0])
    rows = sum(num_rows for _, num_rows in batches)
    passes, spent = [], 0.0
    while len(passes) < min_passes or spent < min_seconds:
        start = time.perf_counter()
        for batch, _ in batches:
            run(batch)
        passes.append(time.perf_counter() - start)
        spent += passes[-1]
    return rows / max(min(passes), 1e-9)


def measure_latency_ms(run, requests, num_requests=NUM_LATENCY_REQUESTS):
    """p50 and p99 milliseconds of ``run(request)``, cycling through ``requests``.

    Args:
      run: called as ``run(request)``; one untimed call on the first request warms up.
      requests: the requests to cycle through (e.g. single rows).
      num_requests: timed calls.

    Returns:
      ``{"p50": ms, "p99": ms, "num_requests": num_requests}``.
    """
    run(requests[0])
    seconds = []
    for i in range(num_requests):
        start = time.perf_counter()
        run(requests[i % len(requests)])
        seconds.append(time.perf_counter() - start)
    p50, p99 = np.percentile(np.array(seconds) * 1000.0, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "num_requests": num_requests}


def take(features, rows):
    """Rows ``rows`` (a numpy index) of every feature tensor."""
    return {name: tf.gather(values, rows) for name, values in features.items()}


def measure_serving(report, signature, features, num_rows):
    """Single-row latency and batched throughput of ``serving_default`` on the sample rows."""
    with report.check("serving_default latency and throughput measured") as result:
        run = lambda request: signature(**request)  # noqa: E731
        singles = [take(features, [row]) for row in range(num_rows)]
        latency = measure_latency_ms(run, singles)
        batch = take(features, np.arange(QPS_BATCH_SIZE) % num_rows)
        qps = measure_batched_qps(run, [(batch, QPS_BATCH_SIZE)])
        report.metrics.update(latency_ms=latency, batched_qps=qps, qps_batch_size=QPS_BATCH_SIZE)
        result.update(
            ok=latency["p50"] > 0 and qps > 0,
            detail=f"single-row p50 {latency['p50']:.3f} ms, p99 {latency['p99']:.3f} ms; "
            f"{qps:,.0f} queries/s in batches of {QPS_BATCH_SIZE}",
        )


def check_signature_contract(report, signature_name, signature, metadata):
    """Input names/dtypes/ranks as exported; outputs named and typed as docs/contracts.md says."""
    with report.check(f"signature inputs: {signature_name}") as result:
        expected = metadata[SIGNATURE_INPUTS[signature_name]]
        actual = signature.structured_input_signature[1]
        problems = []
        if sorted(actual) != sorted(expected):
            problems.append(f"inputs {sorted(actual)} != expected {sorted(expected)}")
        for name in sorted(set(actual) & set(expected)):
            dtype, shape = actual[name].dtype.name, actual[name].shape.as_list()
            if dtype != expected[name]["dtype"] or shape != expected[name]["shape"]:
                problems.append(f"{name}: {dtype}{shape} != {expected[name]['dtype']}{expected[name]['shape']}")
        result.update(ok=not problems, detail="; ".join(problems) or f"{sorted(actual)}")
    with report.check(f"signature outputs: {signature_name}") as result:
        if signature_name == "serving_default":
            expected = {
                "candidate_ids": (metadata["candidate_id_dtype"], metadata["k"]),
                "scores": ("float32", metadata["k"]),
            }
        else:
            expected = {"embedding": ("float32", metadata["embedding_dim"])}
        actual = signature.structured_outputs
        problems = []
        if sorted(actual) != sorted(expected):
            problems.append(f"outputs {sorted(actual)} != expected {sorted(expected)}")
        for name in sorted(set(actual) & set(expected)):
            dtype, width = expected[name]
            shape = actual[name].shape.as_list()
            wrong_shape = len(shape) != 2 or shape[0] is not None or shape[1] not in (None, width)
            if actual[name].dtype.name != dtype or wrong_shape:
                problems.append(f"{name}: {actual[name].dtype.name}{shape} != {dtype}[None, {width}]")
        result.update(ok=not problems, detail="; ".join(problems) or f"{sorted(actual)}")


def check_embeddings(report, name, signature, features, recorded):
    with report.check(f"{name} reproduces the in-memory model") as result:
        embedding = signature(**features)["embedding"].numpy()
        recorded = np.asarray(recorded, dtype=np.float32)
        if embedding.shape != recorded.shape:
            result.update(ok=False, detail=f"shape {embedding.shape} != recorded {recorded.shape}")
            return
        error = float(np.max(np.abs(embedding - recorded))) if embedding.size else 0.0
        ok = np.allclose(embedding, recorded, atol=EMBEDDING_ATOL, rtol=EMBEDDING_RTOL)
        result.update(ok=ok, detail=f"max |difference| = {error:.3g} over {embedding.shape[0]} rows")


def check_retrieval(report, signature, features, sample, metadata):
    """Shapes, recall against the recorded exact top-k, the recorded ids (brute force), descending
    scores, scores = q · c on sample candidates."""
    k = metadata["k"]
    outputs = signature(**features)
    ids = to_numpy(outputs["candidate_ids"])
    scores = outputs["scores"].numpy()
    num_queries = len(sample["query_embeddings"])
    report.add(
        "serving_default output shapes",
        ids.shape == (num_queries, k) and scores.shape == (num_queries, k),
        f"candidate_ids {ids.shape}, scores {scores.shape}, expected ({num_queries}, {k})",
    )
    if ids.shape != (num_queries, k) or scores.shape != (num_queries, k):
        return
    recorded_ids = np.array(sample["top_k"]["candidate_ids"], dtype=ids.dtype)
    exact = sample["exact_top_k_candidate_ids"]
    hits = sum(len(set(row.tolist()) & set(truth)) for row, truth in zip(ids, exact))
    recall = hits / (num_queries * k)
    floor = sample["index_recall"] - RECALL_SLACK
    report.metrics.update(k=k, recall_at_k=recall, num_recall_queries=num_queries)
    report.add(
        "serving_default recall against exact top-k",
        recall >= floor,
        f"recall@{k} = {recall:.3f} over {num_queries} queries; in-memory index {sample['index_recall']:.3f}; "
        f"required >= {floor:.3f}",
    )
    if metadata["index"]["kind"] == "brute-force":
        recorded_scores = np.array(sample["top_k"]["scores"], np.float32)
        same_ids = same_ids_up_to_ties(ids, recorded_ids, recorded_scores)
        report.add(
            "serving_default reproduces the in-memory top-k",
            same_ids and np.allclose(scores, recorded_scores, atol=SCORE_ATOL, rtol=SCORE_RTOL),
            f"ids equal up to ties: {same_ids}; max |score difference| = "
            f"{float(np.max(np.abs(scores - recorded_scores))):.3g}",
        )
    report.add(
        "serving_default scores sorted best first",
        bool(np.all(np.diff(scores, axis=1) <= 0)),
        f"{int(np.sum(np.diff(scores, axis=1) > 0))} increasing steps",
    )
    candidate_ids = sample["candidates"][metadata["candidate_id"]]
    position = {candidate_id: row for row, candidate_id in enumerate(candidate_ids)}
    query_embeddings = np.asarray(sample["query_embeddings"], np.float32)
    candidate_embeddings = np.asarray(sample["candidate_embeddings"], np.float32)
    retrieved = ids.tolist()
    pairs = [(q, c) for q in range(num_queries) for c in range(k) if retrieved[q][c] in position]
    expected = np.array([query_embeddings[q] @ candidate_embeddings[position[retrieved[q][c]]] for q, c in pairs])
    actual = np.array([scores[q, c] for q, c in pairs])
    report.add(
        "serving_default scores are query · candidate dot products",
        bool(pairs) and np.allclose(actual, expected, atol=SCORE_ATOL, rtol=SCORE_RTOL),
        f"{len(pairs)} retrieved candidates found in the sample; "
        f"max |difference| = {float(np.max(np.abs(actual - expected))) if pairs else float('nan'):.3g}",
    )


def same_ids_up_to_ties(ids, recorded_ids, recorded_scores):
    """Whether each row's ids equal the recorded ones, in any order within a run of tied scores.

    A run is a maximal block of consecutive positions whose recorded scores differ by at most the
    score tolerance; the last run of a row may also hold other ids (candidates tied with it beyond k).
    """
    for served, recorded, scores in zip(ids.tolist(), recorded_ids.tolist(), recorded_scores.tolist()):
        start = 0
        for end in range(1, len(scores) + 1):
            if end < len(scores) and abs(scores[end] - scores[end - 1]) <= SCORE_ATOL + SCORE_RTOL * abs(scores[end]):
                continue
            if end < len(scores) and set(served[start:end]) != set(recorded[start:end]):
                return False
            start = end
    return True


def check_unknown_values(report, signatures, metadata):
    for name, signature in signatures.items():
        with report.check(f"unknown ids and strings: {name}") as result:
            specs = metadata[SIGNATURE_INPUTS[name]]
            outputs = signature(**unknown_features(specs))
            if name == "serving_default":
                shape = tuple(outputs["candidate_ids"].shape)
                ok = shape == (2, metadata["k"])
            else:
                shape = tuple(outputs["embedding"].shape)
                ok = shape == (2, metadata["embedding_dim"]) and bool(np.all(np.isfinite(outputs["embedding"].numpy())))
            result.update(ok=ok, detail=f"output shape {shape}")


def protobuf_fields(buffer):
    """``[(field number, value)]`` of a serialised protobuf message (wire format, no schema needed)."""
    fields, i = [], 0

    def varint(i):
        value, shift = 0, 0
        while True:
            byte = buffer[i]
            value |= (byte & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if byte < 0x80:
                return value, i

    while i < len(buffer):
        key, i = varint(i)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = varint(i)
        elif wire_type == 1:
            value, i = buffer[i : i + 8], i + 8
        elif wire_type == 2:
            length, i = varint(i)
            value, i = buffer[i : i + length], i + length
        elif wire_type == 5:
            value, i = buffer[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        fields.append((field, value))
    return fields


def parse_warmup_record(record):
    """``(model name, signature name, {input: tensor})`` of a ``PredictionLog`` holding a ``PredictLog``.

    Field numbers from tensorflow_serving/apis: PredictionLog.predict_log = 6, PredictLog.request = 1,
    PredictRequest.model_spec = 1 / inputs = 2 (map entries: key = 1, value = 2 TensorProto),
    ModelSpec.name = 1 / signature_name = 3.
    """
    predict_logs = [value for field, value in protobuf_fields(record) if field == 6]
    if len(predict_logs) != 1:
        raise ValueError("record is not a PredictionLog with a predict_log")
    request = next(value for field, value in protobuf_fields(predict_logs[0]) if field == 1)
    model_name, signature_name, inputs = "", "serving_default", {}
    for field, value in protobuf_fields(request):
        if field == 1:
            spec = dict(protobuf_fields(value))
            model_name = spec.get(1, b"").decode()
            signature_name = spec.get(3, b"serving_default").decode()
        elif field == 2:
            entry = dict(protobuf_fields(value))
            inputs[entry[1].decode()] = tf.constant(tf.make_ndarray(tensor_pb2.TensorProto.FromString(entry[2])))
    return model_name, signature_name, inputs


def check_warmup(report, export_path, signatures, metadata):
    path = os.path.join(export_path, "assets.extra", WARMUP_FILENAME)
    with report.check("warm-up requests parse and run") as result:
        seen = []
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            model_name, signature_name, inputs = parse_warmup_record(record)
            if model_name != metadata["model_name"] or signature_name not in signatures:
                raise ValueError(f"request for model {model_name!r}, signature {signature_name!r}")
            signatures[signature_name](**inputs)
            seen.append(signature_name)
        ok = sorted(seen) == sorted(signatures)
        result.update(ok=ok, detail=f"{len(seen)} requests: {seen}")


def verify(export_path):
    """Runs every check on ``export_path``; returns the report dict."""
    report = Report(export_path)
    extra = os.path.join(export_path, "assets.extra")
    with report.check("metadata and verification sample parse") as result:
        with open(os.path.join(extra, METADATA_FILENAME)) as f:
            metadata = json.load(f)
        with open(os.path.join(extra, VERIFICATION_SAMPLE_FILENAME)) as f:
            sample = json.load(f)
        result["detail"] = f"index {metadata['index']['kind']}, k={metadata['k']}, d={metadata['embedding_dim']}"
    if not report.checks[-1]["ok"]:
        return report.as_dict()
    if metadata["index"]["kind"] == "scann":
        with report.check("scann ops load") as result:
            import scann  # noqa: F401  (registers the ScaNN TensorFlow ops the index needs)
    with report.check("SavedModel loads") as result:
        loaded = tf.saved_model.load(export_path)
    if not all(c["ok"] for c in report.checks):
        return report.as_dict()

    expected = sorted(metadata["signatures"])
    report.add("signatures present", sorted(loaded.signatures) == expected, f"{sorted(loaded.signatures)}")
    signatures = {name: loaded.signatures[name] for name in expected if name in loaded.signatures}
    for name, signature in signatures.items():
        check_signature_contract(report, name, signature, metadata)
    queries = to_features(sample["queries"], metadata["query_input_spec"])
    candidates = to_features(sample["candidates"], metadata["candidate_input_spec"])
    if "query_embedding" in signatures:
        check_embeddings(report, "query_embedding", signatures["query_embedding"], queries, sample["query_embeddings"])
    if "candidate_embedding" in signatures:
        check_embeddings(
            report, "candidate_embedding", signatures["candidate_embedding"], candidates, sample["candidate_embeddings"]
        )
    if "serving_default" in signatures:
        with report.check("serving_default runs on the sample") as result:
            check_retrieval(report, signatures["serving_default"], queries, sample, metadata)
        measure_serving(report, signatures["serving_default"], queries, len(sample["query_embeddings"]))
    check_unknown_values(report, signatures, metadata)
    check_warmup(report, export_path, signatures, metadata)
    report.add(
        "worker imported no tfrec_towers module",
        not any(m.split(".")[0] == "tfrec_towers" for m in sys.modules),
        "",
    )
    return report.as_dict()


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} EXPORT_PATH REPORT_JSON", file=sys.stderr)
        return 2
    report = verify(argv[1])
    with open(argv[2], "w") as f:
        json.dump(report, f, indent=2)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""ScaNN serving: raw ScaNN vs the exported ScaNN SavedModel (fresh process) vs the brute-force export.

    python benchmarks/scann_serving.py [--num-candidates 1000000] [--dim 64] [--seed 0]

On a seeded synthetic corpus of ``num_candidates × dim`` clustered embeddings (and queries drawn
around the same centres), measures three ways of serving the top 10 by dot product:

* **raw ScaNN**: ``scann.scann_ops_pybind`` built in this process with the parameters the export
  derived (:meth:`tfrec_towers.index.IndexConfig.resolve`, read back from the export's metadata);
* **exported ScaNN**: :func:`tfrec_towers.export.export_retrieval_model` with ``kind="scann"``, the
  SavedModel loaded in a fresh process that imports only TensorFlow and ScaNN, called through its
  ``serving_default`` signature (identity towers: the query feature is the query embedding);
* **brute-force export**: the same export with ``kind="brute-force"``, in a fresh process importing
  only TensorFlow.

For each: recall@10 against the exact top 10 (numpy, :func:`tfrec_towers.index.exact_top_k`),
batched queries/s (batches of the same size for all, the fastest pass of
:func:`tfrec_towers.verify_worker.measure_batched_qps`), single-query p50/p99 latency and the
seconds to build the index (and write the export).

Other jobs share this machine, so raw and exported ScaNN are measured in ``--rounds`` interleaved
rounds (a new fresh process each round) and each reports its best round (highest QPS, lowest p50
with its p99); every round is in the JSON. Brute force is measured once, its throughput on the first
``--brute-force-queries`` queries (its recall on all of them). Writes
``benchmarks/results/scann_serving.{json,md}`` with the load average before, during and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.common import write_results  # noqa: E402
from tfrec_towers.export import METADATA_FILENAME, export_retrieval_model  # noqa: E402
from tfrec_towers.index import IndexConfig, exact_top_k, recall_at_k  # noqa: E402
from tfrec_towers.verify import WORKER_PATH  # noqa: E402
from tfrec_towers.verify_worker import measure_batched_qps, measure_latency_ms  # noqa: E402

K = 10
TARGETS = {"recall_at_10": 0.95, "qps_ratio_to_raw_scann": 0.8, "p50_ms": 2.0, "build_and_export_seconds": 90.0}

# Runs in a fresh interpreter: TensorFlow (+ ScaNN for a ScaNN export) and the timing helpers of
# verify_worker.py, loaded by file path (that file imports only TensorFlow and NumPy).
SERVE_SCRIPT = """
    import importlib.util, json, sys, time
    import numpy as np
    import tensorflow as tf

    export_path, queries_path, found_path, worker_path, kind, batch_size, num_requests, qps_queries = sys.argv[1:9]
    if kind == "scann":
        import scann  # noqa: F401  (registers the ScaNN ops)
    spec = importlib.util.spec_from_file_location("verify_worker", worker_path)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)

    start = time.perf_counter()
    signature = tf.saved_model.load(export_path).signatures["serving_default"]
    load_seconds = time.perf_counter() - start
    queries = np.load(queries_path)
    batch_size = int(batch_size)
    run = lambda batch: signature(query_vector=batch)["candidate_ids"]
    batches = [(tf.constant(queries[i : i + batch_size]), len(queries[i : i + batch_size]))
               for i in range(0, len(queries), batch_size)]
    np.save(found_path, np.concatenate([run(batch).numpy() for batch, _ in batches]))
    qps = worker.measure_batched_qps(run, batches[: -(-int(qps_queries) // batch_size)])
    singles = [tf.constant(queries[i : i + 1]) for i in range(len(queries))]
    latency = worker.measure_latency_ms(run, singles, int(num_requests))
    modules = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("tfrec_towers", "tfrec_pipelines", "keras", "tf_keras")})
    print(json.dumps({"load_seconds": load_seconds, "batched_qps": qps, "latency_ms": latency, "other_modules": modules}))
"""


class Passthrough(tf.keras.Model):
    """A tower whose embedding is one raw float feature, so the export serves exactly the benchmark's vectors."""

    def __init__(self, feature: str) -> None:
        super().__init__()
        self.feature = feature

    def call(self, features):
        return tf.identity(features[self.feature])


def clustered_corpus(num_candidates: int, dim: int, num_queries: int, seed: int):
    """``num_clusters = √N`` centres; candidates and queries are centres plus Gaussian noise.

    Returns:
      ``(candidates float32 [N, dim], queries float32 [num_queries, dim], ids int64 [N])``.
    """
    rng = np.random.default_rng(seed)
    num_clusters = max(1, int(np.sqrt(num_candidates)))
    centres = rng.normal(size=(num_clusters, dim)).astype(np.float32)
    candidates = centres[rng.integers(0, num_clusters, num_candidates)]
    candidates += 0.5 * rng.normal(size=(num_candidates, dim)).astype(np.float32)
    queries = centres[rng.integers(0, num_clusters, num_queries)]
    queries += 0.5 * rng.normal(size=(num_queries, dim)).astype(np.float32)
    ids = np.arange(num_candidates, dtype=np.int64) + 1_000_000
    return candidates, queries, ids


def export(kind: str, candidates: np.ndarray, queries: np.ndarray, ids: np.ndarray, base: Path) -> tuple[Path, float]:
    """One export with identity towers; returns (version path, build + export seconds)."""
    dim = candidates.shape[1]
    start = time.perf_counter()
    path = export_retrieval_model(
        Passthrough("query_vector"),
        Passthrough("vector"),
        {"query_vector": tf.TensorSpec([None, dim], tf.float32)},
        {"item_id": tf.TensorSpec([None], tf.int64), "vector": tf.TensorSpec([None, dim], tf.float32)},
        {"item_id": ids, "vector": candidates},
        "item_id",
        base,
        f"synthetic_{kind.replace('-', '_')}",
        IndexConfig(kind=kind, k=K),
        warmup_queries={"query_vector": queries},
    )
    return path, time.perf_counter() - start


def serve_in_fresh_process(
    path: Path, kind: str, queries_file: Path, batch_size: int, num_requests: int, qps_queries: int
) -> dict:
    """Runs :data:`SERVE_SCRIPT` on an export; returns its measurements and the ids it found."""
    found_file = queries_file.with_name(f"found_{kind}.npy")
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    args = [path, queries_file, found_file, WORKER_PATH, kind, batch_size, num_requests, qps_queries]
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SERVE_SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=3600,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the fresh serving process failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["found"] = np.load(found_file)
    return result


def build_raw_scann(candidates: np.ndarray, config: dict):
    """``(scann_ops_pybind searcher, build seconds)`` with the export's parameters."""
    from scann.scann_ops.py import scann_ops_pybind

    start = time.perf_counter()
    searcher = (
        scann_ops_pybind.builder(candidates, config["k"], "dot_product")
        .tree(config["num_leaves"], config["num_leaves_to_search"], training_iterations=config["training_iterations"])
        .score_ah(
            config["dimensions_per_block"],
            anisotropic_quantization_threshold=config["anisotropic_quantization_threshold"],
        )
        .reorder(min(len(candidates), config["reordering_multiplier"] * config["k"]))
        .build()
    )
    return searcher, time.perf_counter() - start


def measure_raw_scann(searcher, queries: np.ndarray, ids: np.ndarray, batch_size: int, num_requests: int) -> dict:
    """Recall ids, batched QPS and single-query latency of the pybind searcher, as the fresh process measures an export."""
    run = lambda batch: searcher.search_batched_parallel(batch, batch_size=batch_size)  # noqa: E731
    batches = [
        (queries[i : i + batch_size], len(queries[i : i + batch_size])) for i in range(0, len(queries), batch_size)
    ]
    found = ids[np.concatenate([run(batch)[0] for batch, _ in batches])]
    qps = measure_batched_qps(run, batches)
    latency = measure_latency_ms(lambda q: searcher.search(q), list(queries), num_requests)
    return {"batched_qps": qps, "latency_ms": latency, "found": found}


def best_round(rounds: list) -> dict:
    """The best of interleaved rounds: highest QPS, lowest p50 (with its p99); recall ids of the first round."""
    fastest = min(rounds, key=lambda r: r["latency_ms"]["p50"])
    return {**rounds[0], "batched_qps": max(r["batched_qps"] for r in rounds), "latency_ms": fastest["latency_ms"]}


def markdown(rows: dict, load: dict, args: argparse.Namespace) -> str:
    raw_qps = rows["raw ScaNN (scann_ops_pybind)"]["batched_qps"]
    lines = [
        f"{args.num_candidates:,} × {args.dim} clustered corpus, {args.num_queries} queries, recall@{K} against "
        f"exact search, batches of {args.batch_size}; raw and exported ScaNN: best of {args.rounds} interleaved "
        f"rounds of {args.num_requests} single-query requests; brute force: one round, "
        f"{args.brute_force_queries} queries, {args.brute_force_requests} requests. Load average (1 min) before "
        f"{load['before'][0]:.2f}, during {max(avg[0] for avg in load['during']):.2f} at most, after {load['after'][0]:.2f}.",
        "",
        "| system | recall@10 | batched queries/s | × raw ScaNN | single-query p50 ms | p99 ms | build (+ export) s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['recall_at_10']:.4f} | {row['batched_qps']:,.0f} | {row['batched_qps'] / raw_qps:.2f} | "
            f"{row['latency_ms']['p50']:.3f} | {row['latency_ms']['p99']:.3f} | {row['build_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-candidates", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--num-queries", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-requests", type=int, default=500, help="timed single-query requests per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved measurement rounds of raw and exported ScaNN"
    )
    parser.add_argument(
        "--brute-force-queries", type=int, default=512, help="queries in brute force's throughput passes"
    )
    parser.add_argument(
        "--brute-force-requests", type=int, default=100, help="brute force's timed single-query requests"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    load = {"before": os.getloadavg()}

    candidates, queries, ids = clustered_corpus(args.num_candidates, args.dim, args.num_queries, args.seed)
    start = time.perf_counter()
    exact_ids = ids[exact_top_k(queries, candidates, K)[1]]
    print(f"exact top-{K} of {args.num_queries} queries: {time.perf_counter() - start:.1f} s", flush=True)

    rows, parameters, rounds = {}, {}, {"raw": [], "exported": []}
    with tempfile.TemporaryDirectory(prefix="scann_serving_") as workdir:
        workdir = Path(workdir)
        queries_file = workdir / "queries.npy"
        np.save(queries_file, queries)
        exports = {}
        for kind in ("scann", "brute-force"):
            path, seconds = export(kind, candidates, queries, ids, workdir / "exports")
            metadata = json.loads((path / "assets.extra" / METADATA_FILENAME).read_text())
            parameters[kind] = metadata["index"]
            exports[kind] = (path, seconds)
            print(f"{kind} export: {seconds:.1f} s, {metadata['index']}", flush=True)

        searcher, raw_build_seconds = build_raw_scann(candidates, parameters["scann"])
        load["during"] = []
        for number in range(args.rounds):
            rounds["raw"].append(measure_raw_scann(searcher, queries, ids, args.batch_size, args.num_requests))
            rounds["exported"].append(
                serve_in_fresh_process(
                    exports["scann"][0], "scann", queries_file, args.batch_size, args.num_requests, len(queries)
                )
            )
            load["during"].append(os.getloadavg())
            print(
                f"round {number}: raw {rounds['raw'][-1]['batched_qps']:,.0f} queries/s, "
                f"exported {rounds['exported'][-1]['batched_qps']:,.0f} queries/s",
                flush=True,
            )
        rows["raw ScaNN (scann_ops_pybind)"] = dict(best_round(rounds["raw"]), build_seconds=raw_build_seconds)
        rows["exported ScaNN SavedModel (fresh process)"] = dict(
            best_round(rounds["exported"]), build_seconds=exports["scann"][1]
        )
        rows["brute-force SavedModel (fresh process)"] = dict(
            serve_in_fresh_process(
                exports["brute-force"][0],
                "brute-force",
                queries_file,
                args.batch_size,
                args.brute_force_requests,
                args.brute_force_queries,
            ),
            build_seconds=exports["brute-force"][1],
        )
    for measured_rounds in rounds.values():
        for measured_round in measured_rounds:
            measured_round.pop("found", None)
    for row in rows.values():
        row["recall_at_10"] = recall_at_k(row.pop("found"), exact_ids)
    load["after"] = os.getloadavg()

    exported = rows["exported ScaNN SavedModel (fresh process)"]
    raw_row = rows["raw ScaNN (scann_ops_pybind)"]
    measured = {
        "recall_at_10": exported["recall_at_10"],
        "qps_ratio_to_raw_scann": exported["batched_qps"] / raw_row["batched_qps"],
        "p50_ms": exported["latency_ms"]["p50"],
        "build_and_export_seconds": exported["build_seconds"],
    }
    met = {
        name: measured[name] <= target if name in ("p50_ms", "build_and_export_seconds") else measured[name] >= target
        for name, target in TARGETS.items()
    }
    command = " ".join(["python", "benchmarks/scann_serving.py", *sys.argv[1:]])
    table = (
        f"`{command}`\n\n"
        + markdown(rows, load, args)
        + "\nTargets (exported ScaNN): "
        + ", ".join(
            f"{name} {measured[name]:.3f} vs {target} {'met' if met[name] else 'MISSED'}"
            for name, target in TARGETS.items()
        )
        + "\n"
    )
    payload = {
        "command": command,
        "arguments": vars(args),
        "index_parameters": parameters,
        "rows": rows,
        "rounds": rounds,
        "targets": TARGETS,
        "measured": measured,
        "targets_met": met,
        "load_average": load,
        "cpu_count": os.cpu_count(),
    }
    write_results(Path(args.output_dir), "scann_serving", payload, table)
    print(table)


if __name__ == "__main__":
    main()

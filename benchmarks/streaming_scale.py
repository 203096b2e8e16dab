"""Streaming beyond memory: throughput and peak memory of the streamed input path per log size.

For each size N, synthetic Parquet shards are written to a temporary directory (not timed), one
row group at a time so that generation never holds the whole log: N interactions with string
ids (``"u123456"``, ``"i98765"``), an integer ``timestamp``, an ``event``, a ``quantity`` weight
and a ``history`` list column of 0 to ``--history`` string item ids (most recent last; a row's
history is the items of the rows just before it in the shard: a window of the item column, cheap
to derive). Only the number of rows grows: the catalogue is the same at every size (``--users``
users drawn uniformly, ``--items`` items with Zipf popularity), and so is the number of shards
the stream reads at once (1M rows a shard, at least 8 shards).

A fresh subprocess per size then runs, stage by stage, what a user with a large log runs
(``tfrec_pipelines.streaming``):

    python benchmarks/streaming_scale.py --rows 1000000 20000000 50000000

*statistics* (``stream_statistics``: vocabularies with counts and the row count, one pass),
*spec* (``adapted_spec``) and *input pipeline* (``stream_examples`` iterated once: filter-free,
shuffled with the default buffer, batches of ``--batch-size`` with ``(features, weights)``). A
stage's peak is the process's resident high-water mark (``VmHWM``) reset at its start. Rows/s
is rows read per wall second of the stage.

Writes ``benchmarks/results/streaming_scale.{json,md}`` after every size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.common import write_results  # noqa: E402
from benchmarks.data_scale import EVENT_SHARES, EVENTS, START_TIMESTAMP, YEAR_SECONDS, StageClock, zipf_shares  # noqa: E402

STAGES = ("import", "statistics", "spec", "input pipeline")
ROW_GROUP = 250_000
MIB = 1024 * 1024


def generate_shards(
    directory: Path, rows: int, rows_per_shard: int, users: int, items: int, history: int, seed: int
) -> Dict[str, int]:
    """Writes ``part-*.parquet`` under ``directory``, one row group of at most :data:`ROW_GROUP` rows at a time:
    ``⌈rows / rows_per_shard⌉`` shards of equal size, and at least ``MAX_INTERLEAVED_SHARDS`` (so that the
    stream reads as many shards at once at every size).

    Returns:
      ``interactions``, ``shards`` and ``history_items`` (the ids in all history lists).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tfrec_pipelines.streaming import MAX_INTERLEAVED_SHARDS

    rng = np.random.default_rng(seed)
    user_names = pa.array([f"u{k}" for k in range(users)], pa.string())
    item_names = pa.array([f"i{k}" for k in range(items)], pa.string())
    item_of_rank = rng.permutation(items)
    popularity = zipf_shares(items)
    shards = max(-(-rows // rows_per_shard), MAX_INTERLEAVED_SHARDS)
    history_items = 0
    for shard, size in enumerate(np.diff(np.linspace(0, rows, shards + 1).astype(np.int64)).tolist()):
        with pq.ParquetWriter(directory / f"part-{shard:05d}.parquet", _schema(pa)) as writer:
            for begin in range(0, size, ROW_GROUP):
                count = min(ROW_GROUP, size - begin)
                item_rows = item_of_rank[rng.choice(items, size=count, p=popularity)]
                lengths = np.minimum(rng.integers(0, history + 1, size=count), np.arange(count))
                ends = np.arange(count)
                starts = ends - lengths
                within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
                window = np.repeat(starts, lengths) + within  # the rows just before each row
                history_items += len(window)
                writer.write_table(
                    pa.table(
                        {
                            "user_id": pc.take(user_names, pa.array(rng.integers(0, users, size=count))),
                            "item_id": pc.take(item_names, pa.array(item_rows)),
                            "timestamp": pa.array(
                                START_TIMESTAMP + rng.integers(0, YEAR_SECONDS, size=count), pa.int64()
                            ),
                            "event": pc.take(
                                pa.array(EVENTS, pa.string()),
                                pa.array(rng.choice(len(EVENTS), size=count, p=EVENT_SHARES)),
                            ),
                            "quantity": pa.array(rng.geometric(0.6, size=count), pa.int64()),
                            "history": pa.ListArray.from_arrays(
                                pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32)),
                                pc.take(item_names, pa.array(item_rows[window])),
                            ),
                        },
                        schema=_schema(pa),
                    )
                )
    return {"interactions": rows, "shards": shards, "history_items": history_items}


def _schema(pa):
    return pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("timestamp", pa.int64()),
            ("event", pa.string()),
            ("quantity", pa.int64()),
            ("history", pa.list_(pa.string())),
        ]
    )


def stream_in_this_process(directory: Path, history: int, batch_size: int, progress: Path) -> dict:
    """Statistics, spec and one pass of the input pipeline over the shards in ``directory``."""
    clock = StageClock(progress)
    clock.begin("import")
    import tensorflow  # noqa: F401

    import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
    from tfrec_pipelines.declarations import Declarations
    from tfrec_pipelines.streaming import adapted_spec, stream_examples, stream_statistics
    from tfrec_towers.data_config import FeatureDeclaration

    declarations = Declarations(
        query=(FeatureDeclaration("user_id", kind="id"), FeatureDeclaration("history", kind="history")),
        candidate=(FeatureDeclaration("item_id", kind="id"),),
    )
    columns = declarations.query + declarations.candidate
    clock.begin("statistics")
    statistics = stream_statistics(directory, columns=columns, max_history=history)
    clock.begin("spec")
    spec = adapted_spec(declarations, statistics)
    clock.begin("input pipeline")
    batches = examples = 0
    for _features, weights in stream_examples(
        directory, columns=columns, weight_column="quantity", max_history=history, batch_size=batch_size
    ):
        batches += 1
        examples += int(weights.shape[0])
    clock.begin(None)
    return {
        "stages": clock.stages,
        "peak_rss_mib": max(s["peak_rss_mib"] for s in clock.stages.values()),
        "rows": statistics.rows,
        "examples": examples,
        "batches": batches,
        "vocabulary_sizes": {f.name: len(f.vocabulary) for f in spec.all_features},
    }


def _worker(argv: List[str], result: Path, timeout: float) -> dict:
    """Runs this script's ``argv`` in a fresh interpreter: its result, or why it failed."""
    started = time.perf_counter()
    progress = result.with_name(result.stem + ".progress.json")
    try:
        returncode = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *argv, "--result", str(result)], timeout=timeout
        ).returncode
    except subprocess.TimeoutExpired:
        returncode, reason = None, f"ran past {timeout / 60:g} minutes (killed)"
    if returncode == 0:
        return {"status": "ok", **json.loads(result.read_text())}
    if returncode is not None:
        reason = f"killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
    partial = json.loads(progress.read_text()) if progress.is_file() else {}
    return {"status": "failed", "reason": reason, "seconds": time.perf_counter() - started, **partial}


def run_size(rows: int, args: argparse.Namespace) -> dict:
    """Generates the shards of ``rows`` interactions, then streams them, each in a fresh process."""
    timeout = args.timeout_minutes * 60
    with tempfile.TemporaryDirectory(prefix=f"streaming_scale-{rows}-") as scratch:
        directory = Path(scratch) / "interactions"
        directory.mkdir()
        print(f"[{rows:,}] generating shards in {directory}", flush=True)
        generated = _worker(
            [
                "--generate",
                str(directory),
                "--rows",
                str(rows),
                "--rows-per-shard",
                str(args.rows_per_shard),
                "--users",
                str(args.users),
                "--items",
                str(args.items),
                "--history",
                str(args.history),
                "--seed",
                str(args.seed),
            ],
            Path(scratch) / "generated.json",
            timeout,
        )
        if generated.pop("status") != "ok":
            raise RuntimeError(f"generating {rows} interactions failed: {generated['reason']}")
        on_disk = sum(p.stat().st_size for p in directory.iterdir()) / MIB
        print(f"[{rows:,}] generated {generated} ({on_disk:.0f} MiB); streaming", flush=True)
        load_before = os.getloadavg()
        measured = _worker(
            ["--stream", str(directory), "--history", str(args.history), "--batch-size", str(args.batch_size)],
            Path(scratch) / "streamed.json",
            timeout,
        )
        load_after = os.getloadavg()
    return {
        "rows": rows,
        "generated": generated,
        "parquet_mib": on_disk,
        "load_average_before": load_before,
        "load_average_after": load_after,
        **measured,
    }


def _stage_cell(result: dict, stage: str, rate: bool) -> str:
    """``seconds (rows/s, peak GiB)`` of a stage, or ``seconds (peak GiB)``."""
    seconds, peak = result["stages"][stage]["seconds"], result["stages"][stage]["peak_rss_mib"] / 1024
    return f"{seconds:.1f} ({result['rows'] / seconds:,.0f}, {peak:.2f})" if rate else f"{seconds:.1f} ({peak:.2f})"


def markdown(results: List[dict], command: str, args: argparse.Namespace) -> str:
    """One row per size: shards, each stage's seconds, rows/s and peak GiB, and the run's peak."""
    header = [
        "interactions",
        "shards",
        "Parquet MiB",
        "statistics s (rows/s, peak GiB)",
        "spec s (peak GiB)",
        "input pipeline s (rows/s, peak GiB)",
        "peak RSS GiB",
        "load avg (1 min) before → after",
    ]
    lines = [f"`{command}`", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        load = f"{result['load_average_before'][0]:.2f} → {result['load_average_after'][0]:.2f}"
        head = [f"{result['rows']:,}", f"{result['generated']['shards']}", f"{result['parquet_mib']:,.0f}"]
        if result["status"] != "ok":
            where = f" in {result['running_stage']}" if result.get("running_stage") else ""
            lines.append("| " + " | ".join([*head, f"failed{where}: {result['reason']}", "—", "—", "—", load]) + " |")
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    *head,
                    _stage_cell(result, "statistics", True),
                    _stage_cell(result, "spec", False),
                    _stage_cell(result, "input pipeline", True),
                    f"{result['peak_rss_mib'] / 1024:.2f}",
                    load,
                ]
            )
            + " |"
        )
    lines += [
        "",
        f"String ids; {args.users:,} users and {args.items:,} items at every size (Zipf item popularity), "
        f"{args.rows_per_shard:,} rows a shard and at least 8 shards (the stream reads 8 at once); "
        f"histories of 0–{args.history} string ids (max_history {args.history}); batches of {args.batch_size} "
        "with weights, shuffle buffer 50,000 rows. Stage times are wall seconds; a stage's peak is the "
        "process's resident high-water mark during it (the import of the package and TensorFlow is not a stage "
        "of the table).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[1_000_000, 20_000_000, 50_000_000], help="interactions per size"
    )
    parser.add_argument("--rows-per-shard", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--history", type=int, default=20, help="longest history list, and max_history")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-minutes", type=float, default=60.0)
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--stream", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--result", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate:
        counts = generate_shards(
            Path(args.generate), args.rows[0], args.rows_per_shard, args.users, args.items, args.history, args.seed
        )
        Path(args.result).write_text(json.dumps(counts))
        return
    if args.stream:
        result = Path(args.result)
        measured = stream_in_this_process(
            Path(args.stream), args.history, args.batch_size, result.with_name(result.stem + ".progress.json")
        )
        result.write_text(json.dumps(measured))
        return

    command = " ".join(["python", "benchmarks/streaming_scale.py", *sys.argv[1:]])
    results: List[dict] = []
    for rows in args.rows:
        result = run_size(rows, args)
        results.append(result)
        print(f"[{rows:,}] {json.dumps(result)}", flush=True)
        table = markdown(results, command, args)
        write_results(
            Path(args.output_dir),
            "streaming_scale",
            {"command": command, "cpu_count": os.cpu_count(), "results": results},
            table,
        )
    print(table)


if __name__ == "__main__":
    main()

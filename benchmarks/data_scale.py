"""Data preparation at scale: wall time and peak memory of the in-memory data path per log size.

For each size N a synthetic Parquet log is generated in a temporary directory (not timed): N
interactions in a few shards with string ids (``"u123456"``, ``"i98765"``), an integer
``timestamp``, an ``event`` and a ``quantity`` weight; ~N/20 users (each interaction's user
drawn uniformly) and ~N/100 items (at most 1M) with power-law (Zipf, exponent 1) popularity;
an items table (``item_id``, a multi-valued ``tags`` list column, ``price``) and a users table
(``user_id``, ``country``). A fresh subprocess per size then runs the path of
``tfrec-towers train --interactions ... --items ... --users ...``:
``tfrec_pipelines.sources.prepare_data`` with ``data.dataset: interactions``,
``PreparedData.adapted_spec()`` and the input pipeline ``fit_model`` trains on, timing each
stage and its peak resident memory:

    python benchmarks/data_scale.py --rows 1000000 5000000 20000000

Stages: *import* (the package and TensorFlow), *read tables* (the three tables into pandas),
*split* (validation and the leave-last-out split), *features* (inferred declarations, the
feature spec, the renamed columns: the rest of ``prepare_data``), *adapt* (vocabularies and
statistics) and *training input* (``fit_model``'s ``tf.data`` pipeline of the default
configuration, ``tfrec_pipelines.checkpointing.training_batches`` of ``tfrec_pipelines.train.training_columns``,
and its first batch taken: training can start).

A stage's peak is the process's resident high-water mark (``VmHWM``) reset at the
stage's start (``/proc/self/clear_refs``); the run's peak is the highest of them. A size that is
killed (out of memory) or runs past ``--timeout-minutes`` is recorded as failed. The machine's
load average is recorded before and after each size.

Writes ``benchmarks/results/data_scale.{json,md}`` after every size.
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
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.common import write_results  # noqa: E402
from tfrec_towers.atomic_file import write_text_atomically  # noqa: E402  (the package alone, not TensorFlow)

STAGES = ("import", "read tables", "split", "features", "adapt", "training input")
PREPARATION = STAGES[1:-1]  # what *prepare s* sums: the data path before training
EVENTS = ("view", "click", "add_to_cart", "purchase")
EVENT_SHARES = (0.80, 0.12, 0.05, 0.03)
NUM_TAGS = 500
NUM_COUNTRIES = 60
MAX_ITEMS = 1_000_000
START_TIMESTAMP = 1_700_000_000  # seconds; the log spans one year after it
YEAR_SECONDS = 365 * 24 * 3600
MIB = 1024 * 1024


def zipf_shares(count: int, exponent: float = 1.0) -> np.ndarray:
    """``float64 [count]``: p(rank r) ∝ 1 / (r + 1)^exponent, summing to 1."""
    weights = 1.0 / np.arange(1, count + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def generate_tables(directory: Path, rows: int, shards: int, seed: int) -> Dict[str, int]:
    """Writes ``interactions/part-*.parquet``, ``items.parquet`` and ``users.parquet`` under ``directory``.

    Args:
      directory: an empty directory.
      rows: the number of interactions.
      shards: the number of interaction shards.
      seed: the generator's seed.

    Returns:
      The row counts: ``interactions``, ``users``, ``items`` and ``interacted_items``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    num_users = max(rows // 20, 2)
    num_items = min(max(rows // 100, 2), MAX_ITEMS)
    user_names = pa.array([f"u{k}" for k in range(num_users)], pa.string())
    item_names = pa.array([f"i{k}" for k in range(num_items)], pa.string())
    popularity_rank = rng.permutation(num_items)  # item k is the popularity_rank[k]-th most popular
    item_of_rank = np.argsort(popularity_rank)
    items = item_of_rank[rng.choice(num_items, size=rows, p=zipf_shares(num_items))]
    users = rng.integers(0, num_users, size=rows)

    (directory / "interactions").mkdir()
    bounds = np.linspace(0, rows, shards + 1).astype(np.int64)
    for shard, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        size = int(end - begin)
        table = pa.table(
            {
                "user_id": pc.take(user_names, pa.array(users[begin:end])),
                "item_id": pc.take(item_names, pa.array(items[begin:end])),
                "timestamp": pa.array(START_TIMESTAMP + rng.integers(0, YEAR_SECONDS, size=size), pa.int64()),
                "event": pc.take(
                    pa.array(EVENTS, pa.string()), pa.array(rng.choice(len(EVENTS), size=size, p=EVENT_SHARES))
                ),
                "quantity": pa.array(rng.geometric(0.6, size=size), pa.int64()),
            }
        )
        pq.write_table(table, directory / "interactions" / f"part-{shard:05d}.parquet")
        del table

    tag_names = np.array([f"tag{k}" for k in range(NUM_TAGS)], dtype=object)
    tag_counts = rng.integers(1, 5, size=num_items)
    tags = tag_names[rng.choice(NUM_TAGS, size=int(tag_counts.sum()), p=zipf_shares(NUM_TAGS))]
    offsets = np.r_[0, np.cumsum(tag_counts)].astype(np.int32)
    pq.write_table(
        pa.table(
            {
                "item_id": item_names,
                "tags": pa.ListArray.from_arrays(pa.array(offsets), pa.array(tags, pa.string())),
                "price": pa.array(np.round(rng.lognormal(3.0, 1.0, size=num_items), 2), pa.float64()),
            }
        ),
        directory / "items.parquet",
    )
    countries = np.array([f"C{k:02d}" for k in range(NUM_COUNTRIES)], dtype=object)
    pq.write_table(
        pa.table(
            {
                "user_id": user_names,
                "country": pa.array(
                    countries[rng.choice(NUM_COUNTRIES, size=num_users, p=zipf_shares(NUM_COUNTRIES))], pa.string()
                ),
            }
        ),
        directory / "users.parquet",
    )
    return {
        "interactions": rows,
        "users": num_users,
        "items": num_items,
        "interacted_items": int(len(np.unique(items))),
    }


def _resident_peak_mib(reset: bool) -> Optional[float]:
    """The process's resident high-water mark (``VmHWM``) in MiB, reset afterwards when ``reset``."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    peak = next(float(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    return peak


class StageClock:
    """Wall time, CPU time and resident peak of consecutive stages (each ends when the next begins).

    Args:
      progress: a JSON file rewritten at each stage's start with the stages done and the one
        running, so that a run killed part-way still tells where it was; None: not written.
    """

    def __init__(self, progress: Optional[Path] = None) -> None:
        self.stages: Dict[str, dict] = {}
        self.progress = progress
        self._current: Optional[str] = None
        self._wall = self._cpu = 0.0

    def begin(self, name: Optional[str]) -> None:
        """Ends the current stage (if any) and begins ``name`` (None: just end)."""
        wall, cpu = time.perf_counter(), time.process_time()
        if self._current is not None:
            self.stages[self._current] = {
                "seconds": wall - self._wall,
                "cpu_seconds": cpu - self._cpu,
                "peak_rss_mib": _resident_peak_mib(reset=name is not None),
            }
        elif name is not None:
            _resident_peak_mib(reset=True)
        if self.progress is not None:
            write_text_atomically(self.progress, json.dumps({"completed_stages": self.stages, "running_stage": name}))
        self._current, self._wall, self._cpu = name, time.perf_counter(), time.process_time()


def prepare_in_this_process(directory: Path, progress: Optional[Path] = None) -> dict:
    """Runs ``prepare_data`` and ``adapted_spec`` on the tables in ``directory``, then takes the first
    batch of the training input, stage by stage.

    The stages are told apart by wrapping the table source and the split that
    ``tfrec_pipelines.sources.prepare_data`` calls; the data path itself is unchanged.

    Args:
      directory: the tables of :func:`generate_tables`.
      progress: where to record the stages as they pass (see :class:`StageClock`), or None.

    Returns:
      The stages' times and peaks, the split's summary, the vocabulary sizes and the shape of
      each column of the first training batch.
    """
    clock = StageClock(progress)
    clock.begin("import")
    import tensorflow  # noqa: F401

    import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
    from tfrec_pipelines import sources
    from tfrec_pipelines.checkpointing import training_batches
    from tfrec_pipelines.train import training_columns
    from tfrec_towers.config import ExperimentConfig, apply_overrides

    config = apply_overrides(
        ExperimentConfig(),
        [
            "data.dataset=interactions",
            f"data.interactions.path={json.dumps(str(directory / 'interactions'))}",
            "data.interactions.weight_column=quantity",
            f"data.items.path={json.dumps(str(directory / 'items.parquet'))}",
            f"data.users.path={json.dumps(str(directory / 'users.parquet'))}",
        ],
    )
    read_tables, split = sources.SOURCES["interactions"], sources.interaction_data

    def timed_read(*args, **kwargs):
        clock.begin("read tables")
        return read_tables(*args, **kwargs)

    def timed_split(*args, **kwargs):
        clock.begin("split")
        data = split(*args, **kwargs)
        clock.begin("features")
        return data

    sources.SOURCES["interactions"], sources.interaction_data = timed_read, timed_split
    try:
        prepared = sources.prepare_data(config)
        clock.begin("adapt")
        spec = prepared.adapted_spec()
        clock.begin("training input")
        training = config.training
        columns = training_columns(prepared.data, spec, prepared.weight_column)
        batches = training_batches(columns, training.batch_size, seed=training.seed, epochs=training.epochs)
        first_batch = next(iter(batches))
        clock.begin(None)
    finally:
        sources.SOURCES["interactions"], sources.interaction_data = read_tables, split
    if set(clock.stages) != set(STAGES):
        raise RuntimeError(
            f"stages measured: {sorted(clock.stages)}, expected {list(STAGES)}: prepare_data no longer reads "
            "its tables through SOURCES and splits them through interaction_data; update the stage wrappers."
        )
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "stages": clock.stages,
        "peak_rss_mib": max(s["peak_rss_mib"] or usage.ru_maxrss / 1024 for s in clock.stages.values()),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "summary": {k: int(v) for k, v in prepared.data.summary.items()},
        "features": {
            side: [f"{d.name} ({d.kind})" for d in getattr(prepared.declarations, side)]
            for side in ("query", "candidate")
        },
        "vocabulary_sizes": {
            f.name: len(f.vocabulary) for f in spec.all_features if getattr(f, "vocabulary", None) is not None
        },
        "first_batch": {name: tensor.shape.as_list() for name, tensor in first_batch.items()},
    }


def _worker(argv: List[str], result: Path, timeout: float) -> dict:
    """Runs this script's ``argv`` in a fresh interpreter; its result file, or why it failed (with
    the stages it got through, when it recorded them)."""
    started = time.perf_counter()
    progress = _progress_file(result)
    try:
        process = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *argv, "--result", str(result)], timeout=timeout
        )
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        returncode, reason = None, f"ran past {timeout / 60:g} minutes (killed)"
    if returncode == 0:
        return {"status": "ok", **json.loads(result.read_text())}
    if returncode is not None:
        reason = (
            f"killed by signal {-returncode} (SIGKILL: most likely the out-of-memory killer)"
            if returncode == -9
            else f"killed by signal {-returncode}"
            if returncode < 0
            else f"exited with code {returncode}"
        )
    partial = json.loads(progress.read_text()) if progress.is_file() else {}
    return {"status": "failed", "reason": reason, "seconds": time.perf_counter() - started, **partial}


def _progress_file(result: Path) -> Path:
    return result.with_name(result.stem + ".progress.json")


def run_size(rows: int, shards: int, seed: int, timeout: float) -> dict:
    """Generates the tables of ``rows`` interactions, then measures their preparation, each in a fresh process."""
    with tempfile.TemporaryDirectory(prefix=f"data_scale-{rows}-") as scratch:
        directory = Path(scratch) / "tables"
        directory.mkdir()
        print(f"[{rows:,}] generating tables in {directory}", flush=True)
        started = time.perf_counter()
        generated = _worker(
            ["--generate", str(directory), "--rows", str(rows), "--shards", str(shards), "--seed", str(seed)],
            Path(scratch) / "generated.json",
            timeout,
        )
        if generated.pop("status") != "ok":
            raise RuntimeError(f"generating {rows} interactions failed: {generated['reason']}")
        on_disk = sum(p.stat().st_size for p in directory.rglob("*.parquet")) / MIB
        print(
            f"[{rows:,}] generated {generated} ({on_disk:.0f} MiB) in {time.perf_counter() - started:.0f} s; preparing",
            flush=True,
        )
        load_before = os.getloadavg()
        measured = _worker(["--prepare", str(directory)], Path(scratch) / "prepared.json", timeout)
        load_after = os.getloadavg()
    total = sum(s["seconds"] for k, s in measured.get("stages", {}).items() if k in PREPARATION)
    return {
        "rows": rows,
        "generated": generated,
        "parquet_mib": on_disk,
        "load_average_before": load_before,
        "load_average_after": load_after,
        **({"prepare_seconds": total} if measured["status"] == "ok" else {}),
        **measured,
    }


def markdown(results: List[dict], command: str) -> str:
    """One row per size: counts, each stage's seconds (and peak GiB), the total and the peak."""
    header = [
        "interactions",
        "users",
        "items",
        "train examples",
        *[f"{s} s (peak GiB)" for s in STAGES[1:]],
        "prepare s",
        "peak RSS GiB",
        "load avg (1 min) before → after",
    ]
    lines = [f"`{command}`", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        if result["status"] == "skipped":
            lines.append(
                "| "
                + " | ".join([f"{result['rows']:,}", f"skipped: {result['reason']}", *(["—"] * (len(header) - 2))])
                + " |"
            )
            continue
        counts = [f"{result['rows']:,}", f"{result['generated']['users']:,}", f"{result['generated']['items']:,}"]
        load = f"{result['load_average_before'][0]:.2f} → {result['load_average_after'][0]:.2f}"
        if result["status"] != "ok":
            where = f" in {result['running_stage']}" if result.get("running_stage") else ""
            failure = f"failed{where}: {result['reason']} after {result['seconds']:.0f} s"
            cells = [*counts, failure, *(["—"] * (len(header) - len(counts) - 2)), load]
        else:
            stages = result["stages"]
            cells = [
                *counts,
                f"{result['summary']['train_examples']:,}",
                *[f"{stages[s]['seconds']:.1f} ({stages[s]['peak_rss_mib'] / 1024:.2f})" for s in STAGES[1:]],
                f"{result['prepare_seconds']:.1f}",
                f"{result['peak_rss_mib'] / 1024:.2f}",
                load,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Stage times are wall seconds; a stage's peak is the process's resident high-water mark "
        "during it. *prepare s* sums the stages from *read tables* to *adapt* (not the import of the package "
        "and TensorFlow, nor the training input, which builds `fit_model`'s `tf.data` pipeline and takes its "
        "first batch).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[1_000_000, 5_000_000, 20_000_000],
        help="interactions per size, run in this order",
    )
    parser.add_argument("--shards", type=int, default=4, help="Parquet shards of the interaction log")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout-minutes", type=float, default=40.0, help="a size running longer is recorded as failed"
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run the larger sizes after a size failed (default: record them as skipped)",
    )
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--generate", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--result", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate:
        counts = generate_tables(Path(args.generate), args.rows[0], args.shards, args.seed)
        Path(args.result).write_text(json.dumps(counts))
        return
    if args.prepare:
        measured = prepare_in_this_process(Path(args.prepare), _progress_file(Path(args.result)))
        Path(args.result).write_text(json.dumps(measured))
        return

    command = " ".join(["python", "benchmarks/data_scale.py", *sys.argv[1:]])
    results: List[dict] = []
    for rows in args.rows:
        failed = next((r for r in results if r["status"] != "ok" and r["rows"] <= rows), None)
        if failed is not None and not args.keep_going:
            result = {"rows": rows, "status": "skipped", "reason": f"the {failed['rows']:,} run failed"}
        else:
            result = run_size(rows, args.shards, args.seed, args.timeout_minutes * 60)
        results.append(result)
        print(f"[{rows:,}] {json.dumps(result)}", flush=True)
        table = markdown(results, command)
        write_results(
            Path(args.output_dir),
            "data_scale",
            {"command": command, "cpu_count": os.cpu_count(), "results": results},
            table,
        )
    print(table)


if __name__ == "__main__":
    main()

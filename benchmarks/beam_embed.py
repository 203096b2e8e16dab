"""Embedding export throughput: the Beam job on DirectRunner vs the signature called directly in one process.

One command::

    .venv/bin/python benchmarks/beam_embed.py            # 1,000,000 rows, writes benchmarks/results/beam_embed.*

Both sides embed the same synthetic candidate Parquet file (``movie_id`` int64, ``genres`` string,
row groups of 131,072 rows) with the ``candidate_embedding`` signature of the same small export
(hashed id embedding + mean of genre embeddings, d = 32) and write ``id, embedding`` to Parquet:

* direct: ``pyarrow`` record batches of ``--batch-size`` rows → signature → ``ParquetWriter``, in one
  process, the model loaded beforehand (not timed);
* Beam: :func:`tfrec_pipelines.embed_job.run_embed_job` end to end (pipeline start-up, model load in
  ``DoFn.setup``, row validation, dead-letter and manifest included), DirectRunner with
  ``--direct_running_mode multi_threading --direct_num_workers 2`` (default): on 2 cores, two threads
  overlap reading/validation with the signature calls (TensorFlow releases the GIL) and share one
  loaded model; ``multi_processing`` would load the model per process and pickle every batch between
  processes, and ``in_memory`` runs the stages one bundle at a time (0.22× in a trial).

Each method runs ``--repeats`` times, alternating, with a Beam run over a 1-row file (the fixed
start-up cost: pipeline construction, bundle processors, model load, publishing); the medians are
reported with ``os.getloadavg()`` (other jobs share the 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

import tfrec_towers  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from benchmarks.common import write_results  # noqa: E402
from tfrec_pipelines.embed_job import EmbedJobConfig, run_embed_job  # noqa: E402
from tfrec_pipelines.embed_output import PARQUET_WRITER_OPTIONS, manifest_files  # noqa: E402
from tfrec_towers.export import export_retrieval_model  # noqa: E402
from tfrec_towers.index import IndexConfig  # noqa: E402

DIM = 32
ID_BINS = 100_000
GENRES = ("Action", "Adventure", "Animation", "Comedy", "Crime", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller")
ROW_GROUP_ROWS = 131_072


def candidate_tower() -> tf.keras.Model:
    """Hashed movie id embedding + mean of the "|"-joined genres' embeddings → ``[batch, DIM]``."""
    movie_id = tf.keras.Input(shape=(), dtype=tf.int64, name="movie_id")
    genres = tf.keras.Input(shape=(), dtype=tf.string, name="genres")
    movie = tf.keras.layers.Embedding(ID_BINS, DIM)(tf.keras.layers.Hashing(ID_BINS)(movie_id))
    genre_ids = tf.keras.layers.StringLookup(vocabulary=list(GENRES), mask_token="")(
        tf.strings.split(genres, "|").to_tensor(default_value="")
    )
    mask = tf.cast(genre_ids != 0, tf.float32)[..., tf.newaxis]
    genre_sum = tf.reduce_sum(tf.keras.layers.Embedding(len(GENRES) + 2, DIM)(genre_ids) * mask, axis=1)
    genre = tf.math.divide_no_nan(genre_sum, tf.reduce_sum(mask, axis=1))
    return tf.keras.Model({"movie_id": movie_id, "genres": genres}, movie + genre)


def query_tower() -> tf.keras.Model:
    user_id = tf.keras.Input(shape=(), dtype=tf.int64, name="user_id")
    return tf.keras.Model(
        {"user_id": user_id}, tf.keras.layers.Embedding(1000, DIM)(tf.keras.layers.Hashing(1000)(user_id))
    )


def synthetic_candidates(num_rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    combos = np.array(["|".join(rng.choice(GENRES, size=rng.integers(1, 4), replace=False)) for _ in range(256)])
    genres = combos[rng.integers(0, len(combos), num_rows)]
    return pd.DataFrame({"movie_id": np.arange(num_rows, dtype=np.int64), "genres": genres})


def make_export(work: Path) -> Path:
    tf.keras.utils.set_random_seed(0)
    catalogue = synthetic_candidates(2000, seed=1)
    return export_retrieval_model(
        query_tower(),
        candidate_tower(),
        {"user_id": tf.TensorSpec([None], tf.int64)},
        {"movie_id": tf.TensorSpec([None], tf.int64), "genres": tf.TensorSpec([None], tf.string)},
        {"movie_id": catalogue["movie_id"].to_numpy(), "genres": catalogue["genres"].to_numpy(object)},
        "movie_id",
        work / "export",
        "movies",
        IndexConfig(k=10),
    )


def embed_directly(model_dir: Path, parquet: Path, output: Path, batch_size: int) -> tuple[float, int]:
    """Seconds and rows to read, embed and write ``parquet`` with the signature in this process."""
    signature = tf.saved_model.load(str(model_dir)).signatures["candidate_embedding"]
    schema = pa.schema([("movie_id", pa.int64()), ("embedding", pa.list_(pa.float32(), DIM))])
    rows = 0
    start = time.perf_counter()
    with pq.ParquetWriter(output, schema, **PARQUET_WRITER_OPTIONS) as writer:
        for batch in pq.ParquetFile(parquet).iter_batches(batch_size=batch_size, columns=["movie_id", "genres"]):
            ids = batch.column("movie_id").to_numpy()
            genres = batch.column("genres").to_numpy(zero_copy_only=False).astype(object)
            embeddings = signature(movie_id=tf.constant(ids), genres=tf.constant(genres))["embedding"].numpy()
            values = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), DIM)
            writer.write_table(pa.Table.from_arrays([pa.array(ids), values], schema=schema))
            rows += len(ids)
    return time.perf_counter() - start, rows


def run_beam(model_dir: Path, parquet: Path, output: Path, batch_size: int, options: PipelineOptions) -> dict:
    """One end-to-end run of the Beam job: seconds, rows written, counters, rows/s, 1-minute load average."""
    config = EmbedJobConfig(str(model_dir), (str(parquet),), str(output), batch_size=batch_size)
    start = time.perf_counter()
    result = run_embed_job(config, options)
    seconds = time.perf_counter() - start
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in manifest_files(str(output), [".parquet"]))
    return {
        "seconds": seconds,
        "rows_written": written,
        "counters": result.counters,
        "rows_per_second": result.counters["rows_embedded"] / seconds,
        "loadavg_1min": os.getloadavg()[0],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method; the median is reported")
    parser.add_argument("--direct-num-workers", type=int, default=2)
    parser.add_argument(
        "--direct-running-mode", default="multi_threading", choices=["in_memory", "multi_threading", "multi_processing"]
    )
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="beam_embed_"))
    options = PipelineOptions(
        [f"--direct_num_workers={args.direct_num_workers}", f"--direct_running_mode={args.direct_running_mode}"]
    )
    direct_runs, beam_runs, startup_runs = [], [], []
    try:
        model_dir = make_export(work)
        parquet = work / "candidates.parquet"
        pq.write_table(
            pa.Table.from_pandas(synthetic_candidates(args.rows, seed=2), preserve_index=False),
            parquet,
            row_group_size=ROW_GROUP_ROWS,
        )
        load_before = os.getloadavg()
        one_row = work / "one_row.parquet"
        pq.write_table(pa.Table.from_pandas(synthetic_candidates(1, seed=3), preserve_index=False), one_row)
        for repeat in range(args.repeats):  # alternated, so all see the same share of the machine
            seconds, rows = embed_directly(model_dir, parquet, work / f"direct{repeat}.parquet", args.batch_size)
            direct_runs.append(
                {
                    "seconds": seconds,
                    "rows": rows,
                    "rows_per_second": rows / seconds,
                    "loadavg_1min": os.getloadavg()[0],
                }
            )
            beam_runs.append(run_beam(model_dir, parquet, work / f"beam{repeat}", args.batch_size, options))
            startup_runs.append(run_beam(model_dir, one_row, work / f"startup{repeat}", args.batch_size, options))
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    direct_rate = float(np.median([r["rows_per_second"] for r in direct_runs]))
    beam_rate = float(np.median([r["rows_per_second"] for r in beam_runs]))
    startup = float(np.median([r["seconds"] for r in startup_runs]))
    payload = {
        "rows": args.rows,
        "batch_size": args.batch_size,
        "embedding_dim": DIM,
        "repeats": args.repeats,
        "direct_num_workers": args.direct_num_workers,
        "direct_running_mode": args.direct_running_mode,
        "direct": {"median_rows_per_second": direct_rate, "runs": direct_runs},
        "beam": {"median_rows_per_second": beam_rate, "runs": beam_runs},
        "beam_one_row": {"median_seconds": startup, "runs": startup_runs},
        "ratio_beam_to_direct": beam_rate / direct_rate,
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        "cpu_count": os.cpu_count(),
    }
    seconds = {
        name: float(np.median([r["seconds"] for r in runs]))
        for name, runs in (("direct", direct_runs), ("beam", beam_runs))
    }
    table = (
        "| method | rows | seconds (median) | rows/s (median) | vs direct |\n|---|---|---|---|---|\n"
        f"| signature called directly, 1 process | {args.rows:,} | {seconds['direct']:.2f} | "
        f"{direct_rate:,.0f} | 1.00× |\n"
        f"| Beam job, DirectRunner {args.direct_running_mode}, {args.direct_num_workers} workers | {args.rows:,} | "
        f"{seconds['beam']:.2f} | {beam_rate:,.0f} | {beam_rate / direct_rate:.2f}× |\n"
        f"| Beam job, same settings, a 1-row file (start-up cost) | 1 | {startup:.2f} | – | – |\n"
    )
    write_results(args.output_dir, "beam_embed", payload, table)
    print(table)
    print(f"load average before {load_before}, after {load_after}")


if __name__ == "__main__":
    main()

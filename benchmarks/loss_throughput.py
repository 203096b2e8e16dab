"""Training throughput of logQ + a cross-batch memory bank against plain in-batch softmax.

    python benchmarks/loss_throughput.py --data-dir ../shared/data/ml-100k [--datasets movielens synthetic]
                                         [--repeats 3] [--seed 0]

The target: with logQ (streaming) and a memory bank of M = 16384 on, training examples/s
stays within 15% of plain in-batch training on the same towers (the default configuration's:
embeddings 64, MLP (256,) → 64, batch 512, Adam). For each data set, every configuration gets
its own model (same seed, same towers); one epoch warms it up (tracing, first allocations),
then the configurations train one epoch each in turn, ``--repeats`` times, so a slow spell of
a shared machine falls on all of them alike. Reported: the median steady-state examples/s of
each configuration and the median of the per-round ratios to in-batch training; the load
average is recorded beside them. Writes ``benchmarks/results/loss_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.common import write_results  # noqa: E402
from tfrec_pipelines.sources import prepare_data  # noqa: E402
from tfrec_pipelines.train import build_model, fit_model  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides  # noqa: E402

BASELINE = "in-batch softmax"

# name → overrides of the `loss` section; everything else is the default configuration.
CONFIGURATIONS = {
    BASELINE: [],
    "logQ (streaming) + memory bank M=2048": [
        "loss.logq=streaming",
        "loss.memory_bank_size=2048",
        "loss.memory_bank_warmup_fraction=0",
    ],
    "logQ (streaming) + memory bank M=16384": [
        "loss.logq=streaming",
        "loss.memory_bank_size=16384",
        "loss.memory_bank_warmup_fraction=0",
    ],
}


def measure(dataset: str, data_dir: str | None, repeats: int, seed: int) -> dict:
    """Steady-state examples/s of every configuration on one data set, interleaved ``repeats`` times."""
    overrides = [f"data.dataset={dataset}", f"training.seed={seed}", "training.epochs=1"]
    base = apply_overrides(ExperimentConfig(), overrides + ([f"data.data_dir={data_dir}"] if data_dir else []))
    prepared = prepare_data(base)
    data, spec = prepared.data, prepared.adapted_spec()
    columns = {f.name: data.train[f.name] for f in spec.all_features}
    models = {}
    for name, loss_overrides in CONFIGURATIONS.items():
        config = apply_overrides(base, loss_overrides)
        tf.keras.utils.set_random_seed(seed)
        models[name] = build_model(spec, config, data)
        _, seconds, rate = fit_model(models[name], columns, base.training, verbose=0)
        print(f"[{data.name}] {name}: warm-up epoch {seconds:.1f} s ({rate:,.0f} ex/s)", flush=True)
    rounds = []
    for repeat in range(repeats):
        rates = {}
        for name, model in models.items():
            _, _, rates[name] = fit_model(model, columns, base.training, verbose=0)
        rounds.append({"rates": rates, "load_average": os.getloadavg()})
        print(f"[{data.name}] round {repeat + 1}: " + ", ".join(f"{n}: {r:,.0f}" for n, r in rates.items()), flush=True)
    summary = {}
    for name in CONFIGURATIONS:
        rates = [r["rates"][name] for r in rounds]
        ratios = [r["rates"][name] / r["rates"][BASELINE] for r in rounds]
        summary[name] = {
            "examples_per_second": float(np.median(rates)),
            "ratio_to_in_batch": float(np.median(ratios)),
            "per_round_examples_per_second": rates,
        }
    return {
        "name": data.name,
        "training_examples": len(data.train[data.candidate_id]),
        "rounds": rounds,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="a MovieLens directory (needed for the movielens data set)")
    parser.add_argument("--datasets", nargs="+", default=["movielens", "synthetic"], choices=["movielens", "synthetic"])
    parser.add_argument("--repeats", type=int, default=3, help="measured epochs per configuration (interleaved)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if "movielens" in args.datasets and not args.data_dir:
        parser.error("--data-dir is required for the movielens data set")

    results, tables = {}, []
    for dataset in args.datasets:
        result = measure(dataset, args.data_dir if dataset == "movielens" else None, args.repeats, args.seed)
        results[dataset] = result
        loads = [r["load_average"][0] for r in result["rounds"]]
        lines = ["| loss | examples/s (median) | ratio to in-batch (median) | per round |", "|---|---|---|---|"]
        for name, stats in result["summary"].items():
            rounds = ", ".join(f"{r:,.0f}" for r in stats["per_round_examples_per_second"])
            lines.append(
                f"| {name} | {stats['examples_per_second']:,.0f} | {stats['ratio_to_in_batch']:.2f} | {rounds} |"
            )
        tables.append(
            f"### {result['name']} ({result['training_examples']:,} training examples, {args.repeats} rounds; "
            f"1-min load average {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} CPUs)\n\n"
            + "\n".join(lines)
            + "\n"
        )

    command = " ".join(["python", "benchmarks/loss_throughput.py", *sys.argv[1:]])
    text = f"`{command}`\n\n" + "\n".join(tables)
    payload = {"command": command, "configurations": CONFIGURATIONS, "datasets": results}
    write_results(Path(args.output_dir), "loss_throughput", payload, text)
    print(text)


if __name__ == "__main__":
    main()

"""Ablation of the retrieval science, side by side with the plain TFRS recipe, in one run.

    python benchmarks/ablation.py --data-dir ../shared/data/ml-100k [--seeds 0 1 2] [--datasets movielens synthetic]

For each data set (MovieLens under the leave-last-out protocol of docs/contracts.md, and the embedded
synthetic data) and each seed, trains the plain TFRS recipe and the rows below on the same towers,
then reports HR@10/50/100 and NDCG@10/50 as mean ± std over seeds and training examples/s.
A second table measures the throughput cost of logQ + a memory bank of M = 16384 against plain
in-batch training on the same towers. Writes ``benchmarks/results/ablation.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.baselines import plain_tfrs_model, plain_training  # noqa: E402
from benchmarks.common import markdown_table, summarise, write_results  # noqa: E402
from tfrec_pipelines.sources import prepare_data, spec_for  # noqa: E402
from tfrec_pipelines.train import build_model, evaluate_model, fit_model  # noqa: E402
from tfrec_towers.config import PLAIN_IN_BATCH, ExperimentConfig, apply_overrides, config_to_dict  # noqa: E402
from tfrec_towers.features import adapt  # noqa: E402

PLAIN = "plain TFRS recipe"

# name → overrides of the `loss` section (everything else: the default configuration's towers)
ROWS = {
    "in-batch softmax": [],
    "+ logQ (counts)": ["loss.logq=counts"],
    "+ logQ (streaming)": ["loss.logq=streaming"],
    "+ logQ (counts) + memory bank": [
        "loss.logq=counts",
        "loss.memory_bank_size=2048",
        "loss.memory_bank_warmup_steps=200",
        "loss.memory_bank_warmup_fraction=0",
    ],
    "+ logQ (counts) + mixed negatives": ["loss.logq=counts", "loss.mixed_negatives=512"],
    "+ logQ (counts) + adaptive margin/τ": ["loss.logq=counts", "loss.adaptive.enabled=true"],
}
THROUGHPUT_ROWS = {
    "in-batch softmax": [],
    "logQ (streaming) + memory bank M=16384": [
        "loss.logq=streaming",
        "loss.memory_bank_size=16384",
        "loss.memory_bank_warmup_fraction=0",
    ],
}


def row_config(base: ExperimentConfig, overrides) -> ExperimentConfig:
    """The default towers with a plain loss plus this row's changes, so each row shows only its own."""
    return apply_overrides(dataclasses.replace(base, loss=PLAIN_IN_BATCH), list(overrides))


def run_row(name, config, data, spec_factory, seed, epochs=None):
    training = dataclasses.replace(config.training, seed=seed, epochs=epochs or config.training.epochs)
    config = dataclasses.replace(config, training=training)
    tf.keras.utils.set_random_seed(seed)
    if name == PLAIN:
        model = plain_tfrs_model(data.train, data.candidate_id)
        training = plain_training(training.epochs, seed)
        columns = {k: data.train[k] for k in ("user_id", "history", data.candidate_id)}
    else:
        spec = adapt(spec_factory(config.features), data.train, data.candidates)
        model = build_model(spec, config, data)
        columns = {f.name: data.train[f.name] for f in spec.all_features}
    _, seconds, rate = fit_model(model, columns, training, verbose=0)
    metrics = evaluate_model(model, data)
    print(
        f"[{data.name}] {name} seed={seed}: HR@50={metrics['HR@50']:.4f} NDCG@10={metrics['NDCG@10']:.4f} "
        f"{rate:,.0f} ex/s",
        flush=True,
    )
    return {
        "name": name,
        "seed": seed,
        "loss": config_to_dict(config)["loss"],
        "metrics": metrics,
        "train_seconds": seconds,
        "examples_per_second": rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="a MovieLens directory (needed for the movielens data set)")
    parser.add_argument("--datasets", nargs="+", default=["movielens", "synthetic"], choices=["movielens", "synthetic"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--throughput-epochs", type=int, default=2, help="0 skips the throughput table (see loss_throughput.py)"
    )
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if "movielens" in args.datasets and not args.data_dir:
        parser.error("--data-dir is required for the movielens data set")

    default = ExperimentConfig()
    results, tables = {}, []
    for dataset in args.datasets:
        base = apply_overrides(
            default,
            [f"data.dataset={dataset}"] + ([f"data.data_dir={args.data_dir}"] if dataset == "movielens" else []),
        )
        prepared = prepare_data(base)
        data = prepared.data
        spec_factory = functools.partial(spec_for, prepared)
        configs = {name: row_config(base, overrides) for name, overrides in ROWS.items()}
        same_as_default = [name for name, config in configs.items() if config == base]
        if same_as_default:  # the best combination is one of the rows: mark it instead of training it twice
            configs = {f"{n} = the default" if n in same_as_default else n: c for n, c in configs.items()}
        else:
            configs["best combination = the default"] = base
        rows = []
        for seed in args.seeds:
            rows.append(run_row(PLAIN, base, data, spec_factory, seed))
            rows += [run_row(name, config, data, spec_factory, seed) for name, config in configs.items()]
        summary = summarise(rows)
        results[dataset] = {"name": data.name, "rows": rows, "summary": summary}
        tables.append(f"### {data.name}\n\n" + markdown_table(summary, baseline=PLAIN))

        if args.throughput_epochs > 0:
            tables.append(
                throughput_table(base, data, spec_factory, args.seeds[0], args.throughput_epochs, results[dataset])
            )
        write(args, default, results, tables)  # after every data set: a long run keeps what it measured


def throughput_table(base, data, spec_factory, seed, epochs, result) -> str:
    """Examples/s of in-batch training and of logQ + a memory bank of M = 16384 on the same towers."""
    throughput = [
        run_row(name, row_config(base, overrides), data, spec_factory, seed, epochs=epochs)
        for name, overrides in THROUGHPUT_ROWS.items()
    ]
    plain_rate = throughput[0]["examples_per_second"]
    result["throughput"] = throughput
    lines = ["| loss | examples/s | ratio to in-batch |", "|---|---|---|"]
    lines += [
        f"| {r['name']} | {r['examples_per_second']:,.0f} | {r['examples_per_second'] / plain_rate:.2f} |"
        for r in throughput
    ]
    return f"Throughput on {data.name} ({epochs} epochs, seed {seed}):\n\n" + "\n".join(lines) + "\n"


def write(args, default, results, tables) -> None:
    command = " ".join(["python", "benchmarks/ablation.py", *sys.argv[1:]])
    text = f"`{command}`\n\n" + "\n".join(tables)
    write_results(
        Path(args.output_dir),
        "ablation",
        {"command": command, "default_config": config_to_dict(default), "datasets": results},
        text,
    )
    print(text, flush=True)


if __name__ == "__main__":
    main()

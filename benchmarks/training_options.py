"""Training-speed options against the default configuration, interleaved in one process.

    python benchmarks/training_options.py [--users 10000] [--items 20000] [--per-user 50] [--rounds 3]
                                          [--seed 0] [--option KEY=VALUE ...] [--set KEY=VALUE ...]

On the synthetic log of ``benchmarks/training_throughput.py`` (500,000 interactions by default), the
default configuration (``--set`` changes it) and, for each ``--option``, the default with that one key
changed (by default ``training.jit_compile=true``, ``training.steps_per_execution=16``,
``training.batch_size=1024`` and ``2048``) are built once, trained one warm-up epoch each (tracing,
XLA compilation, first allocations), then one epoch each in turn, ``--rounds`` times, so a slow spell
of a shared machine falls on all of them. Reported per configuration: the median examples/s and ms
per step over the rounds (the training steps, timed from the first batch's start to the last one's
end), the median per-round ratio to the default, and HR@50 / NDCG@10 over the whole catalogue (the
test split) after its ``1 + rounds`` epochs — the same for an option that changes only how the steps
run, and the quality side of a batch size.

The same command runs unchanged on a GPU machine. Writes ``benchmarks/results/training_options.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.common import add_synthetic_log_arguments, synthetic_log_overrides, write_results  # noqa: E402
from benchmarks.training_throughput import StepClock  # noqa: E402
from tfrec_pipelines.dataset import steps_per_epoch  # noqa: E402
from tfrec_pipelines.sources import prepare_data  # noqa: E402
from tfrec_pipelines.train import build_model, evaluate_model, fit_model  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides, config_to_dict  # noqa: E402

DEFAULT = "default"
OPTIONS = (
    "training.jit_compile=true",
    "training.steps_per_execution=16",
    "training.batch_size=1024",
    "training.batch_size=2048",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_synthetic_log_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--option", action="append", help="KEY=VALUE: one configuration, the default with this changed")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    base = synthetic_log_overrides(args)
    configs = {DEFAULT: apply_overrides(ExperimentConfig(), base)}
    for option in args.option or OPTIONS:
        configs[option] = apply_overrides(ExperimentConfig(), [*base, option])
    prepared = prepare_data(configs[DEFAULT])  # the options change no data key
    data, spec = prepared.data, prepared.adapted_spec()
    columns = {f.name: data.train[f.name] for f in spec.all_features}
    examples = len(data.train[data.candidate_id])
    print(f"{data.name}: {examples:,} training examples, {args.items:,} items", flush=True)

    models = {}
    for name, config in configs.items():
        tf.keras.utils.set_random_seed(args.seed)
        models[name] = build_model(spec, config, data)
    trainings = {name: dataclasses.replace(config.training, epochs=1) for name, config in configs.items()}

    def fit_epoch(name: str, epoch: int, callbacks=()) -> None:
        # The same global random state for every configuration at the same epoch.
        tf.keras.utils.set_random_seed(args.seed * 1000 + epoch)
        fit_model(models[name], columns, trainings[name], verbose=0, callbacks=list(callbacks))

    for name in models:  # warm-up
        fit_epoch(name, 0)
    rounds: List[dict] = []
    for index in range(args.rounds):
        rates: Dict[str, float] = {}
        for name in models:
            clock = StepClock()
            fit_epoch(name, 1 + index, [clock])
            rates[name] = examples / clock.seconds
        rounds.append({"examples_per_second": rates, "load_average": list(os.getloadavg())})
        print(f"round {index + 1}: " + ", ".join(f"{n} {r:,.0f} ex/s" for n, r in rates.items()), flush=True)

    results = {}
    for name, model in models.items():
        rates = [r["examples_per_second"][name] for r in rounds]
        steps = steps_per_epoch(examples, trainings[name].batch_size)
        metrics = evaluate_model(model, data)
        results[name] = {
            "batch_size": trainings[name].batch_size,
            "examples_per_second": float(np.median(rates)),
            "ms_per_step": float(np.median([1e3 * examples / rate / steps for rate in rates])),
            "ratio_to_default": float(
                np.median([r["examples_per_second"][name] / r["examples_per_second"][DEFAULT] for r in rounds])
            ),
            "per_round_ratio_to_default": [
                r["examples_per_second"][name] / r["examples_per_second"][DEFAULT] for r in rounds
            ],
            "epochs_trained": 1 + args.rounds,
            "HR@50": float(metrics["HR@50"]),
            "NDCG@10": float(metrics["NDCG@10"]),
        }

    command = " ".join(["python", "benchmarks/training_options.py", *sys.argv[1:]])
    loads = ", ".join(f"{r['load_average'][0]:.1f}" for r in rounds)
    lines = [
        f"`{command}`: {examples:,} training examples; median of {args.rounds} interleaved rounds "
        f"(load average {loads}); quality after {1 + args.rounds} epochs.\n",
        "| configuration | batch | examples/s | ms/step | ratio to default (per round) | HR@50 | NDCG@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        per_round = ", ".join(f"{x:.2f}" for x in r["per_round_ratio_to_default"])
        lines.append(
            f"| {'default' if name == DEFAULT else f'`{name}`'} | {r['batch_size']:,} | {r['examples_per_second']:,.0f} | "
            f"{r['ms_per_step']:.1f} | {r['ratio_to_default']:.2f}× ({per_round}) | {r['HR@50']:.4f} | {r['NDCG@10']:.4f} |"
        )
    table = "\n".join(lines) + "\n"
    payload = {
        "command": command,
        "training_examples": examples,
        "config": config_to_dict(configs[DEFAULT]),
        "options": list(configs)[1:],
        "rounds": rounds,
        "results": results,
    }
    write_results(args.output_dir, "training_options", payload, table)
    print(table)


if __name__ == "__main__":
    main()

"""Training speed of the default configuration against the plain TFRS recipe, in one process.

    python benchmarks/training_throughput.py [--users 10000] [--items 20000] [--per-user 50]
                                             [--rounds 3] [--epochs 10] [--seed 0] [--set KEY=VALUE ...]

On a synthetic log of ``users × per-user`` interactions (500,000 by default; leave-last-out), the
plain TFRS recipe (``benchmarks/baselines.py``: batch 4,096, Adagrad 0.1) and the default
configuration (``--set`` changes it) are built once and then trained one epoch each in turn,
``--rounds`` times, so a slow spell of a shared machine falls on both. Reported per model: the median
examples/s and ms per step over the rounds (the training steps, timed from the first batch's start to
the last one's end), the median per-round ratio to the plain recipe, the median seconds of the whole
``fit`` call (set-up and the input pipeline's teardown included), and the load average of every round.

Then, time to quality: each model is trained afresh for ``--epochs`` epochs, evaluated (HR@50,
NDCG@10 over the whole catalogue, the test split) after every epoch, and the table gives the training
seconds (evaluation excluded) until it first reaches the plain recipe's final HR@50.

The same command runs unchanged on a GPU machine (TensorFlow places the models on it).
Writes ``benchmarks/results/training_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.baselines import plain_tfrs_model, plain_training  # noqa: E402
from benchmarks.common import add_synthetic_log_arguments, synthetic_log_overrides, write_results  # noqa: E402
from tfrec_pipelines.dataset import steps_per_epoch  # noqa: E402
from tfrec_pipelines.sources import prepare_data  # noqa: E402
from tfrec_pipelines.train import build_model, evaluate_model, fit_model  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides, config_to_dict  # noqa: E402

PLAIN = "plain TFRS recipe"
DEFAULT = "tfrec-towers default"


class StepClock(tf.keras.callbacks.Callback):
    """Seconds from the first training batch's start to the last one's end (the steps, without the set-up
    before them and the input pipeline's teardown after them)."""

    def __init__(self) -> None:
        super().__init__()
        self.first: Optional[float] = None
        self.last = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        if self.first is None:
            self.first = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.last = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.last - (self.first if self.first is not None else self.last)


class EpochClock(tf.keras.callbacks.Callback):
    """Training seconds of every epoch (evaluation excluded) and the metrics after it."""

    def __init__(self, evaluate) -> None:
        super().__init__()
        self.evaluate = evaluate
        self.seconds: List[float] = []
        self.metrics: List[Dict[str, float]] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.metrics.append(self.evaluate())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_synthetic_log_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    config = apply_overrides(ExperimentConfig(), synthetic_log_overrides(args))
    prepared = prepare_data(config)
    data, spec = prepared.data, prepared.adapted_spec()
    examples = len(data.train[data.candidate_id])
    print(f"{data.name}: {examples:,} training examples, {args.items:,} items", flush=True)
    trainings = {
        PLAIN: plain_training(1, args.seed),
        DEFAULT: dataclasses.replace(config.training, epochs=1),
    }

    def fresh(name: str) -> Tuple[tf.keras.Model, Dict[str, np.ndarray]]:
        tf.keras.utils.set_random_seed(args.seed)
        if name == PLAIN:
            columns = {k: data.train[k] for k in ("user_id", "history", data.candidate_id)}
            return plain_tfrs_model(data.train, data.candidate_id), columns
        return build_model(spec, config, data), {f.name: data.train[f.name] for f in spec.all_features}

    # 1. throughput, interleaved
    models = {name: fresh(name) for name in trainings}
    for name, (model, columns) in models.items():  # warm-up: tracing, first allocations
        fit_model(model, columns, trainings[name], verbose=0)
    rounds = []
    for index in range(args.rounds):
        rates, fit_seconds = {}, {}
        for name, (model, columns) in models.items():
            clock = StepClock()
            _, fit_seconds[name], _ = fit_model(model, columns, trainings[name], verbose=0, callbacks=[clock])
            rates[name] = examples / clock.seconds
        rounds.append({"examples_per_second": rates, "fit_seconds": fit_seconds, "load_average": list(os.getloadavg())})
        print(
            f"round {index + 1}: "
            + ", ".join(f"{n} {r:,.0f} ex/s (fit {fit_seconds[n]:.1f} s)" for n, r in rates.items()),
            flush=True,
        )
    throughput = {}
    for name, training in trainings.items():
        rates = [r["examples_per_second"][name] for r in rounds]
        steps = steps_per_epoch(examples, training.batch_size)
        throughput[name] = {
            "batch_size": training.batch_size,
            "examples_per_second": float(np.median(rates)),
            "ms_per_step": float(np.median([1e3 * examples / rate / steps for rate in rates])),
            "fit_seconds": float(np.median([r["fit_seconds"][name] for r in rounds])),
            "ratio_to_plain": float(
                np.median([r["examples_per_second"][name] / r["examples_per_second"][PLAIN] for r in rounds])
            ),
        }

    # 2. time to quality
    curves = {}
    for name, training in trainings.items():
        model, columns = fresh(name)
        clock = EpochClock(lambda model=model: evaluate_model(model, data))
        fit_model(model, columns, dataclasses.replace(training, epochs=args.epochs), verbose=0, callbacks=[clock])
        curves[name] = {
            "seconds": np.cumsum(clock.seconds).tolist(),
            "HR@50": [m["HR@50"] for m in clock.metrics],
            "NDCG@10": [m["NDCG@10"] for m in clock.metrics],
        }
        print(f"{name}: HR@50 per epoch {[round(v, 4) for v in curves[name]['HR@50']]}", flush=True)
    target = curves[PLAIN]["HR@50"][-1]
    for curve in curves.values():
        reached = [s for s, hr in zip(curve["seconds"], curve["HR@50"]) if hr >= target]
        curve["seconds_to_plain_final_hr50"] = reached[0] if reached else None

    command = " ".join(["python", "benchmarks/training_throughput.py", *sys.argv[1:]])
    loads = ", ".join(f"{r['load_average'][0]:.1f}" for r in rounds)
    lines = [
        f"`{command}`: {examples:,} training examples; median of {args.rounds} interleaved rounds "
        f"(load average {loads}).\n",
        "| model | batch | examples/s | ms/step | ratio to plain | s per fit | final HR@50 | NDCG@10 "
        "| s to plain's final HR@50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in trainings:
        t, c = throughput[name], curves[name]
        reach = c["seconds_to_plain_final_hr50"]
        lines.append(
            f"| {name} | {t['batch_size']:,} | {t['examples_per_second']:,.0f} | {t['ms_per_step']:.1f} | "
            f"{t['ratio_to_plain']:.2f}× | {t['fit_seconds']:.1f} | {c['HR@50'][-1]:.4f} | {c['NDCG@10'][-1]:.4f} | "
            f"{'—' if reach is None else f'{reach:.0f}'} |"
        )
    table = "\n".join(lines) + "\n"
    payload = {
        "command": command,
        "training_examples": examples,
        "config": config_to_dict(config),
        "rounds": rounds,
        "throughput": throughput,
        "time_to_quality": curves,
        "plain_final_hr50": target,
    }
    write_results(args.output_dir, "training_throughput", payload, table)
    print(table)


if __name__ == "__main__":
    main()

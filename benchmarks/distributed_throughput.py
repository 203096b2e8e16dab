"""Training examples/s with 1 and 2 replicas (tf.distribute.MirroredStrategy) on the same towers and loss.

    python benchmarks/distributed_throughput.py [--data-dir ../shared/data/ml-100k] [--epochs 2] [--repeats 2]

The CPU is split into 2 logical devices before TensorFlow starts. "1 replica" trains under
``OneDeviceStrategy`` on the first, "2 replicas" under ``MirroredStrategy`` on both, with the same
global batch (the default configuration's 512), so each replica encodes 256 examples and the loss
gathers the global batch (in-batch negatives, the logQ estimator and, in the second loss, a memory
bank) across replicas. Each configuration trains one warm-up epoch (tracing), then ``--epochs``
epochs ``--repeats`` times, interleaved; the median examples/s is reported with the load average.
Both replicas share the machine's cores, so on a 2-core machine this measures the cost of the
cross-replica machinery rather than a speed-up: the speed-up comes from replicas on separate
accelerators or machines. Writes ``benchmarks/results/distributed_throughput.{json,md}``.
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

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

from benchmarks.common import write_results  # noqa: E402
from tfrec_pipelines.sources import prepare_data  # noqa: E402
from tfrec_pipelines.train import build_model, fit_model  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides  # noqa: E402

LOSSES = {
    "in-batch softmax + logQ (streaming)": ["loss.logq=streaming"],
    "+ memory bank M=2048": ["loss.logq=streaming", "loss.memory_bank_size=2048", "loss.memory_bank_warmup_fraction=0"],
}
STRATEGIES = {
    "1 replica": lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
    "2 replicas": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="a MovieLens directory (default: the synthetic data)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved measurements per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    dataset = (
        ["data.dataset=movielens", f"data.data_dir={args.data_dir}"] if args.data_dir else ["data.dataset=synthetic"]
    )
    base = apply_overrides(
        ExperimentConfig(), dataset + [f"training.seed={args.seed}", f"training.epochs={args.epochs}"]
    )
    prepared = prepare_data(base)
    data, spec = prepared.data, prepared.adapted_spec()
    columns = {f.name: data.train[f.name] for f in spec.all_features}

    models = {}
    for loss_name, overrides in LOSSES.items():
        config = apply_overrides(base, overrides)
        for strategy_name, make_strategy in STRATEGIES.items():
            strategy = make_strategy()
            with strategy.scope():
                tf.keras.utils.set_random_seed(args.seed)
                model = build_model(spec, config, data)
            _, seconds, rate = fit_model(model, columns, config.training, verbose=0)
            print(f"{loss_name} / {strategy_name}: warm-up {seconds:.1f} s ({rate:,.0f} ex/s)", flush=True)
            models[(loss_name, strategy_name)] = (model, config)

    rates = {key: [] for key in models}
    loads = []
    for _ in range(args.repeats):
        for key, (model, config) in models.items():
            rates[key].append(fit_model(model, columns, config.training, verbose=0)[2])
            loads.append(os.getloadavg()[0])
        print(", ".join(f"{k[0]} / {k[1]}: {r[-1]:,.0f}" for k, r in rates.items()), flush=True)

    lines = ["| loss | 1 replica (examples/s) | 2 replicas (examples/s) | 2 / 1 |", "|---|---|---|---|"]
    summary = {}
    for loss_name in LOSSES:
        one, two = (float(np.median(rates[(loss_name, s)])) for s in STRATEGIES)
        summary[loss_name] = {
            "1 replica": one,
            "2 replicas": two,
            "ratio": two / one,
            "per_repeat": {s: rates[(loss_name, s)] for s in STRATEGIES},
        }
        lines.append(f"| {loss_name} | {one:,.0f} | {two:,.0f} | {two / one:.2f} |")
    command = " ".join(["python", "benchmarks/distributed_throughput.py", *sys.argv[1:]])
    text = (
        f"`{command}`\n\n{data.name}, {len(data.train[data.candidate_id]):,} training examples, global batch "
        f"{base.training.batch_size}, median of {args.repeats} × {args.epochs} epoch(s); 1-min load average "
        f"{min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} CPUs.\n\n" + "\n".join(lines) + "\n"
    )
    write_results(
        Path(args.output_dir),
        "distributed_throughput",
        {"command": command, "summary": summary, "load_average": loads},
        text,
    )
    print(text)


if __name__ == "__main__":
    main()

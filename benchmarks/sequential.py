"""Sequence-aware query towers against the plain TFRS recipe, and every-position against per-prefix training.

    python benchmarks/sequential.py --data-dir ../shared/data/ml-100k [--seeds 0 1 2]

On MovieLens under the leave-last-out protocol of docs/contracts.md (the protocol and seeds of
``benchmarks/ablation.py``), for each seed: the plain TFRS recipe (``benchmarks/baselines.py``) and
one row per history encoder (mean, attention, GRU, transformer), each trained on every position
with the configuration of ``configs/movielens_transformer.yaml`` (the best loss of the ablation:
in-batch softmax + counts logQ + 512 mixed negatives) and only its encoder changed; the library's
default configuration (attention pooling trained per prefix); and the minimal SASRec of
``benchmarks/reference_transformer.py``, written apart from the library, with each loss of
``--references`` (``--reference-epochs`` epochs). Reports HR@10/50 and NDCG@10/50 as mean ± std over seeds, the ratios of HR@50 and NDCG@10 to the plain recipe, training seconds and
trained examples (targets) per second.

A second table trains the transformer on seed ``seeds[0]`` with per-prefix and with every-position
examples, evaluating every ``--eval-every`` training seconds, and reports the training wall time
(evaluation excluded) each needs to reach ``--target-hr50``, within ``--time-budget`` seconds each.
Writes ``benchmarks/results/sequential.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.ablation import PLAIN, run_row  # noqa: E402
from benchmarks.common import summarise, write_results  # noqa: E402
from benchmarks.reference_transformer import train_and_evaluate  # noqa: E402
from tfrec_pipelines.sequences import num_targets, sequence_examples  # noqa: E402
from tfrec_pipelines.sources import prepare_data, spec_for  # noqa: E402
from tfrec_pipelines.train import build_model, evaluate_model, fit_model  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides, config_to_dict, load_config  # noqa: E402
from tfrec_towers.features import adapt  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "movielens_transformer.yaml"
ENCODERS = {"mean": "mean", "attention pooling": "attention", "GRU": "gru", "transformer": "transformer"}
REPORTED = ("HR@10", "HR@50", "NDCG@10", "NDCG@50")
DEFAULT = "tfrec-towers default (attention pooling, per prefix)"
REFERENCE_LOSSES = {
    "in_batch_logq": "minimal SASRec reference, in-batch + logQ",
    "full_softmax": "minimal SASRec reference, full softmax",
}


def encoder_config(base: ExperimentConfig, encoder: str) -> ExperimentConfig:
    """The shipped configuration with only the history encoder changed."""
    return apply_overrides(base, [f"model.history.encoder={encoder}"])


def results_table(summary: dict, baseline: str) -> str:
    """Mean ± std of each metric, HR@50 and NDCG@10 ratios to ``baseline``, seconds and examples/s."""
    header = ["configuration", *REPORTED, "HR@50 / plain", "NDCG@10 / plain", "train s", "examples/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = summary[baseline]
    for name, stats in summary.items():
        cells = [name] + [f"{stats[k]['mean']:.4f} ± {stats[k]['std']:.4f}" for k in REPORTED]
        cells += [f"{stats[k]['mean'] / base[k]['mean']:.2f}×" for k in ("HR@50", "NDCG@10")]
        cells += [f"{stats['train_seconds']['mean']:.0f}", f"{stats['examples_per_second']['mean']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class _TimeToQuality(tf.keras.callbacks.Callback):
    """Evaluates every ``eval_every`` training seconds (evaluation time excluded from the clock) and
    stops at ``target`` HR@50 or after ``budget`` training seconds."""

    def __init__(self, data, eval_every: float, target: float, budget: float) -> None:
        super().__init__()
        self.data, self.eval_every, self.target, self.budget = data, eval_every, target, budget
        self.curve: list = []
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.trained, self.since = 0.0, time.perf_counter()
        self.next_eval = self.eval_every

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        now = time.perf_counter()
        self.trained += now - self.since
        if self.trained >= self.next_eval:
            self.next_eval += self.eval_every
            metrics = evaluate_model(self.model, self.data)
            self.curve.append(
                {
                    "train_seconds": self.trained,
                    "steps": self.steps,
                    "HR@50": metrics["HR@50"],
                    "NDCG@10": metrics["NDCG@10"],
                }
            )
            print(f"  {self.trained:7.1f}s step {self.steps}: HR@50={metrics['HR@50']:.4f}", flush=True)
            if metrics["HR@50"] >= self.target or self.trained >= self.budget:
                self.model.stop_training = True
        self.since = time.perf_counter()


def time_to_quality(config: ExperimentConfig, data, spec_factory, seed: int, args) -> dict:
    """Trains ``config`` until HR@50 ≥ ``args.target_hr50`` or the time budget; returns the curve."""
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed))
    tf.keras.utils.set_random_seed(seed)
    spec = adapt(spec_factory(config.features), data.train, data.candidates)
    model = build_model(spec, config, data)
    columns = {f.name: data.train[f.name] for f in spec.all_features}
    targets = columns
    if config.training.example_format == "every_position":  # counted as fit_model will regroup them
        history = config.model.history
        targets = sequence_examples(
            columns, [f.name for f in spec.candidate], spec.candidate_id, history.max_length, history=history.feature
        )
    callback = _TimeToQuality(data, args.eval_every, args.target_hr50, args.time_budget)
    # The callback stops training at the target or the time budget; fit_model trains on the
    # batches and per-epoch order `train` uses.
    fit_model(model, columns, dataclasses.replace(config.training, epochs=10_000), verbose=0, callbacks=[callback])
    reached = next((point for point in callback.curve if point["HR@50"] >= args.target_hr50), None)
    return {
        "example_format": config.training.example_format,
        "batch_size": config.training.batch_size,
        "targets_per_epoch": num_targets(targets, spec.candidate_id),
        "curve": callback.curve,
        "seconds_to_target": reached["train_seconds"] if reached else None,
        "best_HR@50": max((p["HR@50"] for p in callback.curve), default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a MovieLens directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default=str(CONFIG), help="the sequential configuration (YAML)")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--target-hr50", type=float, default=0.40)
    parser.add_argument("--eval-every", type=float, default=20.0, help="training seconds between evaluations")
    parser.add_argument("--time-budget", type=float, default=240.0, help="training seconds per example format")
    parser.add_argument("--per-prefix-batch-size", type=int, default=512)
    parser.add_argument(
        "--references",
        nargs="*",
        default=list(REFERENCE_LOSSES),
        choices=list(REFERENCE_LOSSES),
        help="minimal SASRec references to train (benchmarks/reference_transformer.py); none skips them",
    )
    parser.add_argument("--reference-epochs", type=int, default=30)
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    base = apply_overrides(load_config(args.config), [f"data.data_dir={args.data_dir}"])
    prepared = prepare_data(base)
    data = prepared.data
    spec_factory = functools.partial(spec_for, prepared)
    configs = {name: encoder_config(base, encoder) for name, encoder in ENCODERS.items() if name in args.encoders}
    default = apply_overrides(ExperimentConfig(), ["data.dataset=movielens", f"data.data_dir={args.data_dir}"])
    rows = []
    for seed in args.seeds:
        rows.append(run_row(PLAIN, ExperimentConfig(), data, spec_factory, seed))
        rows += [run_row(name, config, data, spec_factory, seed) for name, config in configs.items()]
        rows.append(run_row(DEFAULT, default, data, spec_factory, seed))
        for loss in args.references:
            result = train_and_evaluate(
                data, seed, loss=loss, epochs=args.reference_epochs, max_length=base.model.history.max_length
            )
            rows.append({"name": REFERENCE_LOSSES[loss], "seed": seed, **result})
            print(
                f"{REFERENCE_LOSSES[loss]} seed={seed}: HR@50={result['metrics']['HR@50']:.4f} "
                f"NDCG@10={result['metrics']['NDCG@10']:.4f}",
                flush=True,
            )
    summary = summarise(rows, REPORTED)
    table = results_table(summary, PLAIN)

    transformer = encoder_config(base, "transformer")
    per_prefix = apply_overrides(
        transformer, ["training.example_format=per_prefix", f"training.batch_size={args.per_prefix_batch_size}"]
    )
    speed = {}
    for name, config in (("every position", transformer), ("per prefix", per_prefix)):
        print(f"time to HR@50 ≥ {args.target_hr50}: transformer, {name}", flush=True)
        speed[name] = time_to_quality(config, data, spec_factory, args.seeds[0], args)
    lines = [
        "| transformer trained on | batch | targets/epoch | training s to HR@50 ≥ "
        f"{args.target_hr50} | best HR@50 within {args.time_budget:.0f} s |",
        "|---|---|---|---|---|",
    ]
    for name, result in speed.items():
        reached = f"{result['seconds_to_target']:.0f}" if result["seconds_to_target"] is not None else "not reached"
        lines.append(
            f"| {name} | {result['batch_size']} | {result['targets_per_epoch']:,} | {reached} | "
            f"{result['best_HR@50']:.4f} |"
        )

    command = " ".join(["python", "benchmarks/sequential.py", *sys.argv[1:]])
    text = (
        f"`{command}`\n\n### {data.name}: history encoders (every-position training) vs the plain TFRS recipe, "
        "the per-prefix default and a minimal SASRec written apart from the library\n\n"
        f"{table}\n### Time to quality, seed {args.seeds[0]}\n\n" + "\n".join(lines) + "\n"
    )
    write_results(
        Path(args.output_dir),
        "sequential",
        {
            "command": command,
            "config": config_to_dict(base),
            "rows": rows,
            "summary": summary,
            "time_to_quality": speed,
        },
        text,
    )
    print(text)


if __name__ == "__main__":
    main()

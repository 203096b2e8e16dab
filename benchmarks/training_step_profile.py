"""Where the default configuration's training step spends its time: a TensorFlow profiler trace, summarised.

    python benchmarks/training_step_profile.py [--users 10000] [--items 20000] [--per-user 50]
                                               [--warmup-steps 30] [--steps 30] [--seed 0]
                                               [--set KEY=VALUE ...] [--name training_step_profile]

On the synthetic log of ``benchmarks/training_throughput.py`` (500,000 interactions by default),
the default configuration (``--set`` changes it) is built, trained ``--warmup-steps`` steps (tracing,
first allocations), timed for ``--steps`` steps without the profiler, then traced for ``--steps``
steps with it (``tf.profiler.experimental``). The trace's op events (the executor threads' events
named ``scope/op:Type``) are summed per part of the step: the forward and backward pass of each
tower, the loss (logits, logQ, softmax), the mixed-negative draw, the optimizer's updates and the
rest, and per op type. The op seconds are CPU time over the executor's threads, so on two cores they
can exceed the wall time; the input pipeline runs on its own threads and is reported apart (its
``GetNext`` wait inside the step is what the step waits for data).

Writes ``benchmarks/results/NAME.{json,md}`` (``--name``, default ``training_step_profile``).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.common import add_synthetic_log_arguments, synthetic_log_overrides, write_results  # noqa: E402
from tfrec_pipelines.checkpointing import training_batches  # noqa: E402
from tfrec_pipelines.sources import prepare_data  # noqa: E402
from tfrec_pipelines.train import build_model, training_columns  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides, config_to_dict  # noqa: E402

PARTS = (
    ("optimizer", ("Adam/", "Adagrad/", "SGD/", "ResourceApply", "AssignAddVariableOp")),
    ("mixed-negative draw", ("mixed_negative",)),
    ("query tower", ("query_tower",)),
    ("candidate tower", ("candidate_tower",)),
    ("loss", ("retrieval", "task", "loss")),
)
"""Parts of the step, by the first matching piece of an op's scoped name (the first part wins)."""


def part_of(name: str) -> str:
    """The step's part an op belongs to, its pass (``forward``/``backward``) appended for the towers and the loss."""
    backward = name.startswith("gradient_tape/")
    for part, pieces in PARTS:
        if any(piece in name for piece in pieces):
            if part in ("query tower", "candidate tower", "loss"):
                return f"{part} ({'backward' if backward else 'forward'})"
            return part
    return "other (backward)" if backward else "other"


def op_events(xspace) -> Iterable[Tuple[str, str, float]]:
    """``(scoped name, op type, seconds)`` of every op the executors ran in the trace."""
    for plane in xspace.planes:
        for line in plane.lines:
            if not line.name.startswith(("tf_Compute", "tf_numa", "tf_inter_op")):
                continue
            for event in line.events:
                label = plane.event_metadata[event.metadata_id].name
                if ":" not in label or "::" in label:
                    continue
                name, op_type = label.rsplit(":", 1)
                yield name, op_type, event.duration_ps * 1e-12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_synthetic_log_arguments(parser)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--name", default="training_step_profile", help="the results files' stem")
    args = parser.parse_args()
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    config = apply_overrides(ExperimentConfig(), synthetic_log_overrides(args))
    tf.keras.utils.set_random_seed(args.seed)
    prepared = prepare_data(config)
    data, spec = prepared.data, prepared.adapted_spec()
    model = build_model(spec, config, data)
    batches = training_batches(  # the pipeline training reads
        training_columns(data, spec, prepared.weight_column), config.training.batch_size, seed=args.seed, epochs=1
    )
    model.fit(batches.take(args.warmup_steps), verbose=0)
    start = time.perf_counter()
    model.fit(batches.skip(args.warmup_steps).take(args.steps), verbose=0)
    step_ms = 1e3 * (time.perf_counter() - start) / args.steps
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        model.fit(batches.skip(args.warmup_steps + args.steps).take(args.steps), verbose=0)
        profiled_ms = 1e3 * (time.perf_counter() - start) / args.steps
        tf.profiler.experimental.stop()
        xspace = xplane_pb2.XSpace()
        xspace.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())

    parts: Dict[str, float] = collections.Counter()
    types: Dict[str, float] = collections.Counter()
    ops: Dict[str, float] = collections.Counter()
    for name, op_type, seconds in op_events(xspace):
        parts[part_of(name)] += seconds
        types[op_type] += seconds
        ops[f"{name}:{op_type}"] += seconds
    total = sum(parts.values())
    per_step = {part: 1e3 * s / args.steps for part, s in sorted(parts.items(), key=lambda kv: -kv[1])}
    top_types = {t: 1e3 * s / args.steps for t, s in sorted(types.items(), key=lambda kv: -kv[1])[:15]}
    top_ops = {o: 1e3 * s / args.steps for o, s in sorted(ops.items(), key=lambda kv: -kv[1])[:15]}

    command = " ".join(["python", "benchmarks/training_step_profile.py", *sys.argv[1:]])
    lines = [
        f"`{command}`: batch {config.training.batch_size}, {step_ms:.1f} ms per step unprofiled, "
        f"{profiled_ms:.1f} ms profiled; {1e3 * total / args.steps:.1f} ms of op CPU time per step "
        f"(load average {os.getloadavg()[0]:.1f}).\n",
        "| part of the step | op CPU ms per step | share |",
        "|---|---|---|",
        *(f"| {part} | {ms:.1f} | {ms / (1e3 * total / args.steps):.0%} |" for part, ms in per_step.items()),
        "",
        "| op type (top 15) | op CPU ms per step |",
        "|---|---|",
        *(f"| {op_type} | {ms:.1f} |" for op_type, ms in top_types.items()),
        "",
        "| op (top 15) | op CPU ms per step |",
        "|---|---|",
        *(f"| `{op}` | {ms:.1f} |" for op, ms in top_ops.items()),
    ]
    table = "\n".join(lines) + "\n"
    payload = {
        "command": command,
        "config": config_to_dict(config),
        "steps": args.steps,
        "ms_per_step": step_ms,
        "ms_per_step_profiled": profiled_ms,
        "op_cpu_ms_per_step": per_step,
        "op_type_cpu_ms_per_step": top_types,
        "op_cpu_ms_per_step_top": top_ops,
        "load_average": list(os.getloadavg()),
    }
    write_results(args.output_dir, args.name, payload, table)
    print(table)


if __name__ == "__main__":
    main()

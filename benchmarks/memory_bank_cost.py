"""The memory bank's extra cost per training step against the matrix products it cannot avoid.

    python benchmarks/memory_bank_cost.py [--sizes 2048 16384 65536] [--batch 512] [--dim 64]
                                          [--rounds 5] [--steps 20] [--seed 0]

A bank of ``M`` entries adds, per step, the logits of every query against every entry,
``[B, d] × [d, M]``, and their share of the query gradient, ``[B, M] × [M, d]``: those two products
are the floor of its cost. Everything else it does (reading and enqueueing entries, masking empty
slots, the logQ correction of the bank's logits, their share of the softmax) should cost little
beside them. Measured, in one process and interleaved round by round:

* **loss step with the bank**: the configured loss (``RetrievalLoss`` of the default
  configuration's loss with ``loss.memory_bank_size = M``; mixed negatives off, since they are
  not the bank's cost) on random L2-normalised embeddings of ``B`` queries and positives, forward
  and backward to the query and candidate embeddings, the bank enqueued as in training;
* **loss step without the bank**: the same loss with ``memory_bank_size = 0``;
* **the products**: ``q @ bankᵀ`` and ``g @ bank`` on tensors of the same shapes and dtype.

The bank's extra cost is the first minus the second; the table gives it as a multiple of the
products' time (median over rounds of the per-round ratio, each time the median of ``--steps``
timed calls after a warm-up). Writes ``benchmarks/results/memory_bank_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.common import write_results  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides  # noqa: E402
from tfrec_towers.losses.factory import build_retrieval_task  # noqa: E402

NUM_ITEMS = 100_000


def _normalised(rng: np.random.Generator, rows: int, dim: int) -> tf.Tensor:
    values = rng.standard_normal((rows, dim)).astype(np.float32)
    return tf.constant(values / np.linalg.norm(values, axis=1, keepdims=True))


def loss_step(bank_size: int, batch: int, dim: int, seed: int) -> Callable[[], tf.Tensor]:
    """One forward and backward pass of the configured loss with a bank of ``bank_size`` (0: none)."""
    config = apply_overrides(
        ExperimentConfig(),
        [f"loss.memory_bank_size={bank_size}", "loss.memory_bank_warmup_fraction=0", "loss.mixed_negatives=0"],
    )
    rng = np.random.default_rng(seed)
    training_ids = rng.integers(0, NUM_ITEMS, size=20 * NUM_ITEMS)
    task = build_retrieval_task(config.loss, config.model.temperature, dim, "int64", training_ids=training_ids)
    queries = tf.Variable(_normalised(rng, batch, dim))
    candidates = tf.Variable(_normalised(rng, batch, dim))
    ids = tf.constant(rng.integers(0, NUM_ITEMS, size=batch))

    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = task(queries, candidates, candidate_ids=ids, training=True)
        gradients = tape.gradient(loss, [queries, candidates])
        return loss + tf.add_n([tf.reduce_sum(g) for g in gradients]) * 0.0

    for _ in range(max(2, bank_size // batch + 1)):  # fill the bank: its logits are over valid slots only
        step()
    return step


def products(bank_size: int, batch: int, dim: int, seed: int) -> Callable[[], tf.Tensor]:
    """The two products a bank of ``bank_size`` cannot avoid: logits ``q @ bankᵀ`` and ``g @ bank``."""
    rng = np.random.default_rng(seed)
    queries, bank = _normalised(rng, batch, dim), _normalised(rng, bank_size, dim)
    upstream = tf.constant(rng.standard_normal((batch, bank_size)).astype(np.float32))

    @tf.function
    def step() -> tf.Tensor:
        logits = tf.matmul(queries, bank, transpose_b=True)
        query_gradient = tf.matmul(upstream, bank)
        return tf.reduce_sum(logits[:, :1]) + tf.reduce_sum(query_gradient[:1])

    return step


def median_seconds(step: Callable[[], tf.Tensor], steps: int) -> float:
    step().numpy()  # warm-up (tracing, allocations)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step().numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 16384, 65536])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    steps: Dict[str, Callable[[], tf.Tensor]] = {"no bank": loss_step(0, args.batch, args.dim, args.seed)}
    for size in args.sizes:
        steps[f"bank {size}"] = loss_step(size, args.batch, args.dim, args.seed)
        steps[f"products {size}"] = products(size, args.batch, args.dim, args.seed)
    rounds: List[Dict[str, float]] = []
    for index in range(args.rounds):
        times = {name: median_seconds(step, args.steps) for name, step in steps.items()}
        times["load_average"] = os.getloadavg()[0]
        rounds.append(times)
        print(
            f"round {index + 1}: " + ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in times.items() if n != "load_average")
        )
    rows = []
    for size in args.sizes:
        extra = [r[f"bank {size}"] - r["no bank"] for r in rounds]
        product = [r[f"products {size}"] for r in rounds]
        ratios = [e / p for e, p in zip(extra, product)]
        rows.append(
            {
                "bank_size": size,
                "loss_step_no_bank_ms": 1e3 * float(np.median([r["no bank"] for r in rounds])),
                "loss_step_with_bank_ms": 1e3 * float(np.median([r[f"bank {size}"] for r in rounds])),
                "bank_extra_ms": 1e3 * float(np.median(extra)),
                "products_ms": 1e3 * float(np.median(product)),
                "extra_over_products": float(np.median(ratios)),
                "per_round_extra_over_products": ratios,
            }
        )
    lines = [
        f"B = {args.batch}, d = {args.dim}, float32; median of {args.rounds} interleaved rounds of {args.steps} steps.\n",
        "| M | loss step, no bank (ms) | with the bank (ms) | bank's extra (ms) | products (ms) | extra / products |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['bank_size']:,} | {row['loss_step_no_bank_ms']:.1f} | {row['loss_step_with_bank_ms']:.1f} | "
            f"{row['bank_extra_ms']:.1f} | {row['products_ms']:.1f} | {row['extra_over_products']:.2f}× |"
        )
    table = "\n".join(lines) + "\n"
    payload = {"batch": args.batch, "dim": args.dim, "rounds": rounds, "rows": rows}
    write_results(args.output_dir, "memory_bank_cost", payload, table)
    print(table)


if __name__ == "__main__":
    main()

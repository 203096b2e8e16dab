"""Why a cross-batch memory bank collapses MLP towers: a minimal two-tower simulation, outside the package.

    python benchmarks/memory_bank_collapse.py [--steps 1500]

Users with latent tastes pick items from a Zipf-like catalogue; two towers (free id embeddings, or
id embeddings followed by a 256-unit ReLU MLP), L2-normalised, τ = 0.05, Adam, batches of 256, are
trained with in-batch softmax, with and without a FIFO bank of the last M candidate embeddings
stored without gradient (CBNS). Reported per configuration: the loss, a proxy HR@50 (rank of each
user's most likely item among all items) and the mean resultant length ‖mean(v/‖v‖)‖ of the
candidate embeddings (1.0 = every item embedding points the same way: collapse).

The bank's negatives push only the queries (away from the stale candidates); the candidate tower
gets its repulsion from in-batch negatives alone, a share B / (B + M) of the softmax. With free id
tables each item moves on its own and the bank is harmless; with an MLP tower all items move
together, and once the bank dominates the softmax the candidate embeddings follow their queries
into one direction. Writes ``benchmarks/results/memory_bank_collapse.{json,md}``.
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

USERS, ITEMS, DIM, BATCH, TAU = 800, 1500, 32, 256, 0.05
CONFIGS = {  # name → (MLP towers, bank size M, warm-up steps)
    "free id tables, in-batch": (False, 0, 0),
    "free id tables, bank M=1024": (False, 1024, 0),
    "MLP towers, in-batch": (True, 0, 0),
    "MLP towers, bank M=512": (True, 512, 0),
    "MLP towers, bank M=512, warm-up 400": (True, 512, 400),
    "MLP towers, bank M=4096, warm-up 400": (True, 4096, 400),
}


def make_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(USERS, 8)) @ rng.normal(size=(ITEMS, 8)).T + np.log(1.0 / np.arange(1, ITEMS + 1) ** 0.8)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    users = rng.integers(0, USERS, 60000)
    items = (prob[users].cumsum(1) > rng.random(len(users))[:, None]).argmax(1)
    return users, items, prob.argmax(1)


def train(mlp: bool, bank_size: int, warmup: int, steps: int, data, seed: int = 0) -> dict:
    users, items, favourite = data
    rng = np.random.default_rng(seed + 1)
    tf.keras.utils.set_random_seed(seed)
    tables = [tf.Variable(tf.random.normal([n, DIM], stddev=0.1 if not mlp else 1.0)) for n in (USERS, ITEMS)]
    towers = [
        tf.keras.Sequential([tf.keras.layers.Dense(256, activation="relu"), tf.keras.layers.Dense(DIM)])
        if mlp
        else None
        for _ in range(2)
    ]
    for tower in towers:
        if tower is not None:
            tower.build([None, DIM])
    variables = tables + [v for t in towers if t is not None for v in t.trainable_variables]
    optimizer = tf.keras.optimizers.Adam(1e-3 if mlp else 1e-2)

    def encode(side: int, rows) -> tf.Tensor:
        x = tf.gather(tables[side], rows)
        return tf.math.l2_normalize(towers[side](x) if mlp else x, axis=1)

    bank, bank_ids = np.zeros((0, DIM), np.float32), np.zeros(0, np.int64)
    for step in range(steps):
        batch = rng.integers(0, len(users), BATCH)
        u, i = users[batch], items[batch]
        with tf.GradientTape() as tape:
            q, v = encode(0, u), encode(1, i)
            negatives, ids = v, i
            if bank_size and len(bank) and step >= warmup:
                negatives, ids = tf.concat([v, tf.constant(bank)], 0), np.concatenate([i, bank_ids])
            logits = tf.matmul(q, negatives, transpose_b=True) / TAU
            hits = (i[:, None] == ids[None, :]) & ~np.eye(BATCH, len(ids), dtype=bool)
            logits = tf.where(hits, -1e9, logits)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(np.arange(BATCH), logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        if bank_size:
            bank, bank_ids = np.concatenate([bank, v.numpy()])[-bank_size:], np.concatenate([bank_ids, i])[-bank_size:]
    q, v = encode(0, np.arange(USERS)).numpy(), encode(1, np.arange(ITEMS)).numpy()
    scores = q @ v.T
    ranks = (scores > scores[np.arange(USERS), favourite][:, None]).sum(1)
    return {
        "loss": float(loss),
        "proxy_HR@50": float((ranks < 50).mean()),
        "mean_resultant_length": float(np.linalg.norm(v.mean(0))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    data = make_data()
    results = {}
    for name, (mlp, bank_size, warmup) in CONFIGS.items():
        results[name] = train(mlp, bank_size, warmup, args.steps, data)
        print(name, results[name], flush=True)
    lines = ["| towers, negatives | final loss | proxy HR@50 | ‖mean v̂‖ (1 = collapse) |", "|---|---|---|---|"]
    lines += [
        f"| {n} | {r['loss']:.3f} | {r['proxy_HR@50']:.3f} | {r['mean_resultant_length']:.3f} |"
        for n, r in results.items()
    ]
    command = " ".join(["python", "benchmarks/memory_bank_collapse.py", *sys.argv[1:]])
    text = (
        f"`{command}` ({args.steps} steps, batch {BATCH}, {ITEMS} items, load {os.getloadavg()[0]:.1f})\n\n"
        + "\n".join(lines)
        + "\n"
    )
    write_results(Path(args.output_dir), "memory_bank_collapse", {"command": command, "results": results}, text)
    print(text)


if __name__ == "__main__":
    main()

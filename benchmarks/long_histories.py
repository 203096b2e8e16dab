"""Every-position training over long histories: time and memory against the history length.

    python benchmarks/long_histories.py --data-root ../shared/data --lengths 50 100 200 400 --rounds 2

Trains ``configs/long_history.yaml`` (a causal transformer over the history, every position
predicting its next item against the whole catalogue) on ml-100k, whose users have 20 to 737 ratings,
with the history length ``L`` set in both places a data set sets it (``data.max_history`` and
``model.history.max_length``) and nothing else changed, for ``--epochs`` epochs without a validation
split. Each (round, length) trains in a fresh process, the lengths interleaved within each round, so
the machine's load is shared out evenly; a row gives the median over rounds. Every training item but
a user's first is a target once whatever ``L`` is (a user's items are cut into sequences of ``L``
positions), so longer histories mean fewer, longer sequences with more context per position: the
work per target grows with the attention's ``L`` keys, the full softmax's per target does not.

Columns: sequences per epoch, seconds per epoch and trained targets per second (median over rounds),
their ratio to the shortest length, and the process's peak resident memory (``ru_maxrss``: data,
model and training together; the largest over rounds) and its growth over the shortest length.
Writes ``benchmarks/results/NAME.{json,md}`` (``--name``, default ``long_histories``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import resource
import statistics
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_results  # noqa: E402

PRESET = Path(__file__).resolve().parent.parent / "configs" / "long_history.yaml"


def train_once(root: str, length: int, epochs: int, seed: int) -> Dict[str, float]:
    """One training of the preset at history length ``length``, in this (fresh) process."""
    import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
    from tfrec_pipelines.sequences import num_targets, sequence_examples
    from tfrec_pipelines.train import fit_configured
    from tfrec_towers.config import apply_overrides, load_config

    keys = [
        "data.dataset=movielens",
        f"data.data_dir={root}/ml-100k",
        "data.validation=none",
        f"data.max_history={length}",
        f"model.history.max_length={length}",
        f"training.epochs={epochs}",
        f"training.seed={seed}",
    ]
    config = apply_overrides(load_config(PRESET), keys)
    fitted = fit_configured(config, verbose=0)
    data = fitted.data
    candidate_features = [f.name for f in fitted.spec.candidate]
    sequences = sequence_examples(data.train, candidate_features, data.candidate_id, length)
    targets = num_targets(sequences, data.candidate_id)
    return {
        "length": length,
        "sequences": len(sequences["history"]),
        "targets_per_epoch": targets,
        "seconds_per_epoch": fitted.train_seconds / epochs,
        "targets_per_second": targets * epochs / fitted.train_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def table(rows: List[dict], lengths: List[int]) -> str:
    """Median seconds per epoch and targets per second, their ratio to the shortest length, peak memory."""
    header = [
        "history length L",
        "sequences",
        "s per epoch",
        "targets/s",
        "time per target / L = first",
        "peak memory (MB)",
        "memory / L = first",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = {}
    for length in lengths:
        runs = [r for r in rows if r["length"] == length]
        summary[length] = {
            "sequences": runs[0]["sequences"],
            "seconds_per_epoch": statistics.median(r["seconds_per_epoch"] for r in runs),
            "targets_per_second": statistics.median(r["targets_per_second"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        }
    first = summary[lengths[0]]
    for length in lengths:
        row = summary[length]
        cells = [
            str(length),
            f"{row['sequences']:,}",
            f"{row['seconds_per_epoch']:.1f}",
            f"{row['targets_per_second']:,.0f}",
            f"{first['targets_per_second'] / row['targets_per_second']:.2f}×",
            f"{row['peak_rss_mb']:,.0f}",
            f"{row['peak_rss_mb'] / first['peak_rss_mb']:.2f}×",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="the folder holding ml-100k/")
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="long_histories", help="the results' file stem")
    args = parser.parse_args()

    command = " ".join(["python", "benchmarks/long_histories.py", *sys.argv[1:]])
    rows = []
    for round_ in range(args.rounds):
        for length in args.lengths:
            # a fresh process per training: its peak memory is that training's alone
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                row = pool.submit(train_once, args.data_root, length, args.epochs, args.seed).result()
            rows.append({"round": round_, **row})
            print(
                f"round {round_} L={length}: {row['seconds_per_epoch']:.1f} s/epoch, "
                f"{row['targets_per_second']:,.0f} targets/s, peak {row['peak_rss_mb']:,.0f} MB",
                flush=True,
            )
    markdown = f"`{command}`\n\n" + table(rows, args.lengths)
    payload = {"command": command, "preset": str(PRESET.name), "epochs": args.epochs, "rows": rows}
    write_results(Path(args.output_dir), args.name, payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()

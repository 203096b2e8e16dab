"""Every-position training with and without ``training.group_by_length``: the time of an epoch.

    python benchmarks/length_grouping.py --data-root ../shared/data --rounds 2

Trains ``configs/short_history.yaml`` (a causal transformer over the last 50 items, every position
against the whole catalogue) on amazon-beauty, whose users have a handful of items each, for
``--epochs`` epochs without a validation split, once as the file says and once with only
``training.group_by_length: true``: the same examples each epoch, batched by similar length, each
batch computed over its longest sequence only. Each (round, setting) trains in a fresh process, the
settings interleaved within each round; a row gives the median over rounds, and the padded share
of the slots the transformer computes per epoch (1 − valid positions / computed slots).
Writes ``benchmarks/results/NAME.{json,md}`` (``--name``, default ``length_grouping``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_results  # noqa: E402

PRESET = Path(__file__).resolve().parent.parent / "configs" / "short_history.yaml"
SETTINGS = {"as the preset says": [], "group_by_length: true": ["training.group_by_length=true"]}


def train_once(root: str, setting: str, epochs: int, seed: int) -> Dict[str, object]:
    """One training of the preset with ``setting``'s keys, in this (fresh) process."""
    import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
    from tfrec_pipelines.dataset import length_grouped_order
    from tfrec_pipelines.sequences import sequence_examples, sequence_lengths
    from tfrec_pipelines.train import fit_configured
    from tfrec_towers.config import apply_overrides, load_config

    keys = [
        "data.dataset=interactions",
        f"data.interactions.path={root}/amazon-beauty/interactions.csv",
        "data.validation=none",
        "training.early_stopping=null",
        f"training.epochs={epochs}",
        f"training.seed={seed}",
        *SETTINGS[setting],
    ]
    config = apply_overrides(load_config(PRESET), keys)
    fitted = fit_configured(config, verbose=0)
    data, training = fitted.data, config.training
    width = config.model.history.max_length
    sequences = sequence_examples(data.train, [f.name for f in fitted.spec.candidate], data.candidate_id, width)
    lengths = sequence_lengths(sequences, data.candidate_id)
    if training.group_by_length:  # the slots of each batch's longest sequence, in the first epoch's batches
        order = length_grouped_order(lengths, training.batch_size, training.seed, 0)
        computed = sum(
            lengths[order[i : i + training.batch_size]].max() * len(order[i : i + training.batch_size])
            for i in range(0, len(order), training.batch_size)
        )
    else:
        computed = len(lengths) * width
    return {
        "setting": setting,
        "sequences": len(lengths),
        "seconds_per_epoch": fitted.train_seconds / epochs,
        "padded_share": 1.0 - float(lengths.sum()) / float(computed),
    }


def table(rows: List[dict]) -> str:
    """Median seconds per epoch of each setting and its ratio to the preset as it is."""
    header = ["every-position training", "s per epoch", "time / as the preset says", "padded share of the slots"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    medians = {s: statistics.median(r["seconds_per_epoch"] for r in rows if r["setting"] == s) for s in SETTINGS}
    for setting in SETTINGS:
        padded = next(r["padded_share"] for r in rows if r["setting"] == setting)
        ratio = medians[setting] / medians["as the preset says"]
        lines.append(f"| {setting} | {medians[setting]:.1f} | {ratio:.2f}× | {padded:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="the folder holding amazon-beauty/")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="length_grouping", help="the results' file stem")
    args = parser.parse_args()

    command = " ".join(["python", "benchmarks/length_grouping.py", *sys.argv[1:]])
    rows = []
    for round_ in range(args.rounds):
        for setting in SETTINGS:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                row = pool.submit(train_once, args.data_root, setting, args.epochs, args.seed).result()
            rows.append({"round": round_, **row})
            print(f"round {round_} {setting}: {row['seconds_per_epoch']:.1f} s/epoch", flush=True)
    markdown = f"`{command}`\n\n" + table(rows)
    write_results(Path(args.output_dir), args.name, {"command": command, "rows": rows}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()

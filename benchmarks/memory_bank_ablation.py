"""The memory bank against no bank on catalogues much larger than a batch, beside the plain TFRS recipe.

    python benchmarks/memory_bank_ablation.py --data-root ../shared/data --seeds 0 1 2 --processes 2

For each data set and seed, in one run and interleaved, trains the plain TFRS recipe, the default
configuration, and the default with only ``loss.memory_bank_size`` set (every other bank setting at its
default: the recommended settings), then ranks the whole catalogue under the leave-last-out protocol
(docs/contracts.md). The data sets:

==================  =================================================  ============  ==========
name                source                                             items         bank size
==================  =================================================  ============  ==========
``amazon-beauty``   ``DATA_ROOT/amazon-beauty/interactions.csv``       12,101        4,096
``amazon-toys``     ``DATA_ROOT/amazon-toys/interactions.csv``         11,924        4,096
``synthetic-200k``  the synthetic generator, 200,000 items             200,000       16,384
``ml-100k``         ``DATA_ROOT/ml-100k`` (MovieLens 100K)             1,682         2,048
==================  =================================================  ============  ==========

Besides HR@10, NDCG@10 and HR@50 (mean ± std over seeds, ddof = 1) the table gives the mean resultant
length of the L2-normalised candidate embeddings at the end of training (the collapse check's
statistic, ``mean_resultant_length`` in the run's history: 1 when every item points the same way; the
table shows the mean and the largest over seeds). ``--processes 2`` trains two data sets at once, one
process each. Writes ``benchmarks/results/NAME.{json,md}`` (``--name``, default ``memory_bank_ablation``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import sys
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.baselines import plain_tfrs_model, plain_training  # noqa: E402
from benchmarks.common import add_data_set_arguments, summarise, write_results  # noqa: E402
from tfrec_pipelines.sources import prepare_data  # noqa: E402
from tfrec_pipelines.train import build_model, evaluate_model, fit_model  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides, config_to_dict  # noqa: E402

PLAIN = "plain TFRS recipe"
DEFAULT = "tfrec-towers default"
KS = (10, 50)
REPORTED = ("HR@10", "NDCG@10", "HR@50")
MRL = "mean_resultant_length"

# name → (the data set's overrides, with {root} the data root; the bank size its row sets)
DATASETS: Dict[str, Tuple[List[str], int]] = {
    "amazon-beauty": (
        ["data.dataset=interactions", "data.interactions.path={root}/amazon-beauty/interactions.csv"],
        4096,
    ),
    "amazon-toys": (
        ["data.dataset=interactions", "data.interactions.path={root}/amazon-toys/interactions.csv"],
        4096,
    ),
    "synthetic-200k": (
        ["data.dataset=synthetic", "data.num_items=200000", "data.num_users=5000", "data.interactions_per_user=20"],
        16384,
    ),
    "ml-100k": (["data.dataset=movielens", "data.data_dir={root}/ml-100k"], 2048),
}


def bank_row(size: int) -> str:
    return f"default + memory bank M={size:,}"


def run_dataset(name: str, root: str, seeds, overrides) -> Tuple[str, list]:
    data_overrides, bank_size = DATASETS[name]
    base = apply_overrides(ExperimentConfig(), [o.format(root=root) for o in data_overrides] + list(overrides))
    prepared = prepare_data(base)
    data, spec = prepared.data, prepared.adapted_spec()
    user = next(d.name for d in prepared.declarations.query if d.kind == "id")
    plain = plain_training(base.training.epochs)
    configs = {DEFAULT: base, bank_row(bank_size): apply_overrides(base, [f"loss.memory_bank_size={bank_size}"])}
    rows = []
    for seed in seeds:
        for row in (PLAIN, *configs):
            tf.keras.utils.set_random_seed(seed)
            if row == PLAIN:
                model = plain_tfrs_model(data.train, data.candidate_id, user_column=user)
                training = dataclasses.replace(plain, seed=seed)
                columns = {k: data.train[k] for k in (user, "history", data.candidate_id)}
            else:
                config = configs[row]
                config = dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed))
                model = build_model(spec, config, data)
                training = config.training
                columns = {f.name: data.train[f.name] for f in spec.all_features}
            history, seconds, rate = fit_model(model, columns, training, verbose=0)
            metrics = evaluate_model(model, data, ks=KS)
            trajectory = [float(x) for x in history.get(MRL, [])]
            rows.append(
                {
                    "name": row,
                    "seed": seed,
                    "metrics": metrics,
                    MRL: trajectory,
                    "train_seconds": seconds,
                    "examples_per_second": rate,
                }
            )
            end = f" MRL={trajectory[-1]:.2f}" if trajectory else ""
            print(
                f"[{name}] {row} seed={seed}: HR@10={metrics['HR@10']:.4f} NDCG@10={metrics['NDCG@10']:.4f} "
                f"HR@50={metrics['HR@50']:.4f}{end} ({seconds:.0f} s)",
                flush=True,
            )
    return name, rows


def table(rows: list) -> str:
    """Mean ± std of each metric, the end-of-training mean resultant length (mean, largest), examples/s."""
    summary = summarise(rows, REPORTED)
    header = ["configuration", *REPORTED, "candidate MRL at end (mean, max)", "examples/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, stats in summary.items():
        ends = [r[MRL][-1] for r in rows if r["name"] == name and r[MRL]]
        mrl = f"{np.mean(ends):.2f}, {max(ends):.2f}" if ends else "–"
        cells = [name] + [f"{stats[k]['mean']:.4f} ± {stats[k]['std']:.4f}" for k in REPORTED]
        lines.append("| " + " | ".join([*cells, mrl, f"{stats['examples_per_second']['mean']:,.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_set_arguments(parser, list(DATASETS))
    parser.add_argument(
        "--set", action="append", default=[], help="override a config key of every row but the plain one"
    )
    parser.add_argument("--processes", type=int, default=1, help="data sets trained at once, one process each")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="memory_bank_ablation", help="the results' file stem")
    args = parser.parse_args()

    command = " ".join(["python", "benchmarks/memory_bank_ablation.py", *sys.argv[1:]])
    results: Dict[str, dict] = {}
    with concurrent.futures.ProcessPoolExecutor(
        args.processes, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        runs = [pool.submit(run_dataset, name, args.data_root, args.seeds, args.set) for name in args.datasets]
        for run in concurrent.futures.as_completed(runs):  # each data set's rows are written once it ends
            name, rows = run.result()
            results[name] = {"bank_size": DATASETS[name][1], "rows": rows, "summary": summarise(rows, REPORTED)}
            done = [n for n in args.datasets if n in results]
            tables = [f"`{command}`\n"] + [f"### {n}\n\n" + table(results[n]["rows"]) for n in done]
            payload = {
                "command": command,
                "config": config_to_dict(ExperimentConfig()),
                "overrides": args.set,
                "results": {n: results[n] for n in done},
            }
            write_results(Path(args.output_dir), args.name, payload, "\n".join(tables))
    print("\n".join(tables))


if __name__ == "__main__":
    main()

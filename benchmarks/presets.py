"""The shipped presets against the default, the plain TFRS recipe and published sequential recommenders.

    python benchmarks/presets.py --data-root ../shared/data --datasets ml-100k --seeds 0 1 2 --processes 2

For each data set and seed, in one run, trains the plain TFRS recipe, the default configuration, the
default with the keys of each ``--variants`` row set (``VARIANTS``: one capability each, e.g. the
history's items read through the candidate tower) and each preset (``configs/long_history.yaml``, ``configs/short_history.yaml``: the file as
``tfrec-towers train --config`` reads it, with only the data set's keys added; ``--presets`` picks them), and on ml-100k the minimal SASRec with the full softmax of
``benchmarks/reference_transformer.py``, written apart from the library (30 epochs, batch 32, the last
50 items). Every row trains on the same interactions: each user's last interaction is the test target
and the one before it the validation target (``data.validation: last``), held out of every row's
training; a preset with early stopping picks its epoch on validation (with ``refit``, as in ``train``,
it is then retrained on the training and validation interactions for that many epochs, and its time
is both trainings'), and the test split is evaluated once, at the end (the protocol of ``../shared/data/README.md``: every item ranked, the user's earlier
items filtered out).

The table gives HR@10, NDCG@10, HR@50 and NDCG@50 (mean ± std over seeds, ddof = 1), the epochs
the final model trained and the training time of one run, and, under it, the published figures on the same files.
``--processes 2`` trains two (data set, seed) pairs at once, one process each. Writes
``benchmarks/results/NAME.{json,md}`` (``--name``, default ``presets``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.baselines import plain_tfrs_model, plain_training  # noqa: E402
from benchmarks.common import add_data_set_arguments, command_line, summarise, write_results  # noqa: E402
from benchmarks.reference_transformer import train_and_evaluate  # noqa: E402
from tfrec_pipelines.sources import prepare_data  # noqa: E402
from tfrec_pipelines.train import evaluate_model, fit_configured, fit_model  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides, config_to_dict, load_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PRESETS = {"long-history preset": CONFIGS / "long_history.yaml", "short-history preset": CONFIGS / "short_history.yaml"}
PLAIN = "plain TFRS recipe"
DEFAULT = "tfrec-towers default"
REFERENCE = "minimal SASRec, full softmax (reference)"
KS = (10, 50)
REPORTED = ("HR@10", "NDCG@10", "HR@50", "NDCG@50")

# name → the data set's keys, with {root} the data root
DATASETS: Dict[str, List[str]] = {
    "amazon-beauty": ["data.dataset=interactions", "data.interactions.path={root}/amazon-beauty/interactions.csv"],
    "amazon-toys": ["data.dataset=interactions", "data.interactions.path={root}/amazon-toys/interactions.csv"],
    "ml-100k": ["data.dataset=movielens", "data.data_dir={root}/ml-100k"],
}
# Published full-catalogue results on these files (../shared/data/README.md): (model, HR@10, NDCG@10, source)
PUBLISHED: Dict[str, List[Tuple[str, float, float, str]]] = {
    "amazon-beauty": [
        ("SASRec, sampled softmax over 256 negatives", 0.0921, 0.0531, "blondered/transformer_benchmark"),
        ("ICSRec (WSDM 2024)", 0.0959, 0.0578, "ICSRec README"),
        ("BSARec (AAAI 2024)", 0.1008, 0.0611, "BSARec released checkpoint"),
    ],
    "amazon-toys": [
        ("SASRec, sampled softmax over 256 negatives", 0.0970, 0.0580, "blondered/transformer_benchmark"),
        ("ICSRec (WSDM 2024)", 0.1055, 0.0657, "ICSRec README"),
    ],
    "ml-100k": [],
}


# row → the keys it sets on the default (one capability each: a user who sets them changes that alone)
VARIANTS: Dict[str, List[str]] = {
    "default + history items through the candidate tower": ["model.history.items=candidate_tower"],
    # the best of `tfrec-towers tune` on ml-100k's validation split (NDCG@10; benchmarks/search/), rounded
    "default + history items, tuned on validation": [
        "model.history.items=candidate_tower",
        "training.learning_rate=0.00346",
        "model.temperature=0.1425",
        "training.batch_size=256",
        "loss.mixed_negatives=0",
    ],
}


def row_configs(
    name: str, root: str, presets: Dict[str, Path], variants: Sequence[str] = ()
) -> Dict[str, ExperimentConfig]:
    """The default, each variant of it and each preset with only the data set's keys (and the
    validation split) added."""
    keys = [k.format(root=root) for k in DATASETS[name]] + ["data.validation=last"]
    configs = {DEFAULT: apply_overrides(ExperimentConfig(), keys)}
    configs.update({row: apply_overrides(ExperimentConfig(), keys + VARIANTS[row]) for row in variants})
    configs.update({row: apply_overrides(load_config(path), keys) for row, path in presets.items()})
    return configs


def run_dataset(
    name: str, root: str, seeds, presets: Dict[str, Path], reference: bool, variants: Sequence[str] = ()
) -> Tuple[str, list]:
    """Every row of data set ``name`` for each of ``seeds``, in order."""
    configs = row_configs(name, root, presets, variants)
    prepared = prepare_data(configs[DEFAULT])
    default_data = prepared.data
    user = next(d.name for d in prepared.declarations.query if d.kind == "id")
    plain_epochs = configs[DEFAULT].training.epochs  # the default's, as in the other tables
    rows = []
    for seed in seeds:
        for row in (PLAIN, *configs, *([REFERENCE] if reference else [])):
            tf.keras.utils.set_random_seed(seed)
            epochs = None
            if row == PLAIN:
                data = default_data
                model = plain_tfrs_model(data.train, data.candidate_id, user_column=user)
                columns = {k: data.train[k] for k in (user, "history", data.candidate_id)}
                _, seconds, rate = fit_model(model, columns, plain_training(plain_epochs, seed), verbose=0)
                metrics = evaluate_model(model, data, ks=KS)
            elif row == REFERENCE:
                result = train_and_evaluate(default_data, seed, loss="full_softmax", epochs=30, max_length=50)
                metrics, seconds, rate = result["metrics"], result["train_seconds"], result["examples_per_second"]
            else:
                config = configs[row]
                config = dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed))
                fitted = fit_configured(config, verbose=0)  # as `train` trains it, a refit included
                seconds, rate = fitted.train_seconds, fitted.examples_per_second
                epochs = len(fitted.history.get("loss", []))
                metrics = evaluate_model(fitted.model, fitted.data, ks=KS)
            rows.append(
                {
                    "name": row,
                    "seed": seed,
                    "metrics": metrics,
                    "epochs": epochs,
                    "train_seconds": seconds,
                    "examples_per_second": rate,
                }
            )
            print(
                f"[{name}] {row} seed={seed}: HR@10={metrics['HR@10']:.4f} NDCG@10={metrics['NDCG@10']:.4f} "
                f"HR@50={metrics['HR@50']:.4f} ({seconds:.0f} s, {epochs or '-'} epochs)",
                flush=True,
            )
    return name, rows


def table(name: str, rows: list) -> str:
    """Mean ± std of each metric, epochs and training minutes per run; the published figures below."""
    summary = summarise(rows, REPORTED)
    header = ["configuration", *REPORTED, "epochs", "training min per run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, stats in summary.items():
        epochs = [r["epochs"] for r in rows if r["name"] == row and r["epochs"] is not None]
        cells = [row] + [f"{stats[k]['mean']:.4f} ± {stats[k]['std']:.4f}" for k in REPORTED]
        cells.append(f"{min(epochs)}–{max(epochs)}" if epochs else "–")
        cells.append(f"{stats['train_seconds']['mean'] / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    for model, hr, ndcg, source in PUBLISHED[name]:
        lines.append(f"| published: {model} ({source}) | {hr:.4f} | {ndcg:.4f} | – | – | – | – |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_set_arguments(parser, list(DATASETS))
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=list(VARIANTS),
        help="rows of the default with keys of VARIANTS set",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="(data set, seed) pairs trained at once, one process each"
    )
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="presets", help="the results' file stem")
    args = parser.parse_args()

    command = command_line("presets.py")
    presets = {row: PRESETS[row] for row in args.presets}
    results: Dict[str, dict] = {}
    with concurrent.futures.ProcessPoolExecutor(
        args.processes, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        runs = {
            pool.submit(run_dataset, name, args.data_root, [seed], presets, name == "ml-100k", args.variants): (
                name,
                seed,
            )
            for name in args.datasets
            for seed in args.seeds
        }
        pending = {name: len(args.seeds) for name in args.datasets}
        rows_of: Dict[str, list] = {name: [] for name in args.datasets}
        for run in concurrent.futures.as_completed(runs):  # each data set's rows are written once it ends
            name, rows = run.result()
            rows_of[name] += rows
            pending[name] -= 1
            if pending[name]:
                continue
            rows = sorted(rows_of[name], key=lambda r: args.seeds.index(r["seed"]))
            results[name] = {"rows": rows, "summary": summarise(rows, REPORTED)}
            done = [n for n in args.datasets if n in results]
            tables = [f"`{command}`\n"] + [f"### {n}\n\n" + table(n, results[n]["rows"]) for n in done]
            payload = {
                "command": command,
                "presets": {row: config_to_dict(load_config(path)) for row, path in presets.items()},
                "variants": {row: VARIANTS[row] for row in args.variants},
                "results": {n: results[n] for n in done},
            }
            write_results(Path(args.output_dir), args.name, payload, "\n".join(tables))
    print("\n".join(tables))


if __name__ == "__main__":
    main()

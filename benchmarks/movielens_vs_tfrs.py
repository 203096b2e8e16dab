"""The default configuration versus the plain TFRS recipe on one MovieLens directory.

Same data, same leave-last-out protocol, same seeds, one run:

    python benchmarks/movielens_vs_tfrs.py --data-dir ../shared/data/ml-100k [--seeds 0 1 2]

Writes ``benchmarks/results/movielens_vs_tfrs.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.baselines import plain_tfrs_model, plain_training  # noqa: E402
from benchmarks.common import markdown_table, summarise, write_results  # noqa: E402
from tfrec_pipelines.sources import prepare_data  # noqa: E402
from tfrec_pipelines.train import build_model, evaluate_model, fit_model  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides, config_to_dict, load_config  # noqa: E402

PLAIN = "plain TFRS recipe"
DEFAULT = "tfrec-towers default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", help="compare this configuration instead of the defaults")
    parser.add_argument("--set", action="append", default=[], help="override a config key, as in the CLI")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    base = load_config(args.config) if args.config else ExperimentConfig()
    base = apply_overrides(base, ["data.dataset=movielens", f"data.data_dir={args.data_dir}", *args.set])
    prepared = prepare_data(base)
    data, spec = prepared.data, prepared.adapted_spec()
    plain = plain_training(base.training.epochs)

    rows = []
    for seed in args.seeds:
        config = dataclasses.replace(base, training=dataclasses.replace(base.training, seed=seed))
        for name in (PLAIN, DEFAULT):
            tf.keras.utils.set_random_seed(seed)
            if name == PLAIN:
                model = plain_tfrs_model(data.train, data.candidate_id)
                training = dataclasses.replace(plain, seed=seed)
                columns = {k: data.train[k] for k in ("user_id", "history", data.candidate_id)}
            else:
                model = build_model(spec, config, data)
                training = config.training
                columns = {f.name: data.train[f.name] for f in spec.all_features}
            _, seconds, rate = fit_model(model, columns, training, verbose=0)
            metrics = evaluate_model(model, data)
            rows.append(
                {"name": name, "seed": seed, "metrics": metrics, "train_seconds": seconds, "examples_per_second": rate}
            )
            print(
                f"{name} seed={seed}: HR@50={metrics['HR@50']:.4f} NDCG@10={metrics['NDCG@10']:.4f} ({seconds:.0f} s)",
                flush=True,
            )

    summary = summarise(rows)
    table = markdown_table(summary, baseline=PLAIN)
    command = " ".join(["python", "benchmarks/movielens_vs_tfrs.py", *sys.argv[1:]])
    write_results(
        Path(args.output_dir),
        "movielens_vs_tfrs",
        {"command": command, "dataset": data.name, "config": config_to_dict(base), "rows": rows, "summary": summary},
        f"`{command}` on {data.name}\n\n{table}",
    )
    print(table)


if __name__ == "__main__":
    main()

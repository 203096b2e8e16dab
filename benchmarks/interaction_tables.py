"""The default configuration versus the plain TFRS recipe on interaction tables (user, item, timestamp).

Each table is read through the generic data path (``data.dataset: interactions``, as
``tfrec-towers train --interactions PATH`` does), split by leave-last-out (each user's last item the
target, every item ranked, the user's earlier items filtered out), and both models are trained on
the same split with the same seeds, in one run:

    python benchmarks/interaction_tables.py \\
        --interactions ../shared/data/amazon-beauty/interactions.csv ../shared/data/amazon-toys/interactions.csv \\
        --seeds 0 1 2 --processes 2

``--processes 2`` trains the tables side by side, one process each (the seeds of a table, and its
two models, stay in one process, interleaved). Writes ``benchmarks/results/interaction_tables.{json,md}`` (HR@10, NDCG@10, HR@20, NDCG@20 and
HR@50, mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

import tfrec_towers  # noqa: F401,E402  (selects Keras 2 before tf.keras is first used)
from benchmarks.baselines import plain_tfrs_model, plain_training  # noqa: E402
from benchmarks.common import markdown_table, summarise, write_results  # noqa: E402
from tfrec_pipelines.sources import prepare_data  # noqa: E402
from tfrec_pipelines.train import build_model, evaluate_model, fit_model  # noqa: E402
from tfrec_towers.config import ExperimentConfig, apply_overrides, config_to_dict  # noqa: E402

PLAIN = "plain TFRS recipe"
DEFAULT = "tfrec-towers default"
KS = (10, 20, 50, 100)
REPORTED = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "HR@50")


def run_table(path: str, seeds, overrides) -> tuple[str, list]:
    base = apply_overrides(
        ExperimentConfig(), ["data.dataset=interactions", f"data.interactions.path={path}", *overrides]
    )
    prepared = prepare_data(base)
    data, spec = prepared.data, prepared.adapted_spec()
    user = next(d.name for d in prepared.declarations.query if d.kind == "id")
    plain = plain_training(base.training.epochs)
    rows = []
    for seed in seeds:
        config = dataclasses.replace(base, training=dataclasses.replace(base.training, seed=seed))
        for name in (PLAIN, DEFAULT):
            tf.keras.utils.set_random_seed(seed)
            if name == PLAIN:
                model = plain_tfrs_model(data.train, data.candidate_id, user_column=user)
                training = dataclasses.replace(plain, seed=seed)
                columns = {k: data.train[k] for k in (user, "history", data.candidate_id)}
            else:
                model = build_model(spec, config, data)
                training = config.training
                columns = {f.name: data.train[f.name] for f in spec.all_features}
            _, seconds, rate = fit_model(model, columns, training, verbose=0)
            metrics = evaluate_model(model, data, ks=KS)
            rows.append(
                {"name": name, "seed": seed, "metrics": metrics, "train_seconds": seconds, "examples_per_second": rate}
            )
            print(
                f"[{data.name}] {name} seed={seed}: HR@10={metrics['HR@10']:.4f} NDCG@10={metrics['NDCG@10']:.4f} "
                f"({seconds:.0f} s)",
                flush=True,
            )
    return data.name, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--interactions", nargs="+", required=True, help="interaction tables (user_id, item_id, timestamp)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--set", action="append", default=[], help="override a config key of the default, as in the CLI"
    )
    parser.add_argument("--processes", type=int, default=1, help="tables trained at once, one process each")
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    command = " ".join(["python", "benchmarks/interaction_tables.py", *sys.argv[1:]])
    results, tables = {}, [f"`{command}`\n"]
    with concurrent.futures.ProcessPoolExecutor(
        args.processes, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        runs = [pool.submit(run_table, path, args.seeds, args.set) for path in args.interactions]
    for path, run in zip(args.interactions, runs):
        name, rows = run.result()
        summary = summarise(rows, REPORTED)
        results[name] = {"path": path, "rows": rows, "summary": summary}
        tables.append(f"### {name}\n\n" + markdown_table(summary, baseline=PLAIN, reported=REPORTED))
        write_results(
            Path(args.output_dir),
            "interaction_tables",
            {
                "command": command,
                "config": config_to_dict(ExperimentConfig()),
                "overrides": args.set,
                "results": results,
            },
            "\n".join(tables),
        )
    print("\n".join(tables))


if __name__ == "__main__":
    main()

"""The ``tfrec-towers`` command: a thin shell over ``tfrec_pipelines.train``, ``tfrec_pipelines.search`` and
``tfrec_towers.verify``.

Exit codes: 0 success · 2 bad arguments, configuration or data · 3 the export failed verification ·
4 ``tune-index`` found no configuration reaching the target recall (the report is still written) ·
130 ``train`` was interrupted (Ctrl-C) after writing a checkpoint, or ``tune`` between or during trials:
rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tfrec_towers.atomic_file import write_text_atomically
from tfrec_towers.progress import set_progress

EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED, EXIT_TARGET_MISSED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130

TRAIN_EXAMPLE = """examples:
  tfrec-towers train --interactions logs/*.parquet --items items.parquet --users users.csv --output runs/shop
  tfrec-towers train --interactions events.csv --output runs/a --set data.interactions.item_column=sku
  tfrec-towers train --output runs/demo                      # synthetic data, default config
  tfrec-towers train --dataset movielens --data-dir ~/data/ml-1m --output runs/ml1m --epochs 5
  tfrec-towers train --dataset movielens --data-dir ml-100k --output runs/a --config my.yaml \\
      --set model.temperature=0.1 --set training.batch_size=1024

resuming: checkpoints go to .<output name>.partial/ beside --output (every epoch and every
training.checkpoint_every_seconds); after a crash, kill or Ctrl-C (which finishes the batch,
saves and exits 130), rerun the same command to resume.
"""
EVALUATE_EXAMPLE = """example:
  tfrec-towers evaluate --run runs/ml1m            # prints HR@K / NDCG@K as JSON

the evaluation protocol (held-out interactions, the whole catalogue ranked, seen items filtered):
docs/contracts.md
"""
EXPORT_EXAMPLE = """examples:
  tfrec-towers export --run runs/ml1m --output /models --index brute-force --k 50
  # writes /models/<model_name>/<next version>/ (retrieval and embedding signatures), atomically, then verifies it
  tfrec-towers export --run runs/ml1m --output /models --index scann --candidates catalogue.parquet
  # indexes the rows of a candidate table (Parquet/CSV/TFRecord); results are its ids
  tfrec-towers export --run runs/ml1m --output /models --index-config tuning/tuning.json
  tfrec-towers export --run runs/ml1m --output /models --index scann --num-leaves 1000 \\
      --leaves-to-search 60 --reordering-multiplier 10 --k 10

the SavedModel's layout, signatures and inputs (what TF Serving and clients see): docs/contracts.md
"""
TUNE_INDEX_EXAMPLE = """example:
  tfrec-towers tune-index --run runs/ml1m --k 10 --target-recall 0.95 --output runs/ml1m/tuning
  # prints the recall/QPS frontier, writes tuning.json + tuning.png and the export command
"""
TUNE_EXAMPLE = """example:
  tfrec-towers tune --config base.yaml --space space.yaml --trials 30 --output search/ml1m --metric HR@10
  # trains each trial on the training split, scores it on the validation split (never the test split),
  # writes study.db, trials.csv, results.md, search.png and best.yaml; rerun it to continue the search
  tfrec-towers train --config search/ml1m/best.yaml --output runs/best

space.yaml maps configuration keys to ranges or choices:
  training.learning_rate: {low: 0.0003, high: 0.01, log: true}
  loss.mixed_negatives: {choices: [0, 256, 1024]}
see docs/tuning.md
"""
INIT_EXAMPLE = """example:
  tfrec-towers init experiment.yaml              # every key with its default and what it means
  tfrec-towers train --config experiment.yaml --output runs/a
"""
REPORT_EXAMPLE = """example:
  tfrec-towers report --run runs/ml1m                  # writes runs/ml1m/report/report.html and its PNGs
  tfrec-towers report --run runs/ml1m --tuning tuned/ --output /tmp/ml1m-report
"""
COMPARE_EXAMPLE = """example:
  tfrec-towers compare runs/a runs/b runs/c            # prints a metrics table
  tfrec-towers compare runs/a runs/b --output reports/a-vs-b   # and renders one HTML report of all
"""
VERIFY_EXAMPLE = """example:
  tfrec-towers verify runs/ml1m/export/tfrec_towers/1 --report verify.json
  # loads the SavedModel in a fresh Python process that imports only TensorFlow

checks the export against the SavedModel contract of docs/contracts.md
"""


PASSTHROUGH_HELP = {
    "embed": "batch embedding job on Apache Beam (see `tfrec-towers embed --help`)",
    "index-embeddings": "index an embed job's output and export it for TF Serving",
}


def _run_passthrough(command: str, argv: Sequence[str]) -> int:
    """``embed`` → :func:`tfrec_pipelines.embed_job.main`; ``index-embeddings`` → :func:`tfrec_pipelines.index_from_embeddings.main`."""
    import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
    from tfrec_pipelines.data import DataError
    from tfrec_towers.extras import MissingExtraError

    try:
        if command == "embed":
            from tfrec_pipelines.embed_job import main as run
        else:
            from tfrec_pipelines.index_from_embeddings import main as run
        return run(list(argv), prog=f"tfrec-towers {command}")
    except (ValueError, DataError, OSError, MissingExtraError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _checked(parse: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: ``parse(text)`` when it parses and ``ok`` holds (argparse names the flag in its error)."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {expected}. Received: {text!r}")
        return value

    return convert


_positive_int = _checked(int, lambda value: value >= 1, "an integer ≥ 1")
_fraction = _checked(float, lambda value: math.isfinite(value) and 0.0 < value <= 1.0, "a number in (0, 1]")


def _path(text: str) -> str:
    """An argparse type: a non-empty path (an empty one would silently mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a non-empty path.")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfrec-towers", description="Train, evaluate, export and verify two-tower retrieval models."
    )
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("--quiet", action="store_true", help="print only results and errors")
    loudness.add_argument("--verbose", action="store_true", help="also print debugging detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    train = commands.add_parser(
        "train", help="train, evaluate, export and verify", epilog=TRAIN_EXAMPLE, formatter_class=fmt
    )
    train.add_argument(
        "--interactions",
        type=_path,
        metavar="PATH",
        help="your interaction log: a CSV, Parquet or TFRecord file, a directory or a glob "
        "(columns user_id, item_id and, if present, timestamp; see data.interactions)",
    )
    train.add_argument(
        "--items", type=_path, metavar="PATH", help="an items table keyed by the item column (the catalogue)"
    )
    train.add_argument("--users", type=_path, metavar="PATH", help="a users table keyed by the user column")
    train.add_argument(
        "--dataset",
        choices=["interactions", "synthetic", "movielens"],
        help="data set (default: the config's; interactions with --interactions, movielens with "
        "--data-dir, else synthetic)",
    )
    train.add_argument(
        "--data-dir", type=_path, help="a MovieLens release directory (ml-100k, ml-1m, ml-20m, ml-25m, ml-latest)"
    )
    train.add_argument("--output", type=_path, required=True, help="new run directory")
    train.add_argument("--config", type=_path, help="YAML or JSON experiment configuration")
    train.add_argument("--epochs", type=int, help="override training.epochs")
    train.add_argument("--seed", type=int, help="override training.seed")
    train.add_argument("--index", choices=["brute-force", "scann"], help="override export.index")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")

    evaluate = commands.add_parser(
        "evaluate", help="re-evaluate a trained run", epilog=EVALUATE_EXAMPLE, formatter_class=fmt
    )
    evaluate.add_argument("--run", type=_path, required=True, help="run directory written by train")
    evaluate.add_argument(
        "--data-dir", type=_path, help="evaluate on this MovieLens directory instead of the run's data"
    )
    evaluate.add_argument("--output", type=_path, help="also write the metrics JSON here")

    export = commands.add_parser(
        "export", help="export a run as a new SavedModel version", epilog=EXPORT_EXAMPLE, formatter_class=fmt
    )
    export.add_argument("--run", type=_path, required=True, help="run directory written by train")
    export.add_argument("--output", type=_path, help="export base directory (default: RUN/export)")
    export.add_argument("--index", choices=["brute-force", "scann"], help="retrieval index (default: the run's)")
    export.add_argument(
        "--k", type=_positive_int, help="candidates returned per query, ≥ 1 (default: the run's, or the index config's)"
    )
    export.add_argument(
        "--candidates",
        type=_path,
        metavar="TABLE",
        help="candidate feature table to index (Parquet/CSV/TFRecord; default: the run's catalogue)",
    )
    export.add_argument(
        "--index-config",
        type=_path,
        metavar="JSON",
        help="tune-index's tuning.json (its chosen config) or an IndexConfig JSON",
    )
    export.add_argument("--num-leaves", type=_positive_int, help="ScaNN partitions (default: about sqrt(N))")
    export.add_argument(
        "--leaves-to-search", dest="num_leaves_to_search", type=_positive_int, help="ScaNN leaves searched per query"
    )
    export.add_argument(
        "--reordering-multiplier", type=_positive_int, help="ScaNN re-scores this many times k candidates exactly"
    )
    export.add_argument(
        "--exclude-history",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="leave the query's history items out of serving_default's top k, still k results "
        "(default: the run's export.exclude_history)",
    )
    export.add_argument("--no-verify", action="store_true", help="skip the fresh-process verification")

    tune = commands.add_parser(
        "tune-index", help="sweep ScaNN settings on held-out queries", epilog=TUNE_INDEX_EXAMPLE, formatter_class=fmt
    )
    tune.add_argument("--run", type=_path, required=True, help="run directory written by train")
    tune.add_argument("--output", type=_path, required=True, help="directory for tuning.json and tuning.png")
    tune.add_argument(
        "--candidates",
        type=_path,
        metavar="TABLE",
        help="candidate feature table to index (default: the run's catalogue)",
    )
    tune.add_argument("--k", type=_positive_int, default=10, help="neighbours per query (default: 10)")
    tune.add_argument(
        "--target-recall",
        type=_fraction,
        default=0.95,
        help="recall@k against exact search to reach, in (0, 1] (default: 0.95)",
    )
    tune.add_argument(
        "--num-queries", type=_positive_int, default=1000, help="held-out queries to tune on (default: 1000)"
    )
    tune.add_argument(
        "--num-leaves",
        type=_positive_int,
        nargs="+",
        help="ScaNN partition counts to try (default: 0.5, 1 and 2 x sqrt(N))",
    )

    search = commands.add_parser(
        "tune",
        help="search hyper-parameters on the validation split (Optuna)",
        epilog=TUNE_EXAMPLE,
        formatter_class=fmt,
    )
    search.add_argument("--config", type=_path, required=True, help="the base YAML or JSON configuration")
    search.add_argument(
        "--space", type=_path, required=True, help="YAML search space: configuration keys to ranges or choices"
    )
    search.add_argument(
        "--trials", type=_positive_int, required=True, help="complete or pruned trials the search should hold"
    )
    search.add_argument(
        "--output", type=_path, required=True, help="search directory (study.db and reports); an existing one continues"
    )
    search.add_argument(
        "--metric",
        default="HR@10",
        help="validation metric to maximise: HR@K or NDCG@K, K in 10, 50, 100 (default: HR@10)",
    )
    search.add_argument(
        "--timeout",
        type=_checked(float, lambda value: math.isfinite(value) and value > 0, "a positive number of seconds"),
        help="start no trial after this many seconds (the running one finishes)",
    )
    search.add_argument(
        "--seed",
        type=_checked(int, lambda value: value >= 0, "an integer ≥ 0"),
        default=0,
        help="sampler seed (default: 0)",
    )

    init = commands.add_parser(
        "init", help="write a commented example configuration", epilog=INIT_EXAMPLE, formatter_class=fmt
    )
    init.add_argument("path", type=_path, help="the YAML file to write (refused if it exists)")

    report = commands.add_parser(
        "report", help="HTML report of a run, with plots", epilog=REPORT_EXAMPLE, formatter_class=fmt
    )
    report.add_argument("--run", type=_path, required=True, help="run directory written by train")
    report.add_argument("--output", type=_path, help="report directory (default: RUN/report)")
    report.add_argument(
        "--tuning", type=_path, help="a tune-index output (tuning.json or its directory) to plot the index frontier"
    )

    compare = commands.add_parser(
        "compare", help="metrics of several runs side by side", epilog=COMPARE_EXAMPLE, formatter_class=fmt
    )
    compare.add_argument("runs", type=_path, nargs="+", metavar="RUN_DIR", help="run directories written by train")
    compare.add_argument("--output", type=_path, help="also render one HTML report comparing the runs here")

    # Batch jobs with their own parsers (Beam options pass through): `main` hands them the rest of argv.
    for name, help_text in PASSTHROUGH_HELP.items():
        commands.add_parser(name, help=help_text, add_help=False)

    verify = commands.add_parser(
        "verify", help="check a SavedModel in a fresh process", epilog=VERIFY_EXAMPLE, formatter_class=fmt
    )
    verify.add_argument("export_path", type=_path, help="<export_base>/<model_name>/<version>")
    verify.add_argument("--report", type=_path, help="write the JSON report here")
    return parser


def _resolve_config(args: argparse.Namespace):
    from tfrec_towers.config import ExperimentConfig, apply_overrides, load_config

    config = ExperimentConfig() if args.config is None else load_config(args.config)
    overrides: List[str] = []
    tables = {"interactions": args.interactions, "users": args.users, "items": args.items}
    dataset = args.dataset
    if dataset is None and args.interactions is not None:
        dataset = "interactions"
    elif dataset is None and args.data_dir is not None:
        dataset = "movielens"
    if dataset is not None:
        overrides.append(f"data.dataset={dataset}")
    if args.data_dir is not None:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    for table, path in tables.items():
        if path is not None:
            overrides.append(f"data.{table}.path={json.dumps(path)}")
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"training.seed={args.seed}")
    if args.index is not None:
        overrides.append(f"export.index={args.index}")
    return apply_overrides(config, overrides + list(args.set))


def _print_verification(report: dict, out: Callable[[str], None]) -> int:
    failed = [c for c in report.get("checks", []) if not c.get("ok")]
    for check in failed:
        out(f"  FAILED {check.get('name')}: {check.get('detail')}")
    out(
        f"verification: {'ok' if report.get('ok') else 'FAILED'} ({len(report.get('checks', []))} checks, {len(failed)} failed)"
    )
    metrics = report.get("metrics") or {}
    if "recall_at_k" in metrics:
        out(
            f"  recall@{metrics['k']} against exact search: {metrics['recall_at_k']:.4f} ({metrics['num_recall_queries']} queries)"
        )
    if "latency_ms" in metrics:
        latency = metrics["latency_ms"]
        out(
            f"  single query: p50 {latency['p50']:.2f} ms, p99 {latency['p99']:.2f} ms; "
            f"{metrics['batched_qps']:,.0f} queries/s in batches of {metrics['qps_batch_size']} (in-process, not a server)"
        )
    return EXIT_OK if report.get("ok") else EXIT_VERIFY_FAILED


def _check_output_file(path: str | Path) -> None:
    """Fails before any work if ``path`` cannot become a file (it is a directory, or under a file).

    Raises:
      IsADirectoryError: ``path`` is a directory.
      NotADirectoryError: a parent of ``path`` is a file.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory: expected the path of a file to write.")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise NotADirectoryError(f"{target}: {parent} is a file, not a directory.")


def _write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` (creating its directory), atomically: a temporary sibling is
    written, then renamed, so no half-written file is left behind."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(target, text)


def _write_json(path: str, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2) + "\n")


def _cmd_train(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from tfrec_pipelines.run_errors import TrainingInterrupted
    from tfrec_pipelines.train import train

    config = _resolve_config(args)
    # Keras progress bars on a terminal (or with --verbose), one line per epoch in logs.
    verbose = 0 if args.quiet else 1 if (args.verbose or sys.stdout.isatty()) else 2
    try:
        result = train(config, args.output, verbose=verbose)
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return EXIT_INTERRUPTED
    print(json.dumps(result.metrics, indent=2))
    out(f"run: {result.run_dir}")
    out(f"export: {result.export_path}")
    out(f"training: {result.train_seconds:.1f} s, {result.examples_per_second:,.0f} examples/s")
    _print_collapse(result.collapse or {}, result.run_dir, out)
    return _print_verification(result.verification, out) if result.verification else EXIT_OK


def _print_collapse(collapse: Dict[str, Any], run_dir: Path, out: Callable[[str], None]) -> None:
    """One line on whether the trained model collapsed (``RUN/collapse.json`` has the per-epoch values)."""
    final = collapse.get("final")
    if not final:
        return
    if collapse.get("collapsed"):
        print(
            f"collapse: COLLAPSED at epoch {final['epoch']} ({' and '.join(final['findings'])}); "
            f"see {run_dir / 'collapse.json'}",
            file=sys.stderr,
        )
    else:
        out(
            f"collapse: none (mean resultant length {final['mean_resultant_length']:.3f}, "
            f"score spread {final['score_spread']:.4f})"
        )


def _cmd_evaluate(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from tfrec_pipelines.train import evaluate_run

    if args.output is not None:
        _check_output_file(args.output)
    metrics = evaluate_run(args.run, args.data_dir)
    print(json.dumps(metrics, indent=2))
    if args.output is not None:
        _write_json(args.output, metrics)
    return EXIT_OK


SCANN_FLAGS = {
    "num_leaves": "--num-leaves",
    "num_leaves_to_search": "--leaves-to-search",
    "reordering_multiplier": "--reordering-multiplier",
}


def _export_index(args: argparse.Namespace) -> Tuple[Any, Dict[str, int]]:
    """``(index, index_settings)`` of ``export_run``: a kind or a config from a file, and ScaNN flags."""
    from tfrec_towers.tuning import load_index_config

    if args.index_config is not None and args.index is not None:
        raise ValueError("Pass either --index or --index-config (which names the index kind), not both.")
    index = load_index_config(args.index_config) if args.index_config is not None else args.index
    settings = {field: getattr(args, field) for field in SCANN_FLAGS if getattr(args, field) is not None}
    if settings and getattr(index, "kind", index) == "brute-force":
        flags = ", ".join(SCANN_FLAGS[field] for field in settings)
        raise ValueError(f"{flags} set ScaNN parameters, but the index is brute-force: drop them or use --index scann.")
    if settings and index is None:
        index = "scann"
    return index, settings


def _export_command(config) -> str:
    """The export flags that reproduce an ``IndexConfig``."""
    flags = [f"--index {config.kind}", f"--k {config.k}"]
    if config.kind == "scann":
        flags += [f"{flag} {getattr(config, field)}" for field, flag in SCANN_FLAGS.items()]
    return " ".join(flags)


def _cmd_export(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from tfrec_pipelines.train import export_run
    from tfrec_towers.verify import verify_export

    index, settings = _export_index(args)
    path = export_run(
        args.run,
        args.output,
        index=index,
        k=args.k,
        candidates=args.candidates,
        index_settings=settings,
        exclude_history=args.exclude_history,
    )
    print(path)
    return EXIT_OK if args.no_verify else _print_verification(verify_export(path), out)


def _cmd_tune_index(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from tfrec_pipelines.train import tune_run
    from tfrec_towers.tuning import TuningGrid

    result, paths = tune_run(
        args.run,
        args.output,
        candidates=args.candidates,
        k=args.k,
        target_recall=args.target_recall,
        grid=TuningGrid(num_leaves=tuple(args.num_leaves)) if args.num_leaves else None,
        num_queries=args.num_queries,
    )
    print(result.frontier_table())
    chosen = result.chosen
    print(f"chosen: {chosen.label} (recall@{result.k} {chosen.recall:.4f}, {chosen.queries_per_second:,.0f} queries/s)")
    print(f"export with: tfrec-towers export --run {args.run} --index-config {paths['json']}")
    print(f"         or: tfrec-towers export --run {args.run} {_export_command(chosen.config)}")
    out(f"report: {paths['json']}, plot: {paths['plot']}")
    return EXIT_OK if result.target_met else EXIT_TARGET_MISSED


def _cmd_tune(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from tfrec_pipelines.search import STUDY_FILE, run_search  # needs the `tune` extra (it says so)
    from tfrec_towers.config import load_config

    # Optuna's own lines repeat ours (one per trial): only its warnings, unless --verbose.
    logging.getLogger("optuna").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        result = run_search(
            load_config(args.config),
            args.space,
            args.trials,
            args.output,
            metric=args.metric,
            timeout=args.timeout,
            seed=args.seed,
            verbose=2 if args.verbose else 0,
        )
    except KeyboardInterrupt:
        print(
            f"Interrupted: the finished trials are in {Path(args.output) / STUDY_FILE}; "
            "rerun the same command to continue the search.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    out(f"results: {result.paths['results']}")
    if result.failed:
        out(
            f"{result.failed} trial(s) failed (see the log above); rerun the same command to add trials in their place."
        )
    best = result.best
    if best is None:
        print(
            f"error: no trial of {result.paths['study']} completed, so there is no best configuration.", file=sys.stderr
        )
        return EXIT_USAGE
    print(f"best: trial {best.number}, validation {args.metric} {best.value:.4f}")
    for key, value in best.params.items():
        print(f"  {key} = {value}")
    print(f"train it with: tfrec-towers train --config {result.paths['best']} --output RUN")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from tfrec_towers.verify import verify_export

    if args.report is not None:
        _check_output_file(args.report)
    report = verify_export(args.export_path)
    if args.report is not None:
        _write_json(args.report, report)
    return _print_verification(report, out)


def _cmd_init(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from tfrec_towers.config_template import commented_yaml

    path = Path(args.path)
    if path.exists():
        raise FileExistsError(f"{path} exists: choose another path (init never overwrites a file).")
    _check_output_file(path)
    _write_text(path, commented_yaml())
    print(path)
    return EXIT_OK


def _cmd_report(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from tfrec_towers.report import write_report

    output = Path(args.run) / "report" if args.output is None else args.output
    path = write_report([args.run], output, tuning=args.tuning)
    print(path)
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from tfrec_towers.report_data import compare_table  # the table needs no plotting (the `report` extra)

    print(compare_table(args.runs))
    if args.output is not None:
        from tfrec_towers.report import write_report

        out(f"report: {write_report(args.runs, args.output)}")
    return EXIT_OK


def _value_errors_exit_2(command: Callable[[argparse.Namespace, Callable[[str], None]], int]):
    """Runs ``command``; a ValueError (bad corpus, ids, index settings: the library names the problem) exits 2."""

    @functools.wraps(command)
    def run(args: argparse.Namespace, out: Callable[[str], None]) -> int:
        try:
            return command(args, out)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE

    return run


COMMANDS: Dict[str, Callable[[argparse.Namespace, Callable[[str], None]], int]] = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "export": _value_errors_exit_2(_cmd_export),
    "tune-index": _value_errors_exit_2(_cmd_tune_index),
    "tune": _cmd_tune,
    "init": _cmd_init,
    "report": _value_errors_exit_2(_cmd_report),
    "compare": _value_errors_exit_2(_cmd_compare),
    "verify": _cmd_verify,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((position for position, a in enumerate(argv) if not a.startswith("-")), None)
    if command is not None and argv[command] in PASSTHROUGH_HELP:
        return _run_passthrough(argv[command], argv[command + 1 :])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for ours in ("tfrec_pipelines", "tfrec_towers"):
        logging.getLogger(ours).setLevel(
            logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
        )
    set_progress(not args.quiet)  # progress bars with rate and ETA on a terminal (tfrec_towers/progress.py)

    def out(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr)

    import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
    from tfrec_pipelines.data import DataError
    from tfrec_pipelines.train import RunError
    from tfrec_towers.config import ConfigError
    from tfrec_towers.extras import MissingExtraError

    try:
        return COMMANDS[args.command](args, out)
    except (
        ConfigError,
        DataError,
        RunError,
        MissingExtraError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

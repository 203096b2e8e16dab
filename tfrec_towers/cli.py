"""The ``tfrec-towers`` command: a thin shell over ``pipelines.train`` and ``tfrec_towers.verify``.

Exit codes: 0 success · 2 bad arguments, configuration or data · 3 the export failed verification.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED = 0, 2, 3

TRAIN_EXAMPLE = """examples:
  tfrec-towers train --output runs/demo                      # synthetic data, default config
  tfrec-towers train --dataset movielens --data-dir ~/data/ml-1m --output runs/ml1m --epochs 5
  tfrec-towers train --dataset movielens --data-dir ml-100k --output runs/a --config my.yaml \\
      --set model.temperature=0.1 --set training.batch_size=1024
"""
EVALUATE_EXAMPLE = """example:
  tfrec-towers evaluate --run runs/ml1m            # prints HR@K / NDCG@K as JSON
"""
EXPORT_EXAMPLE = """example:
  tfrec-towers export --run runs/ml1m --output /models --index brute-force --k 50
  # writes /models/<model_name>/<next version>/ (DESIGN §5 signatures), atomically
"""
VERIFY_EXAMPLE = """example:
  tfrec-towers verify runs/ml1m/export/tfrec_towers/1 --report verify.json
  # loads the SavedModel in a fresh Python process that imports only TensorFlow
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfrec-towers", description="Train, evaluate, export and verify two-tower retrieval models."
    )
    parser.add_argument("--quiet", action="store_true", help="print only results and errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    train = commands.add_parser("train", help="train, evaluate, export and verify", epilog=TRAIN_EXAMPLE, formatter_class=fmt)
    train.add_argument("--dataset", choices=["synthetic", "movielens"], help="data set (default: the config's; movielens when --data-dir is given, else synthetic)")
    train.add_argument("--data-dir", help="a MovieLens release directory (ml-100k, ml-1m, ml-20m, ml-25m, ml-latest)")
    train.add_argument("--output", required=True, help="new run directory")
    train.add_argument("--config", help="YAML or JSON experiment configuration")
    train.add_argument("--epochs", type=int, help="override training.epochs")
    train.add_argument("--seed", type=int, help="override training.seed")
    train.add_argument("--index", choices=["brute-force", "scann"], help="override export.index")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")

    evaluate = commands.add_parser("evaluate", help="re-evaluate a trained run", epilog=EVALUATE_EXAMPLE, formatter_class=fmt)
    evaluate.add_argument("--run", required=True, help="run directory written by train")
    evaluate.add_argument("--data-dir", help="evaluate on this MovieLens directory instead of the run's data")
    evaluate.add_argument("--output", help="also write the metrics JSON here")

    export = commands.add_parser("export", help="export a run as a new SavedModel version", epilog=EXPORT_EXAMPLE, formatter_class=fmt)
    export.add_argument("--run", required=True, help="run directory written by train")
    export.add_argument("--output", help="export base directory (default: RUN/export)")
    export.add_argument("--index", choices=["brute-force", "scann"], help="retrieval index (default: the run's)")
    export.add_argument("--k", type=int, help="candidates returned per query (default: the run's)")
    export.add_argument("--no-verify", action="store_true", help="skip the fresh-process verification")

    verify = commands.add_parser("verify", help="check a SavedModel in a fresh process", epilog=VERIFY_EXAMPLE, formatter_class=fmt)
    verify.add_argument("export_path", help="<export_base>/<model_name>/<version>")
    verify.add_argument("--report", help="write the JSON report here")
    return parser


def _resolve_config(args: argparse.Namespace):
    from tfrec_towers.config import ExperimentConfig, apply_overrides, load_config

    config = load_config(args.config) if args.config else ExperimentConfig()
    overrides: List[str] = []
    dataset = args.dataset or ("movielens" if args.data_dir else None)
    if dataset:
        overrides.append(f"data.dataset={dataset}")
    if args.data_dir:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"training.seed={args.seed}")
    if args.index:
        overrides.append(f"export.index={args.index}")
    return apply_overrides(config, overrides + list(args.set))


def _print_verification(report: dict, out: Callable[[str], None]) -> int:
    failed = [c for c in report.get("checks", []) if not c.get("ok")]
    for check in failed:
        out(f"  FAILED {check.get('name')}: {check.get('detail')}")
    out(f"verification: {'ok' if report.get('ok') else 'FAILED'} ({len(report.get('checks', []))} checks, {len(failed)} failed)")
    return EXIT_OK if report.get("ok") else EXIT_VERIFY_FAILED


def _cmd_train(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from pipelines.train import train

    config = _resolve_config(args)
    result = train(config, args.output, verbose=0 if args.quiet else 2)
    print(json.dumps(result.metrics, indent=2))
    out(f"run: {result.run_dir}")
    out(f"export: {result.export_path}")
    out(f"training: {result.train_seconds:.1f} s, {result.examples_per_second:,.0f} examples/s")
    return _print_verification(result.verification, out) if result.verification else EXIT_OK


def _cmd_evaluate(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from pipelines.train import evaluate_run

    metrics = evaluate_run(args.run, args.data_dir)
    print(json.dumps(metrics, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from pipelines.train import export_run
    from tfrec_towers.verify import verify_export

    path = export_run(args.run, args.output, index=args.index, k=args.k)
    print(path)
    return EXIT_OK if args.no_verify else _print_verification(verify_export(path), out)


def _cmd_verify(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from tfrec_towers.verify import verify_export

    if not Path(args.export_path).is_dir():
        raise FileNotFoundError(f"{args.export_path} is not a directory: expected <export_base>/<model_name>/<version>.")
    report = verify_export(args.export_path)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    return _print_verification(report, out)


COMMANDS: Dict[str, Callable[[argparse.Namespace, Callable[[str], None]], int]] = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "export": _cmd_export,
    "verify": _cmd_verify,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for ours in ("pipelines", "tfrec_towers"):
        logging.getLogger(ours).setLevel(logging.WARNING if args.quiet else logging.INFO)

    def out(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr)

    import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)
    from pipelines.data import DataError
    from pipelines.train import RunError
    from tfrec_towers.config import ConfigError

    try:
        return COMMANDS[args.command](args, out)
    except (ConfigError, DataError, RunError, FileNotFoundError, FileExistsError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

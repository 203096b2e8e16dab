"""Shared pieces of the benchmark scripts: seeds, mean ± std summaries, JSON + Markdown output."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

REPORTED = ("HR@10", "HR@50", "HR@100", "NDCG@10", "NDCG@50")


def summarise(rows: List[dict], reported: Sequence[str] = REPORTED) -> Dict[str, dict]:
    """Mean and sample std (ddof = 1) over seeds of every reported metric and of examples/s, per configuration."""
    summary: Dict[str, dict] = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        runs = [r for r in rows if r["name"] == name]
        stats = {}
        for key in list(reported) + ["examples_per_second", "train_seconds"]:
            values = np.array([r["metrics"][key] if key in r["metrics"] else r[key] for r in runs], float)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0  # the sample std over seeds
            stats[key] = {"mean": float(values.mean()), "std": std}
        summary[name] = {"seeds": [r["seed"] for r in runs], **stats}
    return summary


def markdown_table(summary: Dict[str, dict], baseline: str, reported: Sequence[str] = REPORTED) -> str:
    """One row per configuration: mean ± std of each metric, HR@50 ratio to ``baseline``, examples/s."""
    header = ["configuration", *reported, f"HR@50 / {baseline}", "examples/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = summary[baseline]["HR@50"]["mean"]
    for name, stats in summary.items():
        cells = [name] + [f"{stats[k]['mean']:.4f} ± {stats[k]['std']:.4f}" for k in reported]
        cells.append(f"{stats['HR@50']['mean'] / base:.2f}×" if base > 0 else "n/a")
        cells.append(f"{stats['examples_per_second']['mean']:,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def source_commit() -> str:
    """The commit of the benchmarked tree (``+dirty`` when it has uncommitted changes besides the results
    themselves), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def command_line(script: str) -> str:
    """The command that ran ``benchmarks/SCRIPT`` with this process's arguments, quoted for a shell
    (an argument with spaces, such as a row's name, stays one argument)."""
    return shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]])


def write_results(output_dir: Path, stem: str, payload: dict, table: str) -> None:
    """Writes ``stem.json`` (the payload plus commit, machine, load and date) and ``stem.md`` (the table)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        **payload,
        "commit": source_commit(),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (output_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (output_dir / f"{stem}.md").write_text(table)


def add_data_set_arguments(parser, data_sets: Sequence[str]) -> None:
    """``--data-root``, ``--datasets`` (any of ``data_sets``, all by default) and ``--seeds`` (0 1 2) of
    the benchmarks that train on the shared data sets."""
    parser.add_argument("--data-root", required=True, help="the folder holding amazon-beauty, amazon-toys, ml-100k")
    parser.add_argument("--datasets", nargs="+", default=list(data_sets), choices=list(data_sets))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])


def add_synthetic_log_arguments(parser) -> None:
    """``--users``, ``--items``, ``--per-user``, ``--seed`` and ``--set`` of the training-speed benchmarks'
    synthetic log (500,000 interactions by default) and their configuration."""
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--per-user", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="override a key of the default configuration")


def synthetic_log_overrides(args) -> List[str]:
    """The configuration overrides of :func:`add_synthetic_log_arguments`'s arguments, ``--set`` last."""
    return [
        "data.dataset=synthetic",
        f"data.num_users={args.users}",
        f"data.num_items={args.items}",
        f"data.interactions_per_user={args.per_user}",
        f"training.seed={args.seed}",
        *args.set,
    ]

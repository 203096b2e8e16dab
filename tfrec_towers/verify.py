"""Verify an export the way a server sees it: in a fresh process, without this package.

:func:`verify_export` runs ``verify_worker.py`` by file path in a new interpreter that imports only
TensorFlow, NumPy and the standard library (and ``scann`` for a ScaNN index). The worker loads the
SavedModel, checks the three signatures, replays the verification sample recorded at export and
compares with the in-memory model's outputs, measures recall@k against the exact top-k recorded at
export, single-query latency and batched throughput, sends unknown ids and strings, and replays the
warm-up requests. ``tfrec-towers verify EXPORT_PATH`` is a thin shell over this function.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Union

WORKER_PATH = Path(__file__).resolve().with_name("verify_worker.py")
SAVED_MODEL_FILENAME = "saved_model.pb"
OUTPUT_TAIL_CHARS = 4000


class ExportVerificationError(RuntimeError):
    """An export failed verification; ``failed_checks`` lists the failed checks."""

    def __init__(self, export_path: Union[str, Path], failed_checks: List[Dict[str, Any]]) -> None:
        self.export_path = str(export_path)
        self.failed_checks = failed_checks
        lines = "\n".join(f"  - {c['name']}: {(c['detail'].strip().splitlines() or [''])[0]}" for c in failed_checks)
        super().__init__(f"Export {export_path} failed {len(failed_checks)} check(s):\n{lines}")


def _worker_failure(export_path: Path, detail: str) -> Dict[str, Any]:
    check = {"name": "verification worker", "ok": False, "detail": detail}
    return {"ok": False, "export_path": str(export_path), "checks": [check], "metrics": {}}


def _check_version_directory(export_path: Path) -> None:
    """Raises unless ``export_path`` is a directory holding ``saved_model.pb``, suggesting the right path."""
    expected = f"expected a version directory <export_base>/<model_name>/<version> holding {SAVED_MODEL_FILENAME}"
    if not export_path.exists():
        raise FileNotFoundError(f"`export_path` {export_path} does not exist: {expected}.")
    if not export_path.is_dir():
        hint = f" Pass its directory, {export_path.parent}." if export_path.name == SAVED_MODEL_FILENAME else ""
        raise NotADirectoryError(f"`export_path` {export_path} is a file: {expected}.{hint}")
    if (export_path / SAVED_MODEL_FILENAME).is_file():
        return
    names = [p.name for p in export_path.iterdir() if p.is_dir()]
    versions = sorted(int(name) for name in names if name.isascii() and name.isdigit())
    hint = ""
    if versions:
        newest = export_path / str(versions[-1])
        hint = f" It holds the version directories {versions} of a model: pass one, e.g. the newest, {newest}."
    raise FileNotFoundError(f"`export_path` {export_path} holds no {SAVED_MODEL_FILENAME}: {expected}.{hint}")


def verify_export(
    export_path: Union[str, Path],
    python: str = sys.executable,
    timeout: float = 600.0,
    raise_on_failure: bool = False,
) -> Dict[str, Any]:
    """Checks an exported version directory in a fresh ``python`` process.

    Args:
      export_path: a version directory ``<export_base>/<model_name>/<version>``.
      python: the interpreter to run the worker with (it needs tensorflow, numpy, and scann for a
        ScaNN index; not this package).
      timeout: seconds before the worker is killed (a timeout is reported as a failed check).
      raise_on_failure: raise :class:`ExportVerificationError` instead of returning a failed report.

    Returns:
      The worker's report: ``{"ok": bool, "export_path": str, "checks": [{"name", "ok", "detail"}],
      "metrics": {...}}``. ``metrics`` (empty if the worker could not run the sample) holds
      ``recall_at_k`` of ``serving_default`` on the sample queries against the exact top-k recorded
      at export (with ``k`` and ``num_recall_queries``), ``latency_ms`` (``p50``, ``p99`` and
      ``num_requests`` of single-row requests) and ``batched_qps`` (with ``qps_batch_size``).
      Timings are of the loaded SavedModel in this process, not of a TF Serving server.

    Raises:
      FileNotFoundError: if ``export_path`` does not exist or holds no ``saved_model.pb`` (the message
        names the newest version directory when ``export_path`` is a model's base directory).
      NotADirectoryError: if ``export_path`` is a file.
      ExportVerificationError: if a check failed and ``raise_on_failure`` is set.
    """
    export_path = Path(export_path).resolve()
    _check_version_directory(export_path)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="tfrec_towers_verify_") as workdir:
        report_path = Path(workdir) / "report.json"
        try:
            completed = subprocess.run(
                [python, str(WORKER_PATH), str(export_path), str(report_path)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                cwd=workdir,
            )
        except subprocess.TimeoutExpired:
            report = _worker_failure(export_path, f"timed out after {timeout} s")
        else:
            if report_path.is_file():
                report = json.loads(report_path.read_text())
            else:
                stderr = completed.stderr[-OUTPUT_TAIL_CHARS:]
                report = _worker_failure(
                    export_path, f"exited with code {completed.returncode} without a report:\n{stderr}"
                )
    if raise_on_failure and not report["ok"]:
        raise ExportVerificationError(export_path, [c for c in report["checks"] if not c["ok"]])
    return report

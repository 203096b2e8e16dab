"""Run reports and run comparisons: the library side of ``tfrec-towers report`` and ``compare``.

``write_report([run])`` renders one run's report, ``write_report([run_a, run_b, ...])`` compares
runs in one report (one line or bar per run in every plot, one row per run in the metrics table),
and ``compare_table(runs)`` gives the metrics across runs as a Markdown table for the terminal.
The data side lives in :mod:`tfrec_towers.report_data`, the drawing in :mod:`tfrec_towers.report_html`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from tfrec_towers.report_data import RunReportData, collect_run, compare_table
from tfrec_towers.report_html import REPORT_FILE, render_report

__all__ = ["REPORT_FILE", "RunReportData", "collect_run", "compare_table", "render_report", "write_report"]


def write_report(
    run_dirs: Sequence[Union[str, Path]],
    output_dir: Union[str, Path],
    *,
    tuning: Optional[Union[str, Path]] = None,
) -> Path:
    """Collects each run and renders one report comparing them (a single run: that run's report).

    Args:
      run_dirs: run directories written by :func:`tfrec_pipelines.train.train`.
      output_dir: the report directory (``report.html`` and the PNGs); a previous report there is replaced.
      tuning: a ``tune-index`` report (``tuning.json`` or its directory) for a single run; by
        default each run directory is searched for one.

    Returns:
      The path of ``report.html``.

    Raises:
      ValueError: no run, or ``tuning`` given with several runs.
      RunError: a directory is not a complete run.
      NotADirectoryError, FileExistsError: see :func:`~tfrec_towers.report_html.render_report`.
    """
    if not run_dirs:
        raise ValueError("`run_dirs` must name at least one run directory. Received: none.")
    if tuning is not None and len(run_dirs) > 1:
        raise ValueError(f"`tuning` applies to a single run; {len(run_dirs)} runs were given.")
    return render_report([collect_run(run_dir, tuning=tuning) for run_dir in run_dirs], output_dir)

"""The run report: one PNG per plot and a self-contained ``report.html`` for one or several runs.

Every plot is a matplotlib :class:`~matplotlib.figure.Figure` rendered by the Agg backend (no
pyplot, no global state), saved next to the HTML and embedded in it as a base64 data URI, so the
HTML file can be mailed alone. Several runs share each plot (one line or bar per run) and the
metrics table (one row per run): this is what ``tfrec-towers compare`` renders. The
most-popular-items baseline stands beside the runs in the metrics table and the HR@K / NDCG@K
curves; the example users' table shows what the model recommends to a few real users.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tfrec_towers.extras import missing_extra

try:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator
except ModuleNotFoundError as e:
    raise missing_extra("report", "The run report", e) from e

from tfrec_towers.collapse import MEAN_RESULTANT_LENGTH, SCORE_SPREAD
from tfrec_towers.evaluation import METRIC_KEYS
from tfrec_towers.report_data import (
    BUCKET_KS,
    COVERAGE_K,
    MAX_K,
    ExampleItem,
    RunReportData,
    loss_summary,
)

REPORT_FILE = "report.html"
DPI = 100
BASELINE = "most popular items"
COLLAPSE_LABELS = {
    MEAN_RESULTANT_LENGTH: "mean resultant length (1 = collapsed)",
    SCORE_SPREAD: "score spread (0 = collapsed)",
}
COLLAPSE_THRESHOLDS = {MEAN_RESULTANT_LENGTH: "max_mean_resultant_length", SCORE_SPREAD: "min_score_spread"}
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")


@dataclasses.dataclass(frozen=True)
class Plot:
    """One figure of the report: its PNG file name, title, figure and the explanation under it."""

    file_name: str
    title: str
    figure: Figure
    explanation: str


def _color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def _axes(figure: Figure, columns: int = 1) -> List[Any]:
    return [figure.add_subplot(1, columns, i + 1) for i in range(columns)]


def _finish(figure: Figure, *axes: Any, legend: bool = True) -> Figure:
    for ax in axes:
        ax.grid(True, alpha=0.3)
    if legend:
        axes[0].legend(fontsize="small")
    figure.tight_layout()
    return figure


def baselines(runs: Sequence[RunReportData]) -> List[Tuple[str, RunReportData]]:
    """The distinct most-popular-items baselines of ``runs`` (one when the runs share their data),
    each with its label and the first run it belongs to."""
    groups: Dict[Tuple[str, int, bytes], List[RunReportData]] = {}
    for run in runs:
        groups.setdefault((run.data_name, run.num_candidates, run.baseline_ranks.tobytes()), []).append(run)
    if len(groups) == 1:
        return [(BASELINE, runs[0])]
    return [(f"{BASELINE} ({', '.join(r.name for r in group)})", group[0]) for group in groups.values()]


def _collapse_threshold(run: RunReportData, key: str) -> Optional[float]:
    """The run's threshold of a collapse check (``collapse.json``, else the configuration), or None."""
    name = COLLAPSE_THRESHOLDS[key]
    value = (run.collapse or {}).get(name, run.config.get("training", {}).get(f"collapse_{name}"))
    return None if value is None else float(value)


def loss_plot(runs: Sequence[RunReportData]) -> Figure:
    """Training loss per epoch, one line per run; beside it, when a run's history has them, the
    collapse checks of each epoch (mean resultant length, score spread) with each run's threshold dotted."""
    checked = any(run.collapse_history for run in runs)
    figure = Figure(figsize=(14, 4) if checked else (8, 4))
    axes = _axes(figure, 1 + len(COLLAPSE_LABELS) if checked else 1)
    for i, run in enumerate(runs):
        losses = run.history.get("loss", [])
        axes[0].plot(range(1, len(losses) + 1), losses, marker="o", color=_color(i), label=run.name)
    axes[0].set_ylabel("training loss (mean over the epoch)")
    for ax, (key, label) in zip(axes[1:], COLLAPSE_LABELS.items()):
        for i, run in enumerate(runs):
            values = run.collapse_history.get(key, [])
            ax.plot(range(1, len(values) + 1), values, marker="o", color=_color(i), label=run.name)
            threshold = _collapse_threshold(run, key)
            if values and threshold is not None:
                ax.axhline(threshold, color=_color(i), linestyle=":", linewidth=1.2)
        ax.set_ylabel(label)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _finish(figure, *axes)


def at_k_plot(runs: Sequence[RunReportData], metric: str) -> Figure:
    """``HR`` or ``NDCG`` against K = 1 … 100, one line per run, with the most-popular-items baseline
    (dashed) and a random ranking for reference."""
    figure = Figure(figsize=(8, 4.5))
    (ax,) = _axes(figure)
    ks = np.arange(1, MAX_K + 1)
    for i, run in enumerate(runs):
        curve = run.hit_rate_curve if metric == "HR" else run.ndcg_curve
        ax.plot(ks, curve, color=_color(i), label=run.name)
    for j, (label, run) in enumerate(baselines(runs)):
        curve = run.baseline_hit_rate_curve if metric == "HR" else run.baseline_ndcg_curve
        ax.plot(ks, curve, color=str(0.15 + 0.2 * (j % 3)), linestyle="--", label=label)
    if metric == "HR":
        ax.plot(ks, np.minimum(ks / runs[0].num_candidates, 1.0), color="0.5", linestyle=":", label="random ranking")
    ax.set_xlabel("K (length of the recommended list)")
    ax.set_ylabel(f"{metric}@K")
    ax.set_xlim(1, MAX_K)
    ax.set_ylim(bottom=0)
    return _finish(figure, ax)


def popularity_plot(runs: Sequence[RunReportData]) -> Figure:
    """HR@10 and HR@50 by popularity bucket of the target item: grouped bars, one bar per run, and
    a black dash per bucket for the most-popular-items baseline.

    The x axis holds the union of the runs' buckets (the same buckets when the runs share their data).
    """
    buckets = sorted({(b.low, b.high): b.label for run in runs for b in run.popularity}.items())
    positions = {key: i for i, (key, _) in enumerate(buckets)}
    figure = Figure(figsize=(10, 4.5))
    axes = _axes(figure, len(BUCKET_KS))
    width = 0.8 / len(runs)
    labels = [label for _, label in buckets]
    if len({tuple((b.low, b.high, b.num_queries) for b in run.popularity) for run in runs}) == 1:
        labels = [f"{b.label}\n{b.num_queries} users" for b in runs[0].popularity]
    for ax, k in zip(axes, BUCKET_KS):
        for i, run in enumerate(runs):
            x = [positions[(b.low, b.high)] - 0.4 + width * (i + 0.5) for b in run.popularity]
            ax.bar(x, [b.hit_rate[k] for b in run.popularity], width=width, color=_color(i), label=run.name)
        for j, (label, run) in enumerate(baselines(runs)):
            ax.scatter(
                [positions[(b.low, b.high)] for b in run.baseline_popularity],
                [b.hit_rate[k] for b in run.baseline_popularity],
                marker="_",
                s=900,
                linewidths=2.5,
                color=str(0.15 + 0.2 * (j % 3)),
                zorder=3,
                label=label,
            )
        ax.set_xticks(range(len(buckets)), labels, fontsize="small")
        ax.set_xlabel("training interactions of the held-out item")
        ax.set_ylabel(f"HR@{k}")
        ax.set_title(f"HR@{k} by item popularity")
    return _finish(figure, *axes)


def _step_histogram(ax: Any, values: np.ndarray, bins: np.ndarray, **style: Any) -> None:
    counts, _ = np.histogram(values, bins=bins)
    ax.stairs(counts / max(len(values), 1), bins, **style)


def _bins(arrays: Sequence[np.ndarray], count: int = 40) -> np.ndarray:
    values = np.concatenate([np.ravel(a) for a in arrays])
    low, high = float(values.min()), float(values.max())
    pad = max(0.05 * (high - low), 0.01 * max(abs(high), 1.0))
    return np.linspace(low - pad, high + pad, count + 1)


def norms_plot(runs: Sequence[RunReportData]) -> Figure:
    """Histograms of the query and the candidate embedding norms, one outline per run."""
    figure = Figure(figsize=(10, 4))
    axes = _axes(figure, 2)
    for ax, side in zip(axes, ("query", "candidate")):
        norms = [getattr(run, f"{side}_norms") for run in runs]
        bins = _bins(norms)
        for i, (run, values) in enumerate(zip(runs, norms)):
            _step_histogram(ax, values, bins, color=_color(i), linewidth=1.5, label=run.name)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.4g"))
        ax.set_xlabel(f"‖{side} embedding‖ (L2 norm)")
        ax.set_ylabel(f"share of {'users' if side == 'query' else 'items'}")
        ax.set_title(f"{side.capitalize()} tower")
    return _finish(figure, *axes)


def scores_plot(runs: Sequence[RunReportData]) -> Figure:
    """Histograms of ⟨q, v⟩: the held-out item (solid) against random catalogue items (dashed), per run."""
    figure = Figure(figsize=(8, 4.5))
    (ax,) = _axes(figure)
    bins = _bins([a for run in runs for a in (run.target_scores, run.catalogue_scores)])
    for i, run in enumerate(runs):
        _step_histogram(ax, run.target_scores, bins, color=_color(i), linewidth=2, label=f"{run.name}: held-out item")
        _step_histogram(
            ax,
            run.catalogue_scores,
            bins,
            color=_color(i),
            linewidth=1.2,
            linestyle="--",
            label=f"{run.name}: random items",
        )
    ax.set_xlabel("score ⟨query embedding, item embedding⟩")
    ax.set_ylabel("share of scores")
    return _finish(figure, ax)


def validation_plot(runs: Sequence[RunReportData]) -> Figure:
    """Each validation value of the runs' histories (``val_*``) per epoch: one panel per value, one line per run."""
    keys = sorted({key for run in runs for key in run.validation_history})
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure = Figure(figsize=(max(8, 4 * columns), 3.6 * rows))
    axes = [figure.add_subplot(rows, columns, i + 1) for i in range(len(keys))]
    for ax, key in zip(axes, keys):
        for i, run in enumerate(runs):
            values = run.validation_history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", color=_color(i), label=run.name)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.locator_params(axis="x", integer=True)
    return _finish(figure, *axes)


def frontier_plot(runs: Sequence[RunReportData]) -> Figure:
    """Index recall@k against queries per second (log scale) for the runs with a tuning report."""
    figure = Figure(figsize=(8, 4.5))
    (ax,) = _axes(figure)
    for i, run in enumerate(runs):
        if run.tuning is None:
            continue
        points, frontier, chosen = run.tuning["points"], run.tuning["frontier"], run.tuning["chosen"]
        ax.scatter(
            [p["queries_per_second"] for p in points], [p["recall"] for p in points], s=12, color=_color(i), alpha=0.35
        )
        ax.plot(
            [p["queries_per_second"] for p in frontier],
            [p["recall"] for p in frontier],
            marker="o",
            color=_color(i),
            label=f"{run.name}: frontier",
        )
        ax.scatter(
            [chosen["queries_per_second"]],
            [chosen["recall"]],
            s=170,
            facecolors="none",
            edgecolors=_color(i),
            linewidths=2,
            zorder=3,
            label=f"{run.name}: chosen ({chosen['config']['kind']})",
        )
        ax.axhline(
            run.tuning["target_recall"],
            color=_color(i),
            linestyle=":",
            linewidth=1,
            label=f"{run.name}: target recall {run.tuning['target_recall']}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("queries per second (batched, log scale)")
    ax.set_ylabel("recall@k against exact search")
    return _finish(figure, ax)


EXPLANATIONS = {
    "loss": "The retrieval loss the model minimised, averaged over each training epoch. It should fall "
    "and then flatten; a curve that rises or jumps means the learning rate is too high. Runs with "
    "different loss settings (mode, negatives, logQ) are not comparable by the height of this curve: "
    "compare them with the metrics below.",
    "collapse": "Beside it, the collapse checks of each epoch on a fixed sample of "
    "items and training users: the mean resultant length of the item embeddings (the length of the mean of "
    "their unit vectors: 1 when every item points the same way) and the score spread (how much a user's scores "
    "differ between items, relative to their range: 0 when every item scores the same). Past the dotted "
    "threshold the model has collapsed: every user gets about the same scores, whatever the loss says.",
    "hit_rate": "Evaluation holds out each user's last interaction. The model scores every item of the "
    "catalogue for the user (items the user already had in training are removed) and we look where the "
    "held-out item lands. HR@K (hit rate, equal to recall@K with one target) is the share of users whose "
    "held-out item is among the top K. Higher is better. The dashed line is the most-popular-items baseline "
    "(every user gets the items most often interacted with in training, their own training items removed): a "
    "model close to it has learnt little more than popularity. The dotted line is what a random ranking gets.",
    "ndcg": "NDCG@K is like HR@K but rewards hits near the top: a hit at rank r (1 = first) counts "
    "1 / log2(r + 1), so 1 at the top, 0.63 at rank 2, 0.5 at rank 3, and nothing beyond K. Higher is better; "
    "the dashed line is the most-popular-items baseline.",
    "popularity": "Users grouped by how often their held-out item appears in the training data (x axis: "
    "number of training interactions of that item). Training with in-batch negatives uses popular items "
    "as negatives more often, which pushes them down the ranking; logQ correction (`loss.logq`) removes "
    "that bias, which shows as higher hit rates in the popular buckets. Items never seen in training "
    "(bucket 0) can only be found through their features. The black dashes are the most-popular-items "
    "baseline, which finds popular held-out items and nothing else.",
    "norms": "Lengths of the embedding vectors: of every evaluated user (query tower) and every catalogue "
    "item (candidate tower). With `l2_normalize` on (the default) every length is 1, this plot shows one "
    "spike at 1 and scores are cosine similarities. Without it, long item vectors are favoured for every "
    "user, which usually means popular items.",
    "scores": "The scores the ranking uses (dot products of the user's and the item's embeddings) for a "
    "fixed random sample of users: solid, the score of each user's held-out item; dashed, the scores of "
    "random catalogue items. The further the solid curve sits to the right of the dashed one, the better "
    "the model separates the right item from the rest; curves on top of each other mean it is guessing.",
    "validation": "The values measured on the validation split after each epoch (keys starting with "
    "`val_` in the run's history.json). A validation loss that rises while the training loss falls means "
    "the model is overfitting: fewer epochs or more regularisation would serve it better.",
    "frontier": "The served index may be approximate (ScaNN) to answer faster. `tfrec-towers tune-index` "
    "measured each configuration: recall@k against exact search (y) and queries per second (x, log "
    "scale). The line joins the best trade-offs, the circle is the configuration chosen for the target "
    "recall (dotted line). Exact brute force has recall 1.",
}


def build_plots(runs: Sequence[RunReportData]) -> List[Plot]:
    """The report's plots; the validation curves only when a run has validation values, the index
    frontier only when a run has a tuning report."""
    checked = any(run.collapse_history for run in runs)
    plots = [
        Plot(
            "loss.png",
            "Training loss and collapse checks" if checked else "Training loss",
            loss_plot(runs),
            f"{EXPLANATIONS['loss']} {EXPLANATIONS['collapse']}" if checked else EXPLANATIONS["loss"],
        ),
        Plot("hit_rate_at_k.png", "Hit rate HR@K against K", at_k_plot(runs, "HR"), EXPLANATIONS["hit_rate"]),
        Plot("ndcg_at_k.png", "NDCG@K against K", at_k_plot(runs, "NDCG"), EXPLANATIONS["ndcg"]),
        Plot("popularity_recall.png", "Hit rate by item popularity", popularity_plot(runs), EXPLANATIONS["popularity"]),
        Plot("embedding_norms.png", "Embedding norms", norms_plot(runs), EXPLANATIONS["norms"]),
        Plot("scores.png", "Score distributions", scores_plot(runs), EXPLANATIONS["scores"]),
    ]
    if any(run.validation_history for run in runs):
        plots.insert(
            1, Plot("validation.png", "Validation per epoch", validation_plot(runs), EXPLANATIONS["validation"])
        )
    if any(run.tuning is not None for run in runs):
        plots.append(
            Plot(
                "index_frontier.png",
                "Index recall / throughput frontier",
                frontier_plot(runs),
                EXPLANATIONS["frontier"],
            )
        )
    return plots


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """An HTML table of already escaped cells; the first ``text_columns`` columns are left-aligned."""
    head = "".join(
        f"<th class='text'>{html.escape(h)}</th>" if i < text_columns else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td class='text'>{c}</td>" if i < text_columns else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_section(runs: Sequence[RunReportData]) -> str:
    best = {key: max(run.metrics.get(key, -1.0) for run in runs) for key in METRIC_KEYS}
    rows = []
    for run in runs:
        losses = run.history.get("loss", [])
        cells = [
            html.escape(run.name),
            html.escape(run.data_name),
            html.escape(loss_summary(run.config)),
            str(len(losses)),
            f"{losses[-1]:.4f}" if losses else "–",
            _collapse_cell(run),
        ]
        for key in METRIC_KEYS:
            value = run.metrics.get(key)
            text = "–" if value is None else f"{value:.4f}"
            cells.append(f"<b>{text}</b>" if len(runs) > 1 and value == best[key] else text)
        rows.append([*cells, f"{run.coverage:.4f}"])
    for label, run in baselines(runs):
        rows.append(
            [
                html.escape(label),
                html.escape(run.data_name),
                "training popularity",
                "–",
                "–",
                "–",
                *(f"{run.baseline_metrics[key]:.4f}" for key in METRIC_KEYS),
                f"{run.baseline_coverage:.4f}",
            ]
        )
    note = (
        f"<p class='note'>The last column is the catalogue coverage of the top {COVERAGE_K}: the share of catalogue "
        f"items recommended in the top {COVERAGE_K} of at least one evaluated user (1 = every item reaches someone). "
        f"<i>{BASELINE}</i> ranks every item by its number of training interactions, evaluated the same way."
        + (" Best value of each metric among the runs in bold." if len(runs) > 1 else "")
        + "</p>"
    )
    header = ["run", "data", "loss", "epochs", "final loss", "collapsed", *METRIC_KEYS, f"top-{COVERAGE_K} coverage"]
    return _collapse_warning(runs) + _table(header, rows, text_columns=3) + note


def _collapse_cell(run: RunReportData) -> str:
    """``no``, ``<b>yes</b> (epoch N)``, ``no (epochs … collapsed)`` or ``–`` (a run without collapse checks)."""
    if run.collapse is None or run.collapse.get("collapsed") is None:
        return "–"
    if run.collapse["collapsed"]:
        return f"<b>yes</b> (epoch {run.collapse['final']['epoch']})"
    earlier = run.collapse.get("collapsed_epochs") or []
    return f"no (epoch {', '.join(map(str, earlier))} collapsed)" if earlier else "no"


def _collapse_warning(runs: Sequence[RunReportData]) -> str:
    """A paragraph per run whose trained model collapsed: what collapsed and what to change."""
    parts = []
    for run in runs:
        if run.collapse and run.collapse.get("collapsed"):
            final = run.collapse["final"]
            parts.append(
                f"<p class='warning'><b>{html.escape(run.name)} collapsed</b> (epoch {final['epoch']}): "
                f"{html.escape(' and '.join(final['findings']))}. Its metrics are those of a collapsed model. "
                f"{html.escape(run.collapse.get('advice', ''))}</p>"
            )
    return "".join(parts)


def _validation_note(runs: Sequence[RunReportData]) -> str:
    """A sentence for the runs without validation values (all of them: the section has no plot)."""
    without = [run.name for run in runs if not run.validation_history]
    if not without:
        return ""
    if len(without) == len(runs):
        subject = "The run has no validation split" if len(runs) == 1 else "None of the runs has a validation split"
        return (
            f"<h2>Validation per epoch</h2><p>{subject}: history.json holds no <code>val_</code> values, "
            "so there are no validation curves.</p>"
        )
    return f"<p class='note'>No validation split in: {html.escape(', '.join(without))}.</p>"


def _format_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    if isinstance(value, np.ndarray):
        return "|".join(map(str, value.tolist()))
    return str(value)


def _item_cells(item: Optional[ExampleItem], attributes: Sequence[str], held_out: Any = None) -> List[str]:
    """The id cell (bold when it is the held-out item) and one cell per attribute; empty cells for no item."""
    if item is None:
        return [""] * (1 + len(attributes))
    text = html.escape(str(item.id))
    return [
        f"<b>{text}</b>" if held_out is not None and item.id == held_out else text,
        *(html.escape(_format_value(item.attributes[a])) if a in item.attributes else "" for a in attributes),
    ]


def _examples_section(runs: Sequence[RunReportData]) -> str:
    """Per run, a table of a few users: recent history (latest first) beside the model's top list."""
    parts = [
        (
            "<h2>Example users</h2><p class='note'>A fixed random choice of evaluated users: their most recent "
            f"training items (latest first) beside the model's top {COVERAGE_K} (their training items removed), "
            "with each item's attributes. The held-out item is named under the user and in bold when the model "
            "recommends it.</p>"
        )
    ]
    for run in runs:
        if not run.examples:
            continue
        attributes = run.item_attributes
        header = ["user", "#", "recent history", *attributes, f"top {COVERAGE_K}", *attributes]
        rows = []
        for user in run.examples:
            length = max(len(user.history), len(user.recommended), 1)
            for i in range(length):
                history = user.history[i] if i < len(user.history) else None
                recommended = user.recommended[i] if i < len(user.recommended) else None
                first = (
                    (
                        f"<td class='text' rowspan='{length}'>{html.escape(str(user.user))}<br><span class='note'>"
                        f"held out: {html.escape(str(user.held_out.id))}</span></td>"
                    )
                    if i == 0
                    else ""
                )
                cells = [
                    str(i + 1),
                    *_item_cells(history, attributes),
                    *_item_cells(recommended, attributes, user.held_out.id),
                ]
                rows.append(first + "".join(f"<td class='text'>{c}</td>" for c in cells))
        head = "".join(f"<th class='text'>{html.escape(h)}</th>" for h in header)
        body = "".join(f"<tr>{row}</tr>" for row in rows)
        title = f"<h3>{html.escape(run.name)}</h3>" if len(runs) > 1 else ""
        parts.append(f"{title}<table class='examples'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "".join(parts)


def _verification_section(runs: Sequence[RunReportData]) -> str:
    rows = []
    for run in runs:
        if run.verification is None:
            continue
        m = run.verification.get("metrics", {})
        latency = m.get("latency_ms", {})
        rows.append(
            [
                html.escape(run.name),
                "passed"
                if run.verification.get("ok")
                else "<b>FAILED</b>: "
                + html.escape(
                    "; ".join(c.get("name", "?") for c in run.verification.get("checks", []) if not c.get("ok"))
                ),
                html.escape(str(run.config.get("export", {}).get("index", "?"))),
                f"{m['recall_at_k']:.4f} (k={m.get('k')})" if "recall_at_k" in m else "–",
                f"{latency['p50']:.2f} / {latency['p99']:.2f}" if "p50" in latency else "–",
                f"{m['batched_qps']:,.0f} (batches of {m.get('qps_batch_size')})" if "batched_qps" in m else "–",
            ]
        )
    if not rows:
        return ""
    return (
        "<h2>Exported model check</h2><p class='note'>The SavedModel was loaded in a fresh process that imports "
        "only TensorFlow and ScaNN and queried like TF Serving would: recall@k of its retrieval against the exact "
        "top-k, single-request latency and batched throughput (of the loaded model on this machine, not of a "
        "server).</p>"
        + _table(["run", "checks", "index", "recall@k", "latency p50 / p99 (ms)", "queries/s"], rows, text_columns=3)
    )


def _flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_section(runs: Sequence[RunReportData]) -> str:
    parts = ["<h2>Configuration</h2>"]
    if len(runs) > 1:
        flat = [_flatten(run.config) for run in runs]
        keys = sorted({k for f in flat for k in f if len({json.dumps(g.get(k)) for g in flat}) > 1})
        rows = [[f"<code>{html.escape(k)}</code>", *(html.escape(json.dumps(f.get(k))) for f in flat)] for k in keys]
        table = _table(["key", *(r.name for r in runs)], rows, text_columns=len(runs) + 1)
        parts.append(
            f"<p>Settings that differ between the runs:</p>{table}"
            if rows
            else "<p>The runs have identical configurations.</p>"
        )
    for run in runs:
        parts.append(
            f"<details><summary>Full configuration of {html.escape(run.name)} (<code>{html.escape(str(run.run_dir))}"
            f"/config.json</code>)</summary><pre>{html.escape(json.dumps(run.config, indent=2))}</pre></details>"
        )
    return "".join(parts)


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1080px;margin:2em auto;padding:0 1em;
color:#222}
h1{margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
td{white-space:nowrap}.text{text-align:left;white-space:normal}th{background:#f3f3f3}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#444;max-width:60em}
.note{color:#555;font-size:.9em}.warning{background:#fdecea;border-left:4px solid #c62828;padding:.5em .8em}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
summary{cursor:pointer;margin:.4em 0}
"""


def _document(runs: Sequence[RunReportData], plots: Sequence[Plot], images: Dict[str, bytes]) -> str:
    title = f"tfrec-towers report: {runs[0].name}" if len(runs) == 1 else f"tfrec-towers comparison of {len(runs)} runs"
    names = ", ".join(
        f"<b>{html.escape(r.name)}</b> ({html.escape(r.data_name)}, {r.num_candidates:,} items, "
        f"{len(r.ranks):,} users evaluated)"
        for r in runs
    )
    figures = "".join(
        f"<h2>{html.escape(plot.title)}</h2><figure><img alt='{html.escape(plot.title)}' data-file='{plot.file_name}' "
        f"src='data:image/png;base64,{base64.b64encode(images[plot.file_name]).decode('ascii')}'>"
        f"<figcaption>{html.escape(plot.explanation)} <a href='{plot.file_name}'>PNG</a></figcaption></figure>"
        for plot in plots
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{names}</p>"
        "<p class='note'>A two-tower retrieval model embeds each user (query tower) and each item (candidate "
        "tower) as vectors; an item's score for a user is the dot product of the two, and the top-scored items "
        "are recommended. The figures below were computed on the held-out last interaction of every user.</p>"
        f"<h2>Metrics</h2>{_metrics_section(runs)}{_verification_section(runs)}{figures}{_validation_note(runs)}"
        f"{_examples_section(runs)}{_config_section(runs)}"
        "</body></html>\n"
    )


def _publish(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Runs ``write`` into a temporary sibling of ``output_dir``, then renames it into place."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        write(work)
        os.chmod(work, 0o755)
        previous: Optional[Path] = None
        if output_dir.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old.", dir=output_dir.parent))
            os.rename(output_dir, previous)
        os.rename(work, output_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _distinct_names(runs: Sequence[RunReportData]) -> List[RunReportData]:
    """``runs``, labelled by their full directory paths when two share a directory name."""
    if len({run.name for run in runs}) == len(runs):
        return list(runs)
    return [dataclasses.replace(run, name=str(run.run_dir)) for run in runs]


def render_report(runs: Sequence[RunReportData], output_dir: Union[str, Path]) -> Path:
    """Writes ``report.html`` and one PNG per plot into ``output_dir``; several runs are compared.

    The directory is written whole into a temporary sibling and renamed into place, so a reader
    never sees half a report; a previous report in ``output_dir`` is replaced.

    Args:
      runs: :func:`~tfrec_towers.report_data.collect_run` results, one per run (in legend order).
      output_dir: the report directory (created; its parents too).

    Returns:
      The path of ``report.html``.

    Raises:
      ValueError: ``runs`` is empty.
      NotADirectoryError: ``output_dir`` is a file.
      FileExistsError: ``output_dir`` holds files but no report (it is not replaced).
    """
    if not runs:
        raise ValueError("`runs` must hold at least one run. Received: an empty sequence.")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir} is a file; the report needs a directory there.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / REPORT_FILE).is_file():
        raise FileExistsError(f"{output_dir} holds files but no {REPORT_FILE}; choose a new or empty directory.")
    runs = _distinct_names(runs)
    plots = build_plots(runs)
    images = {plot.file_name: _png(plot.figure) for plot in plots}

    def write(directory: Path) -> None:
        for name, data in images.items():
            (directory / name).write_bytes(data)
        (directory / REPORT_FILE).write_text(_document(runs, plots, images), encoding="utf-8")

    _publish(output_dir, write)
    return output_dir / REPORT_FILE

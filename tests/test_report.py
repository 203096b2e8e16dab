"""Run reports: the data behind each plot against numpy oracles, the HTML and its PNGs, and compare."""

import base64
import collections
import dataclasses
import json
import shutil
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tfrec_towers  # noqa: F401
from helpers import TINY_OWN_TABLES, tiny_config
from tfrec_pipelines.train import RunError, load_data, load_run, train
from tfrec_towers import report_data
from tfrec_towers.config import ExperimentConfig, apply_overrides
from tfrec_towers.evaluation import METRIC_KEYS
from tfrec_towers.report import collect_run, compare_table, render_report, write_report
from tfrec_towers.report_data import (
    catalogue_coverage,
    popularity_buckets,
    popularity_edges,
    popularity_ranks,
    popularity_top_k,
    training_counts,
    unseen_top_k,
)
from tfrec_towers.towers import compute_embeddings

PLOTS = {"loss.png", "hit_rate_at_k.png", "ndcg_at_k.png", "popularity_recall.png", "embedding_norms.png", "scores.png"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TUNING = {
    "k": 10,
    "target_recall": 0.9,
    "num_candidates": 300,
    "num_queries": 50,
    "batch_size": 50,
    "target_met": True,
    "chosen": {"config": {"kind": "scann"}, "recall": 0.93, "queries_per_second": 2000.0, "build_seconds": 0.1},
    "frontier": [
        {"config": {"kind": "scann"}, "recall": 0.93, "queries_per_second": 2000.0, "build_seconds": 0.1},
        {"config": {"kind": "brute-force"}, "recall": 1.0, "queries_per_second": 800.0, "build_seconds": 0.0},
    ],
    "points": [
        {"config": {"kind": "brute-force"}, "recall": 1.0, "queries_per_second": 800.0, "build_seconds": 0.0},
        {"config": {"kind": "scann"}, "recall": 0.93, "queries_per_second": 2000.0, "build_seconds": 0.1},
        {"config": {"kind": "scann"}, "recall": 0.7, "queries_per_second": 1500.0, "build_seconds": 0.1},
    ],
}
VERIFICATION = {
    "ok": True,
    "export_path": "x",
    "checks": [],
    "metrics": {
        "k": 20,
        "recall_at_k": 0.987,
        "latency_ms": {"p50": 1.25, "p99": 3.5, "num_requests": 10},
        "batched_qps": 4321.0,
        "qps_batch_size": 64,
    },
}


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
    """Two tiny runs (logQ from counts, the default, no logQ); the first with a tuning report, the second with a verification.

    The first is a copy of the shared tiny run (conftest.py)."""
    root = tmp_path_factory.mktemp("report_runs")
    logq = shutil.copytree(tiny_run, root / "logq")
    plain = train(tiny_config("loss.logq=none", "export.verify=false"), root / "plain", verbose=0).run_dir
    (logq / "tuning").mkdir()
    (logq / "tuning" / "tuning.json").write_text(json.dumps(TUNING))
    (plain / "verification.json").write_text(json.dumps(VERIFICATION))
    return {"logq": (logq, collect_run(logq)), "plain": (plain, collect_run(plain))}


def _numpy_ranks(run_dir):
    """Target ranks by brute force over the full score matrix (seen items other than the target removed)."""
    config, _, model = load_run(run_dir)
    data = load_data(config)
    queries = compute_embeddings(model.query_tower, data.eval_queries)
    candidates = compute_embeddings(model.candidate_tower, data.candidates)
    ids = list(data.candidates[data.candidate_id])
    scores = queries @ candidates.T
    ranks = []
    for u, target in enumerate(data.eval_targets):
        row = ids.index(target)
        excluded = {ids.index(i) for i in data.seen(u) if i in ids} | {row}
        others = [c for c in range(len(ids)) if c not in excluded]
        ranks.append(int(np.sum(scores[u, others] >= scores[u, row])))
    return np.array(ranks), data, queries, candidates, ids


def test_curves_and_ranks_match_a_brute_force_oracle(runs):
    run_dir, report = runs["logq"]
    ranks, _, queries, candidates, _ = _numpy_ranks(run_dir)
    np.testing.assert_array_equal(report.ranks, ranks)
    for k in (1, 7, 10, 50, 100):
        assert report.hit_rate_curve[k - 1] == pytest.approx(np.mean(ranks < k))
        hits = ranks[ranks < k]
        assert report.ndcg_curve[k - 1] == pytest.approx(np.sum(1.0 / np.log2(hits + 2.0)) / len(ranks))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for k in (10, 50, 100):
        assert report.hit_rate_curve[k - 1] == pytest.approx(metrics[f"HR@{k}"], abs=1e-6)
        assert report.ndcg_curve[k - 1] == pytest.approx(metrics[f"NDCG@{k}"], abs=1e-6)
    assert report.history["loss"] == json.loads((run_dir / "history.json").read_text())["loss"]
    for norms, vectors in ((report.query_norms, queries), (report.candidate_norms, candidates)):
        np.testing.assert_allclose(norms, np.sqrt(np.sum(vectors.astype(np.float64) ** 2, axis=1)), rtol=1e-5)


def test_popularity_recall_matches_numpy(runs):
    run_dir, report = runs["plain"]
    ranks, data, _, _, ids = _numpy_ranks(run_dir)
    counts = collections.Counter(data.train[data.candidate_id].tolist())
    target_counts = np.array([counts.get(t, 0) for t in data.eval_targets.tolist()])
    np.testing.assert_array_equal(report.target_counts, target_counts)
    item_counts = np.array([counts.get(i, 0) for i in ids])
    assert sum(b.num_queries for b in report.popularity) == len(ranks)
    for bucket in report.popularity:
        members = (target_counts >= bucket.low) & (target_counts < bucket.high)
        assert bucket.num_queries == members.sum() > 0
        assert bucket.num_items == np.sum((item_counts >= bucket.low) & (item_counts < bucket.high))
        for k in (10, 50):
            assert bucket.hit_rate[k] == pytest.approx(np.mean(ranks[members] < k))
    edges = popularity_edges(item_counts)
    assert edges[-1] == item_counts.max() + 1
    assert all((b.low, b.high) in zip(edges[:-1], edges[1:]) for b in report.popularity)


def test_popularity_buckets_hand_computed():
    item_counts = np.array([0, 1, 2, 5, 9, 30])
    # max 30: geomspace(1, 31, 6) = 1, 1.99, 3.95, 7.85, 15.6, 31 -> floors 1, 1, 3, 7, 15, 31.
    np.testing.assert_array_equal(popularity_edges(item_counts), [0, 1, 3, 7, 15, 31])
    ranks = np.array([0, 20, 3, 60, 9, 11, 49])
    targets = np.array([2, 2, 5, 9, 30, 30, 30])
    buckets = popularity_buckets(ranks, targets, item_counts)
    assert [(b.label, b.num_items, b.num_queries) for b in buckets] == [
        ("1–2", 2, 2),
        ("3–6", 1, 1),
        ("7–14", 1, 1),
        ("15–30", 1, 3),
    ]
    assert [b.hit_rate[10] for b in buckets] == [0.5, 1.0, 0.0, pytest.approx(1 / 3)]
    assert [b.hit_rate[50] for b in buckets] == [1.0, 1.0, 0.0, 1.0]


def _nearest_distance(values, pool):
    """Distance of each value to the closest element of ``pool``."""
    pool = np.sort(pool)
    right = np.clip(np.searchsorted(pool, values), 0, len(pool) - 1)
    left = np.clip(right - 1, 0, len(pool) - 1)
    return np.minimum(np.abs(pool[right] - values), np.abs(pool[left] - values))


def test_score_sample_is_seeded_and_consistent(runs, monkeypatch):
    run_dir, full = runs["logq"]
    monkeypatch.setattr(report_data, "NUM_SCORE_QUERIES", 64)
    monkeypatch.setattr(report_data, "NUM_SCORE_CANDIDATES", 100)
    report, again = collect_run(run_dir), collect_run(run_dir)
    np.testing.assert_array_equal(report.target_scores, again.target_scores)
    np.testing.assert_array_equal(report.catalogue_scores, again.catalogue_scores)
    assert report.target_scores.shape == (64,) and report.catalogue_scores.shape == (6400,)
    _, data, queries, candidates, ids = _numpy_ranks(run_dir)
    every_target = np.array([queries[u] @ candidates[ids.index(t)] for u, t in enumerate(data.eval_targets)])
    assert _nearest_distance(report.target_scores, every_target).max() < 1e-5
    np.testing.assert_allclose(np.sort(full.target_scores), np.sort(every_target), atol=1e-5)
    assert _nearest_distance(report.catalogue_scores, (queries @ candidates.T).ravel()).max() < 1e-5
    assert np.all(np.abs(full.catalogue_scores) <= 1.0 + 1e-5)  # cosines: both towers L2-normalise
    assert full.tuning == TUNING and full.verification is None


class _Report(HTMLParser):
    """Images, links and table cells of a report."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self.tables, self._cell = [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "a":
            self.links.append(attrs.get("href"))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _check_report(path, expected_plots):
    parser = _Report()
    parser.feed(path.read_text(encoding="utf-8"))
    assert {img["data-file"] for img in parser.images} == expected_plots
    assert expected_plots <= set(parser.links)
    for img in parser.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        embedded = base64.b64decode(img["src"][len(prefix) :])
        on_disk = (path.parent / img["data-file"]).read_bytes()
        assert embedded == on_disk and on_disk.startswith(PNG_MAGIC)
        pixels = matplotlib.image.imread(path.parent / img["data-file"])
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 600 and pixels.shape[2] in (3, 4)
        assert pixels.std() > 0.01  # not a blank canvas
    assert {p.name for p in path.parent.glob("*.png")} == expected_plots
    return parser


BASELINE = "most popular items"


def _metric_rows(parser, baseline=False):
    """``{run: {metric: value}}`` of the metrics table: the runs' rows, or the baseline rows."""
    header, *rows = parser.tables[0]
    columns = [*METRIC_KEYS, "top-10 coverage"] if baseline else METRIC_KEYS
    return {
        row[0]: {key: float(row[header.index(key)]) for key in columns}
        for row in rows
        if row[0].startswith(BASELINE) == baseline
    }


def test_one_run_report_holds_every_plot(runs, tmp_path):
    run_dir, report = runs["logq"]
    path = render_report([report], tmp_path / "one")
    assert path == tmp_path / "one" / "report.html"
    parser = _check_report(path, PLOTS | {"index_frontier.png"})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert _metric_rows(parser) == {"logq": {k: pytest.approx(metrics[k], abs=5e-5) for k in METRIC_KEYS}}
    assert "<details>" in path.read_text() and "Exported model check" not in path.read_text()


def test_two_run_report_compares_both(runs, tmp_path):
    reports = [runs["logq"][1], runs["plain"][1]]
    path = render_report(reports, tmp_path / "two")
    parser = _check_report(path, PLOTS | {"index_frontier.png"})
    rows = _metric_rows(parser)
    assert list(rows) == ["logq", "plain"]
    for name, (run_dir, _) in runs.items():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert rows[name] == {k: pytest.approx(metrics[k], abs=5e-5) for k in METRIC_KEYS}
    verification = next(t for t in parser.tables if t[0][:2] == ["run", "checks"])
    assert verification[1][:4] == ["plain", "passed", "brute-force", "0.9870 (k=20)"]
    differences = next(t for t in parser.tables if t[0][0] == "key")
    assert ["loss.logq", '"counts"', '"none"'] in differences


def test_report_without_tuning_has_no_frontier(runs, tmp_path):
    path = write_report([runs["plain"][0]], tmp_path / "plain")
    _check_report(path, PLOTS)


def test_compare_table_equals_metrics_files(runs):
    dirs = [runs["logq"][0], runs["plain"][0]]
    header, _, *rows = compare_table(dirs).splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert len(rows) == 2
    for run_dir, row in zip(dirs, rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert cells[0] == str(run_dir)
        for key in METRIC_KEYS:
            assert float(cells[columns.index(key)]) == pytest.approx(metrics[key], abs=5e-5)
    assert rows[0].split("|")[2].strip() == "softmax, logQ counts, mixed 512"
    assert rows[1].split("|")[-2].strip() == "0.9870 (k=20)"


def test_output_is_atomic_and_refuses_files(runs, tmp_path):
    report = runs["plain"][1]
    target = tmp_path / "out"
    render_report([report], target)
    (target / "stale.png").write_bytes(b"old")
    render_report([report], target)
    assert not (target / "stale.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    a_file = tmp_path / "file.html"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        render_report([report], a_file)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no report.html"):
        render_report([report], foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="at least one run"):
        render_report([], tmp_path / "empty")


def test_incomplete_run_and_bad_arguments_fail_clearly(runs, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RunError, match="metrics.json"):
        collect_run(tmp_path)
    with pytest.raises(RunError, match="metrics.json"):
        compare_table([tmp_path])
    with pytest.raises(ValueError, match="single run"):
        write_report([runs["logq"][0], runs["plain"][0]], tmp_path / "r", tuning=tmp_path)


def test_runs_with_the_same_directory_name_are_labelled_by_path(runs, tmp_path):
    report = runs["plain"][1]
    twin = dataclasses.replace(report, run_dir=tmp_path / "elsewhere" / report.name)
    parser = _check_report(render_report([report, twin], tmp_path / "twins"), PLOTS)
    assert list(_metric_rows(parser)) == [str(report.run_dir), str(twin.run_dir)]


def test_popularity_baseline_hand_computed():
    # Catalogue (rows 0-5, not in id order) and training counts: c 2, a 3, f 0, b 1, e 2, d 0.
    ids = np.array(["c", "a", "f", "b", "e", "d"], object)
    counts = training_counts(np.array(["a", "b", "c", "a", "e", "c", "a", "e", "zz"], object), ids)
    np.testing.assert_array_equal(counts, [2, 3, 0, 1, 2, 0])
    targets = np.array(["d", "c", "a", "b"], object)
    seen = [["a"], ["c", "e"], [], ["a", "c"]]  # user 1's target is also a training item: it stays ranked
    indptr = np.r_[0, np.cumsum([len(s) for s in seen])]
    seen_ids = np.array([i for s in seen for i in s], object)
    # user 0: d (0) vs unseen c 2, f 0, b 1, e 2 -> 4 (ties count against it); user 1: c (2) vs a 3, f, b, d -> 1;
    # user 2: a, the most popular -> 0; user 3: b (1) vs f 0, e 2, d 0 -> 1.
    ranks = popularity_ranks(counts, ids, targets, indptr, seen_ids)
    np.testing.assert_array_equal(ranks, [4, 1, 0, 1])
    metrics = report_data.metrics_from_ranks(ranks)
    assert metrics["HR@10"] == 1.0
    assert metrics["NDCG@10"] == pytest.approx((1 / np.log2(6) + 2 / np.log2(3) + 1) / 4)
    # Top 2 by count, ties by row: a, c, e, b, f, d with each user's training items (not its target) removed.
    top = popularity_top_k(counts, ids, targets, indptr, seen_ids, k=2)
    assert ids[top].tolist() == [["c", "e"], ["a", "c"], ["a", "c"], ["e", "b"]]
    assert catalogue_coverage(top, len(ids)) == pytest.approx(4 / 6)
    assert catalogue_coverage(popularity_top_k(counts, ids, targets, indptr, seen_ids, k=10), 6) == 1.0


def test_unseen_top_k_matches_a_sorted_oracle_with_ties_and_chunks():
    rng = np.random.default_rng(3)
    queries = rng.integers(-2, 3, size=(11, 3)).astype(np.float32)  # small integers: many tied scores
    candidates = rng.integers(-2, 3, size=(17, 3)).astype(np.float32)
    ids = np.arange(100, 117)
    targets = rng.choice(ids, size=11)
    seen = [rng.choice(ids, size=rng.integers(0, 16), replace=False) for _ in range(11)]
    indptr = np.r_[0, np.cumsum([len(s) for s in seen])]
    top = unseen_top_k(
        queries, candidates, ids, targets, indptr, np.concatenate(seen), k=5, query_chunk=3, candidate_chunk=4
    )
    scores = queries @ candidates.T
    for u in range(11):
        allowed = [r for r in range(17) if ids[r] == targets[u] or ids[r] not in set(seen[u].tolist())]
        expected = sorted(allowed, key=lambda r: (-scores[u, r], r))[:5]
        assert top[u].tolist() == expected + [-1] * (5 - len(expected))


OWN_ITEMS = 40


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A 1-epoch run of own tables: a CSV log with string ids and an items table with tags and a price."""
    root = tmp_path_factory.mktemp("own_report")
    rng = np.random.default_rng(0)
    items = [f"sku-{i:03d}" for i in range(OWN_ITEMS)]
    log = pd.DataFrame(
        [(f"user-{u}", items[rng.integers(OWN_ITEMS)], t) for u in range(60) for t in range(8)],
        columns=["customer", "product", "time"],
    )
    log.to_csv(root / "log.csv", index=False)
    table = pd.DataFrame(
        {
            "product": items,
            "tags": [[f"tag{(i + k) % 7}" for k in range(1 + i % 3)] for i in range(40)],
            "price": [1.5 + 3 * i for i in range(OWN_ITEMS)],
        }
    )
    pq.write_table(pa.Table.from_pandas(table), root / "items.parquet")
    config = apply_overrides(
        ExperimentConfig(),
        [
            "data.dataset=interactions",
            f"data.interactions.path={root / 'log.csv'}",
            f"data.items.path={root / 'items.parquet'}",
            "data.interactions.user_column=customer",
            "data.interactions.item_column=product",
            "data.interactions.timestamp_column=time",
            *TINY_OWN_TABLES,
            "export.verify=false",
        ],
    )
    run_dir = train(config, root / "run", verbose=0).run_dir
    return run_dir, log, table.set_index("product"), collect_run(run_dir)


def _own_oracle(log):
    """Leave-last-out by hand from the log: each user's ordered items, popularity ranks of the held-out ones."""
    ordered = log.sort_values(["customer", "time", "product"], kind="stable").groupby("customer")["product"].apply(list)
    counts = collections.Counter(i for items in ordered for i in items[:-1])
    ranks = {}
    for user, items in ordered.items():
        target, seen = items[-1], set(items[:-1])
        others = [f"sku-{i:03d}" for i in range(OWN_ITEMS) if f"sku-{i:03d}" not in seen | {target}]
        ranks[user] = sum(counts[o] >= counts[target] for o in others)
    return ordered, counts, ranks


@pytest.mark.slow
def test_own_tables_report_shows_the_baseline_coverage_and_example_users(own_run, tmp_path):
    run_dir, log, items, report = own_run
    ordered, counts, ranks = _own_oracle(log)
    users = sorted(ordered.index)
    np.testing.assert_array_equal(report.baseline_ranks, [ranks[u] for u in users])
    baseline = np.array([ranks[u] for u in users])
    expected = {f"HR@{k}": np.mean(baseline < k) for k in (10, 50, 100)}
    expected |= {f"NDCG@{k}": np.mean(np.where(baseline < k, 1 / np.log2(baseline + 2.0), 0)) for k in (10, 50, 100)}
    # Coverage oracles: the model's top 10 from the full score matrix, the baseline's from the counts.
    config, _, model = load_run(run_dir)
    data = load_data(config)
    scores = (
        compute_embeddings(model.query_tower, data.eval_queries)
        @ compute_embeddings(model.candidate_tower, data.candidates).T
    )
    catalogue = list(data.candidates["product"])
    model_top, popular_top = set(), set()
    for u, user in enumerate(users):
        allowed = [r for r, i in enumerate(catalogue) if i == ordered[user][-1] or i not in set(ordered[user][:-1])]
        model_top |= set(sorted(allowed, key=lambda r: (-scores[u, r], r))[:10])
        popular_top |= set(sorted(allowed, key=lambda r: (-counts[catalogue[r]], r))[:10])
    assert report.coverage == pytest.approx(len(model_top) / OWN_ITEMS)
    assert report.baseline_coverage == pytest.approx(len(popular_top) / OWN_ITEMS)

    path = write_report([run_dir], tmp_path / "own")
    parser = _check_report(path, PLOTS)
    header, *rows = parser.tables[0]
    run_row = next(r for r in rows if r[0] == run_dir.name)
    assert float(run_row[header.index("top-10 coverage")]) == pytest.approx(len(model_top) / OWN_ITEMS, abs=5e-5)
    assert _metric_rows(parser, baseline=True) == {
        BASELINE: {
            **{k: pytest.approx(v, abs=5e-5) for k, v in expected.items()},
            "top-10 coverage": pytest.approx(len(popular_top) / OWN_ITEMS, abs=5e-5),
        }
    }
    text = path.read_text(encoding="utf-8")
    assert "The run has no validation split" in text

    examples = next(t for t in parser.tables if t[0][0] == "user")
    assert examples[0] == ["user", "#", "recent history", "tags", "price", "top 10", "tags", "price"]
    starts = [row for row in examples[1:] if len(row) == 8]  # a user's first row holds the user cell
    assert len(starts) == 5 and len(examples) - 1 == 5 * 10  # 5 users, 10 recommended each (history: 5)
    shown = 0
    for row in examples[1:]:
        history, recommended = row[-6:-3], row[-3:]
        for item_id, tags, price in (history, recommended):
            if item_id:
                assert tags == "|".join(items.loc[item_id, "tags"]) and price == f"{items.loc[item_id, 'price']:.4g}"
                shown += 1
    assert shown == 5 * (5 + 10)
    for row in starts:
        user, held_out = row[0].split("held out: ")
        assert held_out == ordered[user.strip()][-1]
        assert row[2] == ordered[user.strip()][-2]  # the most recent training item first


@pytest.mark.slow
def test_validation_curves_are_plotted_when_the_history_has_them(own_run, tmp_path):
    report = own_run[3]
    validated = dataclasses.replace(report, history={**report.history, "val_loss": [3.0, 2.5], "val_HR@10": [0.1, 0.2]})
    assert validated.validation_history == {"val_loss": [3.0, 2.5], "val_HR@10": [0.1, 0.2]}
    path = render_report([validated], tmp_path / "validated")
    _check_report(path, PLOTS | {"validation.png"})
    assert "no validation split" not in path.read_text(encoding="utf-8")

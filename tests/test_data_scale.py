"""The data-preparation scale benchmark: its generated tables and its per-stage measurement."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchmarks.data_scale import EVENTS, STAGES, generate_tables, zipf_shares
from tfrec_pipelines.declarations import USER_ID_MIN_COUNT

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "data_scale.py"


def test_zipf_shares_hand_computed():
    np.testing.assert_allclose(zipf_shares(3), [6 / 11, 3 / 11, 2 / 11])


def test_generated_tables_have_the_documented_schema_and_sizes(tmp_path):
    counts = generate_tables(tmp_path, rows=4000, shards=3, seed=0)
    shards = sorted((tmp_path / "interactions").iterdir())
    assert [p.name for p in shards] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    log = pd.concat([pq.read_table(p).to_pandas() for p in shards], ignore_index=True)
    items = pq.read_table(tmp_path / "items.parquet").to_pandas()
    users = pq.read_table(tmp_path / "users.parquet").to_pandas()
    assert list(log.columns) == ["user_id", "item_id", "timestamp", "event", "quantity"]
    assert len(log) == 4000 and len(users) == 200 and len(items) == 40  # N, N / 20, N / 100
    assert counts == {"interactions": 4000, "users": 200, "items": 40, "interacted_items": log["item_id"].nunique()}
    assert log["user_id"].str.fullmatch(r"u\d+").all() and log["item_id"].str.fullmatch(r"i\d+").all()
    assert set(log["user_id"]) <= set(users["user_id"]) and set(log["item_id"]) <= set(items["item_id"])
    assert users["user_id"].is_unique and items["item_id"].is_unique
    assert set(log["event"]) <= set(EVENTS) and (log["quantity"] >= 1).all()
    assert all(1 <= len(tags) <= 4 for tags in items["tags"])
    assert list(users.columns) == ["user_id", "country"] and list(items.columns) == ["item_id", "tags", "price"]
    top_share = log["item_id"].value_counts().iloc[0] / len(log)
    assert top_share > 5 / 40  # power law: the most popular item far above the uniform 1 / 40


@pytest.mark.slow
def test_prepare_worker_reports_every_stage_and_the_split_counts(tmp_path):
    generate_tables(tmp_path, rows=2000, shards=2, seed=1)
    log = pd.concat([pq.read_table(p).to_pandas() for p in sorted((tmp_path / "interactions").iterdir())])
    per_user = log["user_id"].value_counts()
    result = tmp_path / "result.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--prepare", str(tmp_path), "--result", str(result)],
        check=True,
        capture_output=True,
    )
    measured = json.loads(result.read_text())
    assert list(measured["stages"]) == list(STAGES)
    assert all(s["seconds"] >= 0 and s["peak_rss_mib"] > 0 for s in measured["stages"].values())
    assert measured["peak_rss_mib"] == max(s["peak_rss_mib"] for s in measured["stages"].values())
    assert measured["summary"]["train_examples"] == len(log) - len(per_user)  # each user's last is held out
    assert measured["summary"]["eval_queries"] == int((per_user >= 2).sum())
    trained_enough = int((per_user - 1 >= USER_ID_MIN_COUNT).sum())  # users with that many training examples
    assert measured["vocabulary_sizes"]["user_id"] == trained_enough and measured["vocabulary_sizes"]["item_id"] == 20
    assert STAGES[-1] == "training input"  # fit_model's input pipeline, its first batch of the default 512 taken
    assert measured["first_batch"] == {
        "user_id": [512],
        "history": [512, 50],
        "country": [512],
        "item_id": [512],
        "tags": [512],
        "price": [512],
        "quantity": [512],
    }

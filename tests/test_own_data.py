"""A user's own tables end to end from the CLI: a Parquet log with string ids, an event filter and a
weight column, an items table with a multi-valued column and a price, a users table; trained,
evaluated, exported (brute force and ScaNN) and verified; the export read in a fresh process."""

import json
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import TINY_OWN_TABLES, cli_sets, run_fresh_process
from tfrec_towers.cli import main

SMALL = cli_sets(*TINY_OWN_TABLES)


def _shop(tmp_path):
    rng = np.random.default_rng(0)
    users = [f"user-{u}" for u in range(60)]
    items = [f"sku-{i:03d}" for i in range(40)]
    rows = []
    for user in users:
        for t in range(8):
            rows.append(
                (
                    user,
                    items[rng.integers(40)],
                    f"2024-03-{1 + t:02d}T10:00:00",
                    ["view", "purchase", "add_to_cart"][rng.integers(3)],
                    float(rng.integers(1, 4)),
                )
            )
    log = pd.DataFrame(rows, columns=["customer", "product", "time", "event", "quantity"])
    log.iloc[: len(log) // 2].to_parquet(tmp_path / "log-0.parquet")
    log.iloc[len(log) // 2 :].to_parquet(tmp_path / "log-1.parquet")
    pq.write_table(
        pa.table(
            {
                "product": items,
                "tags": [[f"tag{(i + k) % 7}" for k in range(1 + i % 3)] for i in range(40)],
                "price": [float(1 + 3 * i) for i in range(40)],
            }
        ),
        tmp_path / "items.parquet",
    )
    pd.DataFrame({"customer": users, "country": [["DE", "FR", "JP"][u % 3] for u in range(60)]}).to_csv(
        tmp_path / "users.csv", index=False
    )
    return log


@pytest.mark.slow
def test_own_parquet_tables_train_evaluate_export_and_verify_from_the_cli(tmp_path, capsys):
    log = _shop(tmp_path)
    run = tmp_path / "run"
    own = [
        "--interactions",
        str(tmp_path / "log-*.parquet"),
        "--items",
        str(tmp_path / "items.parquet"),
        "--users",
        str(tmp_path / "users.csv"),
        "--set",
        "data.interactions.user_column=customer",
        "--set",
        "data.interactions.item_column=product",
        "--set",
        "data.interactions.timestamp_column=time",
        "--set",
        "data.interactions.weight_column=quantity",
        "--set",
        "data.interactions.filter={column: event, values: [purchase, add_to_cart]}",
    ]
    assert main(["train", "--output", str(run), *own, *SMALL]) == 0
    capsys.readouterr()
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"HR@10", "HR@50", "HR@100", "NDCG@10", "NDCG@50", "NDCG@100"}
    assert metrics["HR@50"] == 1.0  # 40 items, all within the top 50
    declared = json.loads((run / "features.json").read_text())
    assert [(f["name"], f["kind"]) for f in declared["query"]] == [
        ("customer", "id"),
        ("history", "history"),
        ("country", "categorical"),
    ]
    assert [(f["name"], f["kind"]) for f in declared["candidate"]] == [
        ("product", "id"),
        ("tags", "multi_valued"),
        ("price", "numeric"),
    ]
    kept = log[log.event.isin(["purchase", "add_to_cart"])]
    assert json.loads((run / "verification.json").read_text())["ok"]

    assert main(["evaluate", "--run", str(run)]) == 0
    assert json.loads(capsys.readouterr().out) == metrics
    exports = tmp_path / "models"
    # `export` verifies its SavedModel in a fresh process and exits 1 if a check fails.
    assert main(["export", "--run", str(run), "--output", str(exports), "--index", "scann", "--k", "5"]) == 0
    assert "verification: ok" in capsys.readouterr().err

    # The SavedModels take and return string ids, read in a process that imports only TensorFlow and ScaNN.
    probe = textwrap.dedent(f"""
        import json, tensorflow as tf, scann  # noqa: F401
        out = {{}}
        for path in ({str(run / "export" / "tfrec_towers" / "1")!r}, {str(exports / "tfrec_towers" / "1")!r}):
            model = tf.saved_model.load(path)
            serve = model.signatures["serving_default"]
            query = dict(customer=tf.constant(["user-3", "nobody"]), country=tf.constant(["DE", "??"]),
                         history=tf.constant([["", "sku-001", "sku-002"], ["", "", "unknown-sku"]]))
            result = serve(**query)
            embed = model.signatures["candidate_embedding"](product=tf.constant(["sku-001"]),
                        tags=tf.constant(["tag1|tag2"]), price=tf.constant([4.0]))
            out[path] = dict(ids=result["candidate_ids"].numpy().astype(str).tolist(),
                             dtype=result["candidate_ids"].dtype.name, embedding=embed["embedding"].shape.as_list(),
                             inputs=sorted(serve.structured_input_signature[1]))
        print(json.dumps(out))
    """)
    out = run_fresh_process(probe)
    catalogue = {f"sku-{i:03d}" for i in range(40)}
    for path, result in out.items():
        assert result["dtype"] == "string" and result["inputs"] == ["country", "customer", "history"]
        assert result["embedding"] == [1, 8]
        assert all(len(row) == (100 if path.startswith(str(run)) else 5) or len(row) == 40 for row in result["ids"])
        assert all(set(row) <= catalogue for row in result["ids"])
    assert len(kept) < len(log)  # the filter kept purchases and carts only


def test_training_examples_carry_the_weight_and_only_the_filtered_events(tmp_path):
    from tfrec_pipelines.sources import prepare_data
    from tfrec_towers.config import ExperimentConfig, apply_overrides

    log = _shop(tmp_path)
    config = apply_overrides(
        ExperimentConfig(),
        [
            "data.dataset=interactions",
            f"data.interactions.path={tmp_path / 'log-*.parquet'}",
            "data.interactions.user_column=customer",
            "data.interactions.item_column=product",
            "data.interactions.timestamp_column=time",
            "data.interactions.weight_column=quantity",
            "data.interactions.filter={column: event, values: [purchase]}",
        ],
    )
    prepared = prepare_data(config)
    kept = log[log.event == "purchase"].sort_values(["customer", "time", "product"], kind="stable")
    last = kept.groupby("customer").tail(1).index
    train = kept.drop(index=last)
    train = train[train.customer.isin(kept.customer.value_counts()[lambda c: c >= 2].index)]
    assert prepared.weight_column == "quantity"
    assert sorted(
        zip(prepared.data.train["customer"], prepared.data.train["product"], prepared.data.train["quantity"])
    ) == sorted(zip(train.customer, train["product"], train.quantity.astype(np.float32)))


@pytest.mark.parametrize("ids", [["a", "b", "c"], [7, 8, 9]])
def test_the_sample_weight_scales_each_example_of_the_loss(ids):
    import tensorflow as tf

    import tfrec_towers  # noqa: F401
    from tfrec_towers.features import CategoricalFeature, FeatureSpec, adapt
    from tfrec_towers.history_encoders import HistoryEncoderConfig
    from tfrec_towers.losses.task import in_batch_softmax_task
    from tfrec_towers.model import TwoTowerModel, build_towers
    from tfrec_towers.towers import TowerConfig

    dtype = "string" if isinstance(ids[0], str) else "int64"
    values = np.array(ids, dtype=object if dtype == "string" else np.int64)
    features = {"user": values, "item": values[::-1].copy()}
    spec = adapt(
        FeatureSpec(
            query=(CategoricalFeature("user", dtype=dtype, embedding_dim=4),),
            candidate=(CategoricalFeature("item", dtype=dtype, embedding_dim=4),),
            candidate_id="item",
        ),
        features,
    )
    tf.keras.utils.set_random_seed(0)
    no_history = HistoryEncoderConfig(encoder="pooling")
    query, candidate = build_towers(
        spec, TowerConfig(hidden_units=(), output_dim=4), TowerConfig(hidden_units=(), output_dim=4), no_history
    )
    model = TwoTowerModel(query, candidate, "item", task=in_batch_softmax_task(0.5), sample_weight_feature="w")
    weights = np.array([2.0, 0.0, 1.0], np.float32)
    batch = {k: tf.constant(v) for k, v in features.items()}
    q, c = query(batch).numpy(), candidate(batch).numpy()
    logits = q @ c.T / 0.5
    per_row = -(np.diag(logits) - np.log(np.exp(logits).sum(axis=1)))
    expected = float(np.sum(weights * per_row) / 3)  # Keras' mean over the batch of weighted losses
    np.testing.assert_allclose(float(model.compute_loss({**batch, "w": tf.constant(weights)})), expected, rtol=1e-5)
    np.testing.assert_allclose(float(model.compute_loss((batch, tf.constant(weights)))), expected, rtol=1e-5)
    np.testing.assert_allclose(float(model.compute_loss(batch)), float(per_row.mean()), rtol=1e-5)


def _bad_inputs(tmp_path):
    """(name, CLI arguments, what the message must name) for every malformed own-data input."""
    good = tmp_path / "good.csv"
    good.write_text("user_id,item_id,timestamp,event\nu1,a,1,buy\nu1,b,2,buy\nu2,a,1,view\nu2,c,3,buy\n")
    cases = []

    def table(name, text, suffix=".csv"):
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return str(path)

    cases.append(("missing column", ["--interactions", table("nocol", "user,item_id\nu1,a\n")], "'user_id'"))
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["a"]}), tmp_path / "shards" / "a.parquet")
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": [3]}), tmp_path / "shards" / "b.parquet")
    cases.append(("mixed dtype across shards", ["--interactions", str(tmp_path / "shards")], "b.parquet"))
    cases.append(
        ("null id", ["--interactions", table("null", "user_id,item_id\nu1,a\n,b\n")], "row 1: the id is empty")
    )
    cases.append(
        (
            "duplicate item key",
            ["--interactions", str(good), "--items", table("items", "item_id,x\na,1\na,2\n")],
            "'a' twice",
        )
    )
    cases.append(
        (
            "unknown item refused",
            [
                "--interactions",
                str(good),
                "--items",
                table("few", "item_id\na\nb\n"),
                "--set",
                "data.unknown_items=error",
            ],
            "missing from",
        )
    )
    cases.append(
        (
            "empty after filter",
            ["--interactions", str(good), "--set", "data.interactions.filter={column: event, values: [refund]}"],
            "refund",
        )
    )
    cases.append(("glob matching nothing", ["--interactions", str(tmp_path / "nothing-*.parquet")], "matches no file"))
    cases.append(
        ("unreadable file", ["--interactions", table("broken", b"PAR1 not really", ".parquet")], "broken.parquet")
    )
    cases.append(
        (
            "bad timestamp",
            ["--interactions", table("time", "user_id,item_id,timestamp\nu1,a,soon\nu1,b,later\n")],
            "neither a number nor a date",
        )
    )
    cases.append(
        ("not UTF-8", ["--interactions", table("latin", "user_id,item_id\nu1,Caf\xe9\n".encode("latin-1"))], "UTF-8")
    )
    cases.append(
        (
            "negative weight",
            [
                "--interactions",
                table("w", "user_id,item_id,w\nu1,a,1\nu1,b,-2\n"),
                "--set",
                "data.interactions.weight_column=w",
            ],
            "≥ 0",
        )
    )
    cases.append(
        (
            "declared column absent",
            [
                "--interactions",
                str(good),
                "--set",
                "features.candidate=[{name: item_id, kind: id}, {name: price, kind: numeric}]",
            ],
            "'price'",
        )
    )
    return cases


def test_every_malformed_own_table_exits_2_naming_it_and_writes_nothing(tmp_path, capsys):
    for name, arguments, named in _bad_inputs(tmp_path):
        run = tmp_path / "runs" / name.replace(" ", "-")
        code = main(["train", "--output", str(run), *arguments, *SMALL])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert named in err and "Traceback" not in err, (name, err)
        assert not run.exists() and not any((tmp_path / "runs").glob(".*")), name


def test_multi_worker_without_tf_config_exits_2_naming_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = main(["train", "--output", str(tmp_path / "run"), "--set", "training.distribute=multi_worker", *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "`training.distribute`='multi_worker' needs the TF_CONFIG" in err and "Traceback" not in err


def test_a_history_feature_the_query_tower_lacks_exits_2_naming_the_key(tmp_path, capsys):
    code = main(["train", "--output", str(tmp_path / "run"), "--set", "model.history.feature=events", *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "`model.history.feature` is 'events'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()

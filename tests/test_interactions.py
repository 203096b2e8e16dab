"""A user's own interaction log and attribute tables → the leave-last-out split, ids of any type."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow)
from tfrec_pipelines.data import DataError
from tfrec_pipelines.interactions import InteractionTables, interaction_data, read_interaction_tables
from tfrec_towers.data_config import InteractionsConfig, RowFilter, TableConfig


def _log(user_ids, item_ids, timestamps=None):
    frame = {"user_id": user_ids, "item_id": item_ids}
    if timestamps is not None:
        frame["timestamp"] = timestamps
    return pd.DataFrame(frame)


def test_string_ids_split_by_hand():
    # u1: a(1) b(2) c(3); u2: b(5) a(4) -> sorted a, b; u3 has one interaction (not evaluated).
    log = _log(["u1", "u1", "u1", "u2", "u2", "u3"], ["a", "b", "c", "b", "a", "c"], [1, 2, 3, 5, 4, 9])
    data = interaction_data(InteractionTables("t", log), max_history=2)
    assert data.candidates["item_id"].tolist() == ["a", "b", "c"]
    assert data.train["user_id"].tolist() == ["u1", "u1", "u2"]
    assert data.train["item_id"].tolist() == ["a", "b", "a"]
    assert data.train["history"].tolist() == [["", ""], ["", "a"], ["", ""]]
    assert data.eval_queries["user_id"].tolist() == ["u1", "u2"]
    assert data.eval_queries["history"].tolist() == [["a", "b"], ["", "a"]]
    assert data.eval_targets.tolist() == ["c", "b"]
    assert [data.seen(i).tolist() for i in range(2)] == [["a", "b"], ["a"]]
    assert data.summary["users_with_one_interaction"] == 1


def test_integer_ids_keep_their_type_and_zero_padding():
    log = _log([7, 7, 7], [30, 10, 20], [3, 1, 2])
    data = interaction_data(InteractionTables("t", log), max_history=3)
    assert data.train["history"].dtype == np.int64
    assert data.train["history"].tolist() == [[0, 0, 0], [0, 0, 10]]
    assert data.eval_targets.tolist() == [30]


def test_file_order_without_a_timestamp_column(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\nu,z\nu,a\nu,m\n")
    tables = read_interaction_tables(InteractionsConfig(path=str(path)))
    data = interaction_data(tables, max_history=2)
    assert data.eval_targets.tolist() == ["m"] and data.eval_queries["history"].tolist() == [["z", "a"]]


def test_attribute_tables_filter_and_catalogue(tmp_path):
    pq.write_table(
        pa.table(
            {
                "user": ["u1", "u1", "u1", "u2", "u2"],
                "sku": ["a", "b", "x", "b", "c"],
                "ts": ["2024-01-01", "2024-01-02", "2024-01-02T05:00", "2024-02-01", "2024-02-03"],
                "event": ["buy", "buy", "view", "cart", "buy"],
            }
        ),
        tmp_path / "log.parquet",
    )
    pq.write_table(
        pa.table({"sku": ["a", "b", "c", "d"], "tags": [["x", "y"], ["y"], [], None], "price": [1.0, 2.5, None, 4.0]}),
        tmp_path / "items.parquet",
    )
    pd.DataFrame({"user": ["u1", "u2"], "country": ["DE", None]}).to_csv(tmp_path / "users.csv", index=False)
    tables = read_interaction_tables(
        InteractionsConfig(
            path=str(tmp_path / "log.parquet"),
            user_column="user",
            item_column="sku",
            timestamp_column="ts",
            filter=RowFilter("event", ("buy", "cart")),
        ),
        users=TableConfig(path=str(tmp_path / "users.csv")),
        items=TableConfig(path=str(tmp_path / "items.parquet")),
    )
    data = interaction_data(tables, max_history=2)
    assert data.candidates["sku"].tolist() == ["a", "b", "c", "d"]  # the whole items table
    assert data.candidates["tags"].tolist() == ["x|y", "y", "", ""]
    assert data.candidates["price"].dtype == np.float32 and np.isnan(data.candidates["price"][2])
    assert data.eval_targets.tolist() == ["b", "c"]  # u1's "x" was a view: filtered out
    assert data.eval_queries["country"].tolist() == ["DE", ""]
    assert data.train["tags"].tolist() == ["x|y", "y"]


def test_unknown_items_dropped_or_refused():
    log = _log(["u", "u", "u"], ["a", "b", "zz"], [1, 2, 3])
    items = pd.DataFrame({"item_id": ["a", "b"]})
    data = interaction_data(InteractionTables("t", log, items=items), max_history=2)
    assert data.summary["interactions_dropped_unknown_item"] == 1 and data.eval_targets.tolist() == ["b"]
    with pytest.raises(DataError, match=r"1 interactions have a item missing.*'zz'.*unknown_items"):
        interaction_data(InteractionTables("t", log, items=items), max_history=2, unknown_items="error")


@pytest.mark.parametrize(
    "log, items, pattern",
    [
        (_log(["u", None], ["a", "b"], [1, 2]), None, r"column 'user_id', row 1: the id is null"),
        (
            _log(["u", "u"], ["a", 3], [1, 2]),
            None,
            r"column 'item_id', row 1: ids must all be integers or all be strings",
        ),
        (_log(["u", "u"], [1, 0], [1, 2]), None, r"row 1: integer item ids must be positive"),
        (_log(["u", "u"], ["a", "b"], ["2024-01-01", "soon"]), None, r"column 'timestamp', row 1: 'soon' is neither"),
        (
            _log(["u", "u"], ["a", "b"], [1, 2]),
            pd.DataFrame({"item_id": ["a", "b", "a"]}),
            r"'a' twice \(rows 0 and 2\)",
        ),
        (
            _log(["u", "u"], ["a", "b"], [1, 2]),
            pd.DataFrame({"item_id": [1, 2]}),
            r"holds integers but the interactions' strings",
        ),
    ],
)
def test_bad_tables_are_named(log, items, pattern):
    with pytest.raises(DataError, match=pattern):
        interaction_data(InteractionTables("t", log, items=items, sources={"interactions": "log.csv"}), max_history=2)


def test_configured_columns_must_exist(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,event\nu,a,buy\n")
    with pytest.raises(DataError, match=r"no column 'sku' \(`data.interactions.item_column`\)"):
        read_interaction_tables(InteractionsConfig(path=str(path), item_column="sku"))
    with pytest.raises(DataError, match=r"no column 'time' \(`data.interactions.timestamp_column`\)"):
        read_interaction_tables(InteractionsConfig(path=str(path), timestamp_column="time"))
    with pytest.raises(
        DataError, match=r"no interaction has 'event' in \['view'\]; its most frequent values are \['buy'\]"
    ):
        read_interaction_tables(InteractionsConfig(path=str(path), filter=RowFilter("event", ("view",))))


def test_string_ids_of_a_long_log_are_made_once_each_not_once_a_row(tmp_path):
    # 60 users with 5 interactions each over 3 items, read from Parquet as pandas does (Arrow-backed text).
    users = [f"u{k}" for k in range(60) for _ in range(5)]
    items = [f"i{(k * 7 + j) % 3}" for k in range(60) for j in range(5)]
    pq.write_table(
        pa.table({"user_id": users, "item_id": items, "timestamp": list(range(len(users)))}), tmp_path / "log.parquet"
    )
    tables = read_interaction_tables(InteractionsConfig(path=str(tmp_path / "log.parquet")))
    data = interaction_data(tables, max_history=2)
    assert len(data.eval_targets) == 60 and set(data.eval_targets) <= {"i0", "i1", "i2"}
    assert len({id(v) for v in data.eval_targets}) <= 3  # one string object per distinct id


@pytest.mark.parametrize(
    "items, pattern",
    [
        (["a", "b", "", "b"], r"column 'item_id', row 2: the id is empty"),
        ([1.0, 2.0, 2.5, 1.0], r"column 'item_id', row 2: ids must be integers or strings; found np.float64\(2.5\)"),
        ([3, 0, 0, 3], r"column 'item_id', row 1: integer item ids must be positive \(0 pads histories\); found 0\."),
    ],
)
def test_bad_ids_name_their_first_row(items, pattern):
    log = pd.DataFrame({"user_id": ["u", "u", "v", "v"], "item_id": items, "timestamp": [1, 2, 3, 4]})
    with pytest.raises(DataError, match=pattern):
        interaction_data(InteractionTables("t", log, sources={"interactions": "log.csv"}), max_history=2)

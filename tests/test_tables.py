"""Tables of any schema: CSV, Parquet and TFRecord; a file, a directory of shards, a glob."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow)
from tfrec_pipelines.data import DataError
from tfrec_pipelines.tables import read_table


def _write_tfrecord(path, rows):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            feature = {}
            for name, value in row.items():
                values = value if isinstance(value, list) else [value]
                if isinstance(values[0], str):
                    feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))
                elif isinstance(values[0], float):
                    feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
                else:
                    feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_csv_columns_get_their_types(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,price,event\nu1,7,1.5,view\nu2,8,2.0,buy\n")
    table = read_table(path)
    assert table["item_id"].dtype == np.int64 and table["price"].dtype == np.float64
    assert table["user_id"].tolist() == ["u1", "u2"] and table["event"].tolist() == ["view", "buy"]


def test_csv_column_numeric_at_first_and_text_later_is_text(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("item_id\n" + "\n".join(str(i) for i in range(1, 40000)) + "\nabc\n")
    table = read_table(path)
    assert table["item_id"].iloc[0] == "1" and table["item_id"].iloc[-1] == "abc"


def test_parquet_directory_of_shards_in_name_order_with_list_column(tmp_path):
    shards = tmp_path / "items"
    shards.mkdir()
    pq.write_table(pa.table({"item_id": ["b"], "tags": [["x", "y"]]}), shards / "part-1.parquet")
    pq.write_table(pa.table({"item_id": ["a"], "tags": [["z"]]}), shards / "part-0.parquet")
    (shards / "_SUCCESS").write_text("")
    table = read_table(shards)
    assert table["item_id"].tolist() == ["a", "b"]
    assert [list(v) for v in table["tags"]] == [["z"], ["x", "y"]]


def test_glob_of_csv_and_mixed_types_across_shards_named(tmp_path):
    (tmp_path / "a.csv").write_text("user_id,item_id\n1,2\n")
    (tmp_path / "b.csv").write_text("user_id,item_id\n1,x\n")
    with pytest.raises(DataError, match=r"b\.csv.*'item_id'.*string.*int64.*a\.csv"):
        read_table(str(tmp_path / "*.csv"))


def test_tfrecord_scalars_and_lists(tmp_path):
    path = tmp_path / "items.tfrecord"
    _write_tfrecord(
        path, [{"item_id": "a", "price": 1.5, "tags": ["x"]}, {"item_id": "b", "price": 2.0, "tags": ["x", "y"]}]
    )
    table = read_table(path)
    assert table["item_id"].tolist() == ["a", "b"]
    np.testing.assert_allclose(table["price"].to_numpy(), [1.5, 2.0])
    assert table["tags"].tolist() == [["x"], ["x", "y"]]


def test_errors_name_the_place(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        read_table(str(tmp_path / "*.parquet"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet is not a readable Parquet file"):
        read_table(tmp_path / "bad.parquet")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "log.json").write_text("{}")
    with pytest.raises(DataError, match=r"log\.json.*suffix"):
        read_table(tmp_path / "log.json")
    (tmp_path / "ok.csv").write_text("a\n1\n")
    with pytest.raises(DataError, match=r"no column 'b'"):
        read_table(tmp_path / "ok.csv", columns=["b"])
    (tmp_path / "latin.csv").write_bytes("title\nCaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv.*UTF-8"):
        read_table(tmp_path / "latin.csv")

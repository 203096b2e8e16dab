"""Tests for the input side of the embedding job (tfrec_pipelines.embed_sources): which values an input holds.

:class:`ReadRowChunks` is called directly on small files (no pipeline); the expected values and
reasons are written out by hand from the rules in the module docstring.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.pvalue import TaggedOutput

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from tfrec_pipelines.embed_sources import ReadRowChunks, ReadUnit, RowChunk, typed_value


def _read(path, fmt, column_type, separators=None):
    """``(kept values of column "v", {row: reason})`` of a file with an int64 ``id`` and a ``v`` column."""
    reader = ReadRowChunks({"id": "int64", "v": column_type}, "id", ("v",), 100, separators)
    outputs = list(reader.process(ReadUnit(str(path), fmt, 0 if fmt == "parquet" else None)))
    chunks = [o for o in outputs if isinstance(o, RowChunk)]
    reasons = {o.value["row"]: o.value["reason"] for o in outputs if isinstance(o, TaggedOutput)}
    kept = chunks[0].features["v"] if chunks else None
    return kept, reasons


PARQUET_CASES = [
    (
        "int64",
        pa.array([1, 2**63 - 1, 2**63], pa.uint64()),
        np.array([1, 2**63 - 1], np.int64),
        {2: "9223372036854775808 is outside the int64 range"},
    ),
    (
        "int64",
        pa.array([3.0, -(2.0**63), float("nan"), float("inf")]),
        np.array([3, -(2**63)], np.int64),
        {2: "nan is not an integer", 3: "inf is not an integer"},
    ),
    (
        "int64",
        pa.array([True, False]),
        None,
        {0: "True is a boolean, expected an integer", 1: "False is a boolean, expected an integer"},
    ),
    (
        "float32",
        pa.array([0.1, float("nan"), 1e39, -float("inf")]),
        np.array([0.1], np.float32),
        {
            1: "nan is not a finite float32 number",
            2: "1e+39 is not a finite float32 number",
            3: "-inf is not a finite float32 number",
        },
    ),
    (
        "float32",
        pa.array([2**24, 2**24 + 1, -3]),
        np.array([2.0**24, -3.0], np.float32),
        {1: "16777217 is an integer beyond 2**24, not exactly a float32"},
    ),
    ("float32", pa.array(["1.5"]), None, {0: "'1.5' is a string, expected a number"}),
    ("string", pa.array([b"caf\xc3\xa9", b"\xff"]), np.array(["café"], object), {1: "b'\\xff' is not UTF-8 text"}),
    ("string", pa.array(["a", "b", "a"]).dictionary_encode(), np.array(["a", "b", "a"], object), {}),
    ("string", pa.array([1.5]), None, {0: "1.5 is a float, expected a string"}),
    ("int64_list", pa.array([[1, 2], [], [3]]), np.array([[1, 2], [0, 0], [0, 3]], np.int64), {}),
    (
        "int64_list",
        pa.array([[1, None], None, [4]]),
        np.array([[4]], np.int64),
        {0: "[1, None]: element 1 is missing (null)", 1: "missing value (null)"},
    ),
    (
        "int64_list",
        pa.array([[1.0, 2.0], [2.5]]),
        np.array([[1, 2]], np.int64),
        {1: "[2.5]: element 0 2.5 is not an integer"},
    ),
    ("int64_list", pa.array(["3|17"]), None, {0: "'3|17' is a string, expected a list of integers"}),
]


@pytest.mark.parametrize("column_type, values, kept, problems", PARQUET_CASES)
def test_parquet_values_pass_only_when_the_input_holds_them_exactly(tmp_path, column_type, values, kept, problems):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": np.arange(len(values), dtype=np.int64), "v": values}), path)
    got, reasons = _read(path, "parquet", column_type)
    assert reasons == {
        row: f"{path}: column 'v' ({column_type}), row {row}: {problem}" for row, problem in problems.items()
    }
    if kept is None:
        assert got is None
    else:
        assert got.dtype == kept.dtype
        np.testing.assert_array_equal(got, kept)


def test_csv_floats_must_be_finite_float32_values(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("id,v\n1,1.5\n2,1e40\n3,inf\n4,\n5,-2\n")
    kept, reasons = _read(path, "csv", "float32")
    np.testing.assert_array_equal(kept, np.array([1.5, -2.0], np.float32))
    prefix = f"{path}: column 'v' (float32), line"
    assert reasons == {
        3: f"{prefix} 3: '1e40' is not a finite float32 number",
        4: f"{prefix} 4: 'inf' is not a finite float32 number",
        5: f"{prefix} 5: '' is not a number",
    }


def test_tfrecord_values_follow_the_same_rules(tmp_path):
    path = tmp_path / "v.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for identifier, values in ((1, [b"Drama"]), (2, [b"Horror", b"Action"]), (3, [b"\xff"]), (4, [])):
            feature = {
                "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[identifier])),
                "v": tf.train.Feature(bytes_list=tf.train.BytesList(value=values)),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    kept, reasons = _read(path, "tfrecord", "string", {"v": "|"})
    np.testing.assert_array_equal(kept, np.array(["Drama", "Horror|Action", ""], object))
    assert reasons == {2: f"{path}: feature 'v' (string), record 2: b'\\xff' is not UTF-8 text"}
    kept, reasons = _read(path, "tfrecord", "string")
    np.testing.assert_array_equal(kept, np.array(["Drama"], object))
    assert reasons == {
        1: f"{path}: record 1: feature 'v' holds 2 values, expected one string",
        2: f"{path}: feature 'v' (string), record 2: b'\\xff' is not UTF-8 text",
        3: f"{path}: record 3: feature 'v' holds 0 values, expected one string",
    }


def test_a_row_with_several_bad_columns_names_each(tmp_path):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": pa.array([None, 2], pa.int64()), "v": [7, 8]}), path)
    kept, reasons = _read(path, "parquet", "string")
    assert kept is None
    assert reasons == {
        0: f"{path}: column 'id' (int64), row 0: missing value (null); "
        f"{path}: column 'v' (string), row 0: 7 is an integer, expected a string",
        1: f"{path}: column 'v' (string), row 1: 8 is an integer, expected a string",
    }


@pytest.mark.parametrize(
    "value, column_type, separator, expected",
    [
        (["Action", "Comedy"], "string", "|", ("Action|Comedy", None)),
        ([], "string", "|", ("", None)),
        (["a;b"], "string", ";", (None, "['a;b'] cannot be joined with ';': element 0 holds the separator ';'")),
        ("Action|Comedy", "string", "|", ("Action|Comedy", None)),
        (None, "float32", None, (None, "missing value (null)")),
        (7, "int64", None, (7, None)),
        (-(2**63) - 1, "int64", None, (None, "-9223372036854775809 is outside the int64 range")),
    ],
)
def test_typed_value(value, column_type, separator, expected):
    assert typed_value(value, column_type, separator) == expected


def test_an_id_column_that_is_no_input_keeps_its_own_type(tmp_path):
    reader = ReadRowChunks({"v": "int64", "key": "string"}, "key", ("v",), 100)
    pq.write_table(pa.table({"v": [1, 2], "key": ["u1", "u2"]}), tmp_path / "strings.parquet")
    (chunk,) = reader.process(ReadUnit(str(tmp_path / "strings.parquet"), "parquet", 0))
    assert chunk.ids.dtype == object and chunk.ids.tolist() == ["u1", "u2"]
    pq.write_table(pa.table({"v": [1, 2], "key": [11, 12]}), tmp_path / "integers.parquet")
    outputs = list(reader.process(ReadUnit(str(tmp_path / "integers.parquet"), "parquet", 0)))
    assert [o.value["reason"] for o in outputs] == [
        f"{tmp_path}/integers.parquet: column 'key' (string), row {row}: {key} is an integer, expected a string"
        for row, key in ((0, 11), (1, 12))
    ]

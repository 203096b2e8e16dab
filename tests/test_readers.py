"""Generic readers: round trips through CSV, Parquet and TFRecord, and every error message."""

import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from tfrec_pipelines.data import DataError
from tfrec_pipelines.readers import (
    from_dataframe,
    left_pad,
    read_csv,
    read_delimited,
    read_parquet,
    read_tfrecord,
    write_tfrecord,
)

TYPES = {"user_id": "int64", "country": "string", "score": "float32", "history": "int64_list"}


@pytest.fixture
def features():
    return {
        "user_id": np.array([3, 1, 2, 7], np.int64),
        "country": np.array(["DE", "Côte d'Ivoire", "", 'US, "east"'], dtype=object),
        "score": np.array([0.5, -1.25, 3.0, 1e-3], np.float32),
        "history": np.array([[0, 0, 4], [0, 5, 6], [7, 8, 9], [0, 0, 0]], np.int64),
    }


def unpadded(history):
    """The rows of a 0-padded matrix as lists (an independent reference for the padding)."""
    return [[int(v) for v in row if v != 0] for row in history]


def assert_features_equal(actual, expected):
    assert list(actual) == list(expected)
    for column, values in expected.items():
        assert actual[column].dtype == values.dtype, column
        assert actual[column].tolist() == values.tolist(), column


def frame_with_list_strings(features):
    frame = pd.DataFrame({k: v for k, v in features.items() if k != "history"})
    frame["history"] = ["|".join(map(str, row)) for row in unpadded(features["history"])]
    return frame


def test_csv_round_trip(tmp_path, features):
    frame_with_list_strings(features).to_csv(tmp_path / "f.csv", index=False)
    assert_features_equal(read_csv(tmp_path / "f.csv", TYPES), features)


def test_csv_reads_only_the_requested_columns_in_their_order(tmp_path, features):
    frame_with_list_strings(features).to_csv(tmp_path / "f.csv", index=False)
    actual = read_csv(tmp_path / "f.csv", {"score": "float32", "user_id": "int64"})
    assert list(actual) == ["score", "user_id"]
    assert actual["user_id"].tolist() == [3, 1, 2, 7]


@pytest.mark.parametrize("as_strings", [False, True])
def test_parquet_round_trip(tmp_path, features, as_strings):
    frame = frame_with_list_strings(features)
    if not as_strings:
        frame["history"] = unpadded(features["history"])
    frame.to_parquet(tmp_path / "f.parquet")
    assert_features_equal(read_parquet(tmp_path / "f.parquet", TYPES), features)


def test_tfrecord_round_trip(tmp_path, features):
    write_tfrecord(features, tmp_path / "f.tfrecord")
    assert_features_equal(read_tfrecord(tmp_path / "f.tfrecord", TYPES), features)


def test_tfrecord_glob_reads_files_in_name_order(tmp_path, features):
    second = {k: v[2:] for k, v in features.items()}
    first = {k: v[:2] for k, v in features.items()}
    write_tfrecord(second, tmp_path / "part-1.tfrecord")
    write_tfrecord(first, tmp_path / "part-0.tfrecord")
    actual = read_tfrecord(str(tmp_path / "part-*.tfrecord"), TYPES)
    assert_features_equal(actual, features)


def test_variable_length_lists_are_left_padded_keeping_the_last_items(tmp_path):
    frame = pd.DataFrame({"history": ["1|2|3|4", "5", "", "6|7"]})
    frame.to_csv(tmp_path / "h.csv", index=False)
    assert read_csv(tmp_path / "h.csv", {"history": "int64_list"})["history"].tolist() == [
        [1, 2, 3, 4],
        [0, 0, 0, 5],
        [0, 0, 0, 0],
        [0, 0, 6, 7],
    ]
    assert read_csv(tmp_path / "h.csv", {"history": "int64_list"}, max_length=2)["history"].tolist() == [
        [3, 4],
        [0, 5],
        [0, 0],
        [6, 7],
    ]


def test_left_pad():
    values, lengths = np.array([1, 2, 3, 4, 5, 6]), np.array([3, 0, 1, 2])
    assert left_pad(values, lengths).tolist() == [[1, 2, 3], [0, 0, 0], [0, 0, 4], [0, 5, 6]]
    assert left_pad(values, lengths, max_length=4).tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 0, 4], [0, 0, 5, 6]]
    assert left_pad(values, lengths, max_length=1).tolist() == [[3], [0], [4], [6]]


def test_tfrecord_variable_length_lists(tmp_path):
    with tf.io.TFRecordWriter(str(tmp_path / "v.tfrecord")) as writer:
        for history in ([1, 2, 3], [], [4]):
            feature = {"history": tf.train.Feature(int64_list=tf.train.Int64List(value=history))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    actual = read_tfrecord(tmp_path / "v.tfrecord", {"history": "int64_list"}, max_length=2)
    assert actual["history"].tolist() == [[2, 3], [0, 0], [0, 4]]


def test_from_dataframe_with_list_cells_and_missing_strings():
    frame = pd.DataFrame({"history": [[1, 2], np.array([3]), None], "name": ["a", None, "c"]})
    actual = from_dataframe(frame, {"history": "int64_list", "name": "string"})
    assert actual["history"].tolist() == [[1, 2], [0, 3], [0, 0]]
    assert actual["name"].tolist() == ["a", "", "c"]
    assert actual["name"].dtype == object


def test_headerless_file_with_a_multi_character_separator(tmp_path):
    (tmp_path / "r.dat").write_bytes("1::Café: the film::3|4\n2::Ünïcode::\n".encode("latin-1"))
    actual = read_delimited(
        tmp_path / "r.dat",
        {"id": "int64", "title": "string", "history": "int64_list"},
        sep="::",
        names=["id", "title", "history"],
        encoding="latin-1",
    )
    assert actual["id"].tolist() == [1, 2]
    assert actual["title"].tolist() == ["Café: the film", "Ünïcode"]
    assert actual["history"].tolist() == [[3, 4], [0, 0]]


# ---------------------------------------------------------------- errors


def test_missing_column_csv(tmp_path, features):
    frame_with_list_strings(features).drop(columns="score").to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'f.csv'} has no column 'score' (expected float32)")):
        read_csv(tmp_path / "f.csv", TYPES)


def test_missing_column_parquet(tmp_path, features):
    frame_with_list_strings(features).drop(columns="country").to_parquet(tmp_path / "f.parquet")
    message = f"{tmp_path / 'f.parquet'} has no column 'country' (expected string)"
    with pytest.raises(DataError, match=re.escape(message)):
        read_parquet(tmp_path / "f.parquet", TYPES)


def test_missing_column_tfrecord(tmp_path, features):
    write_tfrecord({k: v for k, v in features.items() if k != "score"}, tmp_path / "f.tfrecord")
    message = f"{tmp_path / 'f.tfrecord'}: record 0 has no feature 'score' (expected float32)"
    with pytest.raises(DataError, match=re.escape(message)):
        read_tfrecord(tmp_path / "f.tfrecord", TYPES)


def test_missing_column_dataframe():
    with pytest.raises(DataError, match=re.escape("DataFrame has no column 'b' (expected int64)")):
        from_dataframe(pd.DataFrame({"a": [1]}), {"b": "int64"})


def test_wrong_feature_kind_tfrecord(tmp_path, features):
    write_tfrecord(features, tmp_path / "f.tfrecord")
    with pytest.raises(DataError, match=re.escape("record 0, feature 'user_id' holds int64_list, expected string")):
        read_tfrecord(tmp_path / "f.tfrecord", {"user_id": "string"})


@pytest.mark.parametrize(
    "column, value, problem",
    [
        ("user_id", "12a", "'12a' is not an integer"),
        ("user_id", "", "'' is not an integer"),
        ("user_id", "2.5", "'2.5' is not an integer"),
        ("score", "high", "'high' is not a number"),
        ("history", "1|two", "'1|two' is not a '|'-separated list of integers"),
    ],
)
def test_bad_value_csv_names_column_file_and_line(tmp_path, column, value, problem):
    rows = [{"user_id": "1", "country": "DE", "score": "0.5", "history": "1|2"} for _ in range(4)]
    rows[2][column] = value
    pd.DataFrame(rows).to_csv(tmp_path / "bad.csv", index=False)
    message = f"{tmp_path / 'bad.csv'}: column '{column}' ({TYPES[column]}), line 4: {problem}"
    with pytest.raises(DataError, match=re.escape(message)):
        read_csv(tmp_path / "bad.csv", TYPES)


def test_bad_value_parquet_names_the_row(tmp_path):
    pd.DataFrame({"user_id": ["1", "2", "x"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=re.escape("column 'user_id' (int64), row 2: 'x' is not an integer")):
        read_parquet(tmp_path / "bad.parquet", {"user_id": "int64"})


def test_missing_value_parquet_names_the_row(tmp_path):
    pd.DataFrame({"user_id": [1, None, 3]}).to_parquet(tmp_path / "null.parquet")
    with pytest.raises(DataError, match=re.escape("column 'user_id' (int64), row 1: missing value")):
        read_parquet(tmp_path / "null.parquet", {"user_id": "int64"})


def test_empty_files(tmp_path):
    (tmp_path / "e.csv").write_text("")
    (tmp_path / "h.csv").write_text("user_id\n")
    (tmp_path / "e.parquet").write_bytes(b"")
    pd.DataFrame({"user_id": pd.Series([], dtype="int64")}).to_parquet(tmp_path / "h.parquet")
    (tmp_path / "e.tfrecord").write_bytes(b"")
    types = {"user_id": "int64"}
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'e.csv'} is empty; expected columns user_id (int64)")):
        read_csv(tmp_path / "e.csv", types)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'h.csv'} has no data rows")):
        read_csv(tmp_path / "h.csv", types)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'e.parquet'} is empty")):
        read_parquet(tmp_path / "e.parquet", types)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'h.parquet'} has no rows")):
        read_parquet(tmp_path / "h.parquet", types)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'e.tfrecord'} holds no records")):
        read_tfrecord(tmp_path / "e.tfrecord", types)


def test_not_a_parquet_or_tfrecord_file(tmp_path):
    (tmp_path / "x.parquet").write_text("hello")
    (tmp_path / "x.tfrecord").write_text("hello, this is not a record")
    with pytest.raises(DataError, match="is not a readable Parquet file"):
        read_parquet(tmp_path / "x.parquet", {"a": "int64"})
    with pytest.raises(DataError, match="is not a valid TFRecord file"):
        read_tfrecord(tmp_path / "x.tfrecord", {"a": "int64"})


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv does not exist; expected a file with columns a \(int64\)"):
        read_csv(tmp_path / "nope.csv", {"a": "int64"})
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet does not exist"):
        read_parquet(tmp_path / "nope.parquet", {"a": "int64"})
    with pytest.raises(FileNotFoundError, match=r"No TFRecord file matches .*part-\*"):
        read_tfrecord(tmp_path / "part-*", {"a": "int64"})


def test_too_many_fields_per_line(tmp_path):
    (tmp_path / "wide.txt").write_text("1|2|3\n")
    with pytest.raises(DataError, match=re.escape("wide.txt has 3 fields per line, expected 2 (a, b)")):
        read_delimited(tmp_path / "wide.txt", {"a": "int64"}, sep="|", names=["a", "b"])


def test_ragged_line_is_named(tmp_path):
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(DataError, match=r"ragged\.csv: .*line 3"):
        read_csv(tmp_path / "ragged.csv", {"a": "int64"})


def test_unknown_column_type_and_bad_max_length(tmp_path):
    (tmp_path / "f.csv").write_text("a\n1\n")
    with pytest.raises(ValueError, match="Column 'a' has unknown type 'int32'"):
        read_csv(tmp_path / "f.csv", {"a": "int32"})
    with pytest.raises(ValueError, match=re.escape("`max_length` must be a positive int or None. Received: 0")):
        read_csv(tmp_path / "f.csv", {"a": "int64_list"}, max_length=0)


def test_write_tfrecord_rejects_other_dtypes(tmp_path):
    with pytest.raises(DataError, match="Cannot write column 'x' of dtype bool"):
        write_tfrecord({"x": np.array([True])}, tmp_path / "x.tfrecord")


@pytest.mark.parametrize("sep", ["|", "::"])
def test_ragged_line_in_headerless_file_is_named(tmp_path, sep):
    (tmp_path / "ragged.txt").write_text(sep.join("12") + "\n" + sep.join("345") + "\n")
    with pytest.raises(DataError, match=r"ragged\.txt: .*Expected 2 fields in line 2, saw 3"):
        read_delimited(tmp_path / "ragged.txt", {"a": "int64"}, sep=sep, names=["a", "b"])


@pytest.mark.parametrize(
    "sep, names, lines, line",
    [
        (",", None, ["a,b", "1,x", "2,Café", "3,y"], 3),
        (",", None, ["a,Année", "1,x"], 1),
        ("::", ["a", "b"], ["1::x", "2::y", "3::Zürich"], 3),
    ],
)
def test_text_not_in_the_encoding_names_file_line_and_encoding(tmp_path, sep, names, lines, line):
    (tmp_path / "latin.txt").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    message = f"{tmp_path / 'latin.txt'}: line {line} is not valid utf-8 text"
    with pytest.raises(DataError, match=re.escape(message)):
        read_delimited(tmp_path / "latin.txt", {"a": "int64", "b": "string"}, sep=sep, names=names)


def test_bad_byte_line_is_counted_across_read_chunks(tmp_path, monkeypatch):
    """The two bytes of the valid "é" fall in the 2nd and 3rd 5-byte reads; the bad byte is on line 4."""
    monkeypatch.setattr("tfrec_pipelines.readers._DECODE_CHUNK_BYTES", 5)
    (tmp_path / "t.csv").write_bytes("a,b\n1,xxxé\n2,yü\n".encode("utf-8") + b"3,\xe9\n")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 't.csv'}: line 4 is not valid utf-8 text (0xe9")):
        read_csv(tmp_path / "t.csv", {"a": "int64", "b": "string"})


def test_integer_outside_int64_names_file_column_and_line(tmp_path):
    (tmp_path / "big.csv").write_text(
        "a\n-9223372036854775808\n0000000000000000000042\n9223372036854775807\n"
        "9223372036854775808\n99999999999999999999\n"
    )
    message = (
        f"{tmp_path / 'big.csv'}: column 'a' (int64), line 5: '9223372036854775808' does not fit in int64 "
        "(from -9223372036854775808 to 9223372036854775807)"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        read_csv(tmp_path / "big.csv", {"a": "int64"})
    (tmp_path / "fits.csv").write_text("a\n-9223372036854775808\n0000000000000000000042\n9223372036854775807\n")
    assert read_csv(tmp_path / "fits.csv", {"a": "int64"})["a"].tolist() == [-(2**63), 42, 2**63 - 1]


@pytest.mark.parametrize(
    "values, row, shown",
    [
        (np.array([1, 2**63 + 5], np.uint64), 1, "9223372036854775813"),
        (np.array([1.0, 2.0, 2.0**63], np.float64), 2, "9.223372036854776e+18"),
        (np.array([-1e19, 1.0]), 0, "-1e+19"),
        (pd.array([3, 2**64 - 1], dtype="UInt64"), 1, "18446744073709551615"),
    ],
)
def test_numbers_outside_int64_are_not_wrapped_around(values, row, shown):
    with pytest.raises(DataError, match=re.escape(f"column 'a' (int64), row {row}: {shown} does not fit in int64")):
        from_dataframe(pd.DataFrame({"a": values}), {"a": "int64"})


def test_unique_column_names_both_lines(tmp_path):
    (tmp_path / "items.csv").write_text("id,name\n7,a\n8,b\n9,c\n8,d\n7,e\n")
    message = (
        f"{tmp_path / 'items.csv'}: column 'id' (int64), line 5: 8 already appears on line 3; "
        "each id must appear once (lines repeating an earlier one: 2)"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        read_delimited(tmp_path / "items.csv", {"id": "int64", "name": "string"}, unique=["id"])
    (tmp_path / "names.txt").write_text("7|a\n8|b\n9|a\n")
    with pytest.raises(
        DataError, match=re.escape("names.txt: column 'name' (string), line 3: 'a' already appears on line 1")
    ):
        read_delimited(tmp_path / "names.txt", {"name": "string"}, sep="|", names=["id", "name"], unique=["name"])
    with pytest.raises(ValueError, match=re.escape("`unique` names columns ['id'] that are not in `column_types`")):
        read_delimited(tmp_path / "names.txt", {"name": "string"}, sep="|", names=["id", "name"], unique=["id"])


def _overwrite_column_data(path):
    """Overwrites everything between the leading magic bytes and the footer: the footer still parses."""
    data = bytearray(path.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    data[4:footer_start] = b"\xff" * (footer_start - 4)
    path.write_bytes(bytes(data))


def test_corrupt_parquet_file_is_named(tmp_path):
    pd.DataFrame({"a": np.arange(1000)}).to_parquet(tmp_path / "corrupt.parquet")
    _overwrite_column_data(tmp_path / "corrupt.parquet")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'corrupt.parquet'} is not a readable Parquet file: ")):
        read_parquet(tmp_path / "corrupt.parquet", {"a": "int64"})


@pytest.mark.parametrize("corruption", ["column data", "not Parquet"])
def test_unreadable_file_in_a_parquet_directory_is_named(tmp_path, corruption):
    (tmp_path / "parts").mkdir()
    pd.DataFrame({"a": np.arange(1000)}).to_parquet(tmp_path / "parts" / "part-0.parquet")
    pd.DataFrame({"a": np.arange(1000)}).to_parquet(tmp_path / "parts" / "part-1.parquet")
    if corruption == "column data":
        _overwrite_column_data(tmp_path / "parts" / "part-1.parquet")
    else:
        (tmp_path / "parts" / "part-1.parquet").write_text("hello, this is not Parquet")
    message = f"{tmp_path / 'parts' / 'part-1.parquet'} is not a readable Parquet file: "
    with pytest.raises(DataError, match=re.escape(message)):
        read_parquet(tmp_path / "parts", {"a": "int64"})

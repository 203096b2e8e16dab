"""MovieLens reading and the leave-last-out protocol, on tiny hand-made directories of each layout."""

from pathlib import Path

import numpy as np
import pytest

from helpers import (
    EXPECTED_EVAL_HISTORY,
    EXPECTED_EVAL_USERS,
    EXPECTED_SEEN,
    EXPECTED_TARGETS,
    EXPECTED_TRAIN_HISTORY,
    EXPECTED_TRAIN_MOVIES,
    EXPECTED_TRAIN_USERS,
    MOVIELENS_GENRES,
    write_1m,
    write_20m,
    write_100k,
)
from tfrec_pipelines.data import DataError
from tfrec_pipelines.movielens import load_movielens

EXPECTED_USERS = {
    "ml-100k": {
        "gender": ["M", "F"],
        "age": [24, 53],
        "occupation": ["technician", "other"],
        "zip_code": ["85711", "94043"],
    },
    "ml-1m": {"gender": ["F", "M"], "age": [1, 56], "occupation": ["10", "16"], "zip_code": ["48067", "70072"]},
    "ml-20m": {"gender": ["", ""], "age": [0, 0], "occupation": ["", ""], "zip_code": ["", ""]},
}
WRITERS = {"ml-100k": write_100k, "ml-1m": write_1m, "ml-20m": write_20m}


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_leave_last_out_protocol(tmp_path, layout):
    data = load_movielens(WRITERS[layout](tmp_path / layout), max_history=2)

    assert data.name == layout
    assert data.train["user_id"].tolist() == EXPECTED_TRAIN_USERS
    assert data.train["movie_id"].tolist() == EXPECTED_TRAIN_MOVIES
    assert data.train["history"].tolist() == EXPECTED_TRAIN_HISTORY
    assert data.train["genres"].tolist() == [MOVIELENS_GENRES[m] for m in EXPECTED_TRAIN_MOVIES]
    assert data.eval_queries["user_id"].tolist() == EXPECTED_EVAL_USERS
    assert data.eval_queries["history"].tolist() == EXPECTED_EVAL_HISTORY
    assert data.eval_targets.tolist() == EXPECTED_TARGETS
    assert [data.seen(u).tolist() for u in range(2)] == EXPECTED_SEEN
    assert data.seen_indptr.tolist() == [0, 3, 4]
    assert data.candidates["movie_id"].tolist() == [10, 20, 30, 40, 50]
    assert data.candidates["genres"].tolist() == [MOVIELENS_GENRES[m] for m in (10, 20, 30, 40, 50)]
    for column, values in EXPECTED_USERS[layout].items():
        assert data.eval_queries[column].tolist() == values, column
    assert data.summary["interactions_read"] == 8
    assert data.summary["interactions_dropped_unknown_item"] == 1
    assert data.summary["users_with_one_interaction"] == 1


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_schema_is_the_same_in_every_layout(tmp_path, layout):
    data = load_movielens(WRITERS[layout](tmp_path / layout), max_history=3)

    assert data.query_features == ("user_id", "gender", "age", "occupation", "zip_code", "history")
    assert data.candidate_features == ("movie_id", "genres")
    assert data.candidate_id == "movie_id"
    assert data.column_types == {
        "user_id": "int64",
        "gender": "string",
        "age": "int64",
        "occupation": "string",
        "zip_code": "string",
        "history": "int64_list",
        "movie_id": "int64",
        "genres": "string",
    }
    for table in (data.train, data.eval_queries, data.candidates):
        for column, values in table.items():
            expected = {"string": object, "int64": np.int64, "int64_list": np.int64}[data.column_types[column]]
            assert values.dtype == expected, column
            if expected is object:
                assert all(isinstance(v, str) for v in values), column
    assert data.train["history"].shape == (4, 3)
    assert data.eval_queries["history"].tolist() == [[20, 10, 30], [0, 0, 10]]


def test_unknown_layout_lists_the_files_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError) as error:
        load_movielens(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    for name in (
        "ml-100k",
        "u.data",
        "u.user",
        "u.item",
        "u.genre",
        "ml-1m",
        "ratings.dat",
        "users.dat",
        "movies.dat",
        "ml-20m",
        "ratings.csv",
        "movies.csv",
    ):
        assert name in message


def test_missing_file_is_named(tmp_path):
    directory = write_100k(tmp_path / "ml-100k")
    (directory / "u.genre").unlink()
    with pytest.raises(FileNotFoundError, match=r"ml-100k: u\.data, u\.user, u\.item, u\.genre \(missing u\.genre\)"):
        load_movielens(directory)


def test_missing_column_in_header(tmp_path):
    directory = write_20m(tmp_path / "ml-20m")
    (directory / "ratings.csv").write_text("userId,movieId,rating\n1,10,4\n")
    with pytest.raises(DataError, match=r"ratings\.csv has no column 'timestamp' \(expected int64\)"):
        load_movielens(directory)


def test_missing_column_in_headerless_file(tmp_path):
    directory = write_100k(tmp_path / "ml-100k")
    (directory / "u.user").write_text("1|24|M|technician\n2|53|F|other\n")
    message = r"u\.user has 4 fields per line, expected 5 .*'zip_code' \(string\) is missing"
    with pytest.raises(DataError, match=message):
        load_movielens(directory)


@pytest.mark.parametrize(
    "layout, file, line, bad",
    [
        ("ml-100k", "u.data", "1\t10\t4\t5\n2\t20\t3\t6\n3\tx\t4\t7\n", "line 3"),
        ("ml-1m", "ratings.dat", "1::10::4::5\n2::20::3::oops\n", "line 2"),
        ("ml-20m", "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4,5\n2,2.5,3,6\n", "line 3"),
    ],
)
def test_non_numeric_value_names_file_column_and_line(tmp_path, layout, file, line, bad):
    directory = WRITERS[layout](tmp_path / layout)
    (directory / file).write_text(line)
    column = {"ml-100k": "movie_id", "ml-1m": "timestamp", "ml-20m": "movieId"}[layout]
    with pytest.raises(DataError) as error:
        load_movielens(directory)
    message = str(error.value)
    assert file in message and f"column '{column}' (int64)" in message and bad in message


@pytest.mark.parametrize("layout, file", [("ml-100k", "u.data"), ("ml-1m", "ratings.dat"), ("ml-20m", "ratings.csv")])
def test_empty_ratings_file(tmp_path, layout, file):
    directory = WRITERS[layout](tmp_path / layout)
    (directory / file).write_text("")
    with pytest.raises(ValueError, match=rf"{file} is empty"):
        load_movielens(directory)


def test_header_only_ratings_file(tmp_path):
    directory = write_20m(tmp_path / "ml-20m")
    (directory / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(DataError, match=r"ratings\.csv has no data rows"):
        load_movielens(directory)


def test_no_user_with_two_interactions_is_nothing_to_train_on(tmp_path):
    directory = write_100k(tmp_path / "ml-100k")
    (directory / "u.data").write_text("1\t10\t4\t100\n2\t20\t4\t101\n")
    with pytest.raises(DataError, match="no user has two or more interactions"):
        load_movielens(directory)


def test_max_history_is_validated(tmp_path):
    with pytest.raises(ValueError, match="`max_history` must be a positive int. Received: 0"):
        load_movielens(write_1m(tmp_path / "ml-1m"), max_history=0)


def test_ratings_without_users_file_read_as_ml_10m(tmp_path):
    directory = write_1m(tmp_path / "ml-10m")
    (directory / "users.dat").unlink()
    data = load_movielens(directory, max_history=2)

    assert data.train["history"].tolist() == EXPECTED_TRAIN_HISTORY
    for column, values in EXPECTED_USERS["ml-20m"].items():
        assert data.eval_queries[column].tolist() == values, column


def test_ratings_of_unknown_users_are_dropped_and_counted(tmp_path):
    directory = write_1m(tmp_path / "ml-1m")
    (directory / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    data = load_movielens(directory, max_history=2)

    assert data.summary["interactions_dropped_unknown_user"] == 1
    assert data.summary["interactions_dropped_unknown_item"] == 1
    assert data.train["movie_id"].tolist() == EXPECTED_TRAIN_MOVIES
    assert data.eval_targets.tolist() == EXPECTED_TARGETS


# A repeat of user 1's last rating (movie 40 at t=200) with another score, in each layout's format.
DUPLICATE_RATING = {
    "ml-100k": ("u.data", "1\t40\t2\t200\n"),
    "ml-1m": ("ratings.dat", "1::40::2::200\n"),
    "ml-20m": ("ratings.csv", "1,40,2.0,200\n"),
}


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_exact_duplicate_ratings_are_dropped_counted_and_logged(tmp_path, caplog, layout):
    directory = WRITERS[layout](tmp_path / layout)
    file, line = DUPLICATE_RATING[layout]
    with open(directory / file, "a") as ratings:
        ratings.write(line)
    data = load_movielens(directory, max_history=2)

    # Kept, the repeat would be user 1's test target with movie 40 also in its training items.
    assert data.train["movie_id"].tolist() == EXPECTED_TRAIN_MOVIES
    assert data.train["history"].tolist() == EXPECTED_TRAIN_HISTORY
    assert data.eval_targets.tolist() == EXPECTED_TARGETS
    assert [data.seen(u).tolist() for u in range(2)] == EXPECTED_SEEN
    assert data.summary["interactions_read"] == 9
    assert data.summary["duplicate_interactions"] == 1
    assert data.summary["interactions"] == 7  # 9 read - 1 of an unknown movie - 1 duplicate
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "exact duplicate" in warning and "1 of 8" in warning
    assert "user_id 1, movie_id 40, timestamp 200" in warning


def test_a_release_without_duplicates_counts_none(tmp_path):
    data = load_movielens(write_1m(tmp_path / "ml-1m"), max_history=2)
    assert data.summary["duplicate_interactions"] == 0
    assert data.summary["interactions"] == 7


def _merge(directory: Path, other: Path) -> None:
    for file in other.iterdir():
        file.rename(directory / file.name)


@pytest.mark.parametrize("first, second", [("ml-100k", "ml-20m"), ("ml-1m", "ml-20m"), ("ml-100k", "ml-1m")])
def test_two_layouts_in_one_directory_is_an_error(tmp_path, first, second):
    directory = WRITERS[first](tmp_path / "mixed")
    _merge(directory, WRITERS[second](tmp_path / second))
    with pytest.raises(DataError) as error:
        load_movielens(directory)
    message = str(error.value)
    assert message.startswith(f"{directory} holds the files of 2 MovieLens layouts: ")
    assert f"{first} (" in message and f"{second} (" in message
    assert "ml-10m" not in message  # its files are part of ml-1m's
    assert "--data-dir" in message and "one release" in message


def test_missing_data_dir_is_named_first(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_movielens(tmp_path / "ml-1m")
    assert str(error.value).startswith(f"{tmp_path / 'ml-1m'} does not exist; expected a MovieLens release directory")
    assert "ratings.dat" in str(error.value)


def test_data_dir_that_is_a_file_is_named_first(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(NotADirectoryError) as error:
        load_movielens(tmp_path / "ratings.csv")
    assert str(error.value).startswith(f"{tmp_path / 'ratings.csv'} is not a directory")


@pytest.mark.parametrize(
    "layout, file, text, line",
    [
        ("ml-100k", "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|Zürich\n", 3),
        ("ml-1m", "users.dat", "1::F::1::10::48067\n2::M::56::16::Zürich\n3::M::25::15::55117\n", 2),
        ("ml-20m", "movies.csv", "movieId,title,genres\n10,Heat (1995),Action\n20,Café (1995),Comedy\n", 3),
    ],
)
def test_latin_1_text_in_a_utf_8_file_names_file_and_line(tmp_path, layout, file, text, line):
    directory = WRITERS[layout](tmp_path / layout)
    (directory / file).write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as error:
        load_movielens(directory)
    assert str(error.value).startswith(f"{directory / file}: line {line} is not valid utf-8 text")


@pytest.mark.parametrize(
    "layout, file, text, column, line, earlier",
    [
        (
            "ml-100k",
            "u.user",
            "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|T8H1N\n2|30|M|x|1\n",
            "user_id",
            4,
            2,
        ),
        (
            "ml-100k",
            "u.item",
            "10|A|01-Jan-1995||u|0|1|1|0\n20|B|01-Jan-1995||u|1|0|0|0\n10|C|01-Jan-1995||u|0|0|0|1\n",
            "movie_id",
            3,
            1,
        ),
        (
            "ml-1m",
            "users.dat",
            "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n3::F::1::1::1\n",
            "user_id",
            4,
            3,
        ),
        (
            "ml-1m",
            "movies.dat",
            "10::A::Action\n20::B::Drama\n30::C::Drama\n40::D::Drama\n20::E::Comedy\n",
            "movie_id",
            5,
            2,
        ),
        ("ml-20m", "movies.csv", "movieId,title,genres\n10,A,Action\n20,B,Drama\n10,C,Comedy\n", "movieId", 4, 2),
    ],
)
def test_repeated_id_names_the_file_and_both_lines(tmp_path, layout, file, text, column, line, earlier):
    directory = WRITERS[layout](tmp_path / layout)
    (directory / file).write_text(text)
    with pytest.raises(DataError) as error:
        load_movielens(directory)
    message = str(error.value)
    assert message.startswith(f"{directory / file}: column '{column}' (int64), line {line}: ")
    assert f"already appears on line {earlier}" in message


def test_id_too_large_for_int64_names_file_column_and_line(tmp_path):
    directory = write_100k(tmp_path / "ml-100k")
    (directory / "u.data").write_text("1\t10\t4\t5\n99999999999999999999\t20\t3\t6\n")
    with pytest.raises(DataError) as error:
        load_movielens(directory)
    assert str(error.value).startswith(
        f"{directory / 'u.data'}: column 'user_id' (int64), line 2: '99999999999999999999' does not fit in int64"
    )

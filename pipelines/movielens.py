"""MovieLens release directories, split by the leave-last-out protocol (docs/contracts.md).

Any GroupLens MovieLens directory is read the same way; the layout is recognised from
its files:

==========  ===============================================  ===========================
layout      files                                            user features
==========  ===============================================  ===========================
ml-100k     ``u.data`` (tab), ``u.user``, ``u.item``,         age, gender, occupation
            ``u.genre`` (``|``; ``u.item`` latin-1)           ("technician"), zip code
ml-1m       ``ratings.dat``, ``users.dat``, ``movies.dat``   gender, age, occupation
            (``::``; ``movies.dat`` latin-1)                 ("12"), zip code
ml-10m      ``ratings.dat``, ``movies.dat``                  none
ml-20m      ``ratings.csv``, ``movies.csv`` (with header;    none
            also ml-25m, ml-32m and ml-latest)
==========  ===============================================  ===========================

The files marked latin-1 are read as Latin-1, as GroupLens writes them; every other
file as UTF-8 (the releases' ratings and users files are ASCII), and a byte that is not
UTF-8 is a :class:`~tfrec_pipelines.data.DataError` naming the file and the line. A
directory must hold one release: the files of two layouts (say ``u.data`` and
``ratings.csv``) are an error, not a choice. The ml-1m files include those of ml-10m,
so an ml-1m directory is one release.

Without a users file, ``gender``, ``occupation`` and ``zip_code`` are ``""`` and
``age`` is 0, so every layout has the same schema, that of the exported model's
MovieLens features.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from tfrec_pipelines.data import ColumnType, DataError, FeatureDict, RetrievalData
from tfrec_pipelines.interactions import InteractionTables, interaction_data
from tfrec_pipelines.readers import read_delimited
from tfrec_towers.progress import progress

logger = logging.getLogger(__name__)

USER_COLUMNS: dict[str, ColumnType] = {
    "user_id": "int64",
    "gender": "string",
    "age": "int64",
    "occupation": "string",
    "zip_code": "string",
}
MOVIE_COLUMNS: dict[str, ColumnType] = {"movie_id": "int64", "genres": "string"}
_RATING_COLUMNS: dict[str, ColumnType] = {"user_id": "int64", "movie_id": "int64", "timestamp": "int64"}


def load_movielens(data_dir: str | Path, max_history: int = 50) -> RetrievalData:
    """Reads a MovieLens directory (:func:`movielens_tables`) and splits it by the leave-last-out
    protocol (docs/contracts.md).

    Every rating is an implicit positive. Each user's ratings are sorted by (timestamp,
    movie id); the last is the test target and every earlier one a training example
    whose ``history`` holds the up-to-``max_history`` movies before it (most recent
    last, left-padded with 0). Users with a single rating have no training example and
    are dropped from evaluation. The candidates are every movie of the item file, rated
    or not, sorted by id. Ratings of movies missing from the item file (or of users
    missing from the users file) are dropped; ``summary`` counts them
    (``interactions_dropped_unknown_item`` / ``_user``), and they are logged. An exact
    duplicate rating (same user, movie and timestamp as an earlier one, whatever the
    score) is a logging artefact: it is dropped, keeping the first, counted in
    ``summary["duplicate_interactions"]`` and logged (see
    :func:`~tfrec_pipelines.data.leave_last_out`). So ``interactions`` = ``interactions_read``
    minus the three counts of dropped ratings.

    Args:
      data_dir: a MovieLens release directory; its base name becomes ``name``.
      max_history: the history width ``L``.

    Returns:
      The split. Query features: ``user_id`` int64, ``gender`` string, ``age`` int64,
      ``occupation`` string, ``zip_code`` string, ``history`` int64 ``[N, L]``;
      candidate features: ``movie_id`` int64, ``genres`` string (``"Action|Comedy"``).

    Raises:
      FileNotFoundError, NotADirectoryError, DataError: see :func:`movielens_tables`.
      ValueError: ``max_history`` is not a positive int.
    """
    tables = movielens_tables(data_dir)
    with progress("Sorting ratings and building per-user histories", unit="ratings") as bar:
        data = interaction_data(tables, max_history=max_history)
        bar.update(data.summary["interactions"])
    return data


def movielens_tables(data_dir: str | Path) -> InteractionTables:
    """The ratings, users and movies of a MovieLens release directory as interaction tables.

    Returns:
      Interactions ``user_id``, ``movie_id``, ``timestamp``; users ``user_id``, ``gender``,
      ``age``, ``occupation``, ``zip_code`` (blank for releases without a users file); items
      ``movie_id``, ``genres``.

    Raises:
      FileNotFoundError: ``data_dir`` does not exist, or no layout's files are all in it
        (lists, per layout, the files looked for and those missing).
      NotADirectoryError: ``data_dir`` is not a directory.
      DataError: ``data_dir`` holds the files of two layouts (names both); a file is
        empty, is not valid text in its encoding, lacks a column, holds a value that is
        not of its column's type or does not fit in it, or repeats a user or movie id
        of its users or item file (names the file, column and line, both lines for a
        repeated id).
    """
    data_dir = Path(data_dir)
    layout = _find_layout(data_dir)
    with progress(f"Reading the {layout.name} ratings of {data_dir.name}", unit="ratings") as bar:
        ratings = layout.read_ratings(data_dir)
        bar.update(len(ratings["user_id"]))
    movies = layout.read_movies(data_dir)
    users = layout.read_users(data_dir) if layout.read_users else _users_without_features(ratings["user_id"])
    logger.info("%s: %s layout", data_dir, layout.name)
    files = {
        "interactions": layout.files[0],
        "users": layout.files[1] if layout.read_users else "the ratings",
        "items": next(f for f in layout.files if "item" in f or "movie" in f),
    }
    return InteractionTables(
        name=data_dir.resolve().name,
        interactions=pd.DataFrame(ratings),
        users=pd.DataFrame(users),
        items=pd.DataFrame(movies),
        user_column="user_id",
        item_column="movie_id",
        timestamp_column="timestamp",
        sources={role: str(data_dir / name) if not name.startswith("the ") else name for role, name in files.items()},
    )


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The files of one MovieLens release layout and how to read each."""

    name: str
    files: tuple[str, ...]
    read_ratings: Callable[[Path], FeatureDict]
    read_movies: Callable[[Path], FeatureDict]
    read_users: Optional[Callable[[Path], FeatureDict]]


def _find_layout(data_dir: Path) -> _Layout:
    """The one layout whose files are all in ``data_dir`` (ml-1m, not ml-10m, when both match)."""
    layouts = "; ".join(f"{layout.name}: {', '.join(layout.files)}" for layout in _LAYOUTS)
    if not data_dir.exists():
        raise FileNotFoundError(f"{data_dir} does not exist; expected a MovieLens release directory ({layouts}).")
    if not data_dir.is_dir():
        raise NotADirectoryError(f"{data_dir} is not a directory; expected a MovieLens release directory ({layouts}).")
    complete = [layout for layout in _LAYOUTS if all((data_dir / name).is_file() for name in layout.files)]
    found = [layout for layout in complete if not any(set(layout.files) < set(other.files) for other in complete)]
    if len(found) > 1:
        raise DataError(
            f"{data_dir} holds the files of {len(found)} MovieLens layouts: "
            + "; ".join(f"{layout.name} ({', '.join(layout.files)})" for layout in found)
            + ". Point the data directory (--data-dir) at a directory that holds one release."
        )
    if found:
        return found[0]
    looked_for = "; ".join(
        f"{layout.name}: {', '.join(layout.files)}"
        f" (missing {', '.join(n for n in layout.files if not (data_dir / n).is_file())})"
        for layout in _LAYOUTS
    )
    raise FileNotFoundError(f"{data_dir} is not a MovieLens directory. Looked for {looked_for}.")


def _users_without_features(user_ids: np.ndarray) -> FeatureDict:
    ids = np.unique(user_ids)
    blank = np.full(len(ids), "", dtype=object)
    return {
        "user_id": ids,
        "gender": blank,
        "age": np.zeros(len(ids), np.int64),
        "occupation": blank.copy(),
        "zip_code": blank.copy(),
    }


def _read_100k_ratings(data_dir: Path) -> FeatureDict:
    return read_delimited(
        data_dir / "u.data",
        _RATING_COLUMNS,
        sep="\t",
        names=["user_id", "movie_id", "rating", "timestamp"],
        quoting=csv.QUOTE_NONE,
    )


def _read_100k_users(data_dir: Path) -> FeatureDict:
    return read_delimited(
        data_dir / "u.user",
        USER_COLUMNS,
        sep="|",
        names=["user_id", "age", "gender", "occupation", "zip_code"],
        quoting=csv.QUOTE_NONE,
        unique=["user_id"],
    )


def _read_100k_movies(data_dir: Path) -> FeatureDict:
    """``u.item`` ends with one 0/1 flag per genre of ``u.genre``; ``genres`` joins the flagged names."""
    genre_table = read_delimited(
        data_dir / "u.genre",
        {"genre": "string", "index": "int64"},
        sep="|",
        names=["genre", "index"],
        quoting=csv.QUOTE_NONE,
    )
    genres = genre_table["genre"][np.argsort(genre_table["index"], kind="stable")]
    flag_columns = [f"genre_flag_{i}" for i in range(len(genres))]
    items = read_delimited(
        data_dir / "u.item",
        {"movie_id": "int64", **{column: "int64" for column in flag_columns}},
        sep="|",
        names=["movie_id", "title", "release_date", "video_release_date", "imdb_url", *flag_columns],
        encoding="latin-1",
        quoting=csv.QUOTE_NONE,
        unique=["movie_id"],
    )
    flags = np.stack([items[column] for column in flag_columns], axis=1).astype(bool)
    joined = np.array(["|".join(genres[row]) for row in flags], dtype=object)
    return {"movie_id": items["movie_id"], "genres": joined}


def _read_dat_ratings(data_dir: Path) -> FeatureDict:
    return read_delimited(
        data_dir / "ratings.dat",
        _RATING_COLUMNS,
        sep="::",
        names=["user_id", "movie_id", "rating", "timestamp"],
        quoting=csv.QUOTE_NONE,
    )


def _read_dat_users(data_dir: Path) -> FeatureDict:
    return read_delimited(
        data_dir / "users.dat",
        USER_COLUMNS,
        sep="::",
        names=["user_id", "gender", "age", "occupation", "zip_code"],
        quoting=csv.QUOTE_NONE,
        unique=["user_id"],
    )


def _read_dat_movies(data_dir: Path) -> FeatureDict:
    return read_delimited(
        data_dir / "movies.dat",
        MOVIE_COLUMNS,
        sep="::",
        names=["movie_id", "title", "genres"],
        encoding="latin-1",
        quoting=csv.QUOTE_NONE,
        unique=["movie_id"],
    )


def _read_csv_ratings(data_dir: Path) -> FeatureDict:
    table = read_delimited(data_dir / "ratings.csv", {"userId": "int64", "movieId": "int64", "timestamp": "int64"})
    return {"user_id": table["userId"], "movie_id": table["movieId"], "timestamp": table["timestamp"]}


def _read_csv_movies(data_dir: Path) -> FeatureDict:
    table = read_delimited(data_dir / "movies.csv", {"movieId": "int64", "genres": "string"}, unique=["movieId"])
    return {"movie_id": table["movieId"], "genres": table["genres"]}


_LAYOUTS = (
    _Layout(
        "ml-100k", ("u.data", "u.user", "u.item", "u.genre"), _read_100k_ratings, _read_100k_movies, _read_100k_users
    ),
    _Layout("ml-1m", ("ratings.dat", "users.dat", "movies.dat"), _read_dat_ratings, _read_dat_movies, _read_dat_users),
    _Layout("ml-10m", ("ratings.dat", "movies.dat"), _read_dat_ratings, _read_dat_movies, None),
    _Layout("ml-20m", ("ratings.csv", "movies.csv"), _read_csv_ratings, _read_csv_movies, None),
)

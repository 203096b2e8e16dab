"""Tests for tfrec_pipelines.candidate_table: reading the export's candidate corpus from a feature table."""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from helpers import CANDIDATE_SPEC, MOVIE_IDS, K, catalogue, export_models
from tfrec_pipelines.candidate_table import column_types, read_candidate_table, table_format
from tfrec_pipelines.data import DataError
from tfrec_pipelines.readers import write_tfrecord
from tfrec_towers.index import IndexConfig

SPEC_WITH_LIST = dict(
    CANDIDATE_SPEC, tags=tf.TensorSpec([None, None], tf.int64), year=tf.TensorSpec([None], tf.float32)
)


def frame():
    """The toy catalogue plus a list column and a float column, and a column the spec does not name."""
    cat = catalogue()
    return pd.DataFrame(
        {
            "movie_id": cat["movie_id"],
            "genres": cat["genres"],
            "tags": [[1, 2], [3], []] + [[4]] * (len(MOVIE_IDS) - 3),
            "year": np.linspace(1990, 2000, len(MOVIE_IDS)).astype(np.float32),
            "title": [f"movie {i}" for i in MOVIE_IDS],
        }
    )


def check_columns(features):
    """Compares with the frame's values, written out by hand for the list column."""
    cat = catalogue()
    assert sorted(features) == ["genres", "movie_id", "tags", "year"]
    np.testing.assert_array_equal(features["movie_id"], MOVIE_IDS)
    assert features["movie_id"].dtype == np.int64
    assert features["genres"].tolist() == cat["genres"].tolist()
    np.testing.assert_array_equal(features["tags"][:4], [[1, 2], [0, 3], [0, 0], [0, 4]])
    np.testing.assert_allclose(features["year"], np.linspace(1990, 2000, len(MOVIE_IDS)), rtol=1e-6)


@pytest.mark.parametrize("fmt", ["dataframe", "parquet", "csv", "tfrecord"])
def test_reads_every_format(tmp_path, fmt):
    df = frame()
    if fmt == "dataframe":
        source = df
    elif fmt == "parquet":
        source = tmp_path / "movies.parquet"
        df.to_parquet(source)
    elif fmt == "csv":
        source = tmp_path / "movies.csv"
        df.assign(tags=["|".join(map(str, t)) for t in df["tags"]]).to_csv(source, index=False)
    else:
        source = tmp_path / "movies.tfrecord"
        tags = np.array([[0] * (2 - len(t)) + t for t in df["tags"]], np.int64)
        write_tfrecord(
            {"movie_id": MOVIE_IDS, "genres": df["genres"].to_numpy(), "tags": tags, "year": df["year"].to_numpy()},
            source,
        )
    check_columns(read_candidate_table(source, SPEC_WITH_LIST))


def test_export_from_a_parquet_candidate_table(tmp_path):
    source = tmp_path / "movies.parquet"
    frame().to_parquet(source)
    candidates = read_candidate_table(source, CANDIDATE_SPEC)
    path = export_models(tmp_path / "exports", candidates=candidates, index=IndexConfig(k=K))[0]
    meta = json.loads((path / "assets.extra" / "tfrec_towers_metadata.json").read_text())
    assert meta["corpus_size"] == len(MOVIE_IDS) and meta["candidate_id_dtype"] == "int64"


def test_column_types_from_the_spec():
    assert column_types(SPEC_WITH_LIST) == {
        "movie_id": "int64",
        "genres": "string",
        "tags": "int64_list",
        "year": "float32",
    }
    with pytest.raises(ValueError, match=r"Candidate feature 'vector' has spec float32\(None, 3\)"):
        column_types({"vector": tf.TensorSpec([None, 3], tf.float32)})


def test_format_from_suffix(tmp_path):
    assert [table_format(f"a{s}") for s in (".parquet", ".PQ", ".csv", ".tfrecord", ".tfrec")] == [
        "parquet",
        "parquet",
        "csv",
        "tfrecord",
        "tfrecord",
    ]
    assert table_format(tmp_path) == "parquet"
    with pytest.raises(ValueError, match=r"suffix '.xlsx'"):
        table_format("movies.xlsx")


def test_bad_tables(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_candidate_table(tmp_path / "missing.csv", CANDIDATE_SPEC)
    source = tmp_path / "movies.csv"
    pd.DataFrame({"movie_id": MOVIE_IDS}).to_csv(source, index=False)
    with pytest.raises(DataError, match="has no column 'genres'"):
        read_candidate_table(source, CANDIDATE_SPEC)
    pd.DataFrame({"movie_id": ["10", "x"], "genres": ["Action", "Drama"]}).to_csv(source, index=False)
    with pytest.raises(DataError, match=r"column 'movie_id' \(int64\), line 3"):
        read_candidate_table(source, CANDIDATE_SPEC)
    with pytest.raises(ValueError, match="`file_format` must be one of"):
        read_candidate_table(source, CANDIDATE_SPEC, file_format="xlsx")

"""One suffix map for every reader: the configuration's tables, candidate tables and the embedding job's inputs.

The expected formats are written out by hand; a tab-separated file is read with the same values as the
comma-separated one by each reader.
"""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from tfrec_pipelines.candidate_table import read_candidate_table
from tfrec_pipelines.candidate_table import table_format as candidate_format
from tfrec_pipelines.data import DataError
from tfrec_pipelines.embed_sources import ReadRowChunks, ReadUnit, RowChunk, file_format
from tfrec_pipelines.formats import FILE_FORMATS, csv_delimiter, suffix_format
from tfrec_pipelines.tables import read_table, table_format
from tfrec_towers.config import ConfigError, config_from_dict

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EXPECTED = {
    "a.csv": "csv",
    "a.TSV": "csv",
    "a.parquet": "parquet",
    "a.pq": "parquet",
    "a.tfrecord": "tfrecord",
    "a.tfrecords": "tfrecord",
    "a.tfrec": "tfrecord",
    "a.tfr": "tfrecord",
    "gs://bucket/dir.v2/part-00000.PQ": "parquet",
}

ROWS = [(1, "Toy Story", 3.5), (2, "Heat", 4.0), (3, "Fargo, 1996", 2.25)]


@pytest.mark.parametrize("name, expected", sorted(EXPECTED.items()))
def test_every_reader_tells_the_same_format_from_a_suffix(tmp_path, name, expected):
    assert suffix_format(name) == expected
    assert file_format(name) == expected
    if "://" not in name:
        assert table_format([tmp_path / name]) == expected
        assert candidate_format(tmp_path / name) == expected


@pytest.mark.parametrize("name", ["a.xlsx", "a", "gs://bucket/dir.v2/part-00000"])
def test_an_unknown_suffix_is_refused_by_every_reader_naming_the_file_and_the_accepted_suffixes(tmp_path, name):
    with pytest.raises(ValueError, match=r"'\.tsv'.*'\.tfr'|'\.tfr'.*'\.tsv'") as error:
        file_format(name)
    assert name in str(error.value)
    if "://" not in name:
        with pytest.raises(DataError, match=r"expected one of .*'\.pq'") as error:
            table_format([tmp_path / name])
        assert name in str(error.value)
        with pytest.raises(ValueError, match=r"pass `file_format`"):
            candidate_format(tmp_path / name)


def test_the_configuration_accepts_exactly_the_readers_formats():
    for fmt in FILE_FORMATS:
        config_from_dict({"data": {"dataset": "interactions", "interactions": {"path": "x", "format": fmt}}})
    with pytest.raises(ConfigError, match="format"):
        config_from_dict({"data": {"dataset": "interactions", "interactions": {"path": "x", "format": "xlsx"}}})


def _write(path, delimiter):
    lines = ["item_id{0}title{0}price".format(delimiter)]
    for item, title, price in ROWS:
        quoted = f'"{title}"' if delimiter in title else title
        lines.append(f"{item}{delimiter}{quoted}{delimiter}{price}")
    path.write_text("\n".join(lines) + "\n")


def test_a_tsv_file_is_read_with_tabs_by_every_reader(tmp_path):
    csv_path, tsv_path = tmp_path / "items.csv", tmp_path / "items.tsv"
    _write(csv_path, ",")
    _write(tsv_path, "\t")
    assert (csv_delimiter(str(csv_path)), csv_delimiter(str(tsv_path))) == (",", "\t")
    items = np.array([1, 2, 3])
    titles = np.array([t for _, t, _ in ROWS], dtype=object)
    prices = np.array([p for _, _, p in ROWS], np.float32)

    for path in (csv_path, tsv_path):
        table = read_table(path)
        np.testing.assert_array_equal(table["item_id"].to_numpy(), items)
        assert table["title"].tolist() == titles.tolist()
        np.testing.assert_allclose(table["price"].to_numpy(), prices)

        spec = {
            "item_id": tf.TensorSpec([None], tf.int64),
            "title": tf.TensorSpec([None], tf.string),
            "price": tf.TensorSpec([None], tf.float32),
        }
        corpus = read_candidate_table(path, spec)
        np.testing.assert_array_equal(corpus["item_id"], items)
        assert [str(t) for t in corpus["title"]] == titles.tolist()
        np.testing.assert_allclose(corpus["price"], prices)

        reader = ReadRowChunks(
            {"item_id": "int64", "title": "string", "price": "float32"}, "item_id", ("title", "price"), 100
        )
        outputs = list(reader.process(ReadUnit(str(path), file_format(str(path)))))
        chunks = [o for o in outputs if isinstance(o, RowChunk)]
        assert len(chunks) == 1 and len(outputs) == 1, outputs
        np.testing.assert_array_equal(chunks[0].ids, items)
        np.testing.assert_allclose(chunks[0].features["price"], prices)

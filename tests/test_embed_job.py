"""Tests for the Beam batch embedding job (tfrec_pipelines.embed_job, embed_sources, embed_output) and
its follow-up step (tfrec_pipelines.index_from_embeddings).

One DirectRunner run over four input files (Parquet, CSV, TFRecord and a damaged "Parquet" file,
4,000 good rows and six malformed ones) is shared by the tests through a module-scoped fixture;
the expected embeddings come from the export's ``candidate_embedding`` signature called here.
A second shared run reads ill-typed Parquet values and unreadable files first, in the middle and
last in the inputs' order.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.pvalue import TaggedOutput

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from helpers import GENRES, queries
from tfrec_pipelines import embed_job, embed_output
from tfrec_pipelines.data import DataError
from tfrec_pipelines.embed_job import EmbedJobConfig, run_embed_job
from tfrec_pipelines.embed_sources import RowChunk
from tfrec_pipelines.index_from_embeddings import build_index_export
from tfrec_towers import cli as tfrec_cli
from tfrec_towers.features import CategoricalFeature, FeatureSpec, SequenceFeature
from tfrec_towers.verify import verify_export

GOOD_ROWS = {"a.parquet": 2000, "b.csv": 1000, "c.tfrecord": 1000}
NUM_GOOD = sum(GOOD_ROWS.values())


def _genres(rng, n):
    return np.array(["|".join(rng.choice(GENRES, size=rng.integers(1, 3), replace=False)) for _ in range(n)], object)


def _example(**features):
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def write_inputs(directory: Path):
    """The four input files; returns the good rows as ``{"movie_id", "genres"}`` columns (the reference)."""
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(1, NUM_GOOD + 1, dtype=np.int64) * 10)  # some ids are in the tower's vocabulary
    genres = _genres(rng, NUM_GOOD)
    genres[5] = ""  # an empty string is a value: no genres
    a, b, c = ids[:2000], ids[2000:3000], ids[3000:]
    # a.parquet: 2000 good rows, one row without an id.
    frame = pd.DataFrame(
        {
            "movie_id": pd.array(list(a[:1000]) + [None] + list(a[1000:]), dtype="Int64"),
            "genres": list(genres[:1000]) + ["Drama"] + list(genres[1000:2000]),
            "title": "unused",
        }
    )
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), directory / "a.parquet", row_group_size=700)
    # b.csv: 1000 good lines, an id that is not an integer (line 502), a line with one field too many.
    lines = ["movie_id,genres"] + [f"{i},{g}" for i, g in zip(b, genres[2000:3000])]
    lines.insert(501, "abc,Drama")
    lines.insert(800, "7,Drama,extra")
    (directory / "b.csv").write_text("\n".join(lines) + "\n")
    # c.tfrecord: 1000 good records; a string id (record 10), no genres (record 20), not an Example (record 30).
    with tf.io.TFRecordWriter(str(directory / "c.tfrecord")) as writer:
        good = iter(zip(c.tolist(), genres[3000:].tolist()))
        for index in range(1003):
            if index == 10:
                writer.write(_example(movie_id=_bytes(b"10"), genres=_bytes(b"Drama")))
            elif index == 20:
                writer.write(_example(movie_id=_int(999_999)))
            elif index == 30:
                writer.write(b"\xff\xfe not a protobuf")
            else:
                movie_id, genre = next(good)
                writer.write(_example(movie_id=_int(movie_id), genres=_bytes(genre.encode())))
    (directory / "d.parquet").write_bytes(b"PAR1 this file was truncated")
    return {"movie_id": ids, "genres": genres}


@pytest.fixture(scope="module")
def job(toy_export, tmp_path_factory):
    base = tmp_path_factory.mktemp("embed_job")
    model_dir = toy_export[0]
    inputs = base / "inputs"
    inputs.mkdir()
    reference = write_inputs(inputs)
    config = EmbedJobConfig(
        model_dir=str(model_dir),
        inputs=(str(inputs / "*.parquet"), str(inputs / "b.csv"), str(inputs / "c.tfrecord")),
        output=str(base / "out"),
        output_formats=("parquet", "tfrecord", "npy"),
        batch_size=512,
        read_chunk_rows=200,
    )
    result = run_embed_job(config)
    signature = tf.saved_model.load(str(model_dir)).signatures["candidate_embedding"]
    embeddings = signature(movie_id=tf.constant(reference["movie_id"]), genres=tf.constant(reference["genres"]))
    expected = dict(zip(reference["movie_id"].tolist(), embeddings["embedding"].numpy()))  # {id: embedding}
    return {
        "config": config,
        "result": result,
        "reference": reference,
        "model_dir": model_dir,
        "base": base,
        "expected": expected,
    }


def _parquet_output(output, id_column="movie_id"):
    tables = [pq.read_table(path) for path in embed_output.manifest_files(output, [".parquet"])]
    table = pa.concat_tables(tables)
    return table.column(id_column).to_numpy(), np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


@pytest.mark.slow
def test_every_id_exactly_once_with_the_signature_embedding(job):
    ids, embeddings = _parquet_output(job["config"].output)
    assert len(ids) == NUM_GOOD
    assert sorted(ids.tolist()) == sorted(job["reference"]["movie_id"].tolist())
    expected = job["expected"]
    np.testing.assert_allclose(embeddings, np.stack([expected[i] for i in ids.tolist()]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_tfrecord_and_npy_outputs_hold_the_same_rows(job):
    output = job["config"].output
    expected = job["expected"]
    spec = {"movie_id": tf.io.FixedLenFeature([], tf.int64), "embedding": tf.io.FixedLenFeature([8], tf.float32)}
    files = embed_output.manifest_files(output, [".tfrecord"])
    records = tf.io.parse_example(list(tf.data.TFRecordDataset(files).as_numpy_iterator()), spec)
    ids = records["movie_id"].numpy().tolist()
    assert sorted(ids) == sorted(expected)
    np.testing.assert_allclose(records["embedding"].numpy(), np.stack([expected[i] for i in ids]), rtol=1e-5, atol=1e-6)
    id_files = embed_output.manifest_files(output, [".npy"])
    npy_ids = np.concatenate([np.load(p) for p in id_files if Path(p).name.startswith("ids-")])
    npy_embeddings = np.concatenate([np.load(p) for p in id_files if Path(p).name.startswith("embeddings-")])
    assert sorted(npy_ids.tolist()) == sorted(expected)
    np.testing.assert_allclose(npy_embeddings, np.stack([expected[i] for i in npy_ids.tolist()]), rtol=1e-5, atol=1e-6)


def _dead_letters(output):
    return [
        json.loads(line)
        for path in embed_output.manifest_files(output, [".jsonl"])
        for line in Path(path).read_text().splitlines()
    ]


@pytest.mark.slow
def test_malformed_rows_and_the_unreadable_file_are_dead_letters_with_reasons(job):
    entries = _dead_letters(job["config"].output)
    found = sorted((Path(e["source"]).name, e["row"], e["reason"]) for e in entries)
    assert len(found) == 7
    by_file = {}
    for name, row, reason in found:
        by_file.setdefault(name, []).append((row, reason))
    inputs = job["base"] / "inputs"
    missing_id = f"{inputs}/a.parquet: column 'movie_id' (int64), row 1000: missing value (null)"
    assert by_file["a.parquet"] == [(1000, missing_id)]
    (bad_value, bad_line) = by_file["b.csv"]
    assert bad_value[0] == 502 and "'abc' is not an integer" in bad_value[1] and "line 502" in bad_value[1]
    assert bad_value[1].startswith(f"{inputs}/b.csv: column 'movie_id' (int64)")
    assert bad_line == (801, f"{inputs}/b.csv: line 801: the line has 3 fields, the header 2")
    tfrecord = dict(by_file["c.tfrecord"])
    assert tfrecord[10] == f"{inputs}/c.tfrecord: record 10: feature 'movie_id' holds bytes_list, expected int64"
    assert tfrecord[20] == f"{inputs}/c.tfrecord: record 20: feature 'genres' (string) is missing"
    assert tfrecord[30].startswith(f"{inputs}/c.tfrecord: record 30: not a tf.train.Example")
    assert by_file["d.parquet"][0][0] is None
    assert by_file["d.parquet"][0][1].startswith(f"{inputs}/d.parquet is not a readable Parquet file: ")
    values = {(Path(e["source"]).name, e["row"]): e["value"] for e in entries}
    assert values[("b.csv", 502)] == {"movie_id": "abc", "genres": "Drama"}
    assert values[("b.csv", 801)] == ["7", "Drama", "extra"]


@pytest.mark.slow
def test_counters(job):
    counters = job["result"].counters
    assert counters == {"rows_read": NUM_GOOD + 6, "rows_embedded": NUM_GOOD, "rows_rejected": 6, "files_rejected": 1}
    manifest = embed_output.read_manifest(job["config"].output)
    assert manifest["runs"][0]["counters"] == counters
    assert manifest["spec"] == {
        "embedding_dim": 8,
        "embedding_dtype": "float32",
        "id_column": "movie_id",
        "id_dtype": "int64",
    }


@pytest.mark.slow
def test_output_holds_only_published_files(job):
    output = Path(job["config"].output)
    listed = set(job["result"].files)
    assert {p.name for p in output.iterdir()} == listed | {embed_output.MANIFEST}
    assert any(name.endswith(".parquet") for name in listed) and any(name.endswith(".tfrecord") for name in listed)


def test_missing_id_column_is_a_clear_error_before_the_job_starts(toy_export, tmp_path):
    pq.write_table(pa.table({"movie_id": [10], "genres": ["Drama"]}), tmp_path / "a.parquet")
    config = EmbedJobConfig(
        str(toy_export[0]), (str(tmp_path / "a.parquet"),), str(tmp_path / "o"), id_column="item_id"
    )
    with pytest.raises(DataError, match=r"a.parquet has no column 'item_id' \(expected int64\); its columns are"):
        run_embed_job(config)
    assert not (tmp_path / "o").exists()
    query = EmbedJobConfig(str(toy_export[0]), config.inputs, str(tmp_path / "o"), signature="query_embedding")
    with pytest.raises(ValueError, match="`id_column` is required for 'query_embedding'"):
        run_embed_job(query)


@pytest.mark.slow
def test_resumed_output_with_another_embedding_dtype_is_refused(job):
    config = EmbedJobConfig(
        str(job["model_dir"]), job["config"].inputs, job["config"].output, embedding_dtype="float16"
    )
    with pytest.raises(ValueError, match=r"embedding_dtype: the output has 'float32', this run writes 'float16'"):
        run_embed_job(config)
    spec = embed_output.OutputSpec(16, "float32", "movie_id", "int64")
    with pytest.raises(ValueError, match=r"embedding_dim: the output has 8, this run writes 16"):
        embed_output.check_output(job["config"].output, spec)


def test_an_existing_directory_that_is_not_an_output_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not an embedding output"):
        embed_output.check_output(str(tmp_path), embed_output.OutputSpec(8, "float32", "movie_id", "int64"))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("signature", "serving_default", "`signature` must be one of"),
        ("output_formats", ("csv",), "`output_formats` must be a non-empty subset"),
        ("batch_size", 0, "`batch_size` must be a positive int. Received: 0"),
        ("inputs", "a.parquet", "`inputs` must be a non-empty sequence"),
        ("embedding_dtype", "float64", "`embedding_dtype` must be one of"),
    ],
)
def test_config_validation(field, value, message):
    arguments = {"model_dir": "m", "inputs": ("a.parquet",), "output": "o", field: value}
    with pytest.raises(ValueError, match=message):
        EmbedJobConfig(**arguments)


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        embed_job.main(["--help"])
    assert exit_info.value.code == 0
    assert "python -m tfrec_pipelines.embed_job --model" in capsys.readouterr().out


@pytest.mark.slow
def test_build_index_export_serves_the_exact_top_k_of_the_embeddings(job, tmp_path):
    output = job["config"].output
    path = build_index_export(output, job["model_dir"], tmp_path / "exports", "movies")
    assert path == tmp_path / "exports" / "movies" / "1"
    metadata = json.loads((path / "assets.extra" / "tfrec_towers_metadata.json").read_text())
    assert metadata["corpus_size"] == NUM_GOOD and metadata["index"]["kind"] == "brute-force"
    ids, embeddings = _parquet_output(output)
    loaded = tf.saved_model.load(str(path))
    features = {name: tf.constant(values) for name, values in queries().items()}
    query_embeddings = loaded.signatures["query_embedding"](**features)["embedding"].numpy()
    served = loaded.signatures["serving_default"](**features)
    all_scores = query_embeddings @ embeddings.T  # numpy reference over the embedding job's output
    expected = -np.sort(-all_scores, axis=1)[:, : metadata["k"]]
    np.testing.assert_allclose(served["scores"].numpy(), expected, rtol=1e-5, atol=1e-6)
    position = {identifier: row for row, identifier in enumerate(ids.tolist())}
    served_ids = served["candidate_ids"].numpy().tolist()
    returned = np.array([[all_scores[q, position[i]] for i in row] for q, row in enumerate(served_ids)])
    np.testing.assert_allclose(returned, expected, rtol=1e-5, atol=1e-6)


def test_build_index_export_refuses_embeddings_of_other_towers(toy_export, tmp_path):
    spec = {"embedding_dim": 16, "embedding_dtype": "float32", "id_column": "movie_id", "id_dtype": "int64"}
    (tmp_path / embed_output.MANIFEST).write_text(json.dumps({"spec": spec, "runs": []}))
    with pytest.raises(ValueError, match=r"\(dim 16, id column 'movie_id'\) do not come from the towers of .*\(dim 8"):
        build_index_export(str(tmp_path), toy_export[0], tmp_path / "exports", "movies")
    assert not (tmp_path / "exports").exists()


@pytest.mark.slow
def test_build_index_export_with_the_corpus_rows_passes_the_fresh_process_verification(job, tmp_path):
    reference = job["reference"]
    corpus = pa.table({"movie_id": reference["movie_id"], "genres": reference["genres"].astype(str)})
    pq.write_table(corpus, tmp_path / "corpus.parquet")
    path = build_index_export(
        job["config"].output,
        job["model_dir"],
        tmp_path / "exports",
        "movies",
        candidate_features=[str(tmp_path / "corpus.parquet")],
    )
    sample = json.loads((path / "assets.extra" / "verification_sample.json").read_text())
    expected = job["expected"]
    recorded = np.array(sample["candidate_embeddings"])
    np.testing.assert_allclose(
        recorded, np.stack([expected[i] for i in sample["candidates"]["movie_id"]]), rtol=1e-5, atol=1e-6
    )
    report = verify_export(path)
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]


@pytest.mark.slow
def test_cli_passes_beam_options_through_and_prints_the_counters(toy_export, tmp_path, capsys):
    (tmp_path / "few.csv").write_text("movie_id,genres\n10,Drama\n20,Action|Comedy\n30,\n")
    code = embed_job.main(
        [
            "--model",
            str(toy_export[0]),
            "--input",
            str(tmp_path / "few.csv"),
            "--output",
            str(tmp_path / "out"),
            "--format",
            "npy",
            "--direct_running_mode",
            "in_memory",
            "--direct_num_workers",
            "1",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counters"] == {"rows_read": 3, "rows_embedded": 3, "rows_rejected": 0, "files_rejected": 0}
    names = sorted(Path(p).name.split("-")[0] for p in embed_output.manifest_files(str(tmp_path / "out"), [".npy"]))
    assert names == ["embeddings", "ids"]


class _DoublingSignature:
    """Stands in for a loaded signature: ``x [n]`` → ``embedding [n, 2] = [x, 2x]`` (NaN stays NaN)."""

    specs = {"x": tf.TensorSpec([None], tf.float32)}

    @staticmethod
    def function(x):
        return {"embedding": tf.stack([x, 2 * x], axis=1)}


def test_non_finite_embeddings_go_to_the_dead_letter():
    embed = embed_job.EmbedBatches("unused", "candidate_embedding", False, "float16")
    embed._loaded = _DoublingSignature()
    chunks = [
        RowChunk(np.array([7, 8]), {"x": np.array([1.0, np.nan], np.float32)}, "a.parquet", np.array([4, 5])),
        RowChunk(np.array([9]), {"x": np.array([3.0], np.float32)}, "b.parquet", np.array([0])),
    ]
    outputs = list(embed.process(chunks))
    dead = [o.value for o in outputs if isinstance(o, TaggedOutput)]
    (embedded,) = [o for o in outputs if isinstance(o, embed_output.EmbeddedChunk)]
    assert embedded.ids.tolist() == [7, 9]
    assert embedded.embeddings.dtype == np.float16
    np.testing.assert_array_equal(embedded.embeddings, [[1.0, 2.0], [3.0, 6.0]])
    assert [(d["source"], d["row"], d["reason"]) for d in dead] == [
        ("a.parquet", 5, "the embedding has NaN or inf values")
    ]


@pytest.mark.slow
def test_query_embeddings_with_history_lists_of_any_length(toy_export, tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    lengths = rng.integers(0, 6, n)
    histories = [list(rng.choice(np.arange(1, 41) * 10, size=length)) for length in lengths]
    frame = pd.DataFrame(
        {
            "user_id": np.arange(n, dtype=np.int64),
            "gender": rng.choice(["F", "M"], n),
            "age": rng.choice(np.array([18, 25, 35], np.int64), n),
            "occupation": rng.choice(["12", "technician"], n),
            "zip_code": rng.choice(["55414", "94110"], n),
            "history": histories,
        }
    )
    frame.to_parquet(tmp_path / "queries.parquet", row_group_size=100)
    config = EmbedJobConfig(
        str(toy_export[0]),
        (str(tmp_path / "queries.parquet"),),
        str(tmp_path / "out"),
        signature="query_embedding",
        id_column="user_id",
        batch_size=128,
        read_chunk_rows=50,
    )
    result = run_embed_job(config)
    assert result.counters["rows_embedded"] == n
    ids, embeddings = _parquet_output(config.output, id_column="user_id")
    padded = np.zeros((n, lengths.max()), np.int64)
    for row, history in enumerate(histories):
        padded[row, padded.shape[1] - len(history) :] = history
    signature = tf.saved_model.load(str(toy_export[0])).signatures["query_embedding"]
    scalars = ("user_id", "gender", "age", "occupation", "zip_code")
    features = {name: tf.constant(frame[name].to_numpy()) for name in scalars}
    expected = signature(history=tf.constant(padded), **features)["embedding"].numpy()
    np.testing.assert_allclose(embeddings, expected[ids], rtol=1e-5, atol=1e-6)


def _embeddings(model_dir, movie_ids, genres):
    """The export's ``candidate_embedding`` of hand-written rows, ``{movie_id: embedding}``."""
    signature = tf.saved_model.load(str(model_dir)).signatures["candidate_embedding"]
    output = signature(movie_id=tf.constant(movie_ids, tf.int64), genres=tf.constant(genres, tf.string))
    return dict(zip(movie_ids, output["embedding"].numpy()))


def _write_typed_inputs(directory: Path):
    """Parquet files of ill-typed values and unreadable files (first, middle and last in name order)."""
    (directory / "a_damaged.parquet").write_bytes(b"PAR1 not a Parquet file")
    pq.write_table(
        pa.table(
            {"movie_id": pa.array([10, None, 30, 40], pa.int64()), "genres": ["Action", "Comedy", None, "Drama|Horror"]}
        ),
        directory / "b_nulls.parquet",
    )
    pq.write_table(
        pa.table({"movie_id": [50, 60], "genres": [["Comedy", "Action"], ["Drama"]]}), directory / "c_lists.parquet"
    )
    pq.write_table(pa.table({"movie_id": [70], "genres": [5]}), directory / "d_int_genres.parquet")
    (directory / "e_damaged.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    pq.write_table(pa.table({"movie_id": ["80"], "genres": ["Action"]}), directory / "f_string_ids.parquet")
    pq.write_table(
        pa.table({"movie_id": [90.0, 100.5, 1e19, 110.0], "genres": ["Comedy", "Drama", "Horror", ""]}),
        directory / "g_float_ids.parquet",
    )
    (directory / "h_not_utf8.csv").write_bytes(b"movie_id,genres\n120,Dr\xffama\n")
    (directory / "z_damaged.tfrecord").write_bytes(b"\x00" * 40)


@pytest.fixture(scope="module")
def typed_job(job):
    inputs = job["base"] / "typed_inputs"
    inputs.mkdir()
    _write_typed_inputs(inputs)
    config = EmbedJobConfig(str(job["model_dir"]), (str(inputs / "*"),), str(job["base"] / "typed_out"))
    return {"config": config, "result": run_embed_job(config), "inputs": inputs}


@pytest.mark.slow
def test_ill_typed_values_send_their_rows_to_the_dead_letter_naming_file_row_and_column(typed_job):
    inputs = typed_job["inputs"]
    reasons = {
        (Path(e["source"]).name, e["row"]): e["reason"]
        for e in _dead_letters(typed_job["config"].output)
        if e["row"] is not None
    }
    assert reasons == {
        ("b_nulls.parquet", 1): f"{inputs}/b_nulls.parquet: column 'movie_id' (int64), row 1: missing value (null)",
        ("b_nulls.parquet", 2): f"{inputs}/b_nulls.parquet: column 'genres' (string), row 2: missing value (null)",
        ("c_lists.parquet", 0): f"{inputs}/c_lists.parquet: column 'genres' (string), row 0: ['Comedy', 'Action'] "
        "is a list, expected a string (the export declares no separator to join it with)",
        ("c_lists.parquet", 1): f"{inputs}/c_lists.parquet: column 'genres' (string), row 1: ['Drama'] "
        "is a list, expected a string (the export declares no separator to join it with)",
        ("d_int_genres.parquet", 0): f"{inputs}/d_int_genres.parquet: column 'genres' (string), row 0: "
        "5 is an integer, expected a string",
        ("f_string_ids.parquet", 0): f"{inputs}/f_string_ids.parquet: column 'movie_id' (int64), row 0: "
        "'80' is a string, expected an integer",
        ("g_float_ids.parquet", 1): f"{inputs}/g_float_ids.parquet: column 'movie_id' (int64), row 1: "
        "100.5 is not an integer",
        ("g_float_ids.parquet", 2): f"{inputs}/g_float_ids.parquet: column 'movie_id' (int64), row 2: "
        "1e+19 is outside the int64 range",
    }
    values = {(Path(e["source"]).name, e["row"]): e["value"] for e in _dead_letters(typed_job["config"].output)}
    assert values[("c_lists.parquet", 0)] == {"movie_id": 50, "genres": ["Comedy", "Action"]}
    assert values[("d_int_genres.parquet", 0)] == {"movie_id": 70, "genres": 5}


@pytest.mark.slow
def test_good_rows_are_written_with_their_exact_values_and_types(typed_job, job):
    tables = [pq.read_table(p) for p in embed_output.manifest_files(typed_job["config"].output, [".parquet"])]
    table = pa.concat_tables(tables)
    assert table.schema.field("movie_id").type == pa.int64()
    ids = table.column("movie_id").to_pylist()
    assert sorted(ids) == [10, 40, 90, 110]
    expected = _embeddings(job["model_dir"], [10, 40, 90, 110], ["Action", "Drama|Horror", "Comedy", ""])
    embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(embeddings, np.stack([expected[i] for i in ids]), rtol=1e-5, atol=1e-6)
    assert typed_job["result"].counters == {
        "rows_read": 12,
        "rows_embedded": 4,
        "rows_rejected": 8,
        "files_rejected": 4,
    }


@pytest.mark.slow
def test_unreadable_files_anywhere_in_the_inputs_are_dead_letters_naming_them(typed_job):
    inputs = typed_job["inputs"]
    files = {Path(e["source"]).name: e["reason"] for e in _dead_letters(typed_job["config"].output) if e["row"] is None}
    assert sorted(files) == ["a_damaged.parquet", "e_damaged.parquet", "h_not_utf8.csv", "z_damaged.tfrecord"]
    assert files["a_damaged.parquet"].startswith(f"{inputs}/a_damaged.parquet is not a readable Parquet file: ")
    assert files["e_damaged.parquet"].startswith(f"{inputs}/e_damaged.parquet is not a readable Parquet file: ")
    assert files["h_not_utf8.csv"].startswith(f"{inputs}/h_not_utf8.csv is not a readable CSV file: 'utf-8' codec")
    assert files["z_damaged.tfrecord"].startswith(f"{inputs}/z_damaged.tfrecord is not a readable TFRecord file: ")


def test_the_first_readable_file_is_checked_for_columns_before_the_job_starts(toy_export, tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"PAR1 damaged")
    pq.write_table(pa.table({"movie_id": [10], "genres": ["Drama"]}), tmp_path / "b.parquet")
    config = EmbedJobConfig(
        str(toy_export[0]), (str(tmp_path / "*.parquet"),), str(tmp_path / "o"), id_column="item_id"
    )
    with pytest.raises(DataError, match=r"b.parquet has no column 'item_id' \(expected int64\)"):
        run_embed_job(config)
    assert not (tmp_path / "o").exists()


def test_no_readable_input_file_is_an_error_naming_every_file(toy_export, tmp_path, capsys):
    (tmp_path / "a.parquet").write_bytes(b"PAR1 damaged")
    (tmp_path / "b.csv").write_bytes(b"movie\xff_id,genres\n")
    (tmp_path / "c.csv").write_bytes(b"")
    (tmp_path / "d.tfrecord").write_bytes(b"\x00" * 40)
    config = EmbedJobConfig(str(toy_export[0]), (str(tmp_path / "*"),), str(tmp_path / "o"))
    with pytest.raises(DataError, match=r"^None of the 4 input files can be read: ") as error:
        run_embed_job(config)
    message = str(error.value)
    for reason in (
        f"{tmp_path}/a.parquet is not a readable Parquet file: ",
        f"{tmp_path}/b.csv is not a readable CSV file: 'utf-8' codec can't decode byte 0xff",
        f"{tmp_path}/c.csv is empty: a CSV input needs a header line",
        f"{tmp_path}/d.tfrecord is not a readable TFRecord file: ",
    ):
        assert reason in message
    assert not (tmp_path / "o").exists()
    code = tfrec_cli.main(
        ["embed", "--model", str(toy_export[0]), "--input", str(tmp_path / "*"), "--output", str(tmp_path / "o")]
    )
    assert code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: None of the 4 input files can be read: ") and "Traceback" not in stderr
    assert all(f"{tmp_path}/{name}" in stderr for name in ("a.parquet", "b.csv", "c.csv", "d.tfrecord"))


@pytest.mark.slow
def test_string_lists_are_joined_with_the_separator_the_export_declares(toy_export, tmp_path):
    model_dir = tmp_path / "movies" / "1"
    shutil.copytree(toy_export[0], model_dir)
    metadata_path = model_dir / "assets.extra" / "tfrec_towers_metadata.json"
    metadata = json.loads(metadata_path.read_text())
    spec = FeatureSpec(
        query=(CategoricalFeature("user_id"),),
        candidate=(CategoricalFeature("movie_id"), SequenceFeature("genres", dtype="string")),
        candidate_id="movie_id",
    )
    metadata["feature_spec"] = json.loads(spec.to_json())  # as a training run's export records it
    metadata_path.write_text(json.dumps(metadata))
    pq.write_table(
        pa.table(
            {
                "movie_id": [10, 20, 30, 40, 50, 60],
                "genres": [["Comedy", "Action"], ["Drama"], [], ["Action|Comedy"], ["", "Drama"], ["Drama", None]],
            }
        ),
        tmp_path / "lists.parquet",
    )
    with tf.io.TFRecordWriter(str(tmp_path / "lists.tfrecord")) as writer:
        genres = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"Horror", b"Drama"]))
        writer.write(_example(movie_id=_int(70), genres=genres))
        writer.write(_example(movie_id=_int(80), genres=_bytes(b"Action|Horror")))
    config = EmbedJobConfig(str(model_dir), (str(tmp_path / "lists.*"),), str(tmp_path / "out"))
    result = run_embed_job(config)
    assert result.counters == {"rows_read": 8, "rows_embedded": 5, "rows_rejected": 3, "files_rejected": 0}
    ids, embeddings = _parquet_output(config.output)
    expected = _embeddings(
        toy_export[0], [10, 20, 30, 70, 80], ["Comedy|Action", "Drama", "", "Horror|Drama", "Action|Horror"]
    )
    assert sorted(ids.tolist()) == sorted(expected)
    np.testing.assert_allclose(embeddings, np.stack([expected[i] for i in ids.tolist()]), rtol=1e-5, atol=1e-6)
    reasons = {e["row"]: e["reason"] for e in _dead_letters(config.output)}
    prefix = f"{tmp_path}/lists.parquet: column 'genres' (string), row"
    assert reasons == {
        3: f"{prefix} 3: ['Action|Comedy'] cannot be joined with '|': element 0 holds the separator '|'",
        4: f"{prefix} 4: ['', 'Drama'] cannot be joined with '|': element 0 is empty",
        5: f"{prefix} 5: ['Drama', None] cannot be joined with '|': element 1 is missing (null)",
    }

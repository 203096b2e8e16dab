"""Interactions streamed from Parquet and TFRecord shards through tf.data: rows, histories,
filters, weights, statistics and the adapted spec against pandas / numpy references; a model
trained on the stream; every bad input named."""

import collections
import dataclasses
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow)
from tfrec_pipelines import streaming
from tfrec_pipelines.data import DataError, LastInteraction, split_interactions
from tfrec_pipelines.declarations import Declarations
from tfrec_pipelines.streaming import adapted_spec, stream_examples, stream_statistics
from tfrec_towers.build import build_model
from tfrec_towers.config import ExperimentConfig
from tfrec_towers.data_config import FeatureDeclaration, RowFilter
from tfrec_towers.features import CategoricalFeature, FeatureSpec, NumericFeature, SequenceFeature, adapt
from tfrec_towers.towers import TowerConfig

QUERY = (
    FeatureDeclaration("user_id", kind="id"),
    FeatureDeclaration("history", kind="history"),
    FeatureDeclaration("age", kind="categorical"),
)
CANDIDATE = (
    FeatureDeclaration("item_id", kind="id"),
    FeatureDeclaration("tags", kind="multi_valued"),
    FeatureDeclaration("price", kind="numeric", log1p=True),
)
COLUMNS = QUERY + CANDIDATE
EVENTS = ("view", "click", "purchase")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 5 rows, so that every test crosses chunk (and record batch) boundaries."""
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 5)


def _log(seed, rows, string_ids=True):
    """A seeded log: ids, a history list of 0–6 items, a tags list, a price, an age, an event, a weight."""
    rng = np.random.default_rng(seed)
    item = (lambda k: f"i{k}") if string_ids else (lambda k: int(k) + 1)
    return pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in rng.integers(0, 6, rows)],
            "item_id": [item(k) for k in rng.integers(0, 9, rows)],
            "history": [[item(k) for k in rng.integers(0, 9, rng.integers(0, 7))] for _ in range(rows)],
            "tags": [[f"t{k}" for k in rng.integers(0, 4, rng.integers(0, 3))] for _ in range(rows)],
            "price": rng.lognormal(1.0, 1.0, rows),
            "age": rng.integers(18, 22, rows),
            "event": rng.choice(EVENTS, rows),
            "weight": rng.integers(1, 4, rows).astype(np.float64),
        }
    )


def _write_parquet_shards(directory, frame, shards=3):
    directory.mkdir()
    bounds = np.linspace(0, len(frame), shards + 1).astype(int)
    for shard, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(
            pa.Table.from_pandas(frame.iloc[begin:end], preserve_index=False),
            directory / f"part-{shard}.parquet",
            row_group_size=4,
        )
    return directory


def _feature(values, kind=None):
    """A ``tf.train.Feature`` of ``values``: ``kind`` (bytes, float or int64) or the type of the first value."""
    kind = kind or ("bytes" if isinstance(values[0], str) else "float" if isinstance(values[0], float) else "int64")
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))
    if kind == "float":
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _write_tfrecord(path, frame):
    """One ``tf.train.Example`` per row; list cells as lists (an empty one of its column's type)."""
    cells = {name: [list(v) if isinstance(v, (list, np.ndarray)) else [v] for v in frame[name]] for name in frame}
    kinds = {
        name: _feature(next(c for c in column if c)).WhichOneof("kind").split("_")[0] for name, column in cells.items()
    }
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in range(len(frame)):
            feature = {name: _feature(column[row], kinds[name]) for name, column in cells.items()}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def _padded(lists, width, padding):
    """numpy reference: each row's last ``width`` items, most recent last, left-padded."""
    out = np.full((len(lists), width), padding, dtype=object if isinstance(padding, str) else np.int64)
    for row, values in enumerate(lists):
        tail = list(values)[-width:] if len(values) else []
        if tail:
            out[row, width - len(tail) :] = tail
    return out


def _materialised(dataset):
    """Every batch of a stream concatenated: ``{name: numpy}`` (strings decoded), and the weights."""
    parts, weights = collections.defaultdict(list), []
    for batch in dataset:
        features, weight = batch if isinstance(batch, tuple) else (batch, None)
        for name, values in features.items():
            parts[name].append(values.numpy())
        if weight is not None:
            weights.append(weight.numpy())
    out = {}
    for name, values in parts.items():
        values = np.concatenate(values)
        out[name] = values.astype(str).astype(object) if values.dtype == object else values
    return out, (np.concatenate(weights) if weights else None)


def _reference(frame, width=4, padding=""):
    """The stream's expected columns for ``COLUMNS``, from pandas."""
    return {
        "user_id": frame["user_id"].to_numpy(object),
        "history": _padded(frame["history"].tolist(), width, padding),
        "age": frame["age"].to_numpy(np.int64),
        "item_id": frame["item_id"].to_numpy(),
        "tags": np.array(["|".join(t) for t in frame["tags"]], dtype=object),
        "price": frame["price"].to_numpy(np.float32),
    }


def _rows(columns):
    """The rows of a feature dictionary as hashable tuples (for multiset comparisons)."""
    names = sorted(columns)

    def cell(values, row):
        value = values[row]
        return tuple(value.tolist()) if values.ndim == 2 else value.item() if isinstance(value, np.generic) else value

    return [tuple(cell(columns[n], row) for n in names) for row in range(len(columns[names[0]]))]


def test_parquet_shards_stream_exactly_the_table_rows_in_file_order(tmp_path):
    frame = _log(0, 23)
    directory = _write_parquet_shards(tmp_path / "log", frame)
    streamed, weights = _materialised(
        stream_examples(directory, columns=COLUMNS, max_history=4, batch_size=6, shuffle_buffer=0)
    )
    expected = _reference(pd.concat([pd.read_parquet(f) for f in sorted(directory.iterdir())], ignore_index=True))
    assert weights is None and set(streamed) == set(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(streamed[name], values, err_msg=name)
    assert streamed["history"].shape == (23, 4) and streamed["price"].dtype == np.float32


def test_shuffled_stream_is_the_same_multiset_in_a_seeded_order(tmp_path):
    frame = _log(1, 40)
    directory = _write_parquet_shards(tmp_path / "log", frame, shards=4)

    def stream(seed):
        return _materialised(
            stream_examples(
                directory / "part-*.parquet", columns=COLUMNS, max_history=4, batch_size=7, shuffle_buffer=16, seed=seed
            )
        )[0]

    first, again, other = stream(3), stream(3), stream(4)
    reference = _rows(_reference(frame))
    assert collections.Counter(_rows(first)) == collections.Counter(reference)
    assert _rows(first) == _rows(again) and _rows(first) != _rows(other) and _rows(first) != reference


def test_each_pass_of_a_repeated_stream_is_the_table_in_another_order(tmp_path):
    frame = _log(10, 30)
    directory = _write_parquet_shards(tmp_path / "log", frame, shards=2)
    stream = stream_examples(
        directory, columns=COLUMNS, max_history=4, batch_size=6, shuffle_buffer=12, seed=1, repeat=True
    )
    passes, _ = _materialised(stream.take(10))  # 60 rows: two passes
    rows = _rows(passes)
    assert len(rows) == 60 and rows[:30] != rows[30:]
    for one_pass in (rows[:30], rows[30:]):
        assert collections.Counter(one_pass) == collections.Counter(_rows(_reference(frame)))


def test_tfrecord_shards_stream_exactly_the_table_rows(tmp_path):
    frame = _log(2, 17, string_ids=False)
    directory = tmp_path / "log"
    directory.mkdir()
    _write_tfrecord(directory / "a.tfrecord", frame.iloc[:9])
    _write_tfrecord(directory / "b.tfrecord", frame.iloc[9:])
    expected = _reference(frame, padding=0)
    in_order, _ = _materialised(
        stream_examples(directory, columns=COLUMNS, max_history=4, batch_size=4, shuffle_buffer=0)
    )
    for name, values in expected.items():
        np.testing.assert_array_equal(in_order[name], values, err_msg=name)
    assert in_order["history"].dtype == np.int64 and in_order["item_id"].dtype == np.int64
    shuffled, _ = _materialised(
        stream_examples(directory, columns=COLUMNS, max_history=4, batch_size=4, shuffle_buffer=8, seed=0)
    )
    assert collections.Counter(_rows(shuffled)) == collections.Counter(_rows(expected))


@pytest.mark.parametrize("width", [1, 3, 8])
def test_history_is_cut_to_the_last_items_and_left_padded_like_numpy(tmp_path, width):
    lists = [[], [5], [1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11], [7, 7, 7]]
    pq.write_table(pa.table({"item_id": [1, 2, 3, 4, 5], "history": lists}), tmp_path / "log.parquet")
    streamed, _ = _materialised(
        stream_examples(
            tmp_path / "log.parquet",
            max_history=width,
            batch_size=2,
            shuffle_buffer=0,
            columns=(FeatureDeclaration("history", kind="history"),),
        )
    )
    np.testing.assert_array_equal(streamed["history"], _padded(lists, width, 0))


def test_history_layout_is_the_in_memory_split_layout(tmp_path):
    """Histories precomputed from the log (the items before each interaction) stream as the
    training rows of the in-memory leave-last-out split hold them."""
    rng = np.random.default_rng(5)
    users = np.repeat([f"u{k}" for k in range(4)], 6)
    items = np.array([f"i{k}" for k in rng.integers(0, 7, len(users))], dtype=object)
    timestamps = np.tile(np.arange(6), 4) * 10
    split = split_interactions(
        name="log",
        user_ids=users,
        item_ids=items,
        timestamps=timestamps,
        users={"user_id": np.unique(users)},
        candidates={"item_id": np.unique(items)},
        user_id="user_id",
        candidate_id="item_id",
        column_types={"user_id": "string", "item_id": "string"},
        max_history=3,
        test=LastInteraction(),
    )
    training = [(u, t) for u, t in zip(users, timestamps) if t < 50]  # each user's last one is held out
    previous = [list(items[(users == u) & (timestamps < t)]) for u, t in training]
    pq.write_table(
        pa.table(
            {
                "user_id": [u for u, _ in training],
                "history": previous,
                "item_id": [items[(users == u) & (timestamps == t)][0] for u, t in training],
            }
        ),
        tmp_path / "log.parquet",
    )
    streamed, _ = _materialised(
        stream_examples(
            tmp_path / "log.parquet", columns=QUERY[:2] + CANDIDATE[:1], max_history=3, batch_size=8, shuffle_buffer=0
        )
    )
    in_memory = {name: split.train[name] for name in ("user_id", "history", "item_id")}
    assert streamed["history"].shape == in_memory["history"].shape == (20, 3)
    assert collections.Counter(_rows(streamed)) == collections.Counter(_rows(in_memory))


def test_a_pandas_categorical_column_streams_as_text(tmp_path):
    frame = pd.DataFrame({"user_id": pd.Categorical(["b", "a", "b", "c"]), "age": [1, 2, 3, 4]})
    frame.to_parquet(tmp_path / "log.parquet")
    streamed, _ = _materialised(
        stream_examples(tmp_path / "log.parquet", columns=QUERY[:1], batch_size=3, shuffle_buffer=0)
    )
    assert streamed["user_id"].tolist() == ["b", "a", "b", "c"]


def test_filter_and_weights_keep_the_declared_rows(tmp_path):
    frame = _log(3, 30)
    directory = _write_parquet_shards(tmp_path / "log", frame)
    kept = frame[frame["event"].isin(["purchase", "click"])].reset_index(drop=True)
    streamed, weights = _materialised(
        stream_examples(
            directory,
            columns=COLUMNS,
            filter=RowFilter("event", ("purchase", "click")),
            weight_column="weight",
            max_history=4,
            batch_size=4,
            shuffle_buffer=0,
        )
    )
    for name, values in _reference(kept).items():
        np.testing.assert_array_equal(streamed[name], values, err_msg=name)
    np.testing.assert_array_equal(weights, kept["weight"].to_numpy(np.float32))
    by_age, _ = _materialised(
        stream_examples(
            directory, columns=COLUMNS[:1], filter=RowFilter("age", ("19", "21")), batch_size=4, shuffle_buffer=0
        )
    )
    assert by_age["user_id"].tolist() == frame.loc[frame["age"].astype(str).isin(["19", "21"]), "user_id"].tolist()


def test_statistics_are_pandas_value_counts_and_numpy_moments(tmp_path):
    frame = _log(4, 37)
    directory = _write_parquet_shards(tmp_path / "log", frame)
    stats = stream_statistics(
        directory, columns=COLUMNS, filter=RowFilter("event", ("purchase", "view")), max_history=4
    )
    kept = frame[frame["event"].isin(["purchase", "view"])]
    assert (stats.rows, stats.rows_read) == (len(kept), 37)

    def counts(values):
        return dict(collections.Counter(values))

    for name in ("user_id", "item_id", "age"):
        assert (
            dict(zip(stats.value_counts[name].values.tolist(), stats.value_counts[name].counts.tolist()))
            == kept[name].value_counts().to_dict()
        )
    history = [v for h in kept["history"] for v in list(h)[-4:]]
    tags = [v for t in kept["tags"] for v in t]
    for name, values in (("history", history), ("tags", tags)):
        streamed = stats.value_counts[name]
        assert dict(zip(streamed.values.tolist(), streamed.counts.tolist())) == counts(values)
        assert np.all(np.diff(streamed.counts) <= 0)  # most frequent first
    logged = np.log1p(kept["price"].to_numpy(np.float32).astype(np.float64))  # the stream gives float32
    moments = stats.moments["price"]
    assert moments.count == len(kept)
    assert moments.mean == pytest.approx(logged.mean(), rel=1e-12)
    assert moments.variance == pytest.approx(logged.var(), rel=1e-9)
    assert stats.dtypes == {
        "user_id": "string",
        "history": "string",
        "age": "int64",
        "item_id": "string",
        "tags": "string",
        "price": "float32",
    }


def test_adapted_spec_is_the_in_memory_adapt_of_the_same_rows(tmp_path):
    frame = _log(6, 41)
    directory = _write_parquet_shards(tmp_path / "log", frame)
    query = QUERY[:2] + (dataclasses.replace(QUERY[2], min_count=8),)
    candidate = (dataclasses.replace(CANDIDATE[0], max_vocabulary_size=6),) + CANDIDATE[1:]
    stats = stream_statistics(directory, columns=query + candidate, max_history=4)
    streamed = adapted_spec(Declarations(query, candidate), stats)
    by_hand = FeatureSpec(
        query=(
            CategoricalFeature("user_id", dtype="string", embedding_dim=64),
            SequenceFeature("history", dtype="string", separator=None, embedding_dim=64, embedding_table="item_id"),
            CategoricalFeature("age", dtype="int64", embedding_dim=64, min_count=8),
        ),
        candidate=(
            CategoricalFeature("item_id", dtype="string", embedding_dim=64, max_vocabulary_size=6),
            SequenceFeature("tags", dtype="string", separator="|", embedding_dim=64),
            NumericFeature("price", dtype="float32", log1p=True),
        ),
        candidate_id="item_id",
    )
    in_memory = adapt(by_hand, _reference(frame))
    assert streamed.to_json() != by_hand.to_json()
    for got, want in zip(streamed.all_features, in_memory.all_features):
        if isinstance(want, NumericFeature):
            assert (got.mean, got.variance) == pytest.approx((want.mean, want.variance), rel=1e-6)
            assert dataclasses.replace(got, mean=None, variance=None) == dataclasses.replace(
                want, mean=None, variance=None
            )
        else:
            assert got == want, want.name


@pytest.mark.slow
def test_a_model_with_streaming_logq_trains_one_epoch_on_the_stream(tmp_path):
    tf.keras.utils.set_random_seed(0)
    frame = _log(7, 60)
    directory = _write_parquet_shards(tmp_path / "log", frame)
    query, candidate = QUERY[:2], CANDIDATE[:1]
    stats = stream_statistics(directory, columns=query + candidate, max_history=4)
    spec = adapted_spec(Declarations(query, candidate), stats)
    default = ExperimentConfig()
    towers = TowerConfig(hidden_units=(8,), output_dim=4)
    config = dataclasses.replace(
        default,
        model=dataclasses.replace(default.model, query_tower=towers, candidate_tower=towers),
        loss=dataclasses.replace(default.loss, logq="streaming", mixed_negatives=4),
    )
    model = build_model(spec, config, corpus={"item_id": stats.value_counts["item_id"].values})
    dataset = stream_examples(
        directory,
        columns=query + candidate,
        weight_column="weight",
        max_history=4,
        batch_size=16,
        shuffle_buffer=32,
        seed=0,
    )
    model(next(iter(dataset))[0])  # builds the towers
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(dataset, epochs=1, verbose=0).history
    assert type(model.task.candidate_probability).__name__ == "StreamingFrequencyEstimator"
    assert len(history["loss"]) == 1 and math.isfinite(history["loss"][0])
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))


def _one_shard(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


def test_a_glob_matching_nothing_is_named(tmp_path):
    with pytest.raises(DataError, match=r"glob '.*nothing-\*\.parquet' matches no file"):
        stream_examples(tmp_path / "nothing-*.parquet", columns=COLUMNS, batch_size=4)


def test_a_missing_column_names_the_shard_and_the_column(tmp_path):
    _write_parquet_shards(tmp_path / "log", _log(8, 9), shards=2)
    pq.write_table(pa.table({"user_id": ["u1"]}), tmp_path / "log" / "part-9.parquet")
    with pytest.raises(DataError, match=r"part-9\.parquet: the interactions table has no column 'history'"):
        stream_statistics(tmp_path / "log", columns=COLUMNS)


def test_a_type_changing_between_shards_names_both_files(tmp_path):
    (tmp_path / "log").mkdir()
    _one_shard(tmp_path / "log" / "a.parquet", item_id=["x", "y"])
    _one_shard(tmp_path / "log" / "b.parquet", item_id=[1, 2])
    with pytest.raises(DataError, match=r"b\.parquet: column 'item_id' is int64 here but string in .*a\.parquet"):
        stream_examples(tmp_path / "log", columns=CANDIDATE[:1], batch_size=2)


def test_a_kind_that_does_not_fit_its_column_is_named(tmp_path):
    path = _one_shard(tmp_path / "log.parquet", item_id=["x"], history=["not a list"])
    with pytest.raises(DataError, match=r"column 'history' is string, but a history column holds a list of item ids"):
        stream_examples(path, columns=(FeatureDeclaration("history", kind="history"),), batch_size=2)


def test_a_null_id_names_the_row(tmp_path):
    with_statistics = _one_shard(tmp_path / "a.parquet", user_id=["u1", "u2", None, "u4"])
    with pytest.raises(DataError, match=r"a\.parquet: column 'user_id', row 2 is null; an id column needs a value"):
        stream_examples(with_statistics, columns=QUERY[:1], batch_size=2)  # from the footer, before streaming
    without = tmp_path / "b.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2", "u3", "u4", "u5", "u6", None]}), without, write_statistics=False)
    with pytest.raises(DataError, match=r"b\.parquet: column 'user_id', row 6 is null"):
        stream_statistics(without, columns=QUERY[:1])
    with pytest.raises(tf.errors.OpError, match=r"column 'user_id', row 6 is null"):
        list(stream_examples(without, columns=QUERY[:1], batch_size=2, shuffle_buffer=0))


def test_a_negative_weight_stops_the_stream_naming_the_column(tmp_path):
    path = _one_shard(tmp_path / "log.parquet", user_id=["u1", "u2"], weight=[1.0, -2.0])
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"weight column weight: a weight must be a finite number ≥ 0"
    ):
        list(stream_examples(path, columns=QUERY[:1], weight_column="weight", batch_size=2))


def test_unreadable_shards_are_named(tmp_path):
    (tmp_path / "log").mkdir()
    _one_shard(tmp_path / "log" / "a.parquet", user_id=["u1"])
    (tmp_path / "log" / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"b\.parquet is not a readable Parquet file"):
        stream_examples(tmp_path / "log", columns=QUERY[:1], batch_size=2)
    records = tmp_path / "log.tfrecord"
    _write_tfrecord(records, _log(9, 12)[["user_id"]])
    records.write_bytes(records.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"log\.tfrecord is not a valid TFRecord file after record 10"):
        stream_statistics(records, columns=QUERY[:1])
    not_examples = tmp_path / "other.tfrecord"
    with tf.io.TFRecordWriter(str(not_examples)) as writer:
        writer.write(b"\xff\xfe not a tf.train.Example")
    with pytest.raises(DataError, match=r"other\.tfrecord does not hold tf\.train\.Example records"):
        stream_examples(not_examples, columns=QUERY[:1], batch_size=2)


def test_tfrecord_shards_are_checked_against_the_first_records(tmp_path):
    (tmp_path / "log").mkdir()
    _write_tfrecord(tmp_path / "log" / "a.tfrecord", pd.DataFrame({"user_id": ["u1"], "age": [20]}))
    _write_tfrecord(tmp_path / "log" / "b.tfrecord", pd.DataFrame({"user_id": ["u2"], "age": ["twenty"]}))
    with pytest.raises(DataError, match=r"b\.tfrecord: column 'age' is string here but int64 in .*a\.tfrecord"):
        stream_examples(tmp_path / "log", columns=(QUERY[0], QUERY[2]), batch_size=2)
    _write_tfrecord(tmp_path / "log" / "b.tfrecord", pd.DataFrame({"user_id": ["u2"]}))
    with pytest.raises(DataError, match=r"b\.tfrecord: the interactions table has no column 'age'"):
        stream_examples(tmp_path / "log", columns=(QUERY[0], QUERY[2]), batch_size=2)


def test_a_later_tfrecord_record_without_a_feature_names_the_record(tmp_path):
    path = tmp_path / "log.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in range(8):
            feature = {"user_id": _feature([f"u{row}"])}
            if row != 6:
                feature["age"] = _feature([20 + row])
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    with pytest.raises(DataError, match=r"log\.tfrecord: record 6: .*age.*\(expected user_id: string, age: int64\)"):
        stream_statistics(path, columns=(QUERY[0], QUERY[2]))


def test_statistics_refuse_what_a_stream_cannot_learn(tmp_path):
    path = _one_shard(
        tmp_path / "log.parquet", user_id=["u1", "u2"], item_id=["a", "b"], price=[1.0, 2.0], event=["view", "view"]
    )
    with pytest.raises(DataError, match=r"no row has 'event' in \['purchase'\]"):
        stream_statistics(path, columns=QUERY[:1], filter=RowFilter("event", ("purchase",)))
    bucketized = FeatureDeclaration("price", kind="bucketized")
    stats = stream_statistics(path, columns=(QUERY[0], CANDIDATE[0], bucketized))
    with pytest.raises(DataError, match=r"Feature 'price': a streamed `kind: bucketized` feature needs `boundaries`"):
        adapted_spec(Declarations((QUERY[0],), (CANDIDATE[0], bucketized)), stats)
    with pytest.raises(DataError, match=r"Feature 'history' \(history of column 'history'\) is not one the statistics"):
        adapted_spec(Declarations(QUERY[:2], CANDIDATE[:1]), stats)
    numbered = _one_shard(tmp_path / "numbered.parquet", item_id=["a", "b"], history=[[1], [2, 3]])
    stats = stream_statistics(numbered, columns=QUERY[1:2] + CANDIDATE[:1])
    with pytest.raises(
        DataError,
        match=r"Feature 'history': the history holds int64 ids but the item id 'item_id' is "
        r"string",
    ):
        adapted_spec(Declarations(QUERY[1:2], CANDIDATE[:1]), stats)
    with pytest.raises(DataError, match=r"column 'item_id' is string, but a numeric column holds numbers"):
        stream_statistics(numbered, columns=(FeatureDeclaration("item_id", kind="numeric"),))


@pytest.mark.slow
def test_the_documented_keras_example_runs_as_written(tmp_path):
    """docs/streaming.md's example, run in a fresh process from an empty directory."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "streaming.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", docs, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"\d+ training examples; \(200, 64\) candidate embeddings", done.stdout), done.stdout[-500:]

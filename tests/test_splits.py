"""The splits of tfrec_pipelines.splits on hand-made interactions: which rows train, which are evaluated
with which history, which seen items are filtered; and the validation hold-outs."""

import numpy as np
import pandas as pd
import pytest

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow)
from tfrec_pipelines.data import DataError
from tfrec_pipelines.interactions import InteractionTables, interaction_data, read_interaction_tables
from tfrec_pipelines.sources import prepare_data
from tfrec_towers.config import ConfigError, config_from_dict
from tfrec_towers.data_config import InteractionsConfig, SplitConfig, TableConfig
from tfrec_towers.evaluation import target_ranks

# u1: a@1 b@2 c@5 d@6; u2: b@3 a@7; u3: c@8 (nothing before any cut at 5).
LOG = pd.DataFrame(
    {
        "user_id": ["u2", "u1", "u3", "u1", "u1", "u1", "u2"],
        "item_id": ["a", "c", "c", "a", "d", "b", "b"],
        "timestamp": [7, 5, 8, 1, 6, 2, 3],
    }
)


def _split(log=LOG, **options):
    return interaction_data(InteractionTables("t", log), max_history=2, **options)


def _seen(data):
    return [data.seen(i).tolist() for i in range(len(data.eval_targets))]


@pytest.mark.parametrize(
    "split",
    [SplitConfig(kind="time", cut=5), SplitConfig(kind="time", cut=4.5), SplitConfig(kind="time", cut_fraction=0.5)],
)  # 1 + ceil(0.5 * 7) = 5
def test_a_time_cut_trains_before_it_and_evaluates_every_later_interaction_with_the_history_before_it(split):
    data = _split(split=split)
    assert data.train["user_id"].tolist() == ["u1", "u1", "u2"]
    assert data.train["item_id"].tolist() == ["a", "b", "b"]
    assert data.train["history"].tolist() == [["", ""], ["", "a"], ["", ""]]
    # u1's c and d both with the history before the cut (not c before d); u3 has none: not evaluated.
    assert data.eval_queries["user_id"].tolist() == ["u1", "u1", "u2"]
    assert data.eval_targets.tolist() == ["c", "d", "a"]
    assert data.eval_queries["history"].tolist() == [["a", "b"], ["a", "b"], ["", "b"]]
    assert _seen(data) == [["a", "b"], ["a", "b"], ["b"]]
    assert data.candidates["item_id"].tolist() == ["a", "b", "c", "d"]
    assert data.summary["test_interactions_without_history"] == 1 and data.summary["eval_queries"] == 3


def test_a_date_cut_on_a_date_column_and_float_timestamps():
    dates = LOG.assign(timestamp=pd.to_datetime("2024-01-01") + pd.to_timedelta(LOG["timestamp"], unit="D"))
    by_date = _split(dates, split=SplitConfig(kind="time", cut="2024-01-06"))  # day 5
    floats = _split(LOG.assign(timestamp=LOG["timestamp"] / 10.0), split=SplitConfig(kind="time", cut=0.45))
    for data in (by_date, floats):
        assert data.eval_targets.tolist() == ["c", "d", "a"] and data.train["item_id"].tolist() == ["a", "b", "b"]


def test_a_cut_of_the_wrong_type_or_out_of_range_names_the_key():
    with pytest.raises(
        DataError,
        match=r"`data.split.cut` '2024-03-01' is a date but column 'timestamp' holds numbers.*e\.g\. 1709251200",
    ):
        _split(split=SplitConfig(kind="time", cut="2024-03-01"))
    with pytest.raises(DataError, match=r"no interaction at or after the cut 100 \(`data.split.cut`\)"):
        _split(split=SplitConfig(kind="time", cut=100))
    with pytest.raises(DataError, match=r"no interaction at or after the cut 1 \(`data.split.cut`\)"):
        _split(split=SplitConfig(kind="time", cut=1))
    with pytest.raises(ConfigError, match=r"`data.split`: `kind: time` needs exactly one of `cut`"):
        config_from_dict({"data": {"split": {"kind": "time"}}})
    with pytest.raises(ConfigError, match=r"`data.split`: `cut_fraction` must be in \(0, 1\)"):
        config_from_dict({"data": {"split": {"kind": "time", "cut_fraction": 1.0}}})
    with pytest.raises(ConfigError, match=r"`data.split`: `cut` applies only to `kind: time`"):
        config_from_dict({"data": {"split": {"cut": 5}}})
    with pytest.raises(ConfigError, match=r"`data.split.kind` 'given' needs `data.test.path`"):
        config_from_dict(
            {"data": {"dataset": "interactions", "interactions": {"path": "a.csv"}, "split": {"kind": "given"}}}
        )


def test_an_unquoted_yaml_date_is_kept_as_text(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  split:\n    kind: time\n    cut: 2024-03-01\n")
    from tfrec_towers.config import load_config, save_config

    config = load_config(path)
    assert config.data.split.cut == "2024-03-01"
    save_config(config, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == config


def test_a_given_test_table_is_evaluated_with_the_whole_training_history(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu2,b,1\n")
    test = tmp_path / "test.csv"
    test.write_text("user_id,item_id,timestamp\nu1,a,9\nu1,c,0\nu3,b,1\n")  # c is earlier than training: still after it
    tables = read_interaction_tables(InteractionsConfig(path=str(train)), test=TableConfig(path=str(test)))
    data = interaction_data(tables, max_history=2, split=SplitConfig(kind="given"))
    assert data.train["user_id"].tolist() == ["u1", "u1", "u2"]
    assert data.train["item_id"].tolist() == ["a", "b", "b"]
    assert data.train["history"].tolist() == [["", ""], ["", "a"], ["", ""]]
    assert data.eval_queries["user_id"].tolist() == ["u1", "u1"]
    assert data.eval_targets.tolist() == ["c", "a"]
    assert data.eval_queries["history"].tolist() == [["a", "b"], ["a", "b"]]
    assert _seen(data) == [["a", "b"], ["a", "b"]]  # the target a itself is not filtered (target_ranks)
    assert data.candidates["item_id"].tolist() == ["a", "b", "c"]  # c appears only in the test table
    assert data.summary["test_interactions_without_history"] == 1 and data.summary["test_interactions_read"] == 3

    (tmp_path / "bad.csv").write_text("user_id,sku\nu1,a\n")
    with pytest.raises(DataError, match=r"bad.csv: the test table \(`data.test.path`\) has no column 'item_id'"):
        read_interaction_tables(InteractionsConfig(path=str(train)), test=TableConfig(path=str(tmp_path / "bad.csv")))


# u1: a@1 b@2 c@3 d@4; u2: a@1 b@2; u3: c@1.
SEQUENCES = pd.DataFrame(
    {"user_id": ["u1"] * 4 + ["u2"] * 2 + ["u3"], "item_id": list("abcdabc"), "timestamp": [1, 2, 3, 4, 1, 2, 1]}
)


def test_validation_last_holds_out_each_users_last_training_interaction():
    data = _split(SEQUENCES, validation="last")
    assert data.train["user_id"].tolist() == ["u1", "u1", "u2"]
    assert data.train["item_id"].tolist() == ["a", "b", "a"]
    assert data.validation.queries["user_id"].tolist() == ["u1"]  # u2 keeps its only training interaction
    assert data.validation.targets.tolist() == ["c"]
    assert data.validation.queries["history"].tolist() == [["a", "b"]]
    assert data.validation.seen_ids.tolist() == ["a", "b"] and data.validation.seen_indptr.tolist() == [0, 2]
    # The test split is the one without validation: the history and seen items include c.
    plain = _split(SEQUENCES)
    assert data.eval_targets.tolist() == plain.eval_targets.tolist() == ["d", "b"]
    assert data.eval_queries["history"].tolist() == plain.eval_queries["history"].tolist() == [["b", "c"], ["", "a"]]
    assert _seen(data) == _seen(plain) == [["a", "b", "c"], ["a"]]
    assert plain.validation is None and data.summary["validation_queries"] == 1


def test_validation_time_holds_out_a_slice_before_the_test_cut():
    # Training rows (before 5): u1 a@1 b@2, u2 b@3; the slice is from 1 + ceil(0.5 * 2) = 2 on.
    data = _split(split=SplitConfig(kind="time", cut=5), validation="time", validation_fraction=0.5)
    assert data.train["item_id"].tolist() == ["a"] and data.train["user_id"].tolist() == ["u1"]
    assert data.validation.targets.tolist() == ["b"]
    assert data.validation.queries["history"].tolist() == [["", "a"]]
    assert data.validation.seen_ids.tolist() == ["a"]
    assert data.summary["validation_interactions_without_history"] == 1  # u2's b@3: nothing before it
    assert data.eval_queries["history"].tolist() == [["a", "b"], ["a", "b"], ["", "b"]]


def test_filter_seen_off_ranks_among_the_whole_catalogue_as_numpy_says(tmp_path):
    path = tmp_path / "log.csv"
    SEQUENCES.to_csv(path, index=False)
    base = {"dataset": "interactions", "interactions": {"path": str(path)}, "max_history": 2}
    filtered = prepare_data(config_from_dict({"data": base})).data
    unfiltered = prepare_data(config_from_dict({"data": base, "evaluation": {"filter_seen": False}})).data
    assert unfiltered.seen_indptr.tolist() == [0, 0, 0] and len(unfiltered.seen_ids) == 0

    rng = np.random.default_rng(3)
    queries, items = rng.normal(size=(2, 4)).astype(np.float32), rng.normal(size=(4, 4)).astype(np.float32)
    ids = filtered.candidates["item_id"]  # a, b, c, d
    scores = queries @ items.T
    targets = {"d": 3, "b": 1}
    expected = {True: [], False: []}
    for u, target in enumerate(filtered.eval_targets):
        beats = scores[u] >= scores[u, targets[target]]
        beats[targets[target]] = False
        expected[False].append(int(beats.sum()))
        seen = {"a": 0, "b": 1, "c": 2}
        for item in filtered.seen(u):
            beats[seen[item]] = False
        expected[True].append(int(beats.sum()))
    for data, filter_seen in ((filtered, True), (unfiltered, False)):
        ranks = target_ranks(queries, items, ids, data.eval_targets, data.seen_indptr, data.seen_ids)
        assert ranks.tolist() == expected[filter_seen]
    assert expected[True] != expected[False]

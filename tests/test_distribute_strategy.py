"""Tests for tfrec_pipelines.distribute: strategy choice, TF_CONFIG validation, which process writes the run."""

import types

import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from tfrec_pipelines.distribute import STRATEGIES, is_chief, make_strategy


def test_none_is_the_default_strategy_and_is_chief():
    strategy = make_strategy("none")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1 and is_chief(strategy)


def test_mirrored_on_one_cpu_is_one_replica():
    strategy = make_strategy("mirrored", devices=["/cpu:0"])
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 1 and is_chief(strategy)


def test_unknown_strategy_names_the_field():
    with pytest.raises(
        ValueError, match=r"`training.distribute` must be one of \['none', 'mirrored', 'multi_worker'\]"
    ):
        make_strategy("tpu")
    assert STRATEGIES == ("none", "mirrored", "multi_worker")


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs the TF_CONFIG"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"cluster": {}}', "needs the TF_CONFIG"),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        make_strategy("multi_worker")


def _strategy_of(task_type, task_id, cluster):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
    )
    return types.SimpleNamespace(cluster_resolver=resolver)


def test_only_the_chief_writes():
    workers = {"worker": ["a:1", "b:1"]}
    assert is_chief(_strategy_of("worker", 0, workers))
    assert not is_chief(_strategy_of("worker", 1, workers))
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert is_chief(_strategy_of("chief", 0, with_chief))
    assert not is_chief(_strategy_of("worker", 0, with_chief))


@pytest.mark.slow
def test_train_under_a_mirrored_strategy_writes_a_complete_run(tmp_path):
    import json

    from helpers import tiny_config
    from tfrec_pipelines.train import train

    config = tiny_config(
        "data.num_items=200",
        "data.num_users=80",
        "data.interactions_per_user=10",
        "data.max_history=6",
        "training.batch_size=64",
        "export.verify=false",
        "loss.memory_bank_size=128",
        "training.distribute=mirrored",
    )
    result = train(config, tmp_path / "run", verbose=0)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"HR@10", "HR@50", "HR@100", "NDCG@10", "NDCG@50", "NDCG@100"}
    assert result.export_path is not None and (result.export_path / "saved_model.pb").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["distribute"] == "mirrored"

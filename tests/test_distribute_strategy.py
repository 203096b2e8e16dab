"""Tests for tfrec_pipelines.distribute: strategy choice, TF_CONFIG validation, which process writes the run."""

import json
import os
import socket
import subprocess
import sys
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


_TWO_WORKERS = """
import json, sys
import tfrec_towers
import tensorflow as tf
from tfrec_pipelines.distribute import make_strategy

strategy = make_strategy("multi_worker")
with strategy.scope():  # a string variable: TensorFlow's initial-value broadcast carries numbers only
    ids = tf.Variable(["a", "bc"], dtype=tf.string)
batches = strategy.experimental_distribute_dataset(tf.data.Dataset.range(8).batch(4))

@tf.function
def step(iterator):
    def replica(rows):  # rows come straight from the input pipeline: they carry no device
        context = tf.distribute.get_replica_context()
        return context.all_gather(rows, axis=0), context.all_reduce("SUM", rows)
    return strategy.run(replica, args=(next(iterator),))

iterator = iter(batches)
gathered, summed = step(iterator)
print("RESULT" + json.dumps({"ids": [s.decode() for s in ids.numpy()], "gathered": gathered.numpy().tolist(),
                             "summed": summed.numpy().tolist()}))
"""


@pytest.mark.slow
def test_two_workers_create_string_variables_and_gather_input_rows(tmp_path):
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("localhost", 0))
    workers = [f"localhost:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    processes = []
    try:
        for index in range(2):
            tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", TF_CONFIG=tf_config)
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", _TWO_WORKERS],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    results = []
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
        results.append(
            json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[len("RESULT") :])
        )
    # Each worker holds its half of the global batch [0, 1, 2, 3]: the gather rebuilds it in worker order.
    assert [r["gathered"] for r in results] == [[0, 1, 2, 3]] * 2
    assert [r["summed"] for r in results] == [[2, 4]] * 2  # [0, 1] + [2, 3]
    assert [r["ids"] for r in results] == [["a", "bc"]] * 2

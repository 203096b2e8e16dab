"""``training.distribute: multi_worker`` for real: two worker processes on localhost, each with its own TF_CONFIG.

The same ``tfrec-towers train`` command runs in each worker. Checked against independent runs:

* a run whose chief is killed (SIGKILL) after a checkpoint, rerun with the same command on both
  workers, resumes from that checkpoint, and the chief ends with the towers of one process training
  the same global batches on two replicas (``MirroredStrategy`` on two logical CPU devices, whose
  update ``tests/test_distributed.py`` ties to one device's for the in-batch and memory-bank
  negatives). Mixed negatives make two replicas the reference rather than one device: every replica
  draws its own ``B'`` rows (``MixedNegativeSampler``) and the loss gathers them, so a step scores
  against ``2·B'`` drawn rows. A wrong gather or a wrong resume would each move the towers by a
  training step's change (~1e-3), far above the float32 reordering between the two (~1e-6);
* only the chief writes the run directory; the other worker's scratch copy is gone at the end.

The run to kill and the reference start together, then the rerun, so the module takes about two
run-lengths of wall time.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY, cli_sets
from tfrec_pipelines.run_directory import CHECKPOINTS_DIR, partial_directory
from tfrec_pipelines.train import load_run

pytestmark = pytest.mark.slow  # every check trains in worker processes

SETTINGS = [
    *TINY,
    "export.verify=false",
    "loss.mixed_negatives=16",
    "loss.memory_bank_size=128",
    "training.checkpoint_every_steps=3",
    "training.distribute=multi_worker",
]
STEPS = 11  # 1320 training examples of TINY in batches of 128: 10 full batches and one of 40
RUN_TIMEOUT = 420  # seconds a worker may take (a run takes about a minute on an idle 2-core machine)
RESUMED = re.compile(r"Resuming from step (\d+) \(epoch 1 of 1, after batch (\d+) of 11\) of (\S+): (\d+) of 11 steps")

_REFERENCE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tfrec_towers
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfrec_pipelines.sources import prepare_data
    from tfrec_pipelines.train import build_model, fit_model, training_columns
    from tfrec_towers.config import ExperimentConfig, apply_overrides

    config = apply_overrides(ExperimentConfig(), json.loads(sys.argv[1]))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    tf.keras.utils.set_random_seed(config.training.seed)  # as `train` does, before the data and the model
    prepared = prepare_data(config)
    data, spec = prepared.data, prepared.adapted_spec()
    with strategy.scope():
        model = build_model(spec, config, data)
    fit_model(model, training_columns(data, spec, prepared.weight_column), config.training, 0, validation=data)
    np.savez(sys.argv[2], *[w.numpy() for w in model.query_tower.weights + model.candidate_tower.weights])
    """
)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)


class Cluster:
    """The processes a test starts, each logging to its own files; :meth:`kill_all` ends those still running."""

    def __init__(self, logs):
        self.logs, self.processes = logs, []

    def start(self, name, command, env):
        out, err = (open(self.logs / f"{name}.{kind}", "w") for kind in ("out", "err"))
        with out, err:
            process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        self.processes.append(process)
        return process

    def start_workers(self, name, output):
        """Both workers of a new two-worker cluster (fresh ports) running the train command into ``output``."""
        workers = [f"localhost:{port}" for port in _free_ports(2)]
        command = [sys.executable, "-m", "tfrec_towers.cli", "train", "--output", str(output), *cli_sets(*SETTINGS)]
        return [
            self.start(
                f"{name}-{index}",
                command,
                _env(
                    TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
                ),
            )
            for index in range(2)
        ]

    def log(self, name, kind="err"):
        return (self.logs / f"{name}.{kind}").read_text()

    def finish(self, processes, name, timeout=RUN_TIMEOUT):
        """Waits for the workers of ``name`` and asserts that both succeeded."""
        for index, process in enumerate(processes):
            process.wait(timeout=timeout)
            assert process.returncode == 0, self.log(f"{name}-{index}")[-3000:]

    def kill_all(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _checkpoint_steps(output):
    """Steps of the complete checkpoints of the chief's run in progress (those its manager lists)."""
    state = tf.train.get_checkpoint_state(str(partial_directory(output) / CHECKPOINTS_DIR))
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths] if state else []


def _towers(run_dir):
    model = load_run(run_dir)[2]
    return [w.numpy() for w in model.query_tower.weights + model.candidate_tower.weights]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A two-worker run whose chief is killed and that is rerun on both workers, and the reference."""
    root = tmp_path_factory.mktemp("multi_worker")
    killed_root, logs = root / "killed", root / "logs"
    for directory in (killed_root, logs):
        directory.mkdir()
    cluster = Cluster(logs)
    try:
        killed = cluster.start_workers("killed", killed_root / "run")
        reference = cluster.start(
            "reference",
            [sys.executable, "-c", _REFERENCE, json.dumps(SETTINGS), str(root / "reference.npz")],
            _env(),
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while not any(0 < step < STEPS for step in _checkpoint_steps(killed_root / "run")):  # a mid-run checkpoint
            assert all(p.poll() is None for p in killed), cluster.log("killed-0")[-3000:]
            assert time.monotonic() < deadline, "no checkpoint was written in time"
            time.sleep(0.01)
        killed[0].send_signal(signal.SIGKILL)  # the chief's machine dies
        killed[0].wait()
        steps_at_kill = _checkpoint_steps(killed_root / "run")
        try:  # the other worker fails on its next collective or waits on it; the operator restarts both
            killed[1].wait(timeout=5)
        except subprocess.TimeoutExpired:
            killed[1].kill()
            killed[1].wait()
        rerun = cluster.start_workers("rerun", killed_root / "run")  # the same command on both workers
        reference.wait(timeout=RUN_TIMEOUT)
        assert reference.returncode == 0, cluster.log("reference")[-3000:]
        cluster.finish(rerun, "rerun")
    finally:
        cluster.kill_all()
    return {
        "root": root,
        "killed": killed_root,
        "cluster": cluster,
        "steps_at_kill": steps_at_kill,
        "killed_code": killed[0].returncode,
        "reference": [
            array for _, array in sorted(np.load(root / "reference.npz").items(), key=lambda kv: int(kv[0][4:]))
        ],
    }


def test_a_killed_chief_resumes_from_its_last_checkpoint(runs):
    killed, cluster = runs["killed"], runs["cluster"]
    assert runs["killed_code"] == -signal.SIGKILL
    latest = runs["steps_at_kill"][-1]
    assert 0 < latest < STEPS
    for index in range(2):  # both workers resume from the chief's checkpoint, not from step 0
        match = RESUMED.search(cluster.log(f"rerun-{index}"))
        assert match, cluster.log(f"rerun-{index}")[-3000:]
        step, batch, path, left = match.groups()
        assert int(step) == int(batch) == latest and int(left) == STEPS - latest
        assert Path(path) == partial_directory(killed / "run") / CHECKPOINTS_DIR / f"ckpt-{latest}"


def test_the_resumed_chief_trains_like_one_process_on_the_same_global_batches(runs):
    got, expected = _towers(runs["killed"] / "run"), runs["reference"]
    assert [w.shape for w in got] == [w.shape for w in expected] and len(got) > 10
    # 11 Adam steps, resumed once; the two workers sum their gradients over the network, the
    # reference on one machine, in another float32 order: the towers (|w| up to ~0.6) differ by
    # ~1e-7, far below the change of one training step (~1e-3), and by much more with other
    # batches or negatives.
    for got_weight, expected_weight in zip(got, expected):
        np.testing.assert_allclose(got_weight, expected_weight, rtol=0, atol=2e-6)


def test_only_the_chief_writes_the_run_directory(runs):
    killed, cluster = runs["killed"], runs["cluster"]
    assert sorted(p.name for p in killed.iterdir()) == ["run"]  # no .partial left, nothing of the other worker
    run = killed / "run"
    for name in ("config.json", "feature_spec.json", "history.json", "metrics.json", "checkpoint"):
        assert (run / name).exists(), name
    assert not (run / CHECKPOINTS_DIR).exists()
    assert re.search(rf"^run: {re.escape(str(run))}$", cluster.log("rerun-0"), re.M)
    scratch = re.search(r"^run: (\S+)$", cluster.log("rerun-1"), re.M).group(1)
    assert not Path(scratch).is_relative_to(runs["root"]) and not Path(scratch).exists()  # written elsewhere, removed
    assert json.loads((run / "history.json").read_text())["loss"]

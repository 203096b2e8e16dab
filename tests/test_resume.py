"""Resumable training: kill -9 and Ctrl-C mid-run, then the same command, end where an uninterrupted run ends.

The command-line runs are subprocesses (a SIGKILL'd process must really die): one run is killed, its
rerun interrupted with Ctrl-C and the second rerun finishes, while the uninterrupted reference runs
beside them. The rest runs in this process.
"""

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from helpers import TINY_TOWERS, cli_sets, trainable
from tfrec_pipelines.checkpointing import ResumableTraining
from tfrec_pipelines.dataset import epoch_batches
from tfrec_pipelines.run_directory import CHECKPOINTS_DIR, config_differences, partial_directory, partial_run
from tfrec_pipelines.run_errors import RunError, TrainingInterrupted
from tfrec_pipelines.train import fit_model, load_data, train
from tfrec_towers import warmup
from tfrec_towers.config import ConfigError, ExperimentConfig, TrainingConfig, apply_overrides

# Small synthetic data with every piece of loss state a checkpoint must carry: the streaming
# frequency estimator, the memory bank and the mixed-negative draw counter.
SMALL = [
    "data.num_items=200",
    "data.num_users=100",
    "data.interactions_per_user=10",
    "data.max_history=6",
    *TINY_TOWERS,
    "training.epochs=3",
    "training.batch_size=64",
    "training.checkpoint_every_steps=4",
    "loss.logq=streaming",
    "loss.frequency.hash_buckets=1024",
    "loss.memory_bank_size=64",
    "loss.mixed_negatives=8",
    "export.k=10",
    "export.verify=false",
]
CONFIG = apply_overrides(ExperimentConfig(), SMALL)
RESUMED = re.compile(
    r"Resuming from step (\d+) \(epoch (\d+) of 3, after batch (\d+) of (\d+)\) of (\S+): (\d+) of (\d+) steps left"
)


def _steps_per_epoch():
    rows = len(load_data(CONFIG).train["item_id"])
    return math.ceil(rows / CONFIG.training.batch_size)


def _command(output):
    return [sys.executable, "-m", "tfrec_towers.cli", "train", "--output", str(output), *cli_sets(*SMALL)]


def _start(output):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(_command(output), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _checkpoint_steps(output):
    """Steps of the complete checkpoints: those the manager's state file lists (written after the data)."""
    state = tf.train.get_checkpoint_state(str(partial_directory(output) / CHECKPOINTS_DIR))
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths] if state else []


def _signal_at_checkpoints(runs):
    """Sends each ``(process, output, accept, signal)`` its signal once a checkpoint step satisfies ``accept``.

    One loop for all runs, so a slow start of one does not let another finish training unsignalled. The
    loop ends: a run that ends (as every training run does) before its checkpoint fails the test.
    """
    pending = list(runs)
    while pending:
        for run in list(pending):
            process, output, accept, signum = run
            assert process.poll() is None, f"{output} ended before its checkpoint: {process.communicate()[1][-2000:]}"
            if any(accept(step) for step in _checkpoint_steps(output)):
                os.kill(process.pid, signum)
                pending.remove(run)
        time.sleep(0.005)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """One run killed (SIGKILL) after a mid-epoch checkpoint, its rerun sent SIGINT once it has checkpointed
    again, and the second rerun, which finishes; beside them the uninterrupted reference run."""
    root = tmp_path_factory.mktemp("resume")
    per_epoch = _steps_per_epoch()
    run = root / "run"
    reference, killed = _start(root / "reference"), _start(run)
    _signal_at_checkpoints([(killed, run, lambda step: step % per_epoch, signal.SIGKILL)])  # a mid-epoch checkpoint
    killed.communicate()
    steps_at_kill = _checkpoint_steps(run)
    interrupted = _start(run)
    _signal_at_checkpoints([(interrupted, run, lambda step: step > steps_at_kill[-1], signal.SIGINT)])
    interrupted_out = interrupted.communicate()
    rerun = _start(run)
    rerun_out = rerun.communicate()
    assert rerun.returncode == 0, rerun_out[1][-3000:]
    reference_out = reference.communicate()
    assert reference.returncode == 0, reference_out[1][-3000:]
    return {
        "root": root,
        "run": run,
        "per_epoch": per_epoch,
        "killed": {"code": killed.returncode, "steps": steps_at_kill, "rerun_stderr": interrupted_out[1]},
        "interrupted": {"code": interrupted.returncode, "stderr": interrupted_out[1], "rerun_stderr": rerun_out[1]},
    }


def _assert_same_run(run, reference):
    for name in ("metrics.json", "history.json"):
        got, expected = (json.loads((d / name).read_text()) for d in (run, reference))
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-6, err_msg=f"{name} {key}")


@pytest.mark.slow
def test_kill_9_mid_epoch_then_the_same_command_resumes_to_the_uninterrupted_result(cli_runs):
    root, run, per_epoch, killed = cli_runs["root"], cli_runs["run"], cli_runs["per_epoch"], cli_runs["killed"]
    assert killed["code"] == -signal.SIGKILL
    latest = killed["steps"][-1]
    match = RESUMED.search(killed["rerun_stderr"])
    assert match, killed["rerun_stderr"][-3000:]
    step, epoch, batch, of, directory, left, total = match.groups()
    assert int(step) == latest and (int(epoch) - 1, int(batch)) == divmod(latest, per_epoch) and int(of) == per_epoch
    assert Path(directory) == partial_directory(run) / CHECKPOINTS_DIR / f"ckpt-{latest}"
    assert int(total) == 3 * per_epoch and int(left) == int(total) - latest < int(total)  # it trained fewer steps
    _assert_same_run(run, root / "reference")
    assert not partial_directory(run).exists() and not (run / CHECKPOINTS_DIR).exists()


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_exits_130_and_the_rerun_finishes(cli_runs):
    root, run, interrupted = cli_runs["root"], cli_runs["run"], cli_runs["interrupted"]
    assert interrupted["code"] == 130, (interrupted["code"], interrupted["stderr"][-3000:])
    match = re.search(
        r"Interrupted at step (\d+); checkpoint written to (\S+); rerun the same command to resume",
        interrupted["stderr"],
    )
    assert match, interrupted["stderr"][-3000:]
    step = int(match.group(1))
    assert step > cli_runs["killed"]["steps"][-1]  # a checkpoint of the resumed run
    assert match.group(2) == str(partial_directory(run) / CHECKPOINTS_DIR / f"ckpt-{step}")
    assert RESUMED.search(interrupted["rerun_stderr"]).group(1) == str(step)
    _assert_same_run(run, root / "reference")


@pytest.mark.parametrize("seed", [0, 7])
def test_epoch_order_depends_only_on_seed_and_epoch_and_resumes_at_any_step(seed):
    rows, batch, epochs = 11, 4, 3
    features = {
        "id": np.arange(rows, dtype=np.int64),
        "name": np.array([f"n{i}" for i in range(rows)], dtype=object),
        "history": np.arange(rows * 2, dtype=np.int64).reshape(rows, 2),
    }
    expected = []  # the numpy reference: per epoch, the permutation of default_rng([seed, epoch]) in batches
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(rows)
        expected += [order[i : i + batch].tolist() for i in range(0, rows, batch)]
    assert len(expected) == 9
    for start in range(len(expected) + 1):
        batches = list(epoch_batches(features, batch, seed=seed, epochs=epochs, start_step=start))
        assert [b["id"].numpy().tolist() for b in batches] == expected[start:]
        for b in batches:
            assert [s.decode() for s in b["name"].numpy()] == [f"n{i}" for i in b["id"].numpy()]
            assert b["history"].numpy().tolist() == features["history"][b["id"].numpy()].tolist()
    two_epochs = [b["id"].numpy().tolist() for b in epoch_batches(features, batch, seed=seed, epochs=2)]
    assert two_epochs == expected[:6]  # the length of the run does not change an epoch's order
    with pytest.raises(ValueError, match=r"`start_step` must be in \[0, 9\]. Received: 10"):
        epoch_batches(features, batch, seed=seed, epochs=epochs, start_step=10)


@pytest.fixture(scope="module")
def small():
    make_model, columns, _ = trainable(CONFIG)
    return make_model, columns


class _Crash(tf.keras.callbacks.Callback):
    """Records every variable after batch ``snapshot_at`` (after the checkpointing callback ran), then raises at ``crash_at``."""

    def __init__(self, snapshot_at, crash_at):
        super().__init__()
        self.snapshot_at, self.crash_at, self.steps, self.snapshot = snapshot_at, crash_at, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.snapshot_at:
            self.snapshot = _state(self.model)
        if self.steps == self.crash_at:
            raise RuntimeError("crash")


def _state(model):
    """Every model and optimizer variable, by checkpoint-independent position."""
    return [v.numpy() for v in model.variables] + [v.numpy() for v in model.optimizer.variables]


@pytest.fixture(scope="module")
def crashed(small, tmp_path_factory):
    """A run that crashed at step 6 of 3·S, its last checkpoint at step 4 (mid-epoch), and the variables then."""
    make_model, columns = small
    directory = tmp_path_factory.mktemp("crashed") / CHECKPOINTS_DIR
    crash = _Crash(snapshot_at=4, crash_at=6)
    with pytest.raises(RuntimeError, match="crash"):
        fit_model(make_model(), columns, CONFIG.training, 0, [crash], checkpoints=directory)
    return directory, crash.snapshot


@pytest.fixture(scope="module")
def uninterrupted(small, tmp_path_factory):
    """The history and every variable of the same training run, checkpointed but never interrupted."""
    make_model, columns = small
    model = make_model()
    history, _, _ = fit_model(model, columns, CONFIG.training, 0, checkpoints=tmp_path_factory.mktemp("full"))
    return history, _state(model)


@pytest.mark.slow
def test_a_checkpoint_restores_optimizer_slots_memory_bank_and_estimator_exactly(small, crashed):
    make_model, columns = small
    directory, snapshot = crashed
    model = make_model()
    fit_model(model, columns, TrainingConfig(epochs=1, batch_size=512), 0)  # a different state, every variable built
    assert any(not np.array_equal(a, b) for a, b in zip(_state(model), snapshot))
    resumable = ResumableTraining(model, directory, per_epoch=_steps_per_epoch(), epochs=3)
    assert resumable.start == 4
    restored = _state(model)
    assert len(restored) == len(snapshot)
    for got, expected in zip(restored, snapshot):
        np.testing.assert_array_equal(got, expected)
    assert int(model.task.memory_bank.rows_written.numpy()) == 4 * CONFIG.training.batch_size  # four batches enqueued
    assert int(model.optimizer.iterations.numpy()) == 4
    assert int(model.mixed_negatives.draws.numpy()) == 4


@pytest.mark.slow
def test_a_crash_mid_epoch_resumes_to_the_uninterrupted_weights_and_history(small, crashed, uninterrupted):
    make_model, columns = small
    directory, _ = crashed
    expected_history, expected_state = uninterrupted
    resumed = make_model()
    history, _, _ = fit_model(resumed, columns, CONFIG.training, 0, checkpoints=directory)
    assert history == expected_history and len(history["loss"]) == 3
    for got, expected in zip(_state(resumed), expected_state, strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_sigint_in_process_saves_stops_and_restores_the_previous_handler(small, tmp_path):
    make_model, columns = small

    class CtrlC(tf.keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match=r"Interrupted at step 3; checkpoint written to .*ckpt-3; rerun"):
        fit_model(make_model(), columns, CONFIG.training, 0, [CtrlC()], checkpoints=tmp_path)
    assert signal.getsignal(signal.SIGINT) is before
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")


@pytest.mark.slow
@pytest.mark.parametrize("learning_rate", ["1.0e+30", "1.0e+38"])
def test_divergence_stops_with_the_last_good_checkpoint_which_is_finite(tmp_path, learning_rate):
    config = apply_overrides(
        CONFIG,
        ["training.optimizer=sgd", f"training.learning_rate={learning_rate}", "training.checkpoint_every_steps=1"],
    )
    with pytest.raises(RunError, match=r"Training diverged at step \d+ \(epoch 1\)") as error:
        train(config, tmp_path / "run", verbose=0)
    message = str(error.value)
    assert "Lower `training.learning_rate` or raise `model.temperature`." in message
    assert not (tmp_path / "run").exists()
    checkpoints = partial_directory(tmp_path / "run") / CHECKPOINTS_DIR
    named = re.search(r"The last good checkpoint is (\S+) \(step (\d+)\)\.", message)
    if learning_rate == "1.0e+30":  # step 1's update is huge but finite; step 2's loss is NaN
        assert "step 2 (epoch 1): loss = nan." in message and named and named.group(2) == "1"
        assert named.group(1) == str(checkpoints / "ckpt-1")
        reader = tf.train.load_checkpoint(named.group(1))
        floats = [name for name, dtype in reader.get_variable_to_dtype_map().items() if dtype.is_floating]
        assert len(floats) > 10 and all(np.all(np.isfinite(reader.get_tensor(name))) for name in floats)
    else:  # step 1's update overflows: its checkpoint is never written, and nothing is left to resume
        assert "step 1 (epoch 1): the weights became NaN or infinite. No checkpoint was written before it." in message
        assert not partial_directory(tmp_path / "run").exists()


def _fake_checkpoint(work):
    tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), str(work / CHECKPOINTS_DIR), 1).save(
        checkpoint_number=3
    )


def test_a_partial_run_of_another_configuration_is_refused_naming_the_keys(tmp_path):
    output = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with partial_run(output, CONFIG) as work:
            _fake_checkpoint(work)
            for name in ("export", "tensorboard"):
                (work / name).mkdir()
                (work / name / "file").write_text("written before the failure")
            raise RuntimeError("boom")
    assert (
        work == tmp_path / ".run.partial" and json.loads((work / "config.json").read_text())["training"]["epochs"] == 3
    )
    other = apply_overrides(CONFIG, ["training.learning_rate=0.01", "loss.memory_bank_size=32"])
    with pytest.raises(
        RunError,
        match=r"another configuration \(differing keys: loss.memory_bank_size, training.learning_rate\)"
        r".*delete that directory",
    ):
        with partial_run(output, other):
            pass
    with partial_run(output, CONFIG, keep=["tensorboard"]) as again:  # the same configuration resumes it
        assert sorted(p.name for p in again.iterdir()) == [CHECKPOINTS_DIR, "config.json", "tensorboard"]
        assert (again / CHECKPOINTS_DIR / "ckpt-3.index").exists() and (again / "tensorboard" / "file").exists()
        with pytest.raises(RunError, match="Another process is writing"):
            with partial_run(output, CONFIG):
                pass


def test_a_failure_before_any_checkpoint_deletes_the_partial_directory(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with partial_run(tmp_path / "run", CONFIG):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_config_differences_are_dotted_keys():
    saved = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "e": None}
    current = {"a": 1, "b": {"c": [1, 3], "d": "x"}, "f": 0}
    assert config_differences(saved, current) == ["b.c", "e", "f"]


@pytest.mark.parametrize("field, value", [("checkpoint_every_steps", -1), ("checkpoint_every_seconds", -0.5)])
def test_negative_checkpoint_schedules_are_refused(field, value):
    with pytest.raises(ConfigError, match=rf"`training.{field}` must be ≥ 0 \(0 turns it off\). Received: {value}"):
        TrainingConfig(**{field: value})
    defaults = TrainingConfig()
    assert (defaults.checkpoint_every_steps, defaults.checkpoint_every_seconds) == (0, 600.0)


def _truncate(checkpoint):
    (data,) = Path(checkpoint).parent.glob(f"{Path(checkpoint).name}.data-*")
    os.truncate(data, data.stat().st_size // 2)


@pytest.mark.slow
def test_a_truncated_latest_checkpoint_is_skipped_and_the_run_resumes_from_the_older_one(
    small, uninterrupted, tmp_path, caplog
):
    make_model, columns = small
    directory = tmp_path / CHECKPOINTS_DIR
    with pytest.raises(RuntimeError, match="crash"):  # checkpoints at steps 4 and 8, then a crash
        fit_model(
            make_model(), columns, CONFIG.training, 0, [_Crash(snapshot_at=0, crash_at=10)], checkpoints=directory
        )
    listed = tf.train.get_checkpoint_state(str(directory)).all_model_checkpoint_paths
    assert [Path(path).name for path in listed] == ["ckpt-4", "ckpt-8"]
    _truncate(directory / "ckpt-8")  # as a full disk or a kill while it was written leaves it
    expected_history, expected_state = uninterrupted
    resumed = make_model()
    caplog.set_level(logging.INFO, logger="tfrec_pipelines.checkpointing")
    history, _, _ = fit_model(resumed, columns, CONFIG.training, 0, checkpoints=directory)
    skipped = f"Skipping the checkpoint {directory / 'ckpt-8'}: it cannot be read (IndexError: Read less bytes than requested)."
    assert skipped in caplog.text
    assert RESUMED.search(caplog.text).group(1, 5) == ("4", str(directory / "ckpt-4"))
    assert history == expected_history
    for got, expected in zip(_state(resumed), expected_state, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_no_readable_checkpoint_is_a_run_error_naming_the_directory(tmp_path):
    output = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with partial_run(output, CONFIG) as work:
            _fake_checkpoint(work)
            raise RuntimeError("boom")
    _truncate(work / CHECKPOINTS_DIR / "ckpt-3")
    checkpoints = work / CHECKPOINTS_DIR
    with pytest.raises(
        RunError,
        match=rf"None of the checkpoints in {checkpoints} can be read \("
        rf"{checkpoints / 'ckpt-3'}: .*\)\. Delete {checkpoints} to start the run over\.",
    ):
        with partial_run(output, CONFIG):
            pass
    assert (work / CHECKPOINTS_DIR / "ckpt-3.index").exists()  # nothing deleted: the user decides


@pytest.mark.slow
def test_ctrl_c_while_exporting_after_training_keeps_the_run_and_the_rerun_only_exports(
    cli_runs, tmp_path, monkeypatch, caplog
):
    write_warmup = warmup.write_warmup_requests

    def interrupted(*args, **kwargs):  # Ctrl-C arrives while the SavedModel is being written
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
        return write_warmup(*args, **kwargs)

    monkeypatch.setattr(warmup, "write_warmup_requests", interrupted)
    # Ctrl-C raises KeyboardInterrupt, as in a terminal, whatever handler an earlier test in this worker left.
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    caplog.set_level(logging.INFO, logger="tfrec_pipelines")
    output = tmp_path / "run"
    work = partial_directory(output)
    with pytest.raises(
        TrainingInterrupted,
        match=re.escape(
            f"Interrupted after training, while evaluating and exporting; the trained run is kept in {work}: "
            "rerun the same command to evaluate and export it (training is not repeated)."
        ),
    ):
        train(CONFIG, output, verbose=0)
    assert "Training finished: evaluating and exporting the run." in caplog.text
    assert not output.exists() and (work / CHECKPOINTS_DIR).is_dir()
    assert not list((work / "export").rglob(".tmp-*"))
    monkeypatch.undo()
    signal.signal(signal.SIGINT, previous_handler)
    caplog.clear()
    result = train(CONFIG, output, verbose=0)
    step, left = RESUMED.search(caplog.text).group(1, 6)
    assert int(left) == 0 and int(step) == 3 * cli_runs["per_epoch"]
    assert result.export_path == output / "export" / "tfrec_towers" / "1" and not work.exists()
    _assert_same_run(output, cli_runs["root"] / "reference")

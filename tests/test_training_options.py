"""``training.steps_per_execution`` and ``training.jit_compile`` train the same model as the default step.

The reference is Keras's plain loop (one step per call, no XLA) on the same seeded batches: several
steps per call must give bit-equal weights and history, with checkpoints and collapse checks at the
first call end on or after each step they are due, and a run resumed from such a checkpoint must end
where the uninterrupted run ends; the XLA-compiled parts must agree to float32 rounding.
"""

import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_config, trainable
from tfrec_pipelines.checkpointing import latest_checkpoint
from tfrec_pipelines.train import collapse_monitor, fit_model
from tfrec_towers.config import ConfigError, TrainingConfig
from tfrec_towers.schedules import crosses_multiple
from tfrec_towers.xla import compiled

pytestmark = pytest.mark.slow  # every check trains a few tiny models

# 1,320 training examples in batches of 128: 11 steps per epoch (10 full and one of 40), 22 in all.
BASE = (
    "loss.mixed_negatives=16",
    "loss.memory_bank_size=64",
    "training.epochs=2",
    "training.checkpoint_every_steps=3",
    "training.collapse_check_every_steps=3",
)


def _state(model):
    return [v.numpy() for v in model.variables] + [v.numpy() for v in model.optimizer.variables]


class _Watch(tf.keras.callbacks.Callback):
    """Records the step of every checkpoint written (read after the checkpointing callback acted) and
    raises at the first batch end at or after global step ``crash_at``."""

    def __init__(self, directory, crash_at=None):
        super().__init__()
        self.directory, self.crash_at, self.saved = directory, crash_at, []

    def _record(self):
        found = latest_checkpoint(self.directory)
        if found is not None and (not self.saved or self.saved[-1] != found[1]):
            self.saved.append(found[1])

    def on_train_batch_end(self, batch, logs=None):
        self._record()
        if self.crash_at is not None and int(self.model.optimizer.iterations.numpy()) >= self.crash_at:
            raise RuntimeError("crash")

    def on_epoch_end(self, epoch, logs=None):
        self._record()


def _run(directory, *overrides, crash_at=None):
    """``(model, history, collapse-check steps, checkpoint steps)`` of a run of ``BASE`` + ``overrides``
    (built by ``build_model``, as ``train`` builds it)."""
    config = tiny_config(*BASE, *overrides)
    make_model, columns, data = trainable(config)
    model = make_model()
    monitor = collapse_monitor(model, columns, config.training, data)
    watch = _Watch(directory, crash_at)
    history, _, _ = fit_model(model, columns, config.training, 0, [monitor, watch], checkpoints=directory)
    return model, history, [c.step for c in monitor.checks], watch.saved


@pytest.fixture(scope="module")
def one_step_per_call(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("one") / "checkpoints")


def test_crosses_multiple_is_due_once_per_multiple_passed():
    assert crosses_multiple(0, 3, 3) and crosses_multiple(2, 3, 3) and crosses_multiple(0, 4, 3)
    assert crosses_multiple(4, 8, 3) and crosses_multiple(11, 15, 3)  # 12 and 15 passed: due once
    assert not crosses_multiple(3, 5, 3) and not crosses_multiple(0, 2, 3)
    assert not crosses_multiple(0, 100, 0)  # 0: off


def test_the_plain_loop_checkpoints_and_checks_at_every_third_step(one_step_per_call):
    _, history, checks, saved = one_step_per_call
    assert len(history["loss"]) == 2
    assert checks == [3, 6, 9, 11, 12, 15, 18, 21, 22]  # every third global step, and the epoch ends 11 and 22
    assert saved == [3, 6, 9, 11, 12, 15, 18, 21, 22]


def test_several_steps_per_call_give_the_same_weights_history_and_due_points(one_step_per_call, tmp_path):
    model, history, checks, saved = _run(tmp_path / "checkpoints", "training.steps_per_execution=4")
    reference, expected_history, _, _ = one_step_per_call
    assert history == expected_history
    for got, expected in zip(_state(model), _state(reference), strict=True):
        np.testing.assert_array_equal(got, expected)
    # Calls end at steps 4, 8, 11 (the epoch's last 3), 15, 19, 22: each schedule acts at the first call end
    # on or after a step it is due.
    assert checks == [4, 8, 11, 15, 19, 22]
    assert saved == [4, 8, 11, 15, 19, 22]


def test_a_run_of_several_steps_per_call_resumes_from_its_mid_epoch_checkpoint_to_the_same_end(
    one_step_per_call, tmp_path
):
    directory = tmp_path / "checkpoints"
    with pytest.raises(RuntimeError, match="crash"):
        _run(directory, "training.steps_per_execution=4", crash_at=8)
    assert latest_checkpoint(directory)[1] == 8  # the call ending at step 8 saved (6 was due), then the crash
    # Resumes after batch 8 of epoch 1: one call of the epoch's last 3 steps, then epoch 2.
    model, history, _, saved = _run(directory, "training.steps_per_execution=4")
    assert saved == [8, 11, 15, 19, 22]  # the checkpoint it resumed from, then its own
    reference, expected_history, _, _ = one_step_per_call
    assert history == expected_history
    for got, expected in zip(_state(model), _state(reference), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_xla_compiled_parts_train_the_same_model_to_float32_rounding(one_step_per_call, tmp_path):
    model, history, _, _ = _run(tmp_path / "checkpoints", "training.jit_compile=true")
    assert model.xla_training
    reference, expected_history, _, _ = one_step_per_call
    np.testing.assert_allclose(history["loss"], expected_history["loss"], rtol=1e-5)
    for got, expected in zip(_state(model), _state(reference), strict=True):
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        else:  # ids, counts, step counters
            np.testing.assert_array_equal(got, expected)
    # The compiled parts ran: each tower's head, the history encoder and the loss's mode were traced for XLA.
    parts = [
        (model.query_tower, "_head"),
        (model.candidate_tower, "_head"),
        (model.query_tower.history_encoder, "__call__"),
        (model.task.mode, "__call__"),
    ]
    traced = [compiled(owner, method).experimental_get_tracing_count() for owner, method in parts]
    assert all(count >= 1 for count in traced), traced
    # Inference runs as TensorFlow ops: an inference call traces no compiled part.
    _, columns, _ = trainable(tiny_config(*BASE))
    batch = {f.name: tf.constant(columns[f.name][:4]) for f in model.query_tower.features}
    model.query_tower(batch, training=False)
    assert [compiled(owner, method).experimental_get_tracing_count() for owner, method in parts] == traced


def test_steps_per_execution_must_be_positive():
    with pytest.raises(ConfigError, match=r"`training.steps_per_execution` must be positive. Received: 0"):
        TrainingConfig(steps_per_execution=0)
    with pytest.raises(ConfigError, match=r"`training.steps_per_execution`=4 needs `training.distribute: none`"):
        TrainingConfig(steps_per_execution=4, distribute="mirrored")
    defaults = TrainingConfig()
    assert (defaults.steps_per_execution, defaults.jit_compile) == (1, False)

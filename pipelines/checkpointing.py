"""Resumable training: checkpoints on a schedule, resumption after a kill, clean stops on Ctrl-C and NaN.

A run in progress is written to ``<output.parent>/.<output.name>.partial/`` (:func:`partial_run`):
``config.json`` first, then ``checkpoints/``, a ``tf.train.CheckpointManager`` keeping the last
:data:`MAX_TO_KEEP` checkpoints. Each holds the model (the towers and the loss's state: memory
bank, frequency estimator, mixed-negative draw counter), the optimizer (slots, iteration count)
and a :class:`TrainingProgress` (the global step, the history of the finished epochs).

The data position is the global step: epoch ``e`` visits the examples in an order that depends
only on ``(seed, e)`` (:func:`pipelines.dataset.epoch_batches`), so step ``s`` is batch ``s mod S``
of epoch ``⌊s / S⌋`` (``S`` steps per epoch) and a resumed run trains on exactly the batches the
uninterrupted run would have. Rerunning the same command after a crash or ``kill -9`` resumes
from the latest checkpoint; a different configuration is refused, naming the keys that differ.

:class:`ResumableTraining` is the Keras callback that saves on the schedule (every
``training.checkpoint_every_steps`` steps, every ``training.checkpoint_every_seconds`` seconds and
at every epoch end), stops at a non-finite loss without saving it, and on SIGINT finishes the
batch, saves and stops; :func:`fit_resumably` runs ``model.fit`` with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from pipelines.data import num_rows
from pipelines.dataset import epoch_batches, steps_per_epoch
from tfrec_towers.config import ExperimentConfig, TrainingConfig, config_to_dict

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"  # inside the .partial directory; removed once the run has succeeded
MAX_TO_KEEP = 2


class RunError(RuntimeError):
    """A run directory is missing, incomplete, already holds a run, or cannot be resumed; or training diverged."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped training after writing a checkpoint: rerunning the same command resumes."""


def partial_directory(output: str | Path) -> Path:
    """Where the run of ``output`` is written until it succeeds: ``<output.parent>/.<output.name>.partial``."""
    output = Path(output)
    return output.parent / f".{output.name}.partial"


def latest_checkpoint(directory: str | Path) -> Optional[Tuple[str, int]]:
    """``(path, step)`` of the newest checkpoint in ``directory``, or None if it holds none."""
    path = tf.train.latest_checkpoint(str(directory)) if Path(directory).is_dir() else None
    return (path, int(path.rsplit("-", 1)[1])) if path else None


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> List[str]:
    """The dotted keys whose values differ between two nested configuration mappings."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        path = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differences += config_differences(a, b, f"{path}.")
        elif a != b or (key in saved) != (key in current):
            differences.append(path)
    return differences


@contextlib.contextmanager
def partial_run(output: str | Path, config: ExperimentConfig, keep: Sequence[str] = ()) -> Iterator[Path]:
    """The in-progress directory of the run ``output``: new, or resumed; locked while the run lives.

    A directory left by a run of the same configuration is resumed: its ``config.json``,
    ``checkpoints/`` and the entries named in ``keep`` stay, whatever else the failed run wrote is
    removed. One that holds no checkpoint is emptied. On an exception from the ``with`` body the
    directory is kept if it holds a checkpoint (rerun the same command to resume, a warning says
    so) and deleted otherwise.

    Args:
      output: the run directory the caller renames the yielded directory to once all went well.
      config: the resolved configuration, saved as ``config.json`` in a new directory.
      keep: names of entries a resumed run continues (e.g. TensorBoard logs).

    Yields:
      ``<output.parent>/.<output.name>.partial``.

    Raises:
      RunError: another process is writing the same run; or the directory holds checkpoints of a
        run with another configuration (the message names the keys).
    """
    work = partial_directory(output)
    work.mkdir(exist_ok=True)
    lock = os.open(work, os.O_RDONLY)  # an exclusive flock on the directory, released on exit or kill
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"Another process is writing the run {output} (into {work}); choose another --output.") from None
        _prepare(work, config, keep)
        try:
            yield work
        except BaseException:
            kept = latest_checkpoint(work / CHECKPOINTS_DIR)
            if kept is None:
                shutil.rmtree(work, ignore_errors=True)
            else:
                logger.warning("The unfinished run is kept in %s (checkpoint at step %d): rerun the same command to resume.",
                               work, kept[1])
            raise
    finally:
        os.close(lock)


def _prepare(work: Path, config: ExperimentConfig, keep: Sequence[str]) -> None:
    """Checks that ``work``'s checkpoints were made with ``config``, or starts it afresh with ``config.json``."""
    current = json.loads(json.dumps(config_to_dict(config)))
    resumable = latest_checkpoint(work / CHECKPOINTS_DIR) is not None
    if resumable:
        try:
            saved = json.loads((work / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise RunError(f"{work} holds checkpoints but no readable {CONFIG_FILE} ({error}): delete it to start over.") from None
        differences = config_differences(saved, current)
        if differences:
            raise RunError(
                f"{work} holds an unfinished run with another configuration (differing keys: {', '.join(differences)}). "
                "Rerun with the same configuration to resume it, or delete that directory to start over."
            )
    for stale in work.iterdir():
        if not resumable or stale.name not in (CONFIG_FILE, CHECKPOINTS_DIR, *keep):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    if not resumable:
        (work / CONFIG_FILE).write_text(json.dumps(current, indent=2) + "\n")


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Global step ``step`` is batch ``batch`` of epoch ``epoch`` (both 0-based): ``(epoch, batch) = divmod(step, S)``."""

    step: int
    epoch: int
    batch: int

    @classmethod
    def of(cls, step: int, per_epoch: int) -> "DataPosition":
        return cls(step, *divmod(step, per_epoch))

    def describe(self, epochs: int, per_epoch: int) -> str:
        """E.g. ``step 7 (epoch 2 of 3, after batch 3 of 4)``, counting from 1 as Keras's progress bar does."""
        return f"step {self.step} (epoch {self.epoch + 1} of {epochs}, after batch {self.batch} of {per_epoch})"


class TrainingProgress(tf.train.experimental.PythonState):
    """The global step and the per-epoch logs of the finished epochs, saved in every checkpoint as JSON."""

    def __init__(self) -> None:
        self.step = 0
        self.history: Dict[str, List[float]] = {}

    def serialize(self) -> str:
        return json.dumps({"step": self.step, "history": self.history})

    def deserialize(self, string_value: bytes) -> None:
        values = json.loads(string_value)
        self.step, self.history = int(values["step"]), values["history"]


def _weights_are_finite(model: tf.keras.Model) -> bool:
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.trainable_variables if v.dtype.is_floating)


class ResumableTraining(tf.keras.callbacks.Callback):
    """Checkpoints on a schedule, stops at a non-finite loss, and saves then stops on Ctrl-C.

    Restores the latest checkpoint of ``restore_from`` (default ``directory``) when constructed.
    After each batch: a non-finite loss (any value of the batch's logs) stops training at that
    batch without saving (:attr:`divergence` says where); a pending Ctrl-C saves and stops
    (:attr:`stop_requested`); otherwise the schedule may save. Every epoch end saves, after adding
    the epoch's logs to :attr:`history`. A save is skipped, and training stops as diverged, if a
    weight is not finite, so no checkpoint ever holds NaN or infinite weights.

    Args:
      model: the compiled model (its optimizer is saved with it).
      directory: where the checkpoints go (``None``: no checkpoints, only the NaN stop).
      per_epoch: steps per epoch ``S``.
      epochs: the run's epochs.
      every_steps: save every this many global steps (0: off).
      every_seconds: save when this many seconds passed since the last save (0: off).
      restore_from: the checkpoints to resume from, when not ``directory`` (a non-chief worker
        resumes from the chief's and writes its own, discarded, copies).

    Raises:
      RunError: the latest checkpoint does not fit the model.
    """

    def __init__(
        self,
        model: tf.keras.Model,
        directory: Optional[Path],
        per_epoch: int,
        epochs: int,
        every_steps: int = 0,
        every_seconds: float = 0.0,
        restore_from: Optional[Path] = None,
    ) -> None:
        super().__init__()
        self.per_epoch, self.epochs = per_epoch, epochs
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.progress = TrainingProgress()
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, progress=self.progress)
        self.manager = None
        if directory is not None:
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, str(directory), max_to_keep=MAX_TO_KEEP
            )
            self._restore(restore_from or directory)
        self.start = self.step = self.progress.step
        self.divergence: Optional[str] = None
        self.stop_requested = False  # by Ctrl-C
        self._last_save = time.monotonic()

    @property
    def history(self) -> Dict[str, List[float]]:
        """The logs of every finished epoch, resumed ones included (what Keras's ``History`` holds)."""
        return self.progress.history

    def _restore(self, directory: Path) -> None:
        found = latest_checkpoint(directory)
        if found is None:
            return
        path, _ = found
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise RunError(f"The checkpoint {path} does not fit this model ({error}); delete {directory} to start over.") from None
        total = self.epochs * self.per_epoch
        logger.info("Resuming from %s of %s: %d of %d steps left.",
                    DataPosition.of(self.progress.step, self.per_epoch).describe(self.epochs, self.per_epoch),
                    path, total - self.progress.step, total)

    def last_checkpoint(self) -> str:
        """The newest checkpoint as words for a message: its path and step, or that there is none."""
        found = latest_checkpoint(self.manager.directory) if self.manager is not None else None
        if found is None:
            return "No checkpoint was written before it."
        return f"The last good checkpoint is {found[0]} (step {found[1]})."

    def _diverge(self, what: str) -> None:
        epoch = DataPosition.of(self.step - 1, self.per_epoch).epoch + 1
        self.divergence = (
            f"Training diverged at step {self.step} (epoch {epoch}): {what}. {self.last_checkpoint()} "
            "Lower `training.learning_rate` or raise `model.temperature`."
        )
        self.model.stop_training = True

    def _save(self) -> None:
        if self.manager is None:
            return
        if not _weights_are_finite(self.model):
            self._diverge("the weights became NaN or infinite")
            return
        self.progress.step = self.step
        self.manager.save(checkpoint_number=self.step)
        self._last_save = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self.step += 1
        values = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            self._diverge(", ".join(f"{k} = {v}" for k, v in bad.items() if k == "loss" or "loss" not in bad))
            return
        if self.stop_requested:
            self.model.stop_training = True
        due = (self.every_steps and self.step % self.every_steps == 0) or (
            self.every_seconds and time.monotonic() - self._last_save >= self.every_seconds
        )
        if self.step % self.per_epoch and (self.stop_requested or due):  # an epoch's last batch saves in on_epoch_end
            self._save()

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        if self.divergence is not None or self.step % self.per_epoch:
            return
        for key, value in (logs or {}).items():
            self.progress.history.setdefault(key, []).append(float(value))
        self._save()

    @contextlib.contextmanager
    def catching_sigint(self) -> Iterator[None]:
        """While the body runs, Ctrl-C asks to stop after the current batch (a second one stops at once).

        Only with checkpoints and in the main thread (where Python delivers signals); the previous
        handler is back afterwards.
        """
        if self.manager is None or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_requested:
                signal.default_int_handler(signum, frame)
            self.stop_requested = True
            logger.warning("Interrupt: finishing the current batch and writing a checkpoint (Ctrl-C again stops at once).")

        signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def fit_resumably(
    model: tf.keras.Model,
    features: Mapping[str, np.ndarray],
    training: TrainingConfig,
    checkpoints: Optional[Path] = None,
    verbose: int = 1,
    callbacks: Sequence[tf.keras.callbacks.Callback] = (),
    restore_from: Optional[Path] = None,
) -> Tuple[Dict[str, List[float]], int]:
    """``model.fit`` for ``training.epochs`` epochs of :func:`~pipelines.dataset.epoch_batches`, resumable.

    Resumes from the latest checkpoint of ``restore_from`` or ``checkpoints`` (if any). A run
    resumed mid-epoch fits that epoch's remaining batches first, then the later epochs: two
    ``model.fit`` calls, so Keras's epoch boundaries stay the data's.

    Args:
      model: the compiled model.
      features: the training examples.
      training: epochs, batch size, seed and the checkpoint schedule; under ``multi_worker``
        time-based saves are off (workers must save at the same steps).
      checkpoints: the checkpoint directory (``None``: no checkpoints, no Ctrl-C handling).
      verbose: Keras's verbosity.
      callbacks: Keras callbacks, called after the checkpointing one.
      restore_from: see :class:`ResumableTraining`.

    Returns:
      ``(history, steps)``: the logs of every epoch (``{name: [value per epoch]}``), and the steps
      trained by this call.

    Raises:
      TrainingInterrupted: Ctrl-C stopped training; the message names the checkpoint.
      RunError: the loss or the weights became NaN or infinite (training stops at that batch;
        the message names the last good checkpoint), or the checkpoint does not fit the model.
    """
    per_epoch = steps_per_epoch(num_rows(features), training.batch_size)
    every_seconds = 0.0 if training.distribute == "multi_worker" else training.checkpoint_every_seconds
    with model.distribute_strategy.scope():
        resumable = ResumableTraining(
            model, checkpoints, per_epoch, training.epochs, training.checkpoint_every_steps, every_seconds, restore_from
        )
    start = DataPosition.of(resumable.start, per_epoch)
    segments = []  # (first step, first epoch, last epoch + 1, steps per Keras epoch)
    if start.batch:
        segments.append((start.step, start.epoch, start.epoch + 1, per_epoch - start.batch))
    first_full = start.epoch + (1 if start.batch else 0)
    if first_full < training.epochs:
        segments.append((first_full * per_epoch, first_full, training.epochs, per_epoch))
    with resumable.catching_sigint():
        for first_step, first_epoch, end_epoch, steps in segments:
            dataset = epoch_batches(features, training.batch_size, seed=training.seed, epochs=end_epoch, start_step=first_step)
            model.fit(dataset, epochs=end_epoch, initial_epoch=first_epoch, steps_per_epoch=steps, verbose=verbose,
                      callbacks=[resumable, *callbacks])
            if model.stop_training:
                break
    if resumable.divergence is not None:
        raise RunError(resumable.divergence)
    if resumable.stop_requested:  # also when Ctrl-C came after the last batch: its epoch-end checkpoint is the latest
        raise TrainingInterrupted(
            f"Interrupted at step {resumable.step}; checkpoint written to {latest_checkpoint(checkpoints)[0]}; "
            "rerun the same command to resume."
        )
    return resumable.history, resumable.step - resumable.start

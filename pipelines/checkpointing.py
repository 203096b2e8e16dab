"""Resumable training: checkpoints on a schedule, resumption after a kill, clean stops on Ctrl-C and NaN.

A run in progress is written to its ``.partial`` directory (:mod:`tfrec_pipelines.run_directory`):
``config.json`` first, then ``checkpoints/``, a ``tf.train.CheckpointManager`` keeping the last
:data:`MAX_TO_KEEP` checkpoints. Each holds the model (the towers and the loss's state: memory
bank, frequency estimator, mixed-negative draw counter, the softmax-to-hinge step counter), the
optimizer (slots, iteration count) and a :class:`TrainingProgress` (the global step, the history of
the finished epochs).

The data position is the global step: epoch ``e`` visits the examples in an order that depends
only on ``(seed, e)`` (:func:`tfrec_pipelines.dataset.epoch_batches`), so step ``s`` is batch ``s mod S``
of epoch ``⌊s / S⌋`` (``S`` steps per epoch) and a resumed run trains on exactly the batches the
uninterrupted run would have. Rerunning the same command after a crash or ``kill -9`` resumes
from the latest checkpoint (or, if that one cannot be read, from the newest one that can, with a
warning naming the one skipped); a different configuration is refused, naming the keys that differ.

:class:`ResumableTraining` is the Keras callback that saves on the schedule (every
``training.checkpoint_every_steps`` steps, every ``training.checkpoint_every_seconds`` seconds and
at every epoch end), stops at a non-finite loss without saving it, and on SIGINT finishes the
batch, saves and stops; :func:`fit_resumably` runs ``model.fit`` with it. With a collapse monitor
that stops on a collapse (``training.stop_on_collapse``, :mod:`tfrec_towers.collapse`), every save
first checks the weights and a collapse stops training unsaved, so the last checkpoint is the last
good one. With early stopping
(:class:`~tfrec_pipelines.validation.EarlyStopping`) it also stops when the validation metric of the
history has stopped improving, keeps the best epoch's model in ``checkpoints/best/`` and ends
training with it; a resumed run re-derives the decision from the checkpoint's history.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph

from tfrec_pipelines.data import DataError, HistoryWindows, TrainingExamples, num_rows
from tfrec_pipelines.dataset import epoch_batches, steps_per_epoch
from tfrec_pipelines.run_errors import RunError, TrainingInterrupted
from tfrec_pipelines.validation import EarlyStopping
from tfrec_towers.atomic_file import write_text_atomically
from tfrec_towers.collapse import ADVICE as COLLAPSE_ADVICE
from tfrec_towers.collapse import CollapseMonitor
from tfrec_towers.config import TrainingConfig
from tfrec_towers.export import placeholder_features
from tfrec_towers.features import input_signature
from tfrec_towers.schedules import LearningRateHistory, crosses_multiple

logger = logging.getLogger(__name__)

MAX_TO_KEEP = 2
BEST_DIR = "best"  # inside checkpoints/: the best epoch's model under early stopping, `epoch-<N>`
TOWERS = ("query_tower", "candidate_tower")
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"  # the object graph every tf.train.Checkpoint holds


def _step(path: str) -> int:
    return int(path.rsplit("-", 1)[1])


def latest_checkpoint(directory: str | Path) -> Optional[Tuple[str, int]]:
    """``(path, step)`` of the newest checkpoint in ``directory``, or None if it holds none."""
    path = tf.train.latest_checkpoint(str(directory)) if Path(directory).is_dir() else None
    return (path, _step(path)) if path else None


def _unreadable(path: str) -> Optional[str]:
    """Why the checkpoint ``path`` cannot be read (every value is read, its checksum checked), or None."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (IndexError, ValueError, OSError, tf.errors.OpError) as error:  # e.g. "Read less bytes than requested"
        return f"{type(error).__name__}: {error}"
    return None


def _forget(directory: Path, skipped: Sequence[str], newest: str) -> None:
    """Drops the ``skipped`` checkpoints from the manager's list in ``directory`` (their files stay,
    unused), making ``newest`` the latest; the list file is replaced atomically."""
    state = tf.train.get_checkpoint_state(str(directory))
    paths, stamps = list(state.all_model_checkpoint_paths), list(state.all_model_checkpoint_timestamps)
    keep = [i for i, path in enumerate(paths) if path not in skipped]
    del state.all_model_checkpoint_paths[:], state.all_model_checkpoint_timestamps[:]
    state.all_model_checkpoint_paths.extend(paths[i] for i in keep)
    if len(stamps) == len(paths):
        state.all_model_checkpoint_timestamps.extend(stamps[i] for i in keep)
    state.model_checkpoint_path = newest
    # "checkpoint" is the name tf.train.CheckpointManager keeps its list under
    write_text_atomically(directory / "checkpoint", text_format.MessageToString(state))


def newest_readable_checkpoint(directory: str | Path, forget_unreadable: bool = False) -> Optional[Tuple[str, int]]:
    """``(path, step)`` of the newest checkpoint of ``directory`` that can be read, or None if it holds none.

    The checkpoints are tried newest first; each one that cannot be read (a file truncated by a
    full disk or a kill while it was written) is skipped with a warning naming it and why.

    Args:
      directory: a ``tf.train.CheckpointManager`` directory.
      forget_unreadable: also drop the skipped checkpoints from the manager's list, so that the
        resumed run's messages and its ``max_to_keep`` count only the readable ones (for the
        directory the run writes to, not one it only reads).

    Raises:
      RunError: ``directory`` lists checkpoints but none of them can be read (names each and why).
    """
    state = tf.train.get_checkpoint_state(str(directory)) if Path(directory).is_dir() else None
    if state is None or not state.model_checkpoint_path:
        return None
    paths = list(dict.fromkeys([*state.all_model_checkpoint_paths, state.model_checkpoint_path]))[::-1]
    reasons: Dict[str, str] = {}
    for path in paths:
        reason = _unreadable(path)
        if reason is None:
            if reasons and forget_unreadable:
                _forget(Path(directory), list(reasons), path)
            return path, _step(path)
        reasons[path] = reason
        logger.warning("Skipping the checkpoint %s: it cannot be read (%s).", path, reason)
    raise RunError(
        f"None of the checkpoints in {directory} can be read ("
        + "; ".join(f"{path}: {reason}" for path, reason in reasons.items())
        + f"). Delete {directory} to start the run over."
    )


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

    Restores the newest readable checkpoint of ``restore_from`` (default ``directory``) when
    constructed (:func:`newest_readable_checkpoint`: unreadable ones are skipped with a warning).
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
      early_stopping: after each epoch's logs are added to :attr:`history` (they must hold its
        metric: put the validation callback before this one), keep the model if the epoch is the
        best so far (``directory/best/epoch-<N>``, or in memory without ``directory``) and stop
        training when it says so; :meth:`restore_best` then restores the best epoch's model.
      collapse: the run's collapse monitor (put it before this callback). With its
        ``stop_on_collapse``, every save first checks the weights (:meth:`CollapseMonitor.check`)
        and a collapse found by any check stops training without saving (:attr:`collapsed` says
        where), so no checkpoint holds weights a check found collapsed.

    Raises:
      RunError: the checkpoint to resume does not fit the model, or none can be read.
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
        early_stopping: Optional[EarlyStopping] = None,
        collapse: Optional[CollapseMonitor] = None,
    ) -> None:
        super().__init__()
        self.per_epoch, self.epochs = per_epoch, epochs
        self.early_stopping = early_stopping
        self.collapse = collapse
        self.collapsed: Optional[str] = None  # why the collapse monitor stopped training
        self._model = model
        self._best_weights: Optional[List[np.ndarray]] = None  # without a directory
        self._best_dirs = [d / BEST_DIR for d in (directory, restore_from) if d is not None]
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.progress = TrainingProgress()
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, progress=self.progress)
        self.manager = None
        if directory is not None:
            self._restore(restore_from or directory, own=restore_from is None)
            self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=MAX_TO_KEEP)
        self.start = self.step = self.progress.step
        self.divergence: Optional[str] = None
        self.stop_requested = False  # by Ctrl-C
        self._epoch_batches = 0
        self._last_save = time.monotonic()

    @property
    def history(self) -> Dict[str, List[float]]:
        """The logs of every finished epoch, resumed ones included (what Keras's ``History`` holds)."""
        return self.progress.history

    def _restore(self, directory: Path, own: bool) -> None:
        found = newest_readable_checkpoint(directory, forget_unreadable=own)
        if found is None:
            return
        path, _ = found
        try:
            # Values of objects not built yet (optimizer slots) are restored when they are created.
            self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise RunError(
                f"The checkpoint {path} does not fit this model ({error}); delete {directory} to start over."
            ) from None
        total = self.epochs * self.per_epoch
        logger.info(
            "Resuming from %s of %s: %d of %d steps left.",
            DataPosition.of(self.progress.step, self.per_epoch).describe(self.epochs, self.per_epoch),
            path,
            total - self.progress.step,
            total,
        )

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

    def _collapse_stops(self) -> bool:
        """Whether the collapse monitor stopped training (then :attr:`collapsed` says where and what to change)."""
        stopping = None if self.collapse is None else self.collapse.stopping
        if stopping is not None and self.collapsed is None:
            self.collapsed = (
                f"Training collapsed at {stopping.describe()}. The collapsed weights were not saved. "
                f"{self.last_checkpoint()} {COLLAPSE_ADVICE} (With `training.stop_on_collapse: false` training "
                "goes on and the collapse is only reported.)"
            )
            self.model.stop_training = True
        return stopping is not None

    def _save(self) -> None:
        if self.manager is None:
            return
        if not _weights_are_finite(self.model):
            self._diverge("the weights became NaN or infinite")
            return
        if self.collapse is not None and self.collapse.stop_on_collapse:
            self.collapse.check(self.step)
        if self._collapse_stops():
            return
        self.progress.step = self.step
        self.manager.save(checkpoint_number=self.step)
        self._last_save = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self._epoch_batches = 0  # batches of this Keras epoch already counted

    def on_train_batch_end(self, batch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        """After a call of the training function: ``batch`` is the last of its
        ``training.steps_per_execution`` batches (one by default)."""
        previous, self.step = self.step, self.step + batch + 1 - self._epoch_batches
        self._epoch_batches = batch + 1
        values = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            self._diverge(", ".join(f"{k} = {v}" for k, v in bad.items() if k == "loss" or "loss" not in bad))
            return
        if self._collapse_stops():
            return
        if self.stop_requested:
            self.model.stop_training = True
        due = crosses_multiple(previous, self.step, self.every_steps) or (
            self.every_seconds and time.monotonic() - self._last_save >= self.every_seconds
        )
        if self.step % self.per_epoch and (self.stop_requested or due):  # an epoch's last batch saves in on_epoch_end
            self._save()

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        if self.divergence is not None or self._collapse_stops() or self.step % self.per_epoch:
            return
        for key, value in (logs or {}).items():
            self.progress.history.setdefault(key, []).append(float(value))
        if self.early_stopping is not None:
            best, stop = self.early_stopping.decide(self.progress.history)
            finished = len(self.progress.history[self.early_stopping.metric])
            if best == finished - 1:
                self._keep_best(best)
            if stop:
                if best is None:  # no epoch gave a value to compare
                    logger.info(
                        "Early stopping after epoch %d: %s is not a number in any epoch.",
                        finished,
                        self.early_stopping.metric,
                    )
                else:
                    logger.info(
                        "Early stopping after epoch %d: %s has not improved since epoch %d.",
                        finished,
                        self.early_stopping.metric,
                        best + 1,
                    )
                self.model.stop_training = True
        self._save()

    def stopped_early(self) -> bool:
        """Whether early stopping has ended training, by the history of the finished epochs."""
        return self.early_stopping is not None and self.early_stopping.decide(self.progress.history)[1]

    def _keep_best(self, epoch: int) -> None:
        """Keeps the model of ``epoch`` (0-based), the best so far: a file beside the checkpoints, or in memory."""
        if self.manager is None:
            self._best_weights = self._model.get_weights()
            return
        best = Path(self.manager.directory) / BEST_DIR
        tf.train.Checkpoint(model=self._model).write(str(best / f"epoch-{epoch + 1}"))
        for stale in best.glob("epoch-*"):
            if not stale.name.startswith(f"epoch-{epoch + 1}."):
                stale.unlink()

    def restore_best(self) -> None:
        """Restores the best epoch's model (under early stopping, once there is a best epoch).

        Raises:
          RunError: the best epoch's model was not kept (its file is missing).
        """
        if self.early_stopping is None:
            return
        best, _ = self.early_stopping.decide(self.progress.history)
        if best is None:
            return
        if self._best_weights is not None:
            self._model.set_weights(self._best_weights)
            return
        for directory in self._best_dirs:
            path = directory / f"epoch-{best + 1}"
            if Path(f"{path}.index").exists():
                tf.train.Checkpoint(model=self._model).read(str(path)).expect_partial()
                logger.info("Restored the model of epoch %d, the best by %s.", best + 1, self.early_stopping.metric)
                return
        raise RunError(
            f"The model of epoch {best + 1}, the best by {self.early_stopping.metric}, is not in "
            f"{' or '.join(str(d) for d in self._best_dirs) or 'memory'}; delete the run's checkpoints to start over."
        )

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
            logger.warning(
                "Interrupt: finishing the current batch and writing a checkpoint (Ctrl-C again stops at once)."
            )

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
    epoch_callbacks: Sequence[tf.keras.callbacks.Callback] = (),
    early_stopping: Optional[EarlyStopping] = None,
    collapse: Optional[CollapseMonitor] = None,
    lengths: Optional[np.ndarray] = None,
) -> Tuple[Dict[str, List[float]], int]:
    """``model.fit`` for ``training.epochs`` epochs of :func:`training_batches`, resumable.

    Resumes from the newest readable checkpoint of ``restore_from`` or ``checkpoints`` (if any). A run
    resumed mid-epoch fits that epoch's remaining batches first, then the later epochs: two
    ``model.fit`` calls, so Keras's epoch boundaries stay the data's.

    Args:
      model: the compiled model.
      features: the training examples (a feature dictionary or :class:`~tfrec_pipelines.data.TrainingExamples`).
      training: epochs, batch size, seed and the checkpoint schedule; under ``multi_worker``
        time-based saves are off (workers must save at the same steps).
      checkpoints: the checkpoint directory (``None``: no checkpoints, no Ctrl-C handling).
      verbose: Keras's verbosity.
      callbacks: Keras callbacks, called after the checkpointing one.
      restore_from: see :class:`ResumableTraining`.
      epoch_callbacks: Keras callbacks called before the checkpointing one, so the logs they add
        at an epoch's end (validation metrics) are in the saved history.
      early_stopping: stop when its metric (added by an ``epoch_callbacks`` one) stops improving
        and end with the best epoch's model; a resumed run that had stopped trains no further.
      collapse: a :class:`~tfrec_towers.collapse.CollapseMonitor`, called after ``epoch_callbacks``
        (its values reach the saved history); with its ``stop_on_collapse`` a collapse stops
        training without saving the collapsed weights (see :class:`ResumableTraining`).
      lengths: each example's length, to batch similar lengths together
        (``training.group_by_length``: :func:`~tfrec_pipelines.dataset.length_grouped_order`).

    Returns:
      ``(history, steps)``: the logs of every epoch (``{name: [value per epoch]}``, the rate of each
      epoch's last step as ``learning_rate``: :class:`~tfrec_towers.schedules.LearningRateHistory`), and the steps
      trained by this call. The towers hold the trained weights (the best epoch's under early
      stopping), also when a finished run was resumed with nothing left to train.

    Raises:
      TrainingInterrupted: Ctrl-C stopped training; the message names the checkpoint.
      RunError: the loss or the weights became NaN or infinite (training stops at that batch;
        the message names the last good checkpoint), or the checkpoint does not fit the model, or
        no checkpoint of the directory can be read, or (with ``collapse.stop_on_collapse``) the
        model collapsed (the message says at which step, the values, the last good checkpoint and
        what to change).
    """
    per_epoch = steps_per_epoch(num_rows(features), training.batch_size)
    every_seconds = 0.0 if training.distribute == "multi_worker" else training.checkpoint_every_seconds
    with model.distribute_strategy.scope():
        resumable = ResumableTraining(
            model,
            checkpoints,
            per_epoch,
            training.epochs,
            training.checkpoint_every_steps,
            every_seconds,
            restore_from,
            early_stopping,
            collapse,
        )
    start = DataPosition.of(resumable.start, per_epoch)
    segments = []  # (first step, first epoch, last epoch + 1, steps per Keras epoch)
    if start.batch:
        segments.append((start.step, start.epoch, start.epoch + 1, per_epoch - start.batch))
    first_full = start.epoch + (1 if start.batch else 0)
    if first_full < training.epochs:
        segments.append((first_full * per_epoch, first_full, training.epochs, per_epoch))
    if resumable.stopped_early():  # the run being resumed had stopped: it ends as it would have
        segments = []
    if not segments:  # nothing left to train: the restored weights reach the towers when they are built
        create_tower_variables(model)
    with resumable.catching_sigint():
        for first_step, first_epoch, end_epoch, steps in segments:
            dataset = training_batches(
                features,
                training.batch_size,
                seed=training.seed,
                epochs=end_epoch,
                start_step=first_step,
                lengths=lengths,
            )
            model.fit(
                dataset,
                epochs=end_epoch,
                initial_epoch=first_epoch,
                steps_per_epoch=steps,
                verbose=verbose,
                callbacks=[
                    *epoch_callbacks,
                    *([] if collapse is None else [collapse]),
                    LearningRateHistory(),
                    resumable,
                    *callbacks,
                ],
            )
            if model.stop_training:
                break
    if resumable.divergence is not None:
        raise RunError(resumable.divergence)
    if resumable.collapsed is not None:
        raise RunError(resumable.collapsed)
    # Ctrl-C is caught only with checkpoints; also when it came after the last batch: its epoch-end checkpoint is the latest
    if resumable.stop_requested and checkpoints is not None:
        written = latest_checkpoint(checkpoints)
        raise TrainingInterrupted(
            f"Interrupted at step {resumable.step}; checkpoint written to {written[0] if written else checkpoints}; "
            "rerun the same command to resume."
        )
    resumable.restore_best()
    return resumable.history, resumable.step - resumable.start


def training_batches(
    features: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    seed: int,
    epochs: int,
    start_step: int = 0,
    lengths: Optional[np.ndarray] = None,
) -> tf.data.Dataset:
    """The batches training reads: :func:`~tfrec_pipelines.dataset.epoch_batches` of ``features``.

    :class:`~tfrec_pipelines.data.TrainingExamples` are not built whole: their per-example indexes are
    batched (the same rows in the same order), then each batch's columns are looked up in the
    tables they read (``tf.gather``), so a batch holds exactly the tensors ``epoch_batches`` of
    the built columns would give, and the pipeline holds the tables and the indexes (a few bytes
    an example) rather than a copy of every column.

    The pipeline runs without tf.data's autotuning (:func:`without_autotuning`).

    Args, Returns and Raises: those of :func:`~tfrec_pipelines.dataset.epoch_batches`.
    """
    batches = _batches(features, batch_size, seed=seed, epochs=epochs, start_step=start_step, lengths=lengths)
    return without_autotuning(batches)


def _batches(
    features: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    seed: int,
    epochs: int,
    start_step: int,
    lengths: Optional[np.ndarray],
) -> tf.data.Dataset:
    """:func:`training_batches` before its options: built columns batched whole, examples looked up."""
    if not isinstance(features, TrainingExamples):
        return epoch_batches(features, batch_size, seed=seed, epochs=epochs, start_step=start_step, lengths=lengths)
    indexes = epoch_batches(
        {str(i): index for i, index in enumerate(features.indexes)},
        batch_size,
        seed=seed,
        epochs=epochs,
        start_step=start_step,
        lengths=lengths,
    )
    tables = {}
    for name, column in features.columns.items():
        if isinstance(column, HistoryWindows):
            tables[name] = (tf.constant(column.sequence), _tensor(column.ids, name))
        elif column.table is not None:
            tables[name] = _tensor(column.table, name)

    def look_up(batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        columns = {}
        for name, column in features.columns.items():
            rows = batch[str(column.index)]
            if isinstance(column, HistoryWindows):  # [B, L]: the slots end − L … end − 1 of the sequence
                sequence, ids = tables[name]
                slots = rows[:, tf.newaxis] + tf.range(-column.width, 0, dtype=rows.dtype)
                columns[name] = tf.gather(ids, tf.gather(sequence, slots))
            else:
                columns[name] = rows if column.table is None else tf.gather(tables[name], rows)
        return columns

    return indexes.map(look_up, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with tf.data's autotuning off: its ``AUTOTUNE`` parallelism and prefetch buffers take
    tf.data's fixed defaults (parallel calls: the CPU count) instead of being tuned while it runs.

    The autotuner's background thread sleeps for a period that grows while the pipeline runs, and
    deleting the iterator (what ``fit`` does after its last step) waits until that thread wakes: seen
    here as tens of idle seconds at the end of a one-epoch ``fit`` of 947 steps, in some ``fit`` calls
    and not others. A training pipeline over in-memory columns needs no tuning: a batch is a few
    gathers, far cheaper than the training step that consumes it.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _tensor(values: np.ndarray, name: str) -> tf.Tensor:
    """A table as the tensor ``epoch_batches`` makes of a column: integers int64, floats float32, text strings."""
    if values.dtype.kind in "iu":
        return tf.constant(values, tf.int64)
    if values.dtype.kind == "f":
        return tf.constant(values, tf.float32)
    if values.dtype.kind not in "OUS":
        raise DataError(f"Column '{name}' has unsupported dtype {values.dtype}; expected integers, floats or strings.")
    try:
        return tf.constant(values, tf.string)
    except (TypeError, ValueError) as e:
        raise DataError(f"Column '{name}' must hold only strings: {e}") from None


def create_tower_variables(model: tf.keras.Model) -> None:
    """Creates the variables of ``model``'s towers (Keras makes them at the first call) by calling each
    once on placeholder rows of its ``features``; a pending checkpoint restore fills them then."""
    with model.distribute_strategy.scope():
        for tower in (model.query_tower, model.candidate_tower):
            tower(placeholder_features(input_signature(tower.features)), training=False)


def _breadth_first(
    roots: Sequence[Tuple[Any, str]], children: Callable[[Any], Iterable[Tuple[str, Any]]], key: Callable[[Any], Any]
) -> Iterator[Tuple[Any, str]]:
    """``(node, path)`` of every node reachable from ``roots``, each once, at the first path found
    breadth-first (the path ``tf.train.Checkpoint`` names it by)."""
    queue, seen = collections.deque(roots), {key(node) for node, _ in roots}
    while queue:
        node, where = queue.popleft()
        yield node, where
        for name, child in children(node):
            if key(child) not in seen:
                seen.add(key(child))
                queue.append((child, f"{where}/{name}"))


def _saved_tower_variables(path: str) -> Dict[str, List[int]]:
    """``{path: shape}`` of the towers' variables in the checkpoint of a ``model`` (its object graph)."""
    reader = tf.train.load_checkpoint(path)
    graph = TrackableObjectGraph.FromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    shapes = reader.get_variable_to_shape_map()
    model = next(c.node_id for c in graph.nodes[0].children if c.local_name == "model")
    roots = [(c.node_id, c.local_name) for c in graph.nodes[model].children if c.local_name in TOWERS]
    saved = {}
    children = lambda node: ((c.local_name, c.node_id) for c in graph.nodes[node].children)  # noqa: E731
    for node, where in _breadth_first(roots, children, int):
        for attribute in graph.nodes[node].attributes:
            if attribute.name == "VARIABLE_VALUE":
                saved[where] = list(shapes[attribute.checkpoint_key])
    return saved


def _tower_variables(model: tf.keras.Model) -> Dict[str, List[int]]:
    """``{path: shape}`` of the variables of ``model``'s towers, walked as ``tf.train.Checkpoint`` saves them."""
    view = tf.train.TrackableView
    roots = [(tower, name) for name, tower in view.children(model).items() if name in TOWERS]
    return {
        where: trackable.shape.as_list()
        for trackable, where in _breadth_first(roots, lambda t: view.children(t).items(), id)
        if isinstance(trackable, tf.Variable)
    }


def _some(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def restore_towers(model: tf.keras.Model, path: str | Path) -> None:
    """Restores the query and candidate towers of ``model`` from a checkpoint of a trained model.

    The towers are first built (:func:`create_tower_variables`), then their variables are checked
    against the checkpoint's: every variable must have a saved value of its shape, and every saved
    tower value a variable. Only the towers are read (neither the loss state nor the optimizer),
    so a model built for inference restores a trained one.

    Args:
      model: a model with ``query_tower`` and ``candidate_tower`` :class:`~tfrec_towers.towers.Tower` s.
      path: the checkpoint prefix (``tf.train.Checkpoint(model=...).write(path)``).

    Raises:
      RunError: the checkpoint cannot be read, or its towers have another structure (the message
        names the variables that differ).
    """
    create_tower_variables(model)
    try:
        saved = _saved_tower_variables(str(path))
    except (IndexError, ValueError, OSError, StopIteration, tf.errors.OpError) as error:
        raise RunError(
            f"The checkpoint {path} cannot be read as a trained model ({type(error).__name__}: {error})."
        ) from None
    live = _tower_variables(model)
    problems = []
    missing = [where for where in live if where not in saved]
    if missing:
        problems.append(f"it holds no value for {_some(missing)}")
    unexpected = [where for where in saved if where not in live]
    if unexpected:
        problems.append(f"it holds {_some(unexpected)}, which this model does not have")
    reshaped = [
        f"{where} (saved {saved[where]}, here {shape})"
        for where, shape in live.items()
        if where in saved and saved[where] != shape
    ]
    if reshaped:
        problems.append(f"it holds other shapes for {_some(reshaped)}")
    if problems:
        raise RunError(
            f"The checkpoint {path} does not fit the towers built from the run's configuration and feature spec: "
            f"{'; '.join(problems)}. The run was trained with another model structure."
        )
    towers = tf.Module()  # a root that reaches only the towers: the loss state and the optimizer stay unread
    towers.query_tower, towers.candidate_tower = model.query_tower, model.candidate_tower
    tf.train.Checkpoint(model=towers).read(str(path)).expect_partial()

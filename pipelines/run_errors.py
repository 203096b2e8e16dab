"""The errors of a run's lifecycle (the jobs floor), beside the data floor's :class:`~tfrec_pipelines.data.DataError`."""

from __future__ import annotations


class RunError(RuntimeError):
    """A run directory is missing, incomplete, already holds a run, or cannot be resumed; or training diverged."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped training after writing a checkpoint: rerunning the same command resumes."""

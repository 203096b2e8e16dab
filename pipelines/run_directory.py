"""The directory of a run in progress: ``<output.parent>/.<output.name>.partial/``, renamed to ``output`` once all went well.

:func:`partial_run` creates it (``config.json`` first), or resumes one left by a failed run of the same
configuration (checkpoints and the entries a run continues stay, the rest is removed); another
configuration is refused, naming the keys that differ (:func:`config_differences`). While a run lives
the directory is locked (``flock``), so two processes cannot write the same run. Checkpointing inside
it is :mod:`tfrec_pipelines.checkpointing`'s job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Sequence

from tfrec_pipelines.checkpointing import latest_checkpoint, newest_readable_checkpoint
from tfrec_pipelines.run_errors import RunError
from tfrec_towers.config import ExperimentConfig, config_to_dict

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"  # inside the .partial directory; removed once the run has succeeded


def partial_directory(output: str | Path) -> Path:
    """Where the run of ``output`` is written until it succeeds: ``<output.parent>/.<output.name>.partial``."""
    output = Path(output)
    return output.parent / f".{output.name}.partial"


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
    removed. One that holds no checkpoint is emptied. Checkpoints that cannot be read are skipped
    with a warning, and the newest readable one is resumed. On an exception from the ``with`` body the
    directory is kept if it holds a checkpoint (rerun the same command to resume, a warning says
    so) and deleted otherwise.

    Args:
      output: the run directory the caller renames the yielded directory to once all went well.
      config: the resolved configuration, saved as ``config.json`` in a new directory.
      keep: names of entries a resumed run continues (e.g. TensorBoard logs).

    Yields:
      ``<output.parent>/.<output.name>.partial``.

    Raises:
      RunError: another process is writing the same run; the directory holds checkpoints of a
        run with another configuration (the message names the keys), or none that can be read.
    """
    work = partial_directory(output)
    work.mkdir(exist_ok=True)
    lock = os.open(work, os.O_RDONLY)  # an exclusive flock on the directory, released on exit or kill
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                f"Another process is writing the run {output} (into {work}); choose another --output."
            ) from None
        _prepare(work, config, keep)
        try:
            yield work
        except BaseException:
            kept = latest_checkpoint(work / CHECKPOINTS_DIR)
            if kept is None:
                shutil.rmtree(work, ignore_errors=True)
            else:
                logger.warning(
                    "The unfinished run is kept in %s (checkpoint at step %d): rerun the same command to resume.",
                    work,
                    kept[1],
                )
            raise
    finally:
        os.close(lock)


def _prepare(work: Path, config: ExperimentConfig, keep: Sequence[str]) -> None:
    """Checks that ``work``'s checkpoints were made with ``config``, or starts it afresh with ``config.json``.

    Unreadable checkpoints are skipped (:func:`newest_readable_checkpoint`); if none is readable,
    RunError.
    """
    current = json.loads(json.dumps(config_to_dict(config)))
    resumable = newest_readable_checkpoint(work / CHECKPOINTS_DIR, forget_unreadable=True) is not None
    if resumable:
        try:
            saved = json.loads((work / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise RunError(
                f"{work} holds checkpoints but no readable {CONFIG_FILE} ({error}): delete it to start over."
            ) from None
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

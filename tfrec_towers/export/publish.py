"""Publishing a version: ``<export_base>/<model_name>/<version>/`` appears whole or not at all.

The version is written into a hidden sibling directory ``.tmp-<host>-<pid>-<token>`` (TF Serving
ignores names that are not integers) and renamed into place, so a polling server never sees half a
model. When another export publishes the same next version first, the export takes the next free
one. A temporary directory whose writer is gone (a ``kill -9`` of an export on this host) is removed,
with a warning, by the next export into the same model directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np

logger = logging.getLogger(__name__)


def _existing_versions(model_dir: Path) -> List[int]:
    """The integer version names in ``model_dir``, ascending (none if it does not exist)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isascii() and p.name.isdigit())


def target_directory(export_base: Union[str, Path], model_name: str, version: Optional[int]) -> Tuple[Path, int]:
    """``(<export_base>/<model_name>, version)`` after checking the target can be written."""
    if not model_name or model_name in (".", "..") or "/" in model_name or os.sep in model_name:
        raise ValueError(f"`model_name` must be a plain directory name. Received: {model_name!r}")
    base = Path(export_base)
    model_dir = base / model_name
    for directory in (base, model_dir):
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} is a file; the export needs a directory there (created if missing).")
    existing = _existing_versions(model_dir)
    next_version = existing[-1] + 1 if existing else 1
    if version is None:
        return model_dir, next_version
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version <= 0:
        raise ValueError(f"`version` must be a positive int or None. Received: {version!r}")
    if int(version) in existing:
        kind = "directory" if (model_dir / str(int(version))).is_dir() else "file"
        raise FileExistsError(
            f"Version {version} of model {model_name!r} already exists in {model_dir} (a {kind}). "
            f"Pass another `version`, or None for the next one ({next_version})."
        )
    return model_dir, int(version)


MAX_PUBLISH_ATTEMPTS = 100
"""Versions an export tries in turn while concurrent exports keep publishing the one it chose."""

_TEMPORARY_NAME = re.compile(r"^\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{32}$")


def _host_name() -> str:
    """This machine's name as it appears in temporary directory names."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())


def _is_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts; a reused pid is
    taken for the writer, so its directory is kept)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        pass
    return True


def _remove_stale_temporaries(model_dir: Path) -> None:
    """Removes the temporary version directories of ``model_dir`` whose writer, a process of this host, is gone.

    Those of live processes and of other hosts (a shared file system) are left alone.
    """
    host = _host_name()
    for entry in model_dir.iterdir():
        match = _TEMPORARY_NAME.match(entry.name)
        if match is None or match["host"] != host or _is_running(int(match["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        logger.warning(
            "Removed %s: the unfinished export of process %s, which is no longer running.", entry, match["pid"]
        )


def _publish(tmp: Path, model_dir: Path, version: int, label: Callable[[Path, int], None], next_free: bool) -> Path:
    """Renames ``tmp`` to ``<model_dir>/<version>``, after ``label(tmp, version)``; the next free version if taken.

    Raises:
      FileExistsError: the version appeared meanwhile and ``next_free`` is False; or
        :data:`MAX_PUBLISH_ATTEMPTS` versions in a row were taken.
    """
    for _ in range(MAX_PUBLISH_ATTEMPTS):
        label(tmp, version)
        final = model_dir / str(version)
        if not os.path.lexists(final):
            try:
                os.rename(tmp, final)
                return final
            except OSError:  # the target appeared between the check and the rename
                if not os.path.lexists(final):
                    raise
        if not next_free:
            raise FileExistsError(
                f"Version {version} of model {model_dir.name!r} appeared in {model_dir} while this export was "
                "written (another export published it). Pass another `version`, or None for the next one."
            )
        taken, version = version, max([version, *_existing_versions(model_dir)]) + 1
        logger.info(
            "Version %d of %s was published by another export meanwhile: this export becomes version %d.",
            taken,
            model_dir,
            version,
        )
    raise FileExistsError(
        f"Concurrent exports into {model_dir} took {MAX_PUBLISH_ATTEMPTS} versions in a row before this one "
        "could publish: export again."
    )


def write_version_atomically(
    model_dir: Path, version: int, write: Callable[[Path], None], label: Callable[[Path, int], None], next_free: bool
) -> Path:
    """Runs ``write(tmp)`` on a hidden sibling of the versions, then publishes it as ``<model_dir>/<version>``.

    The sibling is ``.tmp-<host>-<pid>-<token>``; stale ones of writers that are gone are removed
    first. ``label(tmp, version)`` writes what names the version, before each attempt to publish:
    if another export has published ``version`` by then, the next free version is taken when
    ``next_free`` (:func:`_publish`). On any failure the temporary directory (and ``model_dir`` if
    this call created it and it is empty) is removed and the exception re-raised.
    """
    created_model_dir = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(model_dir)
    tmp = model_dir / f".tmp-{_host_name()}-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write(tmp)
        return _publish(tmp, model_dir, version, label, next_free)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_model_dir and not any(model_dir.iterdir()):
            with contextlib.suppress(OSError):  # another export may have just started writing there
                model_dir.rmdir()
        raise

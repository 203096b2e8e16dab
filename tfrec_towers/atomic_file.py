"""Writing a small file so that readers see the old content or the new one, never half of it.

The content goes to a hidden temporary sibling ``.<name>.partial`` of the file, which is then renamed
over it (``os.replace``, atomic on one file system). The sibling is removed whatever happens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union


def write_atomically(path: Union[str, Path], write: Callable[[Path], object]) -> None:
    """Calls ``write(sibling)`` to write the temporary sibling ``.<name>.partial``, then renames it over ``path``.

    For content a library writes to a path itself (a plot's ``savefig``, a serialiser).

    Raises:
      OSError: the sibling cannot be written or renamed; ``path`` is then as it was. Whatever
        ``write`` raises propagates, with the sibling removed.
    """
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomically(path: Union[str, Path], text: str) -> None:
    """Writes ``text`` to ``path`` through the temporary sibling ``.<name>.partial``, then renames it.

    Args:
      path: the file to write; its directory must exist.
      text: the whole new content (UTF-8).

    Raises:
      OSError: the sibling cannot be written or renamed; ``path`` is then as it was.
    """
    write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))

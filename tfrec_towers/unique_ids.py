"""The one check that a column of ids holds each id once (catalogues, corpora, count tables)."""

from __future__ import annotations

import numpy as np


def repeated_ids(ids: np.ndarray) -> np.ndarray:
    """The ids that occur more than once, each once, sorted.

    Args:
      ids: ``[N]`` integer ids, or an object array of ``str`` or of ``bytes`` ids.

    Returns:
      ``[R]`` the repeated ids (empty when every id is distinct); callers name the first few.
    """
    unique, counts = np.unique(np.asarray(ids), return_counts=True)
    return unique[counts > 1]

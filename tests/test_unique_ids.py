"""repeated_ids: the ids that occur more than once, each once, sorted."""

import numpy as np
import pytest

from tfrec_towers.unique_ids import repeated_ids


@pytest.mark.parametrize(
    "ids, expected",
    [
        (np.array([7, 3, 7, 1, 3, 3], np.int64), [3, 7]),
        (np.array([4, 5, 6], np.int64), []),
        (np.array(["b", "a", "b"], dtype=object), ["b"]),
        (np.array([b"x", b"y", b"x", b"y"], dtype=object), [b"x", b"y"]),
    ],
)
def test_repeated_ids(ids, expected):
    assert repeated_ids(ids).tolist() == expected

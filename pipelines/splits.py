"""The split rules beyond leave-last-out: a global time cut, a given test table, validation hold-outs.

Each rule is a :class:`~tfrec_pipelines.data.HoldOut`: it picks the interactions held out of training,
and :func:`~tfrec_pipelines.data.split_interactions` evaluates each one whose user keeps a training
interaction, with the history (and seen items) before the user's first held-out interaction.

=====================  ============================================================================
``data.split.kind``    held out
=====================  ============================================================================
``leave_last_out``     each user's last interaction (:class:`~tfrec_pipelines.data.LastInteraction`)
``time``               every interaction at or after the global cut (:class:`TimeCut`)
``given``              the interactions of the ``data.test`` table (:class:`TestTable`)
=====================  ============================================================================

``data.validation`` then holds out, from the training interactions, each user's last one
(``last``, of users who keep another) or those at or after a cut at ``1 - validation_fraction`` of
their time range (``time``).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Optional

import numpy as np
import pandas as pd

from tfrec_pipelines.data import DataError, HoldOut, LastInteraction, Timeline
from tfrec_towers.data_config import SplitConfig


@dataclasses.dataclass(frozen=True)
class TimeCut:
    """Holds out every known interaction at or after ``cut`` (an ``int64`` timestamp).

    Attributes:
      cut: the first held-out timestamp, in the split's ``int64`` timestamps.
      described: the cut as the user gave it, for messages.
      key: the configuration key of the cut, for messages.
      unevaluated_key: see :class:`~tfrec_pipelines.data.HoldOut`.
    """

    cut: int
    described: str
    key: str = "data.split.cut"
    unevaluated_key: Optional[str] = "test_interactions_without_history"

    def held(self, timeline: Timeline, known: np.ndarray) -> np.ndarray:
        return known & (timeline.timestamps >= self.cut)

    def nothing_evaluated(self, name: str, timeline: Timeline) -> str:
        return (
            f"{name}: no interaction at or after the cut {self.described} (`{self.key}`) has a user with an "
            "interaction before it: move the cut so that both sides hold interactions of the same users."
        )


@dataclasses.dataclass(frozen=True)
class TestTable:
    """Holds out the interactions of the separate test table (phase 1 of the timeline)."""

    source: str
    unevaluated_key: Optional[str] = "test_interactions_without_history"

    def held(self, timeline: Timeline, known: np.ndarray) -> np.ndarray:
        return known & (timeline.phases == 1)

    def nothing_evaluated(self, name: str, timeline: Timeline) -> str:
        return (
            f"{name}: no user of the test table {self.source} (`data.test.path`) has a training interaction, "
            "so none of its interactions can be evaluated."
        )


@dataclasses.dataclass(frozen=True)
class TimeSlice:
    """Holds out the known interactions at or after ``1 - fraction`` of their time range (validation)."""

    fraction: float
    unevaluated_key: Optional[str] = "validation_interactions_without_history"

    def held(self, timeline: Timeline, known: np.ndarray) -> np.ndarray:
        return TimeCut(self._cut(timeline, known), "").held(timeline, known)

    def _cut(self, timeline: Timeline, known: np.ndarray) -> int:
        times = timeline.timestamps[known]
        first, last = int(times.min()), int(times.max())
        return first + math.ceil((1.0 - self.fraction) * (last - first))

    def nothing_evaluated(self, name: str, timeline: Timeline) -> str:
        return (
            f"{name}: no training interaction in the last {self.fraction:g} of the training time range "
            "(`data.validation` 'time', `data.validation_fraction`) has a user with one before it."
        )


VALIDATION_LAST = LastInteraction(min_known=2, purpose="validate on")


def validation_rule(validation: str, fraction: float) -> Optional[HoldOut]:
    """The hold-out of ``data.validation`` (``none``, ``last`` or ``time``), or None."""
    if validation == "last":
        return VALIDATION_LAST
    if validation == "time":
        return TimeSlice(fraction)
    return None


def time_cut(
    split: SplitConfig, values: Optional[pd.Series], column: Optional[str], source: str, timestamps: np.ndarray
) -> TimeCut:
    """The cut of a ``time`` split in the ``int64`` timestamps the interactions are split by.

    Args:
      split: the ``data.split`` section (``kind: time``).
      values: the interactions' raw timestamp column, or None without one.
      column: its name.
      source: the interactions table, for messages.
      timestamps: ``int64 [R]`` the timestamps as the split reads them: integers as they are,
        floats as their dense rank, dates as nanoseconds.

    Raises:
      DataError: the table has no timestamp column, or the cut's type does not fit the column's
        (a date for numbers, a number for dates).
    """
    if values is None:
        raise DataError(
            f"{source}: `data.split.kind` 'time' needs event times, but the interactions table has no timestamp "
            "column (`data.interactions.timestamp_column`)."
        )
    dates = not (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values))
    if split.cut_fraction is not None:
        if pd.api.types.is_float_dtype(values):
            raw = values.to_numpy(np.float64)
            return _numeric_cut(
                raw.min() + split.cut_fraction * (raw.max() - raw.min()),
                raw,
                f"{split.cut_fraction:g} of the time range",
                "data.split.cut_fraction",
            )
        first, last = int(timestamps.min()), int(timestamps.max())
        return TimeCut(
            first + math.ceil(split.cut_fraction * (last - first)),
            f"{split.cut_fraction:g} of the time range",
            "data.split.cut_fraction",
        )
    cut = split.cut
    assert cut is not None  # SplitConfig holds exactly one of `cut` and `cut_fraction` for `kind: time`
    if dates:
        if not isinstance(cut, str):
            raise DataError(
                f"{source}: `data.split.cut` {cut!r} is a number but column {column!r} holds dates and times: "
                "give the cut as a date (e.g. 2024-03-01)."
            )
        moment = pd.Timestamp(cut)
        if moment.tz is not None:
            moment = moment.tz_convert("UTC").tz_localize(None)
        return TimeCut(int(moment.value), repr(cut))
    if isinstance(cut, str):
        moment = datetime.datetime.fromisoformat(cut)
        seconds = int(pd.Timestamp(moment, tz=moment.tzinfo or datetime.timezone.utc).timestamp())
        raise DataError(
            f"{source}: `data.split.cut` {cut!r} is a date but column {column!r} holds numbers: give the cut in the "
            f"column's units (e.g. {seconds} if they are seconds since 1970-01-01 UTC)."
        )
    if pd.api.types.is_float_dtype(values):
        return _numeric_cut(float(cut), values.to_numpy(np.float64), repr(cut))
    return TimeCut(math.ceil(cut), repr(cut))


def _numeric_cut(cut: float, raw: np.ndarray, described: str, key: str = "data.split.cut") -> TimeCut:
    """The cut among float timestamps split by their dense rank: ``value < cut`` ⇔ ``rank < 1 + #{distinct < cut}``."""
    return TimeCut(1 + int(np.sum(np.unique(raw) < cut)), described, key)

"""The configuration of a user's own tables: where the interactions, users and items are, which
columns play which role, and how each column becomes a feature.

These dataclasses (and the split, :class:`SplitConfig`) are sections of :class:`tfrec_towers.config.DataConfig` and
:class:`tfrec_towers.config.FeaturesConfig`; they are validated when built (a ``ValueError``
that the configuration loader reports with the key's full path).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any, Literal, Optional, Tuple

TableFormatName = Literal["csv", "parquet", "tfrecord"]
FeatureKind = Literal["id", "categorical", "hashed", "numeric", "bucketized", "multi_valued", "history"]
FEATURE_KINDS: Tuple[str, ...] = ("id", "categorical", "hashed", "numeric", "bucketized", "multi_valued", "history")


@dataclasses.dataclass(frozen=True)
class RowFilter:
    """Keep only the rows whose ``column`` holds one of ``values`` (compared as text).

    Example: ``{column: event, values: [purchase, add_to_cart]}``.
    """

    column: str = ""
    values: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not self.column:
            raise ValueError("`column` must name the column to filter on.")
        if not self.values:
            raise ValueError(f"`values` must list the values of {self.column!r} to keep.")


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """A table: a CSV, Parquet or TFRecord file, a directory of shards, or a glob.

    Attributes:
      path: the file, directory or glob (``logs/2024-*.parquet``); null when there is no such table.
      format: ``csv``, ``parquet`` or ``tfrecord``; default from the file suffixes.
    """

    path: Optional[str] = None
    format: Optional[TableFormatName] = None

    def __post_init__(self) -> None:
        if self.path is not None and not self.path.strip():
            raise ValueError("`path` must be a file, directory or glob, or null.")


@dataclasses.dataclass(frozen=True)
class InteractionsConfig(TableConfig):
    """The interaction log: one row per (user, item) event.

    Attributes:
      path: the file, directory or glob (``logs/2024-*.parquet``).
      format: ``csv``, ``parquet`` or ``tfrecord``; default from the file suffixes.
      user_column, item_column: the id columns (integers or strings).
      timestamp_column: the event time (numbers, or dates and times as text or a date type);
        when the table has no such column, the rows are taken in file order.
      weight_column: a non-negative per-interaction weight, used as the training example's weight in
        the loss (null: every interaction weighs 1).
      filter: keep only some rows, e.g. ``{column: event, values: [purchase]}`` (null: keep all).
    """

    user_column: str = "user_id"
    item_column: str = "item_id"
    timestamp_column: Optional[str] = "timestamp"
    weight_column: Optional[str] = None
    filter: Optional[RowFilter] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("user_column", "item_column"):
            if not getattr(self, name):
                raise ValueError(f"`{name}` must name a column.")
        if self.user_column == self.item_column:
            raise ValueError(f"`user_column` and `item_column` are both {self.user_column!r}.")


@dataclasses.dataclass(frozen=True)
class FeatureDeclaration:
    """One input of a tower, read from a column of the interactions, users or items table.

    Attributes:
      name: the feature's name (the SavedModel input's name).
      column: the source column (default: ``name``).
      kind: ``id`` (the user or item id), ``categorical`` (a vocabulary learnt from data),
        ``hashed`` (``hash(value) mod num_bins``), ``numeric`` (standardised), ``bucketized`` (a
        number embedded by its bucket: ``boundaries``, or ``num_buckets`` quantiles), ``multi_valued``
        (values joined by ``separator``, embedded and mean-pooled: ``"Action|Comedy"``) or
        ``history`` (the user's previous items, derived from the interactions).
      embedding_dim: width of the embedding (default: ``features.embedding_dim``).
      min_count: values seen fewer times go to the out-of-vocabulary buckets.
      max_vocabulary_size: keep at most this many of the most frequent values.
      num_oov_buckets: out-of-vocabulary rows (default: ``features.num_oov_buckets``).
      num_bins: hash bins of a ``hashed`` feature.
      separator: the separator of a ``multi_valued`` feature.
      log1p: standardise ``log(1 + x)`` instead of ``x`` (``numeric``; for counts and prices).
      boundaries: increasing bucket boundaries of a ``bucketized`` feature (null: quantiles).
      num_buckets: quantile buckets of a ``bucketized`` feature without ``boundaries``.
    """

    name: str = ""
    column: Optional[str] = None
    kind: FeatureKind = "categorical"
    embedding_dim: Optional[int] = None
    min_count: int = 1
    max_vocabulary_size: Optional[int] = None
    num_oov_buckets: Optional[int] = None
    num_bins: int = 2**17
    separator: str = "|"
    log1p: bool = False
    boundaries: Optional[Tuple[float, ...]] = None
    num_buckets: int = 10

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("every feature needs a `name`.")
        for field in ("embedding_dim", "max_vocabulary_size", "num_oov_buckets"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ValueError(f"feature {self.name!r}: `{field}` must be positive. Received: {value}")
        if self.boundaries is not None:
            object.__setattr__(self, "boundaries", tuple(self.boundaries))
            if not self.boundaries or any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
                raise ValueError(f"feature {self.name!r}: `boundaries` must be a non-empty increasing list.")
        for field in ("min_count", "num_bins", "num_buckets"):
            if getattr(self, field) <= 0:
                raise ValueError(f"feature {self.name!r}: `{field}` must be positive. Received: {getattr(self, field)}")
        if not self.separator:
            raise ValueError(f"feature {self.name!r}: `separator` must be a non-empty string.")

    @property
    def source(self) -> str:
        """The column the feature reads."""
        return self.column or self.name


SplitKind = Literal["leave_last_out", "time", "given"]


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How the interactions are split into training data and evaluated interactions.

    Attributes:
      kind: ``leave_last_out`` (default: each user's last interaction is evaluated with the
        history before it), ``time`` (one global cut: train on the interactions before it;
        evaluate every later interaction of a user with history before the cut, with that
        history) or ``given`` (train on the interactions table, evaluate each interaction of
        ``data.test`` with the user's training history).
      cut: ``time``: the cut, in the timestamp column's units (a number) or a date and time
        (``2024-03-01``, ``2024-03-01T12:00:00``) for a column of dates.
      cut_fraction: ``time``: the cut at this fraction of the time range, in (0, 1) (``0.9``:
        the last tenth is evaluated); instead of ``cut``.
    """

    kind: SplitKind = "leave_last_out"
    cut: Optional[Any] = None
    cut_fraction: Optional[float] = None

    def __post_init__(self) -> None:
        if isinstance(self.cut, (datetime.date, datetime.datetime)):  # YAML reads 2024-03-01 as a date
            object.__setattr__(self, "cut", self.cut.isoformat())
        if self.kind != "time":
            for name in ("cut", "cut_fraction"):
                if getattr(self, name) is not None:
                    raise ValueError(f"`{name}` applies only to `kind: time`, not {self.kind!r}.")
            return
        if (self.cut is None) == (self.cut_fraction is None):
            raise ValueError("`kind: time` needs exactly one of `cut` (a timestamp or date) and `cut_fraction`.")
        if self.cut_fraction is not None and not 0.0 < self.cut_fraction < 1.0:
            raise ValueError(f"`cut_fraction` must be in (0, 1). Received: {self.cut_fraction!r}")
        if self.cut is not None:
            if isinstance(self.cut, bool) or not isinstance(self.cut, (int, float, str)):
                raise ValueError(f"`cut` must be a number or a date and time. Received: {self.cut!r}")
            if isinstance(self.cut, float) and not math.isfinite(self.cut):
                raise ValueError(f"`cut` must be a finite number. Received: {self.cut!r}")
            if isinstance(self.cut, str):
                try:
                    datetime.datetime.fromisoformat(self.cut)
                except ValueError:
                    raise ValueError(
                        f"`cut` must be a number or an ISO date and time (2024-03-01, 2024-03-01T12:00:00). "
                        f"Received: {self.cut!r}"
                    ) from None

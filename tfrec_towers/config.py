"""The experiment configuration: typed dataclasses, validated once at the edge.

Load from YAML or JSON with :func:`load_config`, override single fields with ``--set
training.epochs=5`` (:func:`apply_overrides`), save the resolved configuration with
:func:`save_config`. Every way of building a configuration starts from one set of defaults, the
dataclasses' own (``LossConfig()`` is ``ExperimentConfig().loss``), so a file, a ``--set`` and a
library call that say the same thing give the same configuration. Unknown keys, wrong types,
non-finite numbers and values the layers would reject fail before any work starts, naming the
key (and suggesting the nearest valid one).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import typing
from pathlib import Path
from typing import Any, Dict, Literal, Mapping, Optional, Sequence, Tuple

import yaml

from tfrec_towers.atomic_file import write_text_atomically
from tfrec_towers.data_config import FeatureDeclaration, InteractionsConfig, SplitConfig, TableConfig
from tfrec_towers.tower_config import HistoryEncoderConfig, TowerConfig

DEFAULT_FREQUENCY_LEARNING_RATE = 0.05
"""α of the streaming frequency estimator (Yi et al., RecSys 2019): the default of ``loss.frequency``
and of :class:`~tfrec_towers.losses.frequency.StreamingFrequencyEstimator`."""


class ConfigError(ValueError):
    """A configuration key is unknown, or its value has the wrong type or range."""


MAX_TEMPERATURE = 100.0
"""The largest ``model.temperature``: the upper bound of the temperature layer (1/τ ≥ 0.01)."""
MIN_ADAPTIVE_TEMPERATURE = 1e-3
"""The smallest ``loss.adaptive.base_temperature``: the floor of the adaptive per-negative temperatures."""
MAX_SEED = 2**32 - 1
"""The largest ``training.seed`` (NumPy's global seed has 32 bits)."""
DEFAULT_MAX_MEAN_RESULTANT_LENGTH = 0.99
"""``training.collapse_max_mean_resultant_length``, the default of :class:`~tfrec_towers.collapse.CollapseCriteria`:
above it every candidate embedding lies within about 8° (arccos 0.99) of their mean direction.
Healthy runs stay below (0.85–0.90 on ml-100k with the default towers, up to 0.96 with 8-dimensional
towers on a 300-item catalogue, whose candidates share a strong popularity direction); a cold-started
hinge run that stalls at its margin reaches 0.998."""
DEFAULT_MIN_SCORE_SPREAD = 0.005
"""``training.collapse_min_score_spread``, the default of :class:`~tfrec_towers.collapse.CollapseCriteria`:
below it a query's scores vary by under 1% of their range (with L2-normalised towers a cosine standard
deviation under 0.01: a logit standard deviation under 0.2 at the default τ = 0.05). Healthy runs keep
0.03–0.07; a cold-started hinge run that stalls at its margin falls to 0.001."""


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    """Raises ``ConfigError("`key` must be <expected>. Received: <value>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"`{key}` must be {expected}. Received: {value!r}")


def _finite_at_least(value: float, low: float, low_open: bool = False) -> bool:
    """``value`` is a finite number ``> low`` (``low_open``) or ``≥ low``; NaN and ±∞ are not."""
    return math.isfinite(value) and (value > low if low_open else value >= low)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the examples come from.

    Attributes:
      dataset: ``"interactions"`` (your own tables: ``interactions``, optionally ``users`` and
        ``items``), ``"synthetic"`` (the embedded default) or ``"movielens"`` (needs ``data_dir``).
      data_dir: a MovieLens release directory (ml-100k, ml-1m, ml-20m, ml-25m, ml-latest).
      interactions: the interaction log: ``path`` (a CSV, Parquet or TFRecord file, a directory
        or a glob), ``format``, ``user_column``, ``item_column``, ``timestamp_column`` (file order
        when the table has none), ``weight_column`` (a per-interaction weight in the loss) and
        ``filter`` (``{column: event, values: [purchase]}`` keeps only those rows).
      users: a users table keyed by the user column (``path``, ``format``); its columns become
        query features.
      items: an items table keyed by the item column; its columns become candidate features and
        its rows the catalogue (every item, interacted or not).
      unknown_items: interactions whose item (or user) is missing from the items (users) table:
        ``drop`` them (logged and counted) or stop with an ``error``.
      split: which interactions are evaluated: ``kind`` ``leave_last_out`` (default), ``time``
        (a global ``cut`` or ``cut_fraction``) or ``given`` (the ``test`` table).
      test: with ``split.kind: given``, the interactions to evaluate (``path``, ``format``), with
        the interactions table's columns.
      validation: interactions held out of training and evaluated after every epoch (``val_HR@10``
        ... in the history): ``none`` (default), ``last`` (each user's last training interaction)
        or ``time`` (the last ``validation_fraction`` of the training interactions' time range).
      validation_fraction: the share of the training time range ``validation: time`` holds out, in (0, 1).
      max_history: items of history per example (most recent last).
      num_items, num_users, interactions_per_user: sizes of the synthetic data.
    """

    dataset: Literal["synthetic", "movielens", "interactions"] = "synthetic"
    data_dir: Optional[str] = None
    interactions: InteractionsConfig = InteractionsConfig()
    users: TableConfig = TableConfig()
    items: TableConfig = TableConfig()
    unknown_items: Literal["drop", "error"] = "drop"
    split: SplitConfig = SplitConfig()
    test: TableConfig = TableConfig()
    validation: Literal["none", "last", "time"] = "none"
    validation_fraction: float = 0.1
    max_history: int = 50
    num_items: int = 5000
    num_users: int = 2000
    interactions_per_user: int = 30

    def __post_init__(self) -> None:
        if self.dataset == "movielens" and not self.data_dir:
            raise ConfigError("`data.data_dir` is required when `data.dataset` is 'movielens'.")
        if self.dataset == "interactions" and self.interactions.path is None:
            raise ConfigError(
                "`data.interactions.path` is required when `data.dataset` is 'interactions': the interaction "
                "log's file, directory or glob."
            )
        if self.dataset != "interactions":
            for table in ("interactions", "users", "items", "test"):
                if getattr(self, table).path is not None:
                    raise ConfigError(
                        f"`data.{table}.path` is set but `data.dataset` is {self.dataset!r}: "
                        "set `data.dataset: interactions` to train on your own tables."
                    )
        if (self.split.kind == "given") != (self.test.path is not None):
            raise ConfigError(
                "`data.split.kind` 'given' needs `data.test.path` (the interactions to evaluate)."
                if self.test.path is None
                else f"`data.test.path` is set but `data.split.kind` is {self.split.kind!r}: set it to 'given'."
            )
        _require(
            0.0 < self.validation_fraction < 1.0, "data.validation_fraction", "in (0, 1)", self.validation_fraction
        )
        for name in ("max_history", "num_items", "num_users"):
            _require(getattr(self, name) > 0, f"data.{name}", "positive", getattr(self, name))
        _require(
            2 <= self.interactions_per_user <= self.num_items,
            "data.interactions_per_user",
            f"between 2 and `data.num_items` ({self.num_items}): each synthetic user consumes distinct "
            "items, one to train on and one to test",
            self.interactions_per_user,
        )


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    """How the data set's columns are embedded.

    Attributes:
      embedding_dim: width of every id and category embedding (a feature may set its own).
      history_pooling: ``mean``, ``sum`` or ``max`` over the history's valid items.
      share_item_embeddings: the history and the candidate id read one embedding table.
      num_oov_buckets: out-of-vocabulary rows of every vocabulary (a feature may set its own).
      query, candidate: each tower's features, a list of ``{name, column, kind, embedding_dim,
        min_count, max_vocabulary_size, num_oov_buckets, num_bins, separator, log1p}`` with
        ``kind`` one of ``id``, ``categorical``, ``hashed``, ``numeric``, ``multi_valued``,
        ``history``. Null: the data set's own (MovieLens, synthetic), or, for your own tables,
        inferred: the query tower reads the user id, the history and every users-table column,
        the candidate tower the item id and every items-table column, each with a kind from
        its type and cardinality (logged, and written to the run's ``features.json``).
    """

    embedding_dim: int = 64
    history_pooling: Literal["mean", "sum", "max"] = "mean"
    share_item_embeddings: bool = True
    num_oov_buckets: int = 1
    query: Optional[Tuple[FeatureDeclaration, ...]] = None
    candidate: Optional[Tuple[FeatureDeclaration, ...]] = None

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "num_oov_buckets"):
            _require(getattr(self, name) > 0, f"features.{name}", "positive", getattr(self, name))
        for side in ("query", "candidate"):
            declared = getattr(self, side)
            if declared is None:
                continue
            _require(
                len(declared) > 0,
                f"features.{side}",
                "a non-empty list of features, or null to infer them",
                list(declared),
            )
            names = [d.name for d in declared]
            repeated = sorted({n for n in names if names.count(n) > 1})
            _require(not repeated, f"features.{side}", "a list of features with distinct names", repeated)
        if self.candidate is not None:
            ids = [d.name for d in self.candidate if d.kind == "id"]
            _require(
                len(ids) == 1, "features.candidate", "a list holding exactly one `kind: id` feature (the item id)", ids
            )
            history = [d.name for d in self.candidate if d.kind == "history"]
            _require(
                not history, "features.candidate", "a list without `kind: history` (the query tower reads it)", history
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The towers and the temperature of the scores s(q, v) = ⟨u, v⟩ / τ.

    Attributes:
      query_tower, candidate_tower: the MLP of each tower (both with the same ``output_dim``).
      temperature: τ, in (0, 100].
      history: how the query tower reads the history: ``encoder`` ``attention`` (default: attention
        pooling with a learned query and a learned recency bias over the last ``max_length`` items),
        ``pooling`` (pooled by ``features.history_pooling``), ``mean``, ``gru`` or ``transformer``, with
        ``num_layers``, ``num_heads``, ``dropout`` and ``max_length`` (see ``history_encoders.py``).
    """

    query_tower: TowerConfig = dataclasses.field(default_factory=TowerConfig)
    candidate_tower: TowerConfig = dataclasses.field(default_factory=TowerConfig)
    temperature: float = 0.05
    history: HistoryEncoderConfig = HistoryEncoderConfig()

    def __post_init__(self) -> None:
        _require(
            0 < self.temperature <= MAX_TEMPERATURE,
            "model.temperature",
            f"a positive float ≤ {MAX_TEMPERATURE:g}",
            self.temperature,
        )
        if self.query_tower.output_dim != self.candidate_tower.output_dim:
            raise ConfigError(
                f"`model.query_tower.output_dim` ({self.query_tower.output_dim}) and "
                f"`model.candidate_tower.output_dim` ({self.candidate_tower.output_dim}) must be equal: "
                "a score is the dot product of the two towers' embeddings."
            )


@dataclasses.dataclass(frozen=True)
class FrequencyConfig:
    """The streaming frequency estimator of Yi et al. (RecSys 2019), Algorithms 2 and 3.

    Attributes:
      num_hashes: hash functions per id (positive).
      hash_buckets: buckets of each hash function (positive).
      learning_rate: α in (0, 1], the weight of the newest gap between two sightings of an id.
    """

    num_hashes: int = 2
    hash_buckets: int = 2**17
    learning_rate: float = DEFAULT_FREQUENCY_LEARNING_RATE

    def __post_init__(self) -> None:
        for name in ("num_hashes", "hash_buckets"):
            _require(getattr(self, name) > 0, f"loss.frequency.{name}", "positive", getattr(self, name))
        if not 0.0 < self.learning_rate <= 1.0:
            raise ConfigError(f"`loss.frequency.learning_rate` (α) must be in (0, 1]. Received: {self.learning_rate!r}")


@dataclasses.dataclass(frozen=True)
class AdaptiveConfig:
    """Adaptive margin and temperature (Li et al., EMNLP 2023); paper defaults.

    Attributes:
      enabled: replace ``model.temperature`` by per-negative margins and temperatures.
      strength: α in [0, 1], how much a negative's hardness shrinks its margin and temperature.
      base_margin: δ0 ≥ 0, the margin of the easiest negative.
      base_temperature: τ0 ≥ 0.001, the temperature of the positive and of the easiest negative.
      item_anchored_weight: weight in [0, 1] of the item-anchored term of the loss.
    """

    enabled: bool = False
    strength: float = 0.5
    base_margin: float = 0.01
    base_temperature: float = 1.0 / 30.0
    item_anchored_weight: float = 0.05

    def __post_init__(self) -> None:
        for name in ("strength", "item_anchored_weight"):
            _require(0.0 <= getattr(self, name) <= 1.0, f"loss.adaptive.{name}", "in [0, 1]", getattr(self, name))
        _require(
            _finite_at_least(self.base_margin, 0.0), "loss.adaptive.base_margin", "a finite float ≥ 0", self.base_margin
        )
        _require(
            _finite_at_least(self.base_temperature, MIN_ADAPTIVE_TEMPERATURE),
            "loss.adaptive.base_temperature",
            f"a finite float ≥ {MIN_ADAPTIVE_TEMPERATURE:g} (the floor of the per-negative temperatures)",
            self.base_temperature,
        )


_HINGE_MODES = ("hinge", "softmax_hinge")
"""The modes with a hinge, which need ``loss.margin``."""


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The retrieval loss: mode, negatives, logQ correction, temperature, adaptive margins.

    The defaults are the product's loss (see :class:`ExperimentConfig`): the in-batch softmax
    plus 512 mixed negatives with logQ correction from exact training counts.
    :data:`PLAIN_IN_BATCH` is TFRS's plain in-batch softmax.

    Attributes:
      mode: ``softmax`` (list-wise, default), ``bce`` (point-wise), ``bpr`` / ``hinge``
        (pair-wise), ``softmax_hinge`` (the softmax moving to the hinge over training, or a
        weighted sum of both; see docs/training.md), ``symmetric`` (CLIP-style in-batch softmax in
        both directions; needs ``mixed_negatives: 0``) or ``full_softmax`` (a softmax over the
        whole catalogue, no sampling; needs ``logq: none`` and ``mixed_negatives: 0``; see
        docs/training.md).
      margin: the hinge margin, a positive float (required by, and only for, ``hinge`` and ``softmax_hinge``).
      hardest_negative_only: pair-wise modes (and the hinge of ``softmax_hinge``) score only each
        row's hardest negative.
      hinge_weight: ``softmax_hinge``: the hinge's weight h once its ramp is over, in (0, 1]; the
        default 1 ends the run on the hinge alone, 0.5 with no start and no ramp trains on half
        softmax, half hinge throughout.
      hinge_start_steps: ``softmax_hinge``: training steps of the softmax alone before the hinge's
        weight starts to rise (an integer ≥ 0; default 0).
      hinge_ramp_steps: ``softmax_hinge``: steps over which the hinge's weight rises linearly from 0
        to ``hinge_weight`` (an integer ≥ 0; default 0: it jumps at ``hinge_start_steps``).
      negative_weight: weight of the negatives' term in ``bce`` (positive).
      candidate_to_query_weight: weight of the candidate→query direction in ``symmetric``, in [0, 1].
      learnable_temperature: learn log τ (initialised at ``model.temperature``).
      logq: ``none``, ``counts`` (default: exact, from the training data) or ``streaming`` (estimated).
      frequency: the streaming estimator's parameters.
      memory_bank_size: M recent candidates reused as negatives (0: off).
      memory_bank_warmup_steps: steps of in-batch (and mixed) negatives only before the bank is
        used; the bank joins at step ``max(memory_bank_warmup_steps, ⌊memory_bank_warmup_fraction × T⌋)``
        of a run of ``T`` steps.
      memory_bank_warmup_fraction: the share of the run's training steps before the bank is used,
        in [0, 1) (default 0.5: the bank's stored embeddings are consistent with the towers once
        they move slowly; CBNS, Wang et al., SIGIR 2021, warms up too); needs the run's step count
        (``total_steps``); 0: only ``memory_bank_warmup_steps`` counts.
      memory_bank_deduplicate: keep only the newest copy of each id in the bank (its logQ is then the
        chance that the id is among the bank's rows, ``1 − (1 − p_y)^M``, not ``M · p_y``).
      memory_bank_weight: the weight ``w > 0`` of each bank row in the softmax's partition sum
        (default 1; the softmax mode only).
      memory_bank_refresh_every_steps: re-encode the bank's stored ids with the current candidate
        tower every N training steps, from the mixed negatives' corpus (needs ``mixed_negatives``;
        0: off, default).
      memory_bank_trains: ``query_tower`` (default): the bank's rows enter the query tower's
        softmax only, and the candidate tower learns from the softmax without them, so its pull
        towards the queries and its push from the negatives balance; ``both_towers``: one softmax
        for both towers (CBNS as published), whose bank rows pull the positives but push no
        candidate back, which collapses MLP towers on large banks (docs/training.md).
      mixed_negatives: B' candidates drawn uniformly from the corpus per step (default 512; 0: off).
      mixed_negatives_alpha: draw the mixed negatives by smoothed popularity, ``q_j ∝ p_j^α`` with
        ``p_j`` the training counts' probability (0: uniformly, default; 0.75: word2vec's; 1: by
        popularity), each logit's logQ exact for the mixture; needs ``logq`` ``counts`` or ``none``.
      adaptive: adaptive margins and temperatures (replace ``model.temperature``).
      full_softmax_chunk: catalogue items scored at once by ``full_softmax`` (positive): its
        largest logit matrix is ``[batch, full_softmax_chunk]``.
    """

    mode: Literal["softmax", "bce", "bpr", "hinge", "softmax_hinge", "symmetric", "full_softmax"] = "softmax"
    margin: Optional[float] = None
    hardest_negative_only: bool = False
    hinge_weight: float = 1.0
    hinge_start_steps: int = 0
    hinge_ramp_steps: int = 0
    negative_weight: float = 1.0
    candidate_to_query_weight: float = 0.5
    learnable_temperature: bool = False
    logq: Literal["none", "counts", "streaming"] = "counts"
    frequency: FrequencyConfig = FrequencyConfig()
    memory_bank_size: int = 0
    memory_bank_warmup_steps: int = 0
    memory_bank_warmup_fraction: float = 0.5
    memory_bank_deduplicate: bool = False
    memory_bank_weight: float = 1.0
    memory_bank_refresh_every_steps: int = 0
    memory_bank_trains: Literal["query_tower", "both_towers"] = "query_tower"
    mixed_negatives: int = 512
    mixed_negatives_alpha: float = 0.0
    adaptive: AdaptiveConfig = AdaptiveConfig()
    full_softmax_chunk: int = 4096

    def __post_init__(self) -> None:
        hinge = self.mode in _HINGE_MODES
        if hinge and self.margin is None:
            raise ConfigError(f"`loss.margin` is required when `loss.mode` is {self.mode!r}.")
        if not hinge and self.margin is not None:
            raise ConfigError(
                f"`loss.margin` applies only to `loss.mode` 'hinge' or 'softmax_hinge', not {self.mode!r}."
            )
        if self.margin is not None:
            _require(
                _finite_at_least(self.margin, 0.0, low_open=True),
                "loss.margin",
                "a positive float (the score gap the positive must keep over a negative)",
                self.margin,
            )
        _require(
            _finite_at_least(self.negative_weight, 0.0, low_open=True),
            "loss.negative_weight",
            "a positive float",
            self.negative_weight,
        )
        _require(
            0.0 <= self.candidate_to_query_weight <= 1.0,
            "loss.candidate_to_query_weight",
            "in [0, 1]",
            self.candidate_to_query_weight,
        )
        if self.hardest_negative_only and self.mode not in ("bpr", *_HINGE_MODES):
            raise ConfigError(
                f"`loss.hardest_negative_only` applies to the pair-wise modes and 'softmax_hinge', not {self.mode!r}."
            )
        self._check_softmax_hinge()
        _require(
            math.isfinite(self.mixed_negatives_alpha) and self.mixed_negatives_alpha >= 0.0,
            "loss.mixed_negatives_alpha",
            "a number ≥ 0 (0: uniform draws)",
            self.mixed_negatives_alpha,
        )
        if self.mixed_negatives_alpha > 0.0 and self.logq == "streaming":
            raise ConfigError(
                "`loss.mixed_negatives_alpha` draws the mixed negatives by the training counts' popularity, whose "
                "logQ is exact only with `loss.logq: counts` (or none); `loss.logq` is 'streaming'."
            )
        for name in (
            "memory_bank_size",
            "memory_bank_warmup_steps",
            "mixed_negatives",
            "memory_bank_refresh_every_steps",
        ):
            _require(getattr(self, name) >= 0, f"loss.{name}", "≥ 0 (0 turns it off)", getattr(self, name))
        _require(
            math.isfinite(self.memory_bank_warmup_fraction) and 0.0 <= self.memory_bank_warmup_fraction < 1.0,
            "loss.memory_bank_warmup_fraction",
            "in [0, 1) (the share of the run's steps before the bank is used; 0: none)",
            self.memory_bank_warmup_fraction,
        )
        _require(
            _finite_at_least(self.memory_bank_weight, 0.0, low_open=True),
            "loss.memory_bank_weight",
            "a positive float (each bank row's weight in the softmax)",
            self.memory_bank_weight,
        )
        if self.memory_bank_refresh_every_steps and not (self.memory_bank_size and self.mixed_negatives):
            raise ConfigError(
                "`loss.memory_bank_refresh_every_steps` re-encodes the memory bank's rows from the mixed negatives' "
                "corpus: it needs `loss.memory_bank_size` > 0 and `loss.mixed_negatives` > 0."
            )
        if self.memory_bank_weight != 1.0 and self.mode != "softmax":
            raise ConfigError(
                "`loss.memory_bank_weight` weighs the bank's rows in the softmax's partition sum: it needs "
                f"`loss.mode: softmax`, not {self.mode!r}."
            )
        if self.mode == "symmetric" and (self.memory_bank_size or self.mixed_negatives or self.adaptive.enabled):
            raise ConfigError(
                "`loss.mode` 'symmetric' scores square in-batch logits: it does not combine with "
                "`loss.memory_bank_size`, `loss.mixed_negatives` or `loss.adaptive.enabled`."
            )
        _require(self.full_softmax_chunk > 0, "loss.full_softmax_chunk", "positive", self.full_softmax_chunk)
        if self.mode == "full_softmax":
            contradicting = {
                "loss.logq": (self.logq != "none", "'none' (no negative is sampled, so none is corrected)"),
                "loss.mixed_negatives": (self.mixed_negatives, "0 (every catalogue item is a negative already)"),
                "loss.memory_bank_size": (self.memory_bank_size, "0 (every catalogue item is a negative already)"),
                "loss.adaptive.enabled": (self.adaptive.enabled, "false (use `model.temperature`)"),
            }
            wrong = [f"`{key}` must be {expected}" for key, (bad, expected) in contradicting.items() if bad]
            if wrong:
                raise ConfigError(
                    f"`loss.mode` 'full_softmax' scores every query against the whole catalogue: {'; '.join(wrong)}."
                )
        if self.adaptive.enabled and self.learnable_temperature:
            raise ConfigError(
                "`loss.adaptive.enabled` sets per-negative temperatures: turn `loss.learnable_temperature` off."
            )

    def _check_softmax_hinge(self) -> None:
        """The curriculum's keys: in range, and set only with ``mode: softmax_hinge``.

        Raises:
          ConfigError: naming the key, for a value out of range, or a key other than its default
            with another mode.
        """
        _require(
            math.isfinite(self.hinge_weight) and 0.0 < self.hinge_weight <= 1.0,
            "loss.hinge_weight",
            "in (0, 1] (the hinge's weight once its ramp is over)",
            self.hinge_weight,
        )
        for name in ("hinge_start_steps", "hinge_ramp_steps"):
            _require(getattr(self, name) >= 0, f"loss.{name}", "an integer ≥ 0", getattr(self, name))
        if self.mode != "softmax_hinge":
            for name, default in (("hinge_weight", 1.0), ("hinge_start_steps", 0), ("hinge_ramp_steps", 0)):
                if getattr(self, name) != default:
                    raise ConfigError(f"`loss.{name}` applies only to `loss.mode` 'softmax_hinge', not {self.mode!r}.")


PLAIN_IN_BATCH = LossConfig(logq="none", mixed_negatives=0)
"""TFRS's plain in-batch softmax: the default loss without logQ correction or mixed negatives."""


_METRIC = re.compile(r"(HR|NDCG)@([1-9][0-9]*)")


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop training when a validation metric stops improving, keeping the best epoch's weights.

    Attributes:
      metric: the validation metric, ``HR@K`` or ``NDCG@K`` (K a positive integer), higher is better.
      patience: epochs without an improvement before training stops (positive).
      min_delta: the smallest rise that counts as an improvement (a finite float ≥ 0).
      refit: once the validation run has stopped, train a new model from the same seed on the
        training and validation interactions together, for the best epoch's number of epochs and
        with the validation run's learning-rate schedule, and evaluate and export that one (its
        validation history is the run's ``selection.json``). Off (false, default): the validation
        run's best epoch is the run's model. With leave-last-out validation the refitted model has
        also learnt each user's second-to-last interaction, as models evaluated by that protocol
        usually have.
    """

    metric: str = "HR@10"
    patience: int = 2
    min_delta: float = 0.0
    refit: bool = False

    def __post_init__(self) -> None:
        _require(
            _METRIC.fullmatch(self.metric) is not None,
            "training.early_stopping.metric",
            "HR@K or NDCG@K with K a positive integer",
            self.metric,
        )
        _require(self.patience > 0, "training.early_stopping.patience", "positive", self.patience)
        _require(
            _finite_at_least(self.min_delta, 0.0),
            "training.early_stopping.min_delta",
            "a finite float ≥ 0",
            self.min_delta,
        )

    @property
    def k(self) -> int:
        """The metric's cut-off K."""
        return int(self.metric.split("@")[1])


DEFAULT_ADAM_BETA_2 = 0.999
"""Adam's β₂ unless ``training.adam_beta_2`` sets it (Keras's default)."""
ADAM_OPTIMIZERS = ("adam", "lazy_adam")
"""The ``training.optimizer`` values that are Adam and take ``training.adam_beta_2``."""


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, checkpoints and logs.

    Attributes:
      epochs: passes over the training examples (positive).
      batch_size: examples per step (positive); sequences for ``every_position``; under
        ``distribute`` the global batch.
      learning_rate: the optimizer's step size (a positive float); the peak rate with a warm-up or decay.
      learning_rate_warmup_steps: steps of a linear warm-up from ``learning_rate / W`` to
        ``learning_rate`` (an integer ≥ 0; 0: none, default).
      learning_rate_decay: after the warm-up, ``none`` (constant, default), ``cosine`` or ``linear``
        decay to ``final_learning_rate_fraction × learning_rate`` at the run's last step
        (``epochs`` × steps per epoch); see ``tfrec_towers/schedules.py``.
      final_learning_rate_fraction: the share of ``learning_rate`` the decay ends at, in [0, 1]
        (default 0.0; unused without a decay).
      optimizer: ``lazy_adam`` (default: Adam whose embedding-table updates touch only the rows a
        batch looked up, :mod:`tfrec_towers.optimizers`; dense variables as ``adam``), ``adam``
        (Keras's Adam, which decays and rewrites every row of every table each step), ``adagrad``
        or ``sgd``.
      adam_beta_2: Adam's second-moment decay β₂ for ``adam`` and ``lazy_adam`` (Kingma & Ba, 2015:
        ``v ← β₂·v + (1 − β₂)·g²``), in (0, 1); default 0.999 (Keras's). SASRec's reference code
        trains with 0.98, which forgets old gradient scales faster on short runs.
      seed: seeds TensorFlow, numpy, the shuffles and the synthetic data (an integer in [0, 2^32 − 1]).
      steps_per_execution: training steps per call of the compiled training function (Keras's
        ``steps_per_execution``; a positive integer, default 1). More steps per call save the
        per-step Python and callback work; the batches, the updates and the checkpointed steps are
        the same, but step callbacks (checkpoints every ``checkpoint_every_steps``, collapse checks
        every ``collapse_check_every_steps``, Ctrl-C, a NaN loss) act at the end of a call, so at the
        first call's end on or after the step they are due. Only with ``distribute: none``.
      jit_compile: XLA-compile the numeric parts of the training step: each tower's MLP head and
        history encoder, and the loss's softmax (or other mode). The lookups of string ids and hash
        tables stay TensorFlow ops (XLA has no kernels for them), so Keras's whole-step
        ``jit_compile`` does not apply. Off by default: on CPU the compiled parts run slower than
        TensorFlow's kernels (``benchmarks/training_options.py``). Exports are unaffected.
      example_format: ``per_prefix`` (default: one example per training interaction, its history
        → the item) or ``every_position`` (one sequence of up to ``model.history.max_length`` items
        per example, every position predicting its next item in one pass; needs a sequence
        ``model.history.encoder``).
      group_by_length: with ``every_position``, batch sequences of similar length together and
        compute each batch only over its longest sequence's positions (its all-padding slots
        dropped: every valid position's query is the same, since padding never changes one). Each
        epoch's order is cut into windows of 50 batches, each window sorted by length and cut into
        batches, and the epoch's full batches shuffled (the length-grouped samplers of fairseq and
        Hugging Face): the same examples per epoch, fewer padded positions per step. A batch's loss
        is then its positions' sum over the epoch's mean targets per batch, not their mean, so every
        position weighs as in randomly mixed batches (``TwoTowerModel.targets_per_batch``); with
        in-batch negatives a batch's negatives are users of similar history length. Off by default.
      distribute: the ``tf.distribute`` strategy: ``none`` (one device), ``mirrored`` (every local
        GPU) or ``multi_worker`` (the machines of ``TF_CONFIG``); the loss scores every replica's
        queries against the global batch.
      tensorboard: write TensorBoard logs (the loss of every epoch, the graph) to ``RUN/tensorboard``.
      tensorboard_embeddings: also write the trained candidate embeddings there for the projector
        (the first 10,000 candidates, labelled with their features); needs ``tensorboard: true``.
      checkpoint_every_steps, checkpoint_every_seconds: besides every epoch end, a checkpoint
        (model, optimizer, loss state, data position) every that many steps and every that many
        seconds (0: off; default every 10 minutes). A killed run resumes from the last one when
        the same command is rerun.
      early_stopping: null (off, default) or ``{metric: HR@10, patience: 2, min_delta: 0, refit: false}``:
        stop when the validation metric (needs ``data.validation``) has not improved by more than
        ``min_delta`` for ``patience`` epochs; the towers end with the best epoch's weights, or
        with ``refit`` are retrained on the training and validation interactions for that many
        epochs (:class:`EarlyStoppingConfig`).
      stop_on_collapse: stop the run with an error at the collapse check that finds the model
        collapsed (every candidate embedding pointing one way, or every candidate scoring the
        same), keeping the last checkpoint from before it; false (default): warn, train on, and
        flag the collapse in the run's ``collapse.json``. Every epoch end checks, on a fixed
        sample of 2,048 catalogue rows and 256 training queries, and writes
        ``mean_resultant_length`` and ``score_spread`` to the history (see ``tfrec_towers/collapse.py``).
      collapse_check_every_steps: also check for a collapse every this many steps (0: epoch ends only).
      collapse_max_mean_resultant_length: a collapse when the candidate embeddings' mean resultant
        length ‖mean(v/‖v‖)‖ is above it, in (0, 1] (1: never).
      collapse_min_score_spread: a collapse when the score spread (per query, the standard
        deviation of its scores divided by their range, averaged) is below it, in [0, 0.5] (0: never).
    """

    epochs: int = 10
    batch_size: int = 512
    learning_rate: float = 0.003
    learning_rate_warmup_steps: int = 0
    learning_rate_decay: Literal["none", "cosine", "linear"] = "none"
    final_learning_rate_fraction: float = 0.0
    optimizer: Literal["adam", "lazy_adam", "adagrad", "sgd"] = "lazy_adam"
    adam_beta_2: float = DEFAULT_ADAM_BETA_2
    seed: int = 0
    steps_per_execution: int = 1
    jit_compile: bool = False
    example_format: Literal["per_prefix", "every_position"] = "per_prefix"
    group_by_length: bool = False
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    tensorboard: bool = False
    tensorboard_embeddings: bool = False
    checkpoint_every_steps: int = 0
    checkpoint_every_seconds: float = 600.0
    early_stopping: Optional[EarlyStoppingConfig] = None
    stop_on_collapse: bool = False
    collapse_check_every_steps: int = 0
    collapse_max_mean_resultant_length: float = DEFAULT_MAX_MEAN_RESULTANT_LENGTH
    collapse_min_score_spread: float = DEFAULT_MIN_SCORE_SPREAD

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            _require(getattr(self, name) > 0, f"training.{name}", "positive", getattr(self, name))
        _require(
            _finite_at_least(self.learning_rate, 0.0, low_open=True),
            "training.learning_rate",
            "a positive float",
            self.learning_rate,
        )
        _require(
            self.learning_rate_warmup_steps >= 0,
            "training.learning_rate_warmup_steps",
            "≥ 0 (0 turns it off)",
            self.learning_rate_warmup_steps,
        )
        _require(
            0.0 <= self.final_learning_rate_fraction <= 1.0,
            "training.final_learning_rate_fraction",
            "in [0, 1]",
            self.final_learning_rate_fraction,
        )
        _require(
            _finite_at_least(self.adam_beta_2, 0.0, low_open=True) and self.adam_beta_2 < 1.0,
            "training.adam_beta_2",
            "in (0, 1)",
            self.adam_beta_2,
        )
        if self.adam_beta_2 != DEFAULT_ADAM_BETA_2 and self.optimizer not in ADAM_OPTIMIZERS:
            raise ConfigError(
                f"`training.adam_beta_2` is Adam's: it needs `training.optimizer` adam or lazy_adam "
                f"(received {self.optimizer!r}, which has no second-moment decay)."
            )
        _require(0 <= self.seed <= MAX_SEED, "training.seed", f"an integer in [0, {MAX_SEED}]", self.seed)
        _require(self.steps_per_execution > 0, "training.steps_per_execution", "positive", self.steps_per_execution)
        if self.steps_per_execution > 1 and self.distribute != "none":
            raise ConfigError(
                f"`training.steps_per_execution`={self.steps_per_execution} needs `training.distribute: none`: "
                "under tf.distribute the replicas' cross-replica gathers of a multi-step call fall out of step "
                f"(TensorFlow matches them across steps). Use 1 with `training.distribute: {self.distribute}`."
            )
        _require(
            self.checkpoint_every_steps >= 0,
            "training.checkpoint_every_steps",
            "≥ 0 (0 turns it off)",
            self.checkpoint_every_steps,
        )
        _require(
            _finite_at_least(self.checkpoint_every_seconds, 0.0),
            "training.checkpoint_every_seconds",
            "≥ 0 (0 turns it off)",
            self.checkpoint_every_seconds,
        )
        if self.group_by_length and self.example_format != "every_position":
            raise ConfigError(
                "`training.group_by_length` groups sequences by length: it needs `training.example_format: "
                f"every_position` (received {self.example_format!r}, whose examples all have the history's width)."
            )
        if self.tensorboard_embeddings and not self.tensorboard:
            raise ConfigError(
                "`training.tensorboard_embeddings` needs `training.tensorboard: true` (the projector reads RUN/tensorboard)."
            )
        _require(
            self.collapse_check_every_steps >= 0,
            "training.collapse_check_every_steps",
            "≥ 0 (0: epoch ends only)",
            self.collapse_check_every_steps,
        )
        _require(
            0.0 < self.collapse_max_mean_resultant_length <= 1.0,
            "training.collapse_max_mean_resultant_length",
            "in (0, 1] (1 turns this check off)",
            self.collapse_max_mean_resultant_length,
        )
        _require(
            0.0 <= self.collapse_min_score_spread <= 0.5,
            "training.collapse_min_score_spread",
            "in [0, 0.5] (0 turns this check off)",
            self.collapse_min_score_spread,
        )


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The SavedModel written after training, for TF Serving.

    Attributes:
      model_name: the model's directory under the export base (``<base>/<model_name>/<version>``).
      index: ``brute-force`` (exact, stock TF Serving) or ``scann`` (needs TF Serving with ScaNN ops).
      k: candidates returned per query (positive).
      verify: load the export in a fresh process and check its signatures after writing it.
      exclude_history: remove the query's history items from serving_default's top k (still k
        results): the index retrieves k + L candidates for a history of width L and keeps the best
        k whose ids are not in the request's history.
    """

    model_name: str = "tfrec_towers"
    index: Literal["brute-force", "scann"] = "brute-force"
    k: int = 100
    verify: bool = True
    exclude_history: bool = False

    def __post_init__(self) -> None:
        _require(self.k > 0, "export.k", "positive", self.k)
        _require(
            self.model_name not in ("", ".", "..") and not any(c in self.model_name for c in "/\\\0"),
            "export.model_name",
            "a directory name (not empty, '.' or '..'; no '/', '\\' or NUL)",
            self.model_name,
        )


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """How the held-out interactions are ranked.

    Attributes:
      filter_seen: drop the items the user interacted with before (its history) from the ranking
        (default true); false ranks the target among the whole catalogue.
    """

    filter_seen: bool = True


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs; saved as ``config.json`` next to its outputs.

    The default loss is the in-batch softmax plus 512 mixed negatives drawn uniformly from the
    corpus (Yang et al., WWW 2020), with logQ correction from exact training counts: the best
    combination of ``benchmarks/ablation.py`` (on ml-100k level with the streaming estimator, both
    about 1.5x the plain TFRS recipe's HR@50; well ahead of streaming on the synthetic data, whose
    head items appear many times per batch). Use ``loss.logq: streaming`` for unbounded or drifting
    streams. These are :class:`LossConfig`'s own defaults; :data:`PLAIN_IN_BATCH` is TFRS's recipe.
    """

    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = LossConfig()
    training: TrainingConfig = TrainingConfig()
    export: ExportConfig = ExportConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    def __post_init__(self) -> None:
        if self.training.early_stopping is not None and self.data.validation == "none":
            raise ConfigError(
                "`training.early_stopping` watches a validation metric: set `data.validation` to 'last' or 'time'."
            )


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" Did you mean `{close[0]}`?" if close else f" Valid keys: {sorted(valid)}."


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_INT64 = (-(2**63), 2**63 - 1)


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """``value`` read from a file or ``--set`` as the field type ``annotation``.

    Raises:
      ConfigError: naming ``path``, if ``value`` is not of that type (a float must be finite,
        an int must fit in 64 bits).
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if value is None:  # an empty section (`loss:` with nothing under it) keeps its defaults
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"`{path}` must be a mapping of {annotation.__name__} fields. Received: {value!r}")
        return _build(annotation, value, path)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"`{path}` must be one of {list(args)}. Received: {value!r}")
        return value
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{path}` must be a list. Received: {value!r}")
        return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{path}` must be true or false. Received: {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{path}` must be an integer. Received: {value!r}")
        if not _INT64[0] <= value <= _INT64[1]:
            raise ConfigError(f"`{path}` must be an integer that fits in 64 bits. Received: {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads `1e-3` (no dot) as text; JSON and YAML 1.2 as a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{path}` must be a number. Received: {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"`{path}` must be a finite number. Received: {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{path}` must be a string. Received: {value!r}")
        return value
    return value


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"Unknown configuration key `{path}`.{_suggest(str(key), fields)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"`{prefix or cls.__name__}`: {e}") from e


def config_from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """Validates a nested mapping into an :class:`ExperimentConfig` (missing keys take defaults).

    Raises:
      ConfigError: a key is unknown or a value is invalid (the message names the key).
    """
    return _build(ExperimentConfig, values)


def config_to_dict(config: ExperimentConfig) -> Dict[str, Any]:
    """The configuration as plain JSON-able values (tuples become lists): what :func:`config_from_dict` reads."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def _syntax_error(error: json.JSONDecodeError | yaml.YAMLError) -> str:
    """Where and what a JSON or YAML parser found wrong: ``"line 3, column 1: expected …"``."""
    if isinstance(error, json.JSONDecodeError):
        return f"line {error.lineno}, column {error.colno}: {error.msg}"
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is None or problem is None:
        return str(error)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_config(path: str | Path) -> ExperimentConfig:
    """Reads a YAML (``.yaml``/``.yml``) or JSON (``.json``) file, UTF-8 encoded.

    Args:
      path: the file; keys it omits keep their defaults.

    Returns:
      The validated configuration.

    Raises:
      ConfigError: the file is missing, a directory, unreadable, not UTF-8 or not valid
        YAML/JSON, does not hold a mapping, or a key or value is invalid (the message names
        the file and the key).
    """
    path = Path(path)
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    if path.is_dir():
        raise ConfigError(f"Configuration file {path} is a directory: expected a YAML or JSON file.")
    if not path.exists():
        raise ConfigError(f"Configuration file {path} does not exist.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"Configuration file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
            "save it as UTF-8."
        ) from e
    except OSError as e:
        raise ConfigError(f"Configuration file {path} cannot be read: {e.strerror}.") from e
    try:
        values = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"Configuration file {path} is not valid {kind} ({_syntax_error(e)}).") from e
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"Configuration file {path} must hold a mapping of sections "
            f"({', '.join(f.name for f in dataclasses.fields(ExperimentConfig))}) at the top level. "
            f"Received: a {type(values).__name__}."
        )
    try:
        return config_from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def apply_overrides(config: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """Applies ``section.key=value`` strings (values parsed as YAML: ``5``, ``0.1``, ``[64, 32]``).

    Raises:
      ConfigError: an override is malformed, names an unknown key, its value is not valid
        YAML, or the result is invalid (the message names the override or the key).
    """
    values = config_to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like `section.key=value`.")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        keys = dotted.split(".")
        node = values
        for depth, key in enumerate(keys[:-1]):
            where = ".".join(keys[: depth + 1])
            if key not in node:
                raise ConfigError(f"Unknown configuration key `{where}`.{_suggest(key, list(node))}")
            if not isinstance(node[key], dict):
                raise ConfigError(f"`{where}` is a value, not a section: set it whole with `{where}=VALUE`.")
            node = node[key]
        if keys[-1] not in node:
            raise ConfigError(f"Unknown configuration key `{dotted}`.{_suggest(keys[-1], list(node))}")
        try:
            node[keys[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"Override {item!r}: the value {raw!r} is not valid YAML ({_syntax_error(e)}). "
                "Write lists as [64, 32] and quote text with YAML punctuation."
            ) from e
    return config_from_dict(values)


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Writes ``config`` as JSON (:func:`load_config` reads it back), atomically: a temporary
    sibling is written, then renamed over ``path``; a failed write leaves ``path`` as it was."""
    write_text_atomically(path, json.dumps(config_to_dict(config), indent=2) + "\n")

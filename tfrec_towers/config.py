"""The experiment configuration: typed dataclasses, validated once at the edge.

Load from YAML or JSON with :func:`load_config`, override single fields with ``--set
training.epochs=5`` (:func:`apply_overrides`), save the resolved configuration with
:func:`save_config`. Unknown keys and wrong types fail before any work starts, naming the key
and suggesting the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Any, Dict, Literal, Mapping, Optional, Sequence, Tuple

import yaml

from tfrec_towers.history_encoders import HistoryEncoderConfig
from tfrec_towers.towers import TowerConfig


class ConfigError(ValueError):
    """A configuration key is unknown, or its value has the wrong type or range."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the examples come from.

    Attributes:
      dataset: ``"synthetic"`` (the embedded default) or ``"movielens"`` (needs ``data_dir``).
      data_dir: a MovieLens release directory (ml-100k, ml-1m, ml-20m, ml-25m, ml-latest).
      max_history: items of history per example (most recent last).
      num_items, num_users, interactions_per_user: sizes of the synthetic data.
    """

    dataset: Literal["synthetic", "movielens"] = "synthetic"
    data_dir: Optional[str] = None
    max_history: int = 50
    num_items: int = 5000
    num_users: int = 2000
    interactions_per_user: int = 30

    def __post_init__(self) -> None:
        if self.dataset == "movielens" and not self.data_dir:
            raise ConfigError("`data.data_dir` is required when `data.dataset` is 'movielens'.")
        for name in ("max_history", "num_items", "num_users", "interactions_per_user"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`data.{name}` must be positive. Received: {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    """How the data set's columns are embedded.

    Attributes:
      embedding_dim: width of every id and category embedding.
      history_pooling: ``mean``, ``sum`` or ``max`` over the history's valid items.
      share_item_embeddings: the history and the candidate id read one embedding table.
      num_oov_buckets: out-of-vocabulary rows of every vocabulary.
    """

    embedding_dim: int = 64
    history_pooling: Literal["mean", "sum", "max"] = "mean"
    share_item_embeddings: bool = True
    num_oov_buckets: int = 1

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "num_oov_buckets"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`features.{name}` must be positive. Received: {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The towers and the temperature of the scores s(q, v) = ⟨u, v⟩ / τ.

    Attributes:
      query_tower, candidate_tower: the MLP of each tower.
      temperature: τ.
      history: how the query tower reads the history: ``encoder`` ``attention`` (default: attention
        pooling with a learned query and a learned recency bias over the last ``max_length`` items),
        ``pooling`` (pooled by ``features.history_pooling``), ``mean``, ``gru`` or ``transformer``, with
        ``num_layers``, ``num_heads``, ``dropout`` and ``max_length`` (see ``history_encoders.py``).
    """

    query_tower: TowerConfig = TowerConfig()
    candidate_tower: TowerConfig = TowerConfig()
    temperature: float = 0.05
    history: HistoryEncoderConfig = HistoryEncoderConfig(encoder="attention")

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"`model.temperature` must be a positive float. Received: {self.temperature}")


@dataclasses.dataclass(frozen=True)
class FrequencyConfig:
    """The streaming frequency estimator of Yi et al. (RecSys 2019), Algorithms 2 and 3."""

    num_hashes: int = 2
    hash_buckets: int = 2**17
    learning_rate: float = 0.05

    def __post_init__(self) -> None:
        for name in ("num_hashes", "hash_buckets"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`loss.frequency.{name}` must be positive. Received: {getattr(self, name)}")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ConfigError(f"`loss.frequency.learning_rate` (α) must be in (0, 1]. Received: {self.learning_rate}")


@dataclasses.dataclass(frozen=True)
class AdaptiveConfig:
    """Adaptive margin and temperature (Li et al., EMNLP 2023); paper defaults."""

    enabled: bool = False
    strength: float = 0.5
    base_margin: float = 0.01
    base_temperature: float = 1.0 / 30.0
    item_anchored_weight: float = 0.05

    def __post_init__(self) -> None:
        for name in ("strength", "item_anchored_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"`loss.adaptive.{name}` must be in [0, 1]. Received: {getattr(self, name)}")
        if self.base_margin < 0:
            raise ConfigError(f"`loss.adaptive.base_margin` must be ≥ 0. Received: {self.base_margin}")
        if self.base_temperature <= 0:
            raise ConfigError(f"`loss.adaptive.base_temperature` must be positive. Received: {self.base_temperature}")


MODES = ("softmax", "bce", "bpr", "hinge", "symmetric")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The retrieval loss: mode, negatives, logQ correction, temperature, adaptive margins.

    Attributes:
      mode: ``softmax`` (list-wise, default), ``bce`` (point-wise), ``bpr`` / ``hinge``
        (pair-wise) or ``symmetric`` (CLIP-style in-batch softmax in both directions).
      margin: the hinge margin (required by, and only for, ``hinge``).
      hardest_negative_only: pair-wise modes score only each row's hardest negative.
      negative_weight: weight of the negatives' term in ``bce``.
      candidate_to_query_weight: weight of the candidate→query direction in ``symmetric``.
      learnable_temperature: learn log τ (initialised at ``model.temperature``).
      logq: ``none``, ``counts`` (exact, from the training data) or ``streaming`` (estimated).
      frequency: the streaming estimator's parameters.
      memory_bank_size: M recent candidates reused as negatives (0: off).
      memory_bank_warmup_steps: steps of in-batch negatives only before the bank is used.
      mixed_negatives: B' candidates drawn uniformly from the corpus per step (0: off).
      adaptive: adaptive margins and temperatures (replace ``model.temperature``).
    """

    mode: Literal["softmax", "bce", "bpr", "hinge", "symmetric"] = "softmax"
    margin: Optional[float] = None
    hardest_negative_only: bool = False
    negative_weight: float = 1.0
    candidate_to_query_weight: float = 0.5
    learnable_temperature: bool = False
    logq: Literal["none", "counts", "streaming"] = "none"
    frequency: FrequencyConfig = FrequencyConfig()
    memory_bank_size: int = 0
    memory_bank_warmup_steps: int = 0
    mixed_negatives: int = 0
    adaptive: AdaptiveConfig = AdaptiveConfig()

    def __post_init__(self) -> None:
        if self.mode == "hinge" and self.margin is None:
            raise ConfigError("`loss.margin` is required when `loss.mode` is 'hinge'.")
        if self.mode != "hinge" and self.margin is not None:
            raise ConfigError(f"`loss.margin` applies only to `loss.mode` 'hinge', not {self.mode!r}.")
        if self.hardest_negative_only and self.mode not in ("bpr", "hinge"):
            raise ConfigError(f"`loss.hardest_negative_only` applies to the pair-wise modes, not {self.mode!r}.")
        for name in ("memory_bank_size", "memory_bank_warmup_steps", "mixed_negatives"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`loss.{name}` must be ≥ 0 (0 turns it off). Received: {getattr(self, name)}")
        if self.mode == "symmetric" and (self.memory_bank_size or self.mixed_negatives or self.adaptive.enabled):
            raise ConfigError(
                "`loss.mode` 'symmetric' scores square in-batch logits: it does not combine with "
                "`loss.memory_bank_size`, `loss.mixed_negatives` or `loss.adaptive.enabled`."
            )
        if self.adaptive.enabled and self.learnable_temperature:
            raise ConfigError("`loss.adaptive.enabled` sets per-negative temperatures: turn `loss.learnable_temperature` off.")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation. ``seed`` seeds TensorFlow, numpy, the shuffles and the synthetic data.

    ``example_format``: ``per_prefix`` (default: one example per training interaction, its history
    → the item) or ``every_position`` (one sequence of up to ``model.history.max_length`` items per
    example, every position predicting its next item in one pass; needs a sequence
    ``model.history.encoder``). ``batch_size`` counts examples: sequences for ``every_position``.

    ``distribute``: the ``tf.distribute`` strategy (:mod:`pipelines.distribute`): ``none`` (one
    device), ``mirrored`` (every local GPU) or ``multi_worker`` (the machines of ``TF_CONFIG``);
    ``batch_size`` is then the global batch, and the loss scores every replica's queries against it.

    ``tensorboard``: write TensorBoard logs (the loss of every epoch, the graph) to ``RUN/tensorboard``.
    ``tensorboard_embeddings``: also write the trained candidate embeddings there for the projector
    (the first 10,000 candidates, labelled with their features); needs ``tensorboard: true``.

    ``checkpoint_every_steps``, ``checkpoint_every_seconds``: besides every epoch end, a checkpoint
    (model, optimizer, loss state, data position) every that many steps and every that many seconds
    (0: off; default every 10 minutes; a save of the default synthetic model takes about 0.1 s). A
    killed run resumes from the last one when the same command is rerun (:mod:`pipelines.checkpointing`).
    """

    epochs: int = 10
    batch_size: int = 512
    learning_rate: float = 0.003
    optimizer: Literal["adam", "adagrad", "sgd"] = "adam"
    seed: int = 0
    example_format: Literal["per_prefix", "every_position"] = "per_prefix"
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    tensorboard: bool = False
    tensorboard_embeddings: bool = False
    checkpoint_every_steps: int = 0
    checkpoint_every_seconds: float = 600.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`training.{name}` must be positive. Received: {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"`training.learning_rate` must be positive. Received: {self.learning_rate}")
        for name in ("checkpoint_every_steps", "checkpoint_every_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`training.{name}` must be ≥ 0 (0 turns it off). Received: {getattr(self, name)}")
        if self.tensorboard_embeddings and not self.tensorboard:
            raise ConfigError(
                "`training.tensorboard_embeddings` needs `training.tensorboard: true` (the projector reads RUN/tensorboard)."
            )


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The SavedModel written after training (DESIGN §5)."""

    model_name: str = "tfrec_towers"
    index: Literal["brute-force", "scann"] = "brute-force"
    k: int = 100
    verify: bool = True

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ConfigError(f"`export.k` must be positive. Received: {self.k}")
        if not self.model_name or "/" in self.model_name:
            raise ConfigError(f"`export.model_name` must be a non-empty name without '/'. Received: {self.model_name!r}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs; saved as ``config.json`` next to its outputs.

    The default loss is the in-batch softmax plus 512 mixed negatives drawn uniformly from the
    corpus (Yang et al., WWW 2020), with logQ correction from exact training counts: the best
    combination of ``benchmarks/ablation.py`` (on ml-100k level with the streaming estimator, both
    about 1.5x the plain TFRS recipe's HR@50; well ahead of streaming on the synthetic data, whose
    head items appear many times per batch). Use ``loss.logq: streaming`` for unbounded or drifting
    streams. A plain ``LossConfig()`` is TFRS's in-batch softmax.
    """

    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig(logq="counts", mixed_negatives=512)
    training: TrainingConfig = TrainingConfig()
    export: ExportConfig = ExportConfig()


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" Did you mean `{close[0]}`?" if close else f" Valid keys: {sorted(valid)}."


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
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
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{path}` must be a number. Received: {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{path}` must be a string. Received: {value!r}")
        return value
    return value


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(f"Unknown configuration key `{path}`.{_suggest(key, fields)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"`{prefix or cls.__name__}`: {e}") from e


def config_from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """Validates a nested mapping into an :class:`ExperimentConfig` (missing keys take defaults)."""
    return _build(ExperimentConfig, values)


def config_to_dict(config: ExperimentConfig) -> Dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def load_config(path: str | Path) -> ExperimentConfig:
    """Reads a YAML (``.yaml``/``.yml``) or JSON file.

    Raises:
      ConfigError: the file is missing or unreadable, or a key or value is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Configuration file {path} does not exist.")
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"Configuration file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from e
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"Configuration file {path} must hold a mapping at the top level.")
    try:
        return config_from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def apply_overrides(config: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """Applies ``section.key=value`` strings (values parsed as YAML: ``5``, ``0.1``, ``[64, 32]``)."""
    values = config_to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like `section.key=value`.")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = values
        for depth, key in enumerate(keys[:-1]):
            if key not in node or not isinstance(node[key], dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"Unknown configuration key `{where}`.{_suggest(key, list(node))}")
            node = node[key]
        if keys[-1] not in node:
            raise ConfigError(f"Unknown configuration key `{dotted}`.{_suggest(keys[-1], list(node))}")
        node[keys[-1]] = yaml.safe_load(raw)
    return config_from_dict(values)


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config_to_dict(config), indent=2) + "\n")

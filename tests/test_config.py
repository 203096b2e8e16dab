"""Experiment configuration: round trip, one source of defaults, validation messages, overrides."""

import dataclasses
import json
import math
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml

from tfrec_towers.config import (
    PLAIN_IN_BATCH,
    AdaptiveConfig,
    ConfigError,
    EarlyStoppingConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    TrainingConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from tfrec_towers.config_template import commented_yaml
from tfrec_towers.data_config import FeatureDeclaration, RowFilter
from tfrec_towers.history_encoders import HistoryEncoderConfig
from tfrec_towers.losses.factory import build_retrieval_task
from tfrec_towers.towers import TowerConfig


def test_round_trip_through_json(tmp_path):
    config = apply_overrides(ExperimentConfig(), ["model.query_tower.hidden_units=[128, 64]", "training.epochs=3"])
    save_config(config, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == config
    assert config.model.query_tower.hidden_units == (128, 64)


def test_yaml_file_with_partial_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  epochs: 2\n  learning_rate: 0.01\nmodel:\n  temperature: 0.1\n")
    config = load_config(path)
    assert (config.training.epochs, config.training.learning_rate, config.model.temperature) == (2, 0.01, 0.1)
    assert config.training.batch_size == ExperimentConfig().training.batch_size


def test_unknown_key_suggests_the_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown configuration key `training.epoch`. Did you mean `epochs`\?"):
        config_from_dict({"training": {"epoch": 3}})
    with pytest.raises(ConfigError, match="Did you mean `temperature`"):
        apply_overrides(ExperimentConfig(), ["model.temprature=0.1"])
    path = tmp_path / "bad.yaml"
    path.write_text("trainng:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: Unknown configuration key `trainng`. Did you mean `training`"):
        load_config(path)


def test_wrong_types_and_ranges_name_the_key():
    with pytest.raises(ConfigError, match="`training.epochs` must be an integer. Received: 'many'"):
        config_from_dict({"training": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="`export.index` must be one of"):
        config_from_dict({"export": {"index": "faiss"}})
    with pytest.raises(ConfigError, match="`model.temperature` must be a positive float"):
        config_from_dict({"model": {"temperature": -1}})
    with pytest.raises(ConfigError, match="`data.data_dir` is required"):
        config_from_dict({"data": {"dataset": "movielens"}})
    with pytest.raises(ConfigError, match="dropout"):
        config_from_dict({"model": {"query_tower": {"dropout": 2.0}}})
    with pytest.raises(ConfigError, match="must look like"):
        apply_overrides(ExperimentConfig(), ["training.epochs"])


def test_saved_form_is_plain_json(tmp_path):
    values = config_to_dict(ExperimentConfig())
    assert json.loads(json.dumps(values)) == values
    assert values["model"]["query_tower"]["hidden_units"] == list(ExperimentConfig().model.query_tower.hidden_units)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


# --- One source of defaults: every way of building a configuration agrees ------------------------


def _leaves(cls, prefix=""):
    """``(dotted key, annotation, default)`` of every non-section field of ``cls``, recursively."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(hints[field.name]):
            yield from _leaves(hints[field.name], f"{key}.")
        else:
            yield key, hints[field.name], field.default


def _sections(cls, prefix=""):
    """``(dotted key, section default)`` of every nested section of ``cls``, recursively."""
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(field.default):
            yield f"{prefix}{field.name}", field.default
            yield from _sections(type(field.default), f"{prefix}{field.name}.")


# Fields whose valid non-default values need a companion field, or a specific value.
COMPANIONS = {
    "data.dataset": {"data.dataset": "movielens", "data.data_dir": "ml-100k"},
    "data.interactions.path": {"data.dataset": "interactions", "data.interactions.path": "log.parquet"},
    "data.users.path": {
        "data.dataset": "interactions",
        "data.interactions.path": "log.parquet",
        "data.users.path": "users.csv",
    },
    "data.items.path": {
        "data.dataset": "interactions",
        "data.interactions.path": "log.parquet",
        "data.items.path": "items.csv",
    },
    "data.interactions.filter": {"data.interactions.filter": RowFilter("event", ("purchase", "add_to_cart"))},
    "data.split.kind": {"data.split.kind": "time", "data.split.cut_fraction": 0.9},
    "data.split.cut": {"data.split.kind": "time", "data.split.cut": "2024-03-01"},
    "data.split.cut_fraction": {"data.split.kind": "time", "data.split.cut_fraction": 0.8},
    "data.test.path": {
        "data.dataset": "interactions",
        "data.interactions.path": "log.parquet",
        "data.split.kind": "given",
        "data.test.path": "test.parquet",
    },
    "training.early_stopping": {
        "data.validation": "last",
        "training.early_stopping": EarlyStoppingConfig(metric="NDCG@50", patience=3),
    },
    "features.query": {
        "features.query": (
            FeatureDeclaration(name="user_id", kind="id"),
            FeatureDeclaration(name="history", kind="history"),
        )
    },
    "features.candidate": {
        "features.candidate": (
            FeatureDeclaration(name="item_id", kind="id"),
            FeatureDeclaration(name="tags", kind="multi_valued"),
        )
    },
    "loss.margin": {"loss.mode": "hinge", "loss.margin": 0.2},
    "loss.hardest_negative_only": {"loss.mode": "bpr", "loss.hardest_negative_only": True},
    "loss.memory_bank_refresh_every_steps": {
        "loss.memory_bank_size": 4096,
        "loss.memory_bank_refresh_every_steps": 200,
    },
    "training.group_by_length": {"training.example_format": "every_position", "training.group_by_length": True},
    "model.history.block": {"model.history.encoder": "transformer", "model.history.block": "sasrec"},
    "model.history.positions": {"model.history.encoder": "transformer", "model.history.positions": "from_newest"},
    "loss.hinge_weight": {"loss.mode": "softmax_hinge", "loss.margin": 0.2, "loss.hinge_weight": 0.5},
    "loss.hinge_start_steps": {"loss.mode": "softmax_hinge", "loss.margin": 0.2, "loss.hinge_start_steps": 100},
    "loss.hinge_ramp_steps": {"loss.mode": "softmax_hinge", "loss.margin": 0.2, "loss.hinge_ramp_steps": 500},
    "training.tensorboard_embeddings": {"training.tensorboard": True, "training.tensorboard_embeddings": True},
    "model.query_tower.output_dim": {"model.query_tower.output_dim": 32, "model.candidate_tower.output_dim": 32},
    "model.candidate_tower.output_dim": {"model.query_tower.output_dim": 16, "model.candidate_tower.output_dim": 16},
    "model.query_tower.activation": {"model.query_tower.activation": "tanh"},
    "model.candidate_tower.activation": {"model.candidate_tower.activation": "gelu"},
}


def _other_value(annotation, default):
    """A valid value of ``annotation`` different from ``default``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return next(choice for choice in args if choice != default)
    if origin is typing.Union:
        inner = next(a for a in args if a is not type(None))
        return _other_value(inner, None) if default is None else None
    if origin is tuple:
        return tuple(default) + (8,)
    if annotation is bool:
        return not default
    if annotation is int:
        return default + 1
    if annotation is float:
        return default / 2 if default else 0.5
    if annotation is str:
        return "ml-100k" if default is None else f"{default}_b"
    raise AssertionError(f"no value generator for {annotation}")


def _changes(key, annotation, default):
    return COMPANIONS.get(key) or {key: _other_value(annotation, default)}


def _replace(config, changes):
    """``config`` with each dotted key of ``changes`` set to its value, each section rebuilt once
    with ``dataclasses.replace`` (so companion fields change together)."""
    direct, nested = {}, {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    sections = {head: _replace(getattr(config, head), inner) for head, inner in nested.items()}
    return dataclasses.replace(config, **direct, **sections)


def _nested(changes):
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}`` with tuples as lists, as a user writes a file."""
    values = {}
    for key, value in changes.items():
        *sections, leaf = key.split(".")
        node = values
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = _plain(value)
    return values


def _plain(value):
    """A value as a user writes it in a file: tuples as lists, sections as mappings."""
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


LEAVES = list(_leaves(ExperimentConfig))


def test_the_leaf_list_holds_every_field_of_every_section():
    def flat(values, prefix=""):
        for name, value in values.items():
            yield from flat(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"]

    keys = [key for key, _, _ in LEAVES]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(flat(json.loads(json.dumps(dataclasses.asdict(ExperimentConfig())))))
    for key in (
        "loss.frequency.hash_buckets",
        "loss.adaptive.base_temperature",
        "model.query_tower.dropout",
        "model.history.max_length",
        "training.checkpoint_every_seconds",
        "export.verify",
        "loss.margin",
    ):
        assert key in keys
    assert set(COMPANIONS) <= set(keys)


def test_class_defaults_are_the_product_defaults():
    default = ExperimentConfig()
    assert LossConfig() == default.loss and HistoryEncoderConfig() == default.model.history
    assert TowerConfig() == default.model.query_tower == default.model.candidate_tower
    for key, section in _sections(ExperimentConfig):
        assert type(section)() == section, key
    # The documented product defaults (README, ExperimentConfig): in-batch softmax + 512 mixed
    # negatives + logQ from exact counts, attention pooling of the history.
    assert (default.loss.mode, default.loss.logq, default.loss.mixed_negatives) == ("softmax", "counts", 512)
    assert default.model.history.encoder == "attention"
    assert (PLAIN_IN_BATCH.logq, PLAIN_IN_BATCH.mixed_negatives) == ("none", 0)
    assert dataclasses.replace(default.loss, logq="none", mixed_negatives=0) == PLAIN_IN_BATCH


@pytest.mark.parametrize("key, annotation, default", LEAVES, ids=[key for key, _, _ in LEAVES])
def test_one_field_set_in_a_file_by_set_or_in_the_template_changes_only_that_field(key, annotation, default, tmp_path):
    changes = _changes(key, annotation, default)
    expected = _replace(ExperimentConfig(), changes)
    assert expected != ExperimentConfig()

    path = tmp_path / "one_field.yaml"
    path.write_text(yaml.safe_dump(_nested(changes)))
    assert load_config(path) == expected
    overrides = [f"{changed}={json.dumps(_plain(v))}" for changed, v in changes.items()]
    assert apply_overrides(ExperimentConfig(), overrides) == expected
    template = tmp_path / "template.yaml"
    template.write_text(commented_yaml(expected))
    assert load_config(template) == expected


def test_a_partial_loss_or_history_section_keeps_the_product_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  memory_bank_size: 2048\nmodel:\n  history:\n    max_length: 100\n")
    config = load_config(path)
    assert (config.loss.logq, config.loss.mixed_negatives, config.loss.memory_bank_size) == ("counts", 512, 2048)
    assert (config.model.history.encoder, config.model.history.max_length) == ("attention", 100)
    assert config == apply_overrides(ExperimentConfig(), ["loss.memory_bank_size=2048", "model.history.max_length=100"])


def test_an_empty_section_keeps_its_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\ntraining:\n  epochs: 3\n")
    assert load_config(path) == dataclasses.replace(
        ExperimentConfig(), training=dataclasses.replace(ExperimentConfig().training, epochs=3)
    )


# --- Every value a layer would reject is rejected by the configuration, naming the key -----------

BAD_VALUES = [
    # (overrides, a regular expression the message must match: the key)
    (["model.temperature=.nan"], r"`model\.temperature` must be a finite number\. Received: nan"),
    (["model.temperature=.inf"], r"`model\.temperature` must be a finite number"),
    (["model.temperature=-.inf"], r"`model\.temperature` must be a finite number"),
    (["model.temperature=0"], r"`model\.temperature` must be a positive float"),
    (["model.temperature=100.5"], r"`model\.temperature` must be a positive float ≤ 100"),
    (["training.learning_rate=.nan"], r"`training\.learning_rate` must be a finite number"),
    (["training.learning_rate=0"], r"`training\.learning_rate` must be a positive float"),
    (["training.learning_rate=1e999"], r"`training\.learning_rate` must be a finite number"),
    (["training.checkpoint_every_seconds=.inf"], r"`training\.checkpoint_every_seconds` must be a finite number"),
    (["training.seed=-1"], r"`training\.seed` must be an integer in \[0, 4294967295\]"),
    (["training.seed=4294967296"], r"`training\.seed` must be an integer in \[0, 4294967295\]"),
    (["training.epochs=0"], r"`training\.epochs` must be positive"),
    (["training.batch_size=-4"], r"`training\.batch_size` must be positive"),
    (["training.epochs=100000000000000000000"], r"`training\.epochs` must be an integer that fits in 64 bits"),
    (["loss.mode=hinge", "loss.margin=-0.5"], r"`loss\.margin` must be a positive float"),
    (["loss.mode=hinge", "loss.margin=0"], r"`loss\.margin` must be a positive float"),
    (["loss.mode=hinge", "loss.margin=.nan"], r"`loss\.margin` must be a finite number"),
    (["loss.mode=hinge"], r"`loss\.margin` is required"),
    (["loss.negative_weight=0"], r"`loss\.negative_weight` must be a positive float"),
    (["loss.candidate_to_query_weight=1.5"], r"`loss\.candidate_to_query_weight` must be in \[0, 1\]"),
    (["loss.memory_bank_size=-1"], r"`loss\.memory_bank_size` must be ≥ 0"),
    (["loss.memory_bank_warmup_steps=-1"], r"`loss\.memory_bank_warmup_steps` must be ≥ 0"),
    (["loss.memory_bank_warmup_fraction=1"], r"`loss\.memory_bank_warmup_fraction` must be in \[0, 1\)"),
    (["loss.memory_bank_warmup_fraction=-0.1"], r"`loss\.memory_bank_warmup_fraction` must be in \[0, 1\)"),
    (["loss.mixed_negatives=-1"], r"`loss\.mixed_negatives` must be ≥ 0"),
    (["loss.mode=symmetric"], r"`loss\.mode` 'symmetric' .* `loss\.mixed_negatives`"),
    (["loss.frequency.learning_rate=0"], r"`loss\.frequency\.learning_rate` \(α\) must be in \(0, 1\]"),
    (["loss.frequency.learning_rate=.nan"], r"`loss\.frequency\.learning_rate` must be a finite number"),
    (["loss.frequency.num_hashes=0"], r"`loss\.frequency\.num_hashes` must be positive"),
    (["loss.frequency.hash_buckets=0"], r"`loss\.frequency\.hash_buckets` must be positive"),
    (["loss.adaptive.strength=1.5"], r"`loss\.adaptive\.strength` must be in \[0, 1\]"),
    (["loss.adaptive.item_anchored_weight=-0.1"], r"`loss\.adaptive\.item_anchored_weight` must be in \[0, 1\]"),
    (["loss.adaptive.base_margin=-0.01"], r"`loss\.adaptive\.base_margin` must be a finite float ≥ 0"),
    (["loss.adaptive.base_temperature=0.0005"], r"`loss\.adaptive\.base_temperature` must be a finite float ≥ 0\.001"),
    (["model.query_tower.dropout=1.0"], r"`model\.query_tower`: `dropout` must be in \[0, 1\)"),
    (["model.candidate_tower.dropout=-0.1"], r"`model\.candidate_tower`: `dropout` must be in \[0, 1\)"),
    (["model.query_tower.hidden_units=[64, 0]"], r"`model\.query_tower`: `hidden_units` must be positive ints"),
    (["model.query_tower.hidden_units=[64, true]"], r"`model\.query_tower\.hidden_units\[1\]` must be an integer"),
    (["model.query_tower.output_dim=0"], r"`model\.query_tower`: `output_dim` must be a positive int"),
    (["model.query_tower.activation=relu6x"], r"`model\.query_tower`: `activation` must be a Keras activation name"),
    (["model.query_tower.normalization=group"], r"`model\.query_tower\.normalization` must be one of"),
    (
        ["model.query_tower.output_dim=32"],
        r"`model\.query_tower\.output_dim` \(32\) and `model\.candidate_tower\.output_dim` \(64\) must be equal",
    ),
    (["model.history.num_heads=0"], r"`model\.history`: `num_heads` must be a positive int"),
    (["model.history.num_layers=0"], r"`model\.history`: `num_layers` must be a positive int"),
    (["model.history.max_length=0"], r"`model\.history`: `max_length` must be a positive int"),
    (["model.history.dropout=1.0"], r"`model\.history`: `dropout` must be in \[0, 1\)"),
    (["model.history.feature=''"], r"`model\.history`: `feature` must name"),
    (["data.max_history=0"], r"`data\.max_history` must be positive"),
    (["data.num_items=0"], r"`data\.num_items` must be positive"),
    (["data.interactions_per_user=1"], r"`data\.interactions_per_user` must be between 2 and `data\.num_items`"),
    (["data.num_items=20"], r"`data\.interactions_per_user` must be between 2 and `data\.num_items` \(20\)"),
    (["features.embedding_dim=0"], r"`features\.embedding_dim` must be positive"),
    (["features.num_oov_buckets=0"], r"`features\.num_oov_buckets` must be positive"),
    (["export.k=0"], r"`export\.k` must be positive"),
    (["export.model_name=a/b"], r"`export\.model_name` must be a directory name"),
    (["export.model_name='..'"], r"`export\.model_name` must be a directory name"),
    (["export.model_name=''"], r"`export\.model_name` must be a directory name"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_values_are_refused_naming_the_key(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(ExperimentConfig(), overrides)
    values = {}
    for item in overrides:
        key, raw = item.split("=", 1)
        values[key] = yaml.safe_load(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_nested(values)))  # JSON spells NaN and Infinity too
    with pytest.raises(ConfigError, match=rf"bad\.json: .*{message}"):
        load_config(path)


def test_library_construction_refuses_non_finite_values_too():
    with pytest.raises(ConfigError, match="`model.temperature`"):
        ModelConfig(temperature=math.nan)
    with pytest.raises(ConfigError, match="`training.learning_rate`"):
        TrainingConfig(learning_rate=math.inf)
    with pytest.raises(ConfigError, match="`loss.margin`"):
        LossConfig(mode="hinge", margin=math.inf)
    with pytest.raises(ConfigError, match="`loss.adaptive.base_margin`"):
        AdaptiveConfig(base_margin=math.nan)
    with pytest.raises(ValueError, match="`dropout`"):
        TowerConfig(dropout=math.nan)
    with pytest.raises(ValueError, match="`hidden_units` must be positive ints"):
        TowerConfig(hidden_units=(True,))
    with pytest.raises(ValueError, match="`dropout`"):
        HistoryEncoderConfig(dropout=math.nan)


def test_the_bounds_are_those_of_the_layers():
    """At each bound the layers accept the configuration; just past it they refuse it, as the configuration does."""
    at_bounds = [
        ["model.temperature=100", "loss.learnable_temperature=true"],
        ["loss.adaptive.enabled=true", "loss.adaptive.base_temperature=0.001", "loss.adaptive.base_margin=0"],
        ["loss.mode=hinge", "loss.margin=1e-6", "loss.frequency.learning_rate=1", "loss.logq=streaming"],
        ["loss.mode=symmetric", "loss.mixed_negatives=0", "loss.candidate_to_query_weight=1"],
        ["loss.mode=softmax_hinge", "loss.margin=1e-6", "loss.hinge_weight=1", "loss.hinge_ramp_steps=0"],
        ["loss.mode=softmax_hinge", "loss.margin=0.1", "loss.hinge_weight=1e-9", "loss.hinge_start_steps=0"],
    ]
    for overrides in at_bounds:
        config = apply_overrides(ExperimentConfig(), overrides)
        build_retrieval_task(
            config.loss, config.model.temperature, 8, "int64", training_ids=np.array([1, 2, 3]), corpus_size=3
        )
    for past_bound in ("model.temperature=100.001", "loss.adaptive.base_temperature=0.000999"):
        with pytest.raises(ConfigError):
            apply_overrides(ExperimentConfig(), [past_bound])
    default = ExperimentConfig()
    with pytest.raises(ValueError, match="temperature"):
        build_retrieval_task(default.loss, 100.001, 8, "int64", training_ids=np.array([1, 2, 3]), corpus_size=3)
    adaptive = dataclasses.replace(default.loss.adaptive, enabled=True)
    object.__setattr__(adaptive, "base_temperature", 0.000999)  # past the configuration's own check
    with pytest.raises(ValueError, match="min_temperature"):
        build_retrieval_task(
            dataclasses.replace(default.loss, adaptive=adaptive),
            0.05,
            8,
            "int64",
            training_ids=np.array([1, 2, 3]),
            corpus_size=3,
        )


# --- Reading files and overrides --------------------------------------------------------------------


def test_scientific_notation_without_a_dot_is_a_number():
    config = apply_overrides(ExperimentConfig(), ["training.learning_rate=1e-3", "model.temperature=5E-2"])
    assert (config.training.learning_rate, config.model.temperature) == (0.001, 0.05)
    with pytest.raises(ConfigError, match="`training.epochs` must be an integer. Received: '1e3'"):
        apply_overrides(ExperimentConfig(), ["training.epochs=1e3"])


def test_an_override_that_is_not_yaml_names_the_override():
    with pytest.raises(
        ConfigError, match=r"Override 'model.query_tower.hidden_units=\[1,': the value '\[1,' is not valid YAML"
    ):
        apply_overrides(ExperimentConfig(), ["model.query_tower.hidden_units=[1,"])
    with pytest.raises(ConfigError, match="`model.query_tower.hidden_units` is a value, not a section"):
        apply_overrides(ExperimentConfig(), ["model.query_tower.hidden_units.0=3"])


def test_a_directory_a_non_utf8_file_and_a_non_mapping_are_named(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path} is a directory: expected a YAML or JSON file"):
        load_config(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("export:\n  model_name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml is not UTF-8 text \(byte 0xe9 at offset 25\)"):
        load_config(latin)
    listed = tmp_path / "list.yaml"
    listed.write_text("- training\n- model\n")
    with pytest.raises(
        ConfigError,
        match=r"list\.yaml must hold a mapping of sections \(data, features, model, loss, "
        r"training, export, evaluation\) at the top level\. Received: a list",
    ):
        load_config(listed)
    broken = tmp_path / "broken.yaml"
    broken.write_text("training:\n  epochs: [1,\n")
    with pytest.raises(
        ConfigError, match=r"broken\.yaml is not valid YAML \(line 3, column 1: expected the node content"
    ):
        load_config(broken)
    trailing = tmp_path / "trailing.json"
    trailing.write_text('{"training": {"epochs": 2,}}')
    with pytest.raises(ConfigError, match=r"trailing\.json is not valid JSON \(line 1, column 27: Expecting"):
        load_config(trailing)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"training": {"epochs": 4}}).encode())
    assert load_config(bom).training.epochs == 4


def test_a_failed_save_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    save_config(apply_overrides(ExperimentConfig(), ["training.epochs=2"]), path)
    write_text = Path.write_text

    def crash_halfway(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", crash_halfway)
    with pytest.raises(OSError, match="No space left"):
        save_config(apply_overrides(ExperimentConfig(), ["training.epochs=3"]), path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert json.loads(path.read_text())["training"]["epochs"] == 2

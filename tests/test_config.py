"""Experiment configuration: round trip, validation messages, overrides."""

import json

import pytest

from tfrec_towers.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)


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

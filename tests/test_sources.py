"""One data path: MovieLens and the synthetic data are presets of the generic tables path, with the
schema of the exported model's contract and the hand-derived leave-last-out split."""

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import (
    EXPECTED_TARGETS,
    EXPECTED_TRAIN_HISTORY,
    EXPECTED_TRAIN_MOVIES,
    write_1m,
    write_100k,
)
from tfrec_pipelines.data import HistoryWindows
from tfrec_pipelines.interactions import InteractionTables
from tfrec_pipelines.sources import PRESETS_DIR, prepare_data, preset_declarations
from tfrec_towers.config import ExperimentConfig, apply_overrides, load_config
from tfrec_towers.features import CategoricalFeature, NumericFeature, SequenceFeature


@pytest.mark.parametrize("writer", [write_100k, write_1m])
def test_movielens_through_the_generic_path_has_the_contract_schema_and_the_hand_split(tmp_path, writer):
    directory = writer(tmp_path / "ml")
    config = apply_overrides(
        ExperimentConfig(), ["data.dataset=movielens", f"data.data_dir={directory}", "data.max_history=2"]
    )
    prepared = prepare_data(config)
    spec = prepared.spec
    kinds = {f.name: (type(f), f.dtype) for f in spec.all_features}
    assert kinds == {
        "user_id": (CategoricalFeature, "int64"),
        "gender": (CategoricalFeature, "string"),
        "age": (CategoricalFeature, "int64"),
        "occupation": (CategoricalFeature, "string"),
        "zip_code": (CategoricalFeature, "string"),
        "history": (SequenceFeature, "int64"),
        "movie_id": (CategoricalFeature, "int64"),
        "genres": (SequenceFeature, "string"),
    }
    assert spec.candidate_id == "movie_id" and next(f for f in spec.candidate if f.name == "genres").separator == "|"
    assert next(f for f in spec.query if f.name == "history").embedding_table == "movie_id"
    data = prepared.data
    assert data.train["movie_id"].tolist() == EXPECTED_TRAIN_MOVIES
    assert data.train["history"].tolist() == EXPECTED_TRAIN_HISTORY
    assert data.eval_targets.tolist() == EXPECTED_TARGETS


def test_the_shipped_preset_file_is_what_dataset_movielens_trains(tmp_path):
    directory = write_100k(tmp_path / "ml")
    by_name = apply_overrides(ExperimentConfig(), ["data.dataset=movielens", f"data.data_dir={directory}"])
    values = yaml.safe_load((PRESETS_DIR / "movielens.yaml").read_text())
    values["data"]["data_dir"] = str(directory)  # as --config PRESET --data-dir DIR
    preset_file = tmp_path / "movielens.yaml"
    preset_file.write_text(yaml.safe_dump(values))
    by_file = load_config(preset_file)
    assert by_file.features.query is not None and by_file.data.data_dir == str(directory)
    assert prepare_data(by_file).spec == prepare_data(by_name).spec
    declared = preset_declarations("movielens")
    assert tuple(by_file.features.query) == declared.query and tuple(by_file.features.candidate) == declared.candidate


def test_the_synthetic_preset_keeps_age_numeric():
    synthetic = prepare_data(ExperimentConfig())
    assert [(f.name, type(f)) for f in synthetic.spec.all_features] == [
        ("user_id", CategoricalFeature),
        ("age", NumericFeature),
        ("country", CategoricalFeature),
        ("history", SequenceFeature),
        ("item_id", CategoricalFeature),
        ("category", CategoricalFeature),
    ]
    assert np.issubdtype(synthetic.data.train["age"].dtype, np.integer)


def test_adapted_spec_counts_the_training_histories_without_building_them(monkeypatch):
    # u1: d c d | b, u2: c d | a (history width 2): training items d c d c d, histories [-,-] [-,d] [d,c]
    # [-,-] [-,c]. The item table (shared with the history) counts d 3+2+1, c 2+2+1, a 1, b 1 (the
    # catalogue once each); tags: d "x|z" three times, c "" twice, plus the catalogue's x y y x z.
    log = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1", "u2", "u1", "u2", "u1"],
            "item_id": ["d", "c", "c", "d", "d", "a", "b"],
            "timestamp": [1, 1, 2, 2, 3, 3, 4],
        }
    )
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "tags": ["x|y", "y", "", "x|z"]})
    users = pd.DataFrame({"user_id": ["u1", "u2"], "country": ["FR", "DE"]})
    config = apply_overrides(ExperimentConfig(), ["data.max_history=2"])  # the tables are given: no source is read
    prepared = prepare_data(config, InteractionTables("shop", log, users=users, items=items))
    monkeypatch.setattr(HistoryWindows, "read", lambda *args: pytest.fail("the [N, L] history matrix was built"))
    vocabularies = {f.name: f.vocabulary for f in prepared.adapted_spec().all_features}
    assert {name: vocabularies[name] for name in ("history", "item_id", "tags", "country")} == {
        "history": ("d", "c", "a", "b"),
        "item_id": ("d", "c", "a", "b"),
        "tags": ("x", "z", "y"),
        "country": ("FR", "DE"),
    }

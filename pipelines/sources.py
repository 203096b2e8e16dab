"""The data set of a configuration: its tables, split, feature declarations and feature spec.

One path for every data set. A *source* reads tables — the user's own files
(``data.dataset: interactions``), a MovieLens release directory or the synthetic generator — into
:class:`~tfrec_pipelines.interactions.InteractionTables`; everything after is the same:
:func:`~tfrec_pipelines.interactions.interaction_data` validates and splits them (``data.split``,
``data.validation``), the features are the
configured declarations, else the source's preset (``pipelines/presets/<dataset>.yaml``), else
inferred from the attribute tables (:mod:`tfrec_pipelines.declarations`), and
:func:`~tfrec_pipelines.declarations.feature_spec` turns them into the towers' spec.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Dict, Optional

import yaml

from tfrec_pipelines.data import RetrievalData
from tfrec_pipelines.declarations import (
    Declarations,
    declarations_from_config,
    feature_spec,
    infer_declarations,
    rename_columns,
)
from tfrec_pipelines.interactions import InteractionTables, interaction_data, read_interaction_tables
from tfrec_pipelines.movielens import movielens_tables
from tfrec_pipelines.synthetic import synthetic_tables
from tfrec_towers.config import ExperimentConfig, FeaturesConfig, config_from_dict
from tfrec_towers.features import FeatureSpec, SequenceFeature, adapt

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
FEATURES_FILE = "features.json"  # the resolved declarations, in every run directory


@dataclasses.dataclass
class PreparedData:
    """A configuration's data set, ready to train on.

    Attributes:
      data: the split (columns also under the features' names).
      declarations: the features of each tower, as configured, preset or inferred.
      spec: the feature spec of the declarations (not yet adapted: no vocabularies).
      weight_column: the training examples' sample-weight column, or None.
    """

    data: RetrievalData
    declarations: Declarations
    spec: FeatureSpec
    weight_column: Optional[str] = None

    def adapted_spec(self) -> FeatureSpec:
        """The spec with vocabularies and statistics learnt from the training data and the catalogue.

        The training examples are counted without building their ``[N, L]`` histories or a text
        per example (:meth:`~tfrec_pipelines.data.TrainingExamples.counted`): the same vocabularies.
        """
        separators = {
            f.name: f.separator
            for f in self.spec.all_features
            if isinstance(f, SequenceFeature) and f.separator is not None and not f.is_matrix
        }
        return adapt(self.spec, self.data.train.counted(separators), self.data.candidates)

    def write_declarations(self, path: str | Path) -> None:
        """Writes the resolved declarations as JSON (``features.query`` / ``features.candidate``)."""
        Path(path).write_text(json.dumps(self.declarations.as_config(), indent=2) + "\n")


def _synthetic(config: ExperimentConfig) -> InteractionTables:
    data = config.data
    return synthetic_tables(
        num_items=data.num_items,
        num_users=data.num_users,
        interactions_per_user=data.interactions_per_user,
        seed=config.training.seed,
    )


def _movielens(config: ExperimentConfig) -> InteractionTables:
    data_dir = config.data.data_dir
    assert data_dir is not None  # DataConfig requires `data.data_dir` for the movielens dataset
    return movielens_tables(data_dir)


def _interactions(config: ExperimentConfig) -> InteractionTables:
    data = config.data
    return read_interaction_tables(data.interactions, users=data.users, items=data.items, test=data.test)


SOURCES: Dict[str, Callable[[ExperimentConfig], InteractionTables]] = {
    "synthetic": _synthetic,
    "movielens": _movielens,
    "interactions": _interactions,
}


def preset_declarations(dataset: str) -> Optional[Declarations]:
    """The feature declarations shipped for a built-in data set, or None (own tables: inferred)."""
    path = PRESETS_DIR / f"{dataset}.yaml"
    if not path.is_file():
        return None
    features = config_from_dict({"features": yaml.safe_load(path.read_text(encoding="utf-8"))["features"]}).features
    return Declarations(tuple(features.query or ()), tuple(features.candidate or ()))


def prepare_data(config: ExperimentConfig, tables: Optional[InteractionTables] = None) -> PreparedData:
    """Reads (or takes) the configuration's tables, splits them and resolves the features.

    With ``evaluation.filter_seen: false`` the split's seen lists are empty, so every evaluation
    of the data ranks each target among the whole catalogue.

    Args:
      config: the experiment configuration (``data``, ``features`` and ``evaluation`` are read).
      tables: tables already read (e.g. built in a notebook); default: the configured source's.

    Raises:
      FileNotFoundError, DataError: a table is missing or malformed (the message names it).
    """
    preset = None
    if tables is None:
        tables = SOURCES[config.data.dataset](config)
        preset = preset_declarations(config.data.dataset)
    data = interaction_data(
        tables,
        max_history=config.data.max_history,
        unknown_items=config.data.unknown_items,
        split=config.data.split,
        validation=config.data.validation,
        validation_fraction=config.data.validation_fraction,
    )
    if not config.evaluation.filter_seen:
        data = data.without_seen()
    features = config.features
    fallback = preset
    if fallback is None and (features.query is None or features.candidate is None):
        fallback = infer_declarations(
            data,
            tables.user_column,
            [c for c in (tables.users.columns if tables.users is not None else ()) if c != tables.user_column],
            [c for c in (tables.items.columns if tables.items is not None else ()) if c != tables.item_column],
        )
    declarations = declarations_from_config(features.query, features.candidate, fallback or Declarations((), ()))
    prepared = PreparedData(data, declarations, _feature_spec(declarations, data, features), tables.weight_column)
    prepared.data = rename_columns(data, declarations)
    if data.validation is not None:  # its queries under the features' names too
        renamed = rename_columns(data.validation_data(), declarations)
        prepared.data.validation = dataclasses.replace(data.validation, queries=renamed.eval_queries)
    return prepared


def spec_for(prepared: PreparedData, features: FeaturesConfig) -> FeatureSpec:
    """The (not yet adapted) spec of the prepared declarations with the embedding options of
    ``features`` (width, OOV buckets, history pooling, shared item table)."""
    return _feature_spec(prepared.declarations, prepared.data, features)


def _feature_spec(declarations: Declarations, data: RetrievalData, features: FeaturesConfig) -> FeatureSpec:
    return feature_spec(
        declarations,
        data,
        embedding_dim=features.embedding_dim,
        num_oov_buckets=features.num_oov_buckets,
        history_pooling=features.history_pooling,
        share_item_embeddings=features.share_item_embeddings,
    )

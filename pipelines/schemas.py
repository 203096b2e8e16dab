"""The feature declarations of the built-in data sets, declared once for towers, training and export.

MovieLens follows the raw-feature contract of DESIGN §5; the synthetic data mirrors it with
its own names. Vocabularies are filled in later by :func:`tfrec_towers.features.adapt`.
"""

from __future__ import annotations

from tfrec_towers.config import FeaturesConfig
from tfrec_towers.features import (
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    SequenceFeature,
)


def _history(item_table: str, cfg: FeaturesConfig) -> SequenceFeature:
    return SequenceFeature(
        "history",
        dtype="int64",
        embedding_dim=cfg.embedding_dim,
        pooling=cfg.history_pooling,
        num_oov_buckets=cfg.num_oov_buckets,
        embedding_table=item_table if cfg.share_item_embeddings else None,
    )


def _categorical(name: str, dtype: str, cfg: FeaturesConfig) -> CategoricalFeature:
    return CategoricalFeature(name, dtype=dtype, embedding_dim=cfg.embedding_dim, num_oov_buckets=cfg.num_oov_buckets)


def movielens_feature_spec(cfg: FeaturesConfig = FeaturesConfig()) -> FeatureSpec:
    """Query: user id, gender, age, occupation, zip code, history; candidate: movie id, genres.

    ``age`` is categorical: ml-100k stores years, ml-1m an age-group code, and a category
    embedding fits both. ``genres`` is the pipe-joined genre list, pooled like a history.
    """
    return FeatureSpec(
        query=(
            _categorical("user_id", "int64", cfg),
            _categorical("gender", "string", cfg),
            _categorical("age", "int64", cfg),
            _categorical("occupation", "string", cfg),
            _categorical("zip_code", "string", cfg),
            _history("movie_id", cfg),
        ),
        candidate=(
            _categorical("movie_id", "int64", cfg),
            SequenceFeature(
                "genres", dtype="string", embedding_dim=cfg.embedding_dim, pooling="mean", separator="|"
            ),
        ),
        candidate_id="movie_id",
    )


def synthetic_feature_spec(cfg: FeaturesConfig = FeaturesConfig()) -> FeatureSpec:
    """Query: user id, age (numeric), country, history; candidate: item id, category."""
    return FeatureSpec(
        query=(
            _categorical("user_id", "int64", cfg),
            NumericFeature("age", dtype="int64"),
            _categorical("country", "string", cfg),
            _history("item_id", cfg),
        ),
        candidate=(
            _categorical("item_id", "int64", cfg),
            _categorical("category", "string", cfg),
        ),
        candidate_id="item_id",
    )


FEATURE_SPECS = {"movielens": movielens_feature_spec, "synthetic": synthetic_feature_spec}

"""What several test modules share: tiny training configurations, the toy MovieLens-shaped towers and
their export, hand-made MovieLens directories with their hand-derived split, and a fresh-process runner.

Fixtures built on these (one shared export, one shared trained run) live in ``conftest.py``.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from tfrec_pipelines.sources import prepare_data
from tfrec_pipelines.train import build_model
from tfrec_towers import export
from tfrec_towers.config import ExperimentConfig, apply_overrides
from tfrec_towers.index import IndexConfig

# --- tiny training configurations ----------------------------------------------------------------

TINY_TOWERS = (
    "features.embedding_dim=8",
    "model.query_tower.hidden_units=[16]",
    "model.candidate_tower.hidden_units=[16]",
    "model.query_tower.output_dim=8",
    "model.candidate_tower.output_dim=8",
)
"""Towers of width 8 with one hidden layer of 16: every trained test model."""

TINY_DATA = ("data.num_items=300", "data.num_users=120", "data.interactions_per_user=12", "data.max_history=8")
"""A synthetic catalogue of 300 items (ids 1..300) and 120 users of 12 interactions (11 training examples each)."""

TINY = (*TINY_DATA, *TINY_TOWERS, "training.epochs=1", "training.batch_size=128", "export.k=10")
"""The tiny run: TINY_DATA on TINY_TOWERS, one epoch of batches of 128, k = 10."""


TINY_OWN_TABLES = (
    *TINY_TOWERS,
    "training.epochs=1",
    "training.batch_size=64",
    "loss.mixed_negatives=16",
    "model.history.max_length=5",
    "data.max_history=5",
)
"""The tiny run on a user's own tables (a catalogue of about 40 items, histories of 5)."""


def tiny_config(*overrides: str) -> ExperimentConfig:
    """``TINY`` with ``overrides`` applied after it (a later value of a key wins)."""
    return apply_overrides(ExperimentConfig(), [*TINY, *overrides])


def cli_sets(*overrides: str) -> list[str]:
    """``--set KEY=VALUE`` arguments of the command line for ``overrides``."""
    return [arg for item in overrides for arg in ("--set", item)]


def trainable(config: ExperimentConfig):
    """``(make_model, columns, data)`` of ``config``: a function that builds a fresh model seeded with
    ``training.seed``, the training columns of the adapted feature spec, and the prepared data."""
    prepared = prepare_data(config)
    data, spec = prepared.data, prepared.adapted_spec()
    columns = {f.name: data.train[f.name] for f in spec.all_features}

    def make_model():
        tf.keras.utils.set_random_seed(config.training.seed)
        return build_model(spec, config, data)

    return make_model, columns, data


# --- the toy MovieLens-shaped towers and their export ----------------------------------------------

DIM = 8
K = 5
NUM_MOVIES = 40
MOVIE_IDS = np.arange(1, NUM_MOVIES + 1, dtype=np.int64) * 10
GENRES = ("Action", "Comedy", "Drama", "Horror")
QUERY_SPEC = {
    "user_id": tf.TensorSpec([None], tf.int64),
    "gender": tf.TensorSpec([None], tf.string),
    "age": tf.TensorSpec([None], tf.int64),
    "occupation": tf.TensorSpec([None], tf.string),
    "zip_code": tf.TensorSpec([None], tf.string),
    "history": tf.TensorSpec([None, None], tf.int64),
}
CANDIDATE_SPEC = {"movie_id": tf.TensorSpec([None], tf.int64), "genres": tf.TensorSpec([None], tf.string)}


def masked_mean(embeddings, mask):
    """Mean of ``embeddings [B, L, d]`` over positions where ``mask [B, L]``; zeros for empty rows."""
    mask = tf.cast(mask, embeddings.dtype)[..., tf.newaxis]
    return tf.math.divide_no_nan(tf.reduce_sum(embeddings * mask, axis=1), tf.reduce_sum(mask, axis=1))


class QueryTower(tf.keras.Model):
    """Lookups (with OOV buckets) + embeddings for user features, masked mean of the history."""

    def __init__(self, dim=DIM):
        super().__init__()
        self.user_lookup = tf.keras.layers.IntegerLookup(vocabulary=np.arange(1, 7, dtype=np.int64))
        self.age_lookup = tf.keras.layers.IntegerLookup(vocabulary=np.array([18, 25, 35], np.int64))
        self.gender_lookup = tf.keras.layers.StringLookup(vocabulary=["F", "M"])
        self.occupation_lookup = tf.keras.layers.StringLookup(vocabulary=["12", "technician"])
        self.zip_hashing = tf.keras.layers.Hashing(num_bins=7)
        self.history_lookup = tf.keras.layers.IntegerLookup(vocabulary=MOVIE_IDS, mask_token=0)
        self.user_embedding = tf.keras.layers.Embedding(7, dim)
        self.age_embedding = tf.keras.layers.Embedding(4, dim)
        self.gender_embedding = tf.keras.layers.Embedding(3, dim)
        self.occupation_embedding = tf.keras.layers.Embedding(3, dim)
        self.zip_embedding = tf.keras.layers.Embedding(7, dim)
        self.history_embedding = tf.keras.layers.Embedding(NUM_MOVIES + 2, dim)

    def call(self, features):
        history = self.history_lookup(features["history"])
        return (
            self.user_embedding(self.user_lookup(features["user_id"]))
            + self.age_embedding(self.age_lookup(features["age"]))
            + self.gender_embedding(self.gender_lookup(features["gender"]))
            + self.occupation_embedding(self.occupation_lookup(features["occupation"]))
            + self.zip_embedding(self.zip_hashing(features["zip_code"]))
            + masked_mean(self.history_embedding(history), history != 0)
        )


def make_query_tower():
    tf.keras.utils.set_random_seed(1)
    return QueryTower()


def make_candidate_tower(dim=DIM, string_ids=False):
    """Functional tower: movie id lookup (int64, or string ids) + mean of the "|"-joined genres' embeddings."""
    tf.keras.utils.set_random_seed(2)
    if string_ids:
        movie_id = tf.keras.Input(shape=(), dtype=tf.string, name="movie_id")
        id_lookup = tf.keras.layers.StringLookup(vocabulary=MOVIE_IDS.astype(str))
    else:
        movie_id = tf.keras.Input(shape=(), dtype=tf.int64, name="movie_id")
        id_lookup = tf.keras.layers.IntegerLookup(vocabulary=MOVIE_IDS)
    genres = tf.keras.Input(shape=(), dtype=tf.string, name="genres")
    movie = tf.keras.layers.Embedding(NUM_MOVIES + 1, dim)(id_lookup(movie_id))
    genre_ids = tf.keras.layers.StringLookup(vocabulary=list(GENRES), mask_token="")(
        tf.strings.split(genres, "|").to_tensor(default_value="")
    )
    genre = masked_mean(tf.keras.layers.Embedding(len(GENRES) + 2, dim)(genre_ids), genre_ids != 0)
    return tf.keras.Model({"movie_id": movie_id, "genres": genres}, movie + genre)


def catalogue(string_ids=False):
    rng = np.random.default_rng(3)
    genres = ["|".join(rng.choice(GENRES, size=rng.integers(1, 3), replace=False)) for _ in MOVIE_IDS]
    return {"movie_id": MOVIE_IDS.astype(str) if string_ids else MOVIE_IDS.copy(), "genres": np.array(genres)}


def queries():
    return {
        "user_id": np.array([1, 2, 3, 4, 5], np.int64),
        "gender": np.array(["F", "M", "M", "F", "M"]),
        "age": np.array([18, 25, 35, 25, 18], np.int64),
        "occupation": np.array(["12", "technician", "12", "12", "technician"]),
        "zip_code": np.array(["55414", "94110", "10001", "02139", "60614"]),
        "history": np.array([[10, 20, 30], [40, 0, 0], [0, 0, 0], [50, 60, 0], [70, 80, 90]], np.int64),
    }


def export_models(export_base, model_name="movies", index=IndexConfig(k=K), **kwargs):
    """One export of freshly built towers; returns (path, query tower, candidate tower)."""
    query_tower, candidate_tower = kwargs.pop("towers", (make_query_tower(), make_candidate_tower()))
    path = export.export_retrieval_model(
        query_tower,
        candidate_tower,
        QUERY_SPEC,
        kwargs.pop("candidate_spec", CANDIDATE_SPEC),
        kwargs.pop("candidates", catalogue()),
        "movie_id",
        export_base,
        model_name,
        index,
        warmup_queries=kwargs.pop("warmup_queries", queries()),
        **kwargs,
    )
    return path, query_tower, candidate_tower


def run_fresh_process(script, *args, timeout=120):
    """Runs ``script`` in a new interpreter (no pytest, no tfrec_towers) and returns its JSON stdout."""
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- hand-made MovieLens directories ------------------------------------------------------------

# (user, movie, timestamp). User 1 has a timestamp tie (movies 10 and 30 at t=100) broken by
# movie id; user 2 rated movie 99, which is not in the item file; user 3 rated once.
# Movie 50 is never rated.
RATINGS = [(1, 30, 100), (1, 10, 100), (1, 20, 50), (1, 40, 200), (2, 10, 5), (2, 99, 6), (2, 20, 7), (3, 30, 1)]
MOVIELENS_GENRES = {10: "Action|Comedy", 20: "unknown", 30: "Drama", 40: "Action|Drama", 50: "Comedy"}
TITLES = {
    10: "Café (1995)",
    20: 'The "Thing" (1982)',
    30: "Star Wars: Episode IV (1977)",
    40: "American President, The (1995)",
    50: "Babe (1995)",
}

# Hand-derived with max_history=2. User 1 in (timestamp, movie) order: 20, 10, 30 | 40.
# User 2 after dropping movie 99: 10 | 20. User 3 has no training example and no eval query.
EXPECTED_TRAIN_USERS = [1, 1, 1, 2]
EXPECTED_TRAIN_MOVIES = [20, 10, 30, 10]
EXPECTED_TRAIN_HISTORY = [[0, 0], [0, 20], [20, 10], [0, 0]]
EXPECTED_EVAL_USERS = [1, 2]
EXPECTED_EVAL_HISTORY = [[10, 30], [0, 10]]
EXPECTED_TARGETS = [40, 20]
EXPECTED_SEEN = [[10, 20, 30], [10]]


def write_100k(directory: Path) -> Path:
    directory.mkdir()
    (directory / "u.data").write_text("".join(f"{u}\t{m}\t4\t{t}\n" for u, m, t in RATINGS))
    (directory / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|T8H1N\n")
    (directory / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\nDrama|3\n\n")
    flags = {10: "0|1|1|0", 20: "1|0|0|0", 30: "0|0|0|1", 40: "0|1|0|1", 50: "0|0|1|0"}
    item = "".join(f"{m}|{TITLES[m]}|01-Jan-1995||http://example.org/{m}|{flags[m]}\n" for m in TITLES)
    (directory / "u.item").write_bytes(item.encode("latin-1"))
    return directory


def write_1m(directory: Path) -> Path:
    directory.mkdir()
    (directory / "ratings.dat").write_text("".join(f"{u}::{m}::4::{t}\n" for u, m, t in RATINGS))
    (directory / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    movies = "".join(f"{m}::{TITLES[m]}::{MOVIELENS_GENRES[m]}\n" for m in TITLES)
    (directory / "movies.dat").write_bytes(movies.encode("latin-1"))
    return directory


def write_20m(directory: Path) -> Path:
    directory.mkdir()
    ratings = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},4.5,{t}\n" for u, m, t in RATINGS)
    (directory / "ratings.csv").write_text(ratings)
    titles = {m: '"' + t.replace('"', '""') + '"' for m, t in TITLES.items()}
    movies = "movieId,title,genres\n" + "".join(f"{m},{titles[m]},{MOVIELENS_GENRES[m]}\n" for m in TITLES)
    (directory / "movies.csv").write_text(movies, encoding="utf-8")
    return directory

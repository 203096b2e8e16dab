"""The plain TFRS recipe, written with TFRS and Keras directly (no tfrec_towers code), as the yardstick.

Following the TFRS retrieval tutorials: the query is the concatenation of a user-id embedding and
the mean of the history's movie-id embeddings; the candidate is a movie-id embedding; the loss is
``tfrs.tasks.Retrieval()`` (in-batch softmax, summed over the batch) with Adagrad(0.1).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from tfrec_towers.config import TrainingConfig


def _lookup(ids: np.ndarray) -> tf.keras.layers.Layer:
    """Keras' integer or string vocabulary lookup of ``ids`` (one OOV index)."""
    vocabulary = np.unique(ids)
    if vocabulary.dtype.kind in "iu":
        return tf.keras.layers.IntegerLookup(vocabulary=vocabulary)
    return tf.keras.layers.StringLookup(vocabulary=vocabulary.astype(str))


class PlainQueryTower(tf.keras.Model):
    """[E_user(user_id); mean_{l: h_l ≠ padding} E_item(h_l)] → [batch, 2 * dim]."""

    def __init__(self, user_ids: np.ndarray, item_ids: np.ndarray, dim: int, user_column: str = "user_id") -> None:
        super().__init__()
        self.user_column = user_column
        self.user = tf.keras.Sequential(
            [_lookup(user_ids), tf.keras.layers.Embedding(len(np.unique(user_ids)) + 1, dim)]
        )
        self.item_lookup = _lookup(item_ids)
        self.item_embedding = tf.keras.layers.Embedding(len(np.unique(item_ids)) + 1, dim)

    def call(self, features, training=False):
        history = features["history"]
        padding = "" if history.dtype == tf.string else tf.zeros([], history.dtype)
        mask = tf.cast(tf.not_equal(history, padding), tf.float32)[..., None]
        items = self.item_embedding(self.item_lookup(history))
        pooled = tf.reduce_sum(items * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        return tf.concat([self.user(features[self.user_column]), pooled], axis=-1)


class PlainCandidateTower(tf.keras.Model):
    """E_movie(movie_id) → [batch, 2 * dim] (twice the width so the dot product is defined)."""

    def __init__(self, item_ids: np.ndarray, dim: int, id_column: str) -> None:
        super().__init__()
        self.id_column = id_column
        self.embed = tf.keras.Sequential(
            [_lookup(item_ids), tf.keras.layers.Embedding(len(np.unique(item_ids)) + 1, 2 * dim)]
        )

    def call(self, features, training=False):
        return self.embed(features[self.id_column])


class PlainTFRSModel(tfrs.Model):
    def __init__(self, query_tower: tf.keras.Model, candidate_tower: tf.keras.Model) -> None:
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.task = tfrs.tasks.Retrieval()

    def compute_loss(self, features, training=False):
        return self.task(self.query_tower(features), self.candidate_tower(features), compute_metrics=False)


def plain_tfrs_model(train: dict, candidate_id: str, dim: int = 32, user_column: str = "user_id") -> PlainTFRSModel:
    """The recipe on training examples with ``user_column``, ``history`` and ``candidate_id`` (ids of any type)."""
    item_ids = np.concatenate([train[candidate_id], train["history"].reshape(-1)])
    item_ids = item_ids[item_ids != ("" if item_ids.dtype.kind == "O" else 0)]
    model = PlainTFRSModel(
        PlainQueryTower(train[user_column], item_ids, dim, user_column),
        PlainCandidateTower(item_ids, dim, candidate_id),
    )
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    return model


def plain_training(epochs: int, seed: int = 0) -> TrainingConfig:
    """How the benchmarks train the recipe (``fit_model``'s settings): batches of 4,096 and Adagrad at
    0.1, as in the TFRS tutorials, for ``epochs`` epochs."""
    return TrainingConfig(epochs=epochs, batch_size=4096, learning_rate=0.1, optimizer="adagrad", seed=seed)

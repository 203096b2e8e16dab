"""A minimal causal transformer (SASRec) written apart from the library, as a yardstick.

``benchmarks/sequential.py`` compares the library's history encoders with "a minimal causal
transformer with every-position in-batch + logQ training" against the plain TFRS recipe. This
module is that model, sharing nothing with ``tfrec_towers`` but the data split and the metric
code of the evaluation protocol (``tfrec_towers.evaluation``): its own item table, blocks, loss and training loop.

Model (Kang & McAuley, ICDM 2018, pre-norm):

    x⁰_l = dropout(√d · E[i_l] + P[l]);  xᵏ = xᵏ⁻¹ + MHA(LN(xᵏ⁻¹), causal);  xᵏ += FFN(LN(xᵏ))
    h_l = LN(x^K_l)    (positions right-aligned: the latest item always has position L − 1)

The query of a history is ``h`` at its latest position; an item's embedding is its row of ``E``
(shared between input and output, as in SASRec). Two losses over every valid position ``l`` of a
batch of sequences, whose targets are the next items ``y_l``:

- ``in_batch_logq``: in-batch sampled softmax over the batch's positives with logQ correction
  (Yi et al., RecSys 2019), ``s_lj = cos(h_l, E[y_j]) / τ − log q(y_j)``, ``q`` the items' training
  frequency; other positions with the same target item are masked out of each row's negatives;
- ``full_softmax``: cross-entropy over the whole catalogue, ``s_li = h_l · E[i]`` (SASRec's "CE" variant,
  Klenitskiy & Vasilev, RecSys 2023).

Trained with Adam(lr, β₂ = 0.98) on the sequence examples ``tfrec_pipelines.sequences`` builds (the same
training targets as the library's every-position training).
"""

from __future__ import annotations

import time
from typing import Dict

import numpy as np
import tensorflow as tf

from tfrec_pipelines.data import RetrievalData
from tfrec_pipelines.sequences import sequence_examples
from tfrec_towers.evaluation import metrics_from_ranks, target_ranks

LOSSES = ("in_batch_logq", "full_softmax")


class MinimalSASRec(tf.keras.Model):
    """Item table + ``num_layers`` causal pre-norm blocks over ``[B, L]`` item indices (0 = padding)."""

    def __init__(
        self,
        num_items: int,
        max_length: int,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.max_length, self.dim = max_length, dim
        self.items = tf.keras.layers.Embedding(num_items + 1, dim, name="items")
        self.positions = tf.keras.layers.Embedding(max_length, dim, name="positions")
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.blocks = [
            (
                tf.keras.layers.LayerNormalization(epsilon=1e-8),
                tf.keras.layers.MultiHeadAttention(num_heads, dim // num_heads, dropout=dropout),
                tf.keras.layers.LayerNormalization(epsilon=1e-8),
                tf.keras.Sequential(
                    [
                        tf.keras.layers.Dense(dim, activation="relu"),
                        tf.keras.layers.Dropout(dropout),
                        tf.keras.layers.Dense(dim),
                        tf.keras.layers.Dropout(dropout),
                    ]
                ),
            )
            for _ in range(num_layers)
        ]
        self.output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-8)

    def call(self, items: tf.Tensor, training: bool = False) -> tf.Tensor:
        """``[B, L]`` item indices → ``[B, L, d]`` outputs (position ``l`` sees positions ≤ ``l``)."""
        valid = tf.cast(items > 0, tf.float32)[..., tf.newaxis]
        x = self.items(items) * self.dim**0.5 + self.positions(tf.range(self.max_length))[tf.newaxis]
        x = self.input_dropout(x, training=training) * valid
        causal = tf.linalg.band_part(tf.ones([self.max_length, self.max_length]), -1, 0)
        allowed = tf.cast(causal[tf.newaxis] * tf.transpose(valid, [0, 2, 1]), tf.bool)
        for attention_norm, attention, feedforward_norm, feedforward in self.blocks:
            h = attention_norm(x)
            x = h + attention(h, x, attention_mask=allowed, training=training)
            x = (x + feedforward(feedforward_norm(x), training=training)) * valid
        return self.output_norm(x)


def _indices(ids: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """Raw item ids → 1-based rows of the sorted catalogue (0 stays padding)."""
    rows = np.searchsorted(catalogue, ids) + 1
    return np.where(ids == 0, 0, rows).astype(np.int32)


def _right_aligned(history: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` items of 0-left-padded histories (zero-padded on the left when shorter)."""
    history = history[:, -length:]
    return np.pad(history, [(0, 0), (length - history.shape[1], 0)])


def train_and_evaluate(
    data: RetrievalData,
    seed: int,
    loss: str = "in_batch_logq",
    epochs: int = 30,
    batch_size: int = 32,
    max_length: int = 50,
    dim: int = 64,
    learning_rate: float = 1e-3,
    temperature: float = 0.05,
    dropout: float = 0.2,
) -> Dict[str, object]:
    """Trains the minimal transformer on every position of ``data.train`` and evaluates it.

    Returns:
      ``metrics`` (the metrics.json keys), ``train_seconds`` and ``examples_per_second`` (trained targets).
    """
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}. Received: {loss!r}")
    tf.keras.utils.set_random_seed(seed)
    catalogue = np.sort(np.asarray(data.candidates[data.candidate_id]))
    sequences = sequence_examples(
        {"history": data.train["history"], "item": data.train[data.candidate_id]}, ["item"], "item", max_length
    )
    inputs = _indices(sequences["history"], catalogue)
    targets = _indices(sequences["item"], catalogue)
    counts = np.bincount(targets[targets > 0], minlength=len(catalogue) + 1).astype(np.float64) + 1.0
    log_q = tf.constant(np.log(counts / counts.sum()), tf.float32)

    model = MinimalSASRec(len(catalogue), max_length, dim=dim, dropout=dropout)
    optimizer = tf.keras.optimizers.Adam(learning_rate, beta_2=0.98)
    padding = tf.one_hot(0, len(catalogue) + 1) * 1e9

    @tf.function(reduce_retracing=True)
    def step(batch_inputs, batch_targets):
        with tf.GradientTape() as tape:
            valid = batch_targets > 0
            outputs = tf.boolean_mask(model(batch_inputs, training=True), valid)
            positives = tf.boolean_mask(batch_targets, valid)
            if loss == "full_softmax":
                logits = tf.matmul(outputs, model.items.embeddings, transpose_b=True) - padding
                labels = positives
            else:
                queries = tf.math.l2_normalize(outputs, -1)
                items = tf.math.l2_normalize(model.items(positives), -1)
                logits = tf.matmul(queries, items, transpose_b=True) / temperature - tf.gather(log_q, positives)
                same = tf.cast(tf.equal(positives[:, tf.newaxis], positives[tf.newaxis]), tf.float32)
                logits -= 1e9 * (same - tf.eye(tf.shape(positives)[0]))
                labels = tf.range(tf.shape(positives)[0])
            value = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        gradients = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(inputs))
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            step(tf.constant(inputs[rows]), tf.constant(targets[rows]))
    seconds = time.perf_counter() - start

    queries = _right_aligned(_indices(np.asarray(data.eval_queries["history"]), catalogue), max_length)
    outputs = np.concatenate(
        [model(tf.constant(queries[i : i + 512]))[:, -1].numpy() for i in range(0, len(queries), 512)]
    )
    items = model.items.embeddings.numpy()[1:]
    if loss == "in_batch_logq":
        outputs = outputs / np.linalg.norm(outputs, axis=1, keepdims=True)
        items = items / np.linalg.norm(items, axis=1, keepdims=True)
    ranks = target_ranks(outputs, items, catalogue, data.eval_targets, data.seen_indptr, data.seen_ids)
    trained = int((targets > 0).sum()) * epochs
    return {"metrics": metrics_from_ranks(ranks), "train_seconds": seconds, "examples_per_second": trained / seconds}

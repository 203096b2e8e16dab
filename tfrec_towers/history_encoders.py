"""History encoders: an embedded item history ``[B, L, d]`` → what the user wants next.

Every encoder reads a left-padded history (most recent item last) under a validity mask and is
causal: position ``l`` of its sequence output summarises items ``≤ l`` only, so one forward pass
yields the query of every prefix (every-position training, as in SASRec, Kang & McAuley, ICDM
2018) and the last position is the query of the whole history (``return_sequences=False``).
Padding never changes a valid position's output, however much of it there is.

* :class:`MeanHistoryEncoder` — the masked mean of :class:`~tfrec_towers.encoders.MaskedPooling`;
  per position, the mean of the prefix;
* :class:`AttentionHistoryEncoder` — attention pooling with a learned query and a learned recency
  bias: ``h_l = Σ_{j ≤ l} softmax_j(⟨w, W_k e_j⟩ / √d + b[n_l − n_j]) e_j``;
* :class:`GRUHistoryEncoder` — a GRU over the valid items (Hidasi et al., ICLR 2016);
* :class:`TransformerHistoryEncoder` — causal self-attention blocks with learned positional
  embeddings, dropout and layer norm (SASRec; pre-norm as in Xiong et al., ICML 2020).

Positions count valid items from the oldest (``n_l = Σ_{j ≤ l} m_j − 1``), so a prefix has the same
positions whether it is read alone or inside a longer sequence, whatever the padding. The
transformer can instead count them back from the newest slot of its window (``positions="from_newest"``,
SASRec's right-aligned positions): the most recent item always has the last position, as the query
of a serving request does.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import tensorflow as tf

from tfrec_towers.encoders import MaskedPooling
from tfrec_towers.tower_config import (  # noqa: F401  (re-exported)
    HISTORY_ENCODERS,
    POSITIONS,
    TRANSFORMER_BLOCKS,
    HistoryEncoderConfig,
    HistoryEncoderName,
)

_register = tf.keras.utils.register_keras_serializable(package="tfrec_towers")


def make_history_encoder(config: HistoryEncoderConfig, name: str = "history_encoder") -> tf.keras.layers.Layer:
    """The encoder layer a :class:`HistoryEncoderConfig` describes.

    Raises:
      ValueError: ``config.encoder`` is ``pooling`` (no separate layer: the feature encoder pools).
    """
    if config.encoder == "mean":
        return MeanHistoryEncoder(name=name)
    if config.encoder == "attention":
        return AttentionHistoryEncoder(max_length=config.max_length, name=name)
    if config.encoder == "gru":
        return GRUHistoryEncoder(name=name)
    if config.encoder == "transformer":
        return TransformerHistoryEncoder(
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            dropout=config.dropout,
            max_length=config.max_length,
            positions=config.positions,
            block=config.block,
            name=name,
        )
    raise ValueError(f"`encoder`={config.encoder!r} pools inside the feature encoder: it has no history encoder layer.")


def valid_positions(mask: tf.Tensor) -> tf.Tensor:
    """``n_l = Σ_{j ≤ l} m_j − 1``: each valid item's index counted from the oldest, ``[B, L]`` int32."""
    return tf.cumsum(tf.cast(mask, tf.int32), axis=1) - 1


def newest_positions(mask: tf.Tensor, max_length: int) -> tf.Tensor:
    """``p_l = max(0, P − L + l)`` for a window of ``L`` slots and ``P = max_length`` positions: each
    slot's position counted back from the window's newest slot (which gets ``P − 1``), ``[B, L]`` int32;
    slots more than ``P − 1`` before the newest share position 0."""
    length = tf.shape(mask)[1]
    slots = tf.range(length) + (max_length - length)
    return tf.broadcast_to(tf.maximum(slots, 0)[tf.newaxis], tf.shape(mask))


def causal_mask(mask: tf.Tensor) -> tf.Tensor:
    """``A[b, l, j] = (j ≤ l) ∧ (m_j ∨ j = l)``: what position ``l`` may attend to, ``[B, L, L]`` bool.

    A padding position attends to itself only, so no row is empty.
    """
    length = tf.shape(mask)[1]
    lower = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
    keys = tf.logical_or(mask[:, tf.newaxis, :], tf.eye(length, dtype=tf.bool)[tf.newaxis])
    return tf.logical_and(lower[tf.newaxis], keys)


def _select(outputs: tf.Tensor, mask: tf.Tensor, return_sequences: bool) -> tf.Tensor:
    """Zeros at padding positions; the last position (the most recent item) unless sequences."""
    outputs = outputs * tf.cast(mask, outputs.dtype)[..., tf.newaxis]
    return outputs if return_sequences else outputs[:, -1]


@_register
class MeanHistoryEncoder(tf.keras.layers.Layer):
    """Masked mean: ``h_l = Σ_{j ≤ l} m_j e_j / max(1, Σ_{j ≤ l} m_j)``.

    The summary is exactly :class:`MaskedPooling` ``("mean")`` (an all-padding history gives zeros).

    Call: ``embeddings [B, L, d]``, ``mask [B, L]`` bool → ``[B, d]``, or ``[B, L, d]`` with
    ``return_sequences=True``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pooling = MaskedPooling("mean", name="pooling")

    def call(
        self, embeddings: tf.Tensor, mask: tf.Tensor, training: Optional[bool] = None, return_sequences: bool = False
    ) -> tf.Tensor:
        if not return_sequences:
            return self.pooling(embeddings, mask)
        weights = tf.cast(mask, embeddings.dtype)[..., tf.newaxis]
        totals = tf.cumsum(embeddings * weights, axis=1)
        return _select(totals / tf.maximum(tf.cumsum(weights, axis=1), 1.0), mask, True)


@_register
class AttentionHistoryEncoder(tf.keras.layers.Layer):
    """Attention pooling with a learned query ``w`` and a learned recency bias ``b``.

        h_l = Σ_{j ≤ l, m_j} a_lj e_j,   a_lj = softmax_j(⟨w, W_k e_j⟩ / √d + b[min(n_l − n_j, R − 1)])

    (additive attention pooling as in Bahdanau et al., ICLR 2015, with ``R = max_length`` learned
    offsets: how many valid items lie between ``j`` and the newest item ``l``).

    Args:
      max_length: ``R``, learned recency offsets (older items share the last one).

    Call: ``embeddings [B, L, d]``, ``mask [B, L]`` bool → ``[B, d]``, or ``[B, L, d]`` with
    ``return_sequences=True``.
    """

    def __init__(self, max_length: int = 50, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"`max_length` must be a positive int. Received: {max_length!r}")
        self.max_length = max_length

    def build(self, input_shape: tf.TensorShape) -> None:
        dim = int(input_shape[-1])
        self.keys = tf.keras.layers.Dense(dim, use_bias=False, name="keys")
        self.query = self.add_weight("query", shape=[dim], initializer="glorot_uniform")
        self.recency = self.add_weight("recency", shape=[self.max_length], initializer="zeros")
        super().build(input_shape)

    def call(
        self, embeddings: tf.Tensor, mask: tf.Tensor, training: Optional[bool] = None, return_sequences: bool = False
    ) -> tf.Tensor:
        dim = tf.cast(tf.shape(embeddings)[-1], embeddings.dtype)
        scores = tf.linalg.matvec(self.keys(embeddings), self.query) / tf.sqrt(dim)  # [B, L]
        positions = valid_positions(mask)
        if return_sequences:
            allowed = causal_mask(mask)  # [B, L(newest), L(item)]
            offsets = positions[:, :, tf.newaxis] - positions[:, tf.newaxis, :]
            recency = tf.gather(self.recency, tf.clip_by_value(offsets, 0, self.max_length - 1))
            logits = scores[:, tf.newaxis, :] + recency
            weights = tf.nn.softmax(tf.where(allowed, logits, logits.dtype.min), axis=-1)
            return _select(tf.matmul(weights, embeddings), mask, True)
        offsets = positions[:, -1:] - positions
        logits = scores + tf.gather(self.recency, tf.clip_by_value(offsets, 0, self.max_length - 1))
        weights = tf.nn.softmax(tf.where(mask, logits, logits.dtype.min), axis=-1)
        pooled = tf.linalg.matvec(embeddings, weights, transpose_a=True)
        return pooled * tf.cast(tf.reduce_any(mask, axis=1, keepdims=True), pooled.dtype)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "max_length": self.max_length}


@_register
class GRUHistoryEncoder(tf.keras.layers.Layer):
    """A GRU over the valid items: ``s_l = GRU(s_{l−1}, e_l)`` if ``m_l`` else ``s_{l−1}``, ``s_0 = 0``.

    Padding steps carry the state unchanged, so left padding leaves every output as it is.

    Call: ``embeddings [B, L, d]``, ``mask [B, L]`` bool → ``[B, d]``, or ``[B, L, d]`` with
    ``return_sequences=True``.

    Not XLA-compiled under ``training.jit_compile`` (:attr:`compiles_with_xla`): the GRU's loop keeps
    its per-step values in a ``TensorList``, which XLA cannot pass back to TensorFlow for the gradient.
    """

    compiles_with_xla = False

    def build(self, input_shape: tf.TensorShape) -> None:
        self.gru = tf.keras.layers.GRU(int(input_shape[-1]), return_sequences=True, name="gru")
        super().build(input_shape)

    def call(
        self, embeddings: tf.Tensor, mask: tf.Tensor, training: Optional[bool] = None, return_sequences: bool = False
    ) -> tf.Tensor:
        return _select(self.gru(embeddings, mask=mask, training=training), mask, return_sequences)


@_register
class TransformerHistoryEncoder(tf.keras.layers.Layer):
    """Causal transformer over the history (SASRec, Kang & McAuley, ICDM 2018).

    ``block="pre_norm"`` (default; Xiong et al., ICML 2020):

        x⁰_l = dropout(e_l + P[n_l]);  xᵏ = xᵏ⁻¹ + dropout(MHA(LN(xᵏ⁻¹), causal));
        xᵏ ← xᵏ + dropout(FFN(LN(xᵏ)));  h = LN(x^K)

    ``block="sasrec"`` (SASRec's reference code): ``x⁰_l = dropout(√d·e_l + P[n_l])``; with
    ``q = LN(xᵏ⁻¹)``, ``xᵏ = q + MHA(query=q, keys=values=xᵏ⁻¹, causal)``, then
    ``xᵏ ← xᵏ + FFN(LN(xᵏ))`` with dropout after the ReLU and after the output; ``h = LN(x^K)``.

    ``P`` holds ``max_length`` learned positional embeddings indexed by ``n_l``: with
    ``positions="from_oldest"`` (default) the valid-item index (later items share the last row), with
    ``"from_newest"`` the slot counted back from the window's newest one (:func:`newest_positions`:
    the most recent item always gets the last row, as in SASRec; older slots share row 0). Attention
    sees positions ``j ≤ l`` that are not padding.

    Args:
      num_layers: ``K`` blocks.
      num_heads: attention heads (each of width ``max(1, d // num_heads)``).
      dropout: rate of every dropout, in [0, 1).
      max_length: learned positions.
      positions: ``from_oldest`` or ``from_newest`` (see above).
      block: ``pre_norm`` or ``sasrec`` (see above).

    Call: ``embeddings [B, L, d]``, ``mask [B, L]`` bool → ``[B, d]``, or ``[B, L, d]`` with
    ``return_sequences=True``.
    """

    def __init__(
        self,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
        max_length: int = 50,
        positions: str = "from_oldest",
        block: str = "pre_norm",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if positions not in POSITIONS:
            raise ValueError(f"`positions` must be one of {list(POSITIONS)}. Received: {positions!r}")
        if block not in TRANSFORMER_BLOCKS:
            raise ValueError(f"`block` must be one of {list(TRANSFORMER_BLOCKS)}. Received: {block!r}")
        self.positions_from = positions
        self.block = block
        for name, value in (("num_layers", num_layers), ("num_heads", num_heads), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int. Received: {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: {dropout}")
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.dropout = float(dropout)
        self.max_length = max_length

    def build(self, input_shape: tf.TensorShape) -> None:
        dim = int(input_shape[-1])
        self.positions = self.add_weight(
            "positions", shape=[self.max_length, dim], initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02)
        )
        self.input_dropout = tf.keras.layers.Dropout(self.dropout, name="input_dropout")
        self.blocks = []
        for i in range(self.num_layers):
            self.blocks.append(
                {
                    "attention_norm": tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"attention_norm_{i}"),
                    "attention": tf.keras.layers.MultiHeadAttention(
                        self.num_heads, max(1, dim // self.num_heads), dropout=self.dropout, name=f"attention_{i}"
                    ),
                    "attention_dropout": tf.keras.layers.Dropout(self.dropout, name=f"attention_dropout_{i}"),
                    "feedforward_norm": tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"feedforward_norm_{i}"),
                    "feedforward_hidden": tf.keras.layers.Dense(dim, activation="relu", name=f"feedforward_hidden_{i}"),
                    "feedforward_output": tf.keras.layers.Dense(dim, name=f"feedforward_output_{i}"),
                    "feedforward_dropout": tf.keras.layers.Dropout(self.dropout, name=f"feedforward_dropout_{i}"),
                }
            )
            if self.block == "sasrec":
                self.blocks[-1]["feedforward_inner_dropout"] = tf.keras.layers.Dropout(
                    self.dropout, name=f"feedforward_inner_dropout_{i}"
                )
        self.output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="output_norm")
        super().build(input_shape)

    def call(
        self, embeddings: tf.Tensor, mask: tf.Tensor, training: Optional[bool] = None, return_sequences: bool = False
    ) -> tf.Tensor:
        if self.positions_from == "from_newest":
            positions = newest_positions(mask, self.max_length)
        else:
            positions = tf.clip_by_value(valid_positions(mask), 0, self.max_length - 1)
        if self.block == "sasrec":
            embeddings = embeddings * tf.sqrt(tf.cast(tf.shape(embeddings)[-1], embeddings.dtype))
        x = self.input_dropout(embeddings + tf.gather(self.positions, positions), training=training)
        valid = tf.cast(mask, x.dtype)[..., tf.newaxis]
        x = x * valid
        allowed = causal_mask(mask)
        for block in self.blocks:
            if self.block == "sasrec":
                q = block["attention_norm"](x)
                x = q + block["attention"](q, x, attention_mask=allowed, training=training)
                h = block["feedforward_hidden"](block["feedforward_norm"](x))
                h = block["feedforward_output"](block["feedforward_inner_dropout"](h, training=training))
                x = (x + block["feedforward_dropout"](h, training=training)) * valid
                continue
            h = block["attention_norm"](x)
            h = block["attention"](h, h, attention_mask=allowed, training=training)
            x = x + block["attention_dropout"](h, training=training)
            h = block["feedforward_output"](block["feedforward_hidden"](block["feedforward_norm"](x)))
            x = x + block["feedforward_dropout"](h, training=training)
        return _select(self.output_norm(x), mask, return_sequences)

    def get_config(self) -> Dict[str, Any]:
        return {
            **super().get_config(),
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "max_length": self.max_length,
            "positions": self.positions_from,
            "block": self.block,
        }

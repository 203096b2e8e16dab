"""The towers' configuration: the MLP of a tower and how the query tower reads its history.

Plain dataclasses without TensorFlow at import, so :mod:`tfrec_towers.config` stays cheap to import;
:mod:`tfrec_towers.towers` and :mod:`tfrec_towers.history_encoders` build the layers they describe.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Tuple

HistoryEncoderName = Literal["pooling", "mean", "attention", "gru", "transformer"]
HISTORY_ENCODERS = ("pooling", "mean", "attention", "gru", "transformer")
PositionsFrom = Literal["from_oldest", "from_newest"]
POSITIONS = ("from_oldest", "from_newest")
HistoryItems = Literal["embedding", "candidate_tower"]
HISTORY_ITEMS = ("embedding", "candidate_tower")
TransformerBlock = Literal["pre_norm", "sasrec"]
TRANSFORMER_BLOCKS = ("pre_norm", "sasrec")


@dataclasses.dataclass(frozen=True)
class HistoryEncoderConfig:
    """How the query tower reads its item history.

    The defaults are the product's (``ExperimentConfig().model.history``); a tower without a
    history feature (the candidate tower) is built with ``encoder="pooling"``.

    Attributes:
      encoder: a sequence encoder, ``attention`` (default: attention pooling with a learned query
        and a learned recency bias), ``mean``, ``gru`` or ``transformer``; or ``pooling`` (the
        history is one more feature of the ``FeatureEncoder``, pooled by ``features.history_pooling``).
        Only sequence encoders support every-position training.
      feature: the query feature holding the history (``int64 [B, L]``, 0-padded on the left).
      num_layers: transformer blocks (positive).
      num_heads: attention heads of each transformer block (positive).
      dropout: dropout rate of the transformer (embeddings, attention, feed-forward), in [0, 1).
      max_length: the encoder reads the last ``max_length`` items of a history; also the number
        of learned positions (transformer) and recency offsets (attention).
      positions: how the transformer (only) indexes its learned positions: ``from_oldest`` (default: the
        valid-item index from the oldest item, the same for a prefix alone or inside a sequence) or
        ``from_newest`` (SASRec's right-aligned positions: the most recent item always has the last).
      items: how a history item becomes the vector the encoder reads: ``embedding`` (default: its row of
        the id embedding table, shared with the candidate id) or ``candidate_tower`` (the candidate
        tower's embedding of the item, read from its id and its attributes in the catalogue: one item
        encoder for the history and the candidates, as Merlin's and TFRS's item models share theirs);
        needs a sequence ``encoder``.
      block: the transformer's (only) block: ``pre_norm`` (default: ``x + MHA(LN x)`` then
        ``x + FFN(LN x)``, Xiong et al., ICML 2020) or ``sasrec`` (the block of SASRec's reference
        code, Kang & McAuley, ICDM 2018: item embeddings scaled by √d, the attention's query
        normalised and its keys and values not, the residual added to the normalised query, dropout
        inside the feed-forward layer too).
    """

    encoder: HistoryEncoderName = "attention"
    feature: str = "history"
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    max_length: int = 50
    positions: PositionsFrom = "from_oldest"
    items: HistoryItems = "embedding"
    block: TransformerBlock = "pre_norm"

    def __post_init__(self) -> None:
        choices = (("encoder", HISTORY_ENCODERS), ("positions", POSITIONS), ("items", HISTORY_ITEMS))
        for name, allowed in (*choices, ("block", TRANSFORMER_BLOCKS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)}. Received: {getattr(self, name)!r}")
        # the transformer's own settings: another value than the default needs it
        for name, default, what in (("positions", "from_oldest", "learned positions"), ("block", "pre_norm", "blocks")):
            if getattr(self, name) != default and self.encoder != "transformer":
                raise ValueError(
                    f"`{name}`={getattr(self, name)!r} needs `encoder` 'transformer' (the only encoder with "
                    f"{what}). Received: encoder={self.encoder!r}"
                )
        if self.items != "embedding" and self.encoder == "pooling":
            raise ValueError(
                f"`items`={self.items!r} needs a sequence `encoder` (mean, attention, gru or transformer): "
                "'pooling' pools the history's id embeddings inside the feature encoder."
            )
        for name in ("num_layers", "num_heads", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int. Received: {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: {self.dropout}")
        if not self.feature:
            raise ValueError("`feature` must name the query tower's history feature.")

    @property
    def is_sequential(self) -> bool:
        """True for the encoders that give one output per position (all but ``pooling``)."""
        return self.encoder != "pooling"


Normalization = Literal["none", "batch", "layer"]
Projection = Literal[True, False, "auto"]


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """The MLP on top of a tower's concatenated feature vectors.

    Attributes:
      hidden_units: widths of the hidden layers (may be empty: a single linear projection).
      output_dim: embedding dimension d (the last, linear layer).
      projection: the last, linear layer (true, default). False: none, the tower's output is its
        last hidden layer or, without hidden layers, its concatenated features, which must then be
        ``output_dim`` wide. With ``hidden_units: []`` and the item id alone, the candidate
        embedding is the item's row of the embedding table the history shares, as SASRec scores
        items (Kang & McAuley, ICDM 2018). ``auto``: a projection only when what comes before it is
        not ``output_dim`` wide (an id alone is scored by its own row; an id with attributes is
        projected), decided from the features' widths when the tower is built.
      activation: a Keras activation name for the hidden layers.
      dropout: dropout rate after each hidden layer, in [0, 1).
      normalization: ``"batch"``, ``"layer"`` or ``"none"`` after each hidden layer.
      l2_normalize: divide the output by its L2 norm (scores become cosines).
    """

    hidden_units: Tuple[int, ...] = (256,)
    output_dim: int = 64
    activation: str = "relu"
    dropout: float = 0.0
    normalization: Normalization = "none"
    l2_normalize: bool = True
    projection: Projection = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_units", tuple(self.hidden_units))
        if not (isinstance(self.projection, bool) or self.projection == "auto"):
            raise ValueError(f"`projection` must be true, false or 'auto'. Received: {self.projection!r}")
        if any(isinstance(u, bool) or not isinstance(u, int) or u <= 0 for u in self.hidden_units):
            raise ValueError(f"`hidden_units` must be positive ints. Received: {self.hidden_units}")
        if isinstance(self.output_dim, bool) or not isinstance(self.output_dim, int) or self.output_dim <= 0:
            raise ValueError(f"`output_dim` must be a positive int. Received: {self.output_dim!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: {self.dropout}")
        if self.normalization not in ("none", "batch", "layer"):
            raise ValueError(f"`normalization` must be 'none', 'batch' or 'layer'. Received: {self.normalization!r}")
        import tensorflow as tf  # on first use: importing this module stays free of TensorFlow

        try:
            tf.keras.activations.get(self.activation)
        except ValueError as e:
            raise ValueError(
                f"`activation` must be a Keras activation name such as 'relu', 'gelu' or 'linear'. "
                f"Received: {self.activation!r}"
            ) from e

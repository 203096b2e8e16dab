"""A tower: raw features → feature encoder → MLP → (optionally) L2-normalised embedding.

    u = normalize(W_K σ(… σ(W_1 [e_1(x_1); …; e_F(x_F)]) …))

as in the two-tower models of Yi et al. (RecSys 2019) and Covington et al. (RecSys 2016).
With a sequence history encoder (``history_encoders.py``) the history's vector is the encoder's
output ``h`` instead of a pooled embedding, ``u = normalize(MLP([e_1(x_1); …; h]))``, and the tower
also gives one embedding per history position (``sequence_embeddings``) for every-position training.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfrec_towers.encoders import FeatureEncoder, build_embedding_tables
from tfrec_towers.features import Feature, SequenceFeature, feature_from_dict, feature_to_dict, without_vocabulary
from tfrec_towers.history_encoders import HistoryEncoderConfig, make_history_encoder
from tfrec_towers.progress import progress
from tfrec_towers.tower_config import TowerConfig
from tfrec_towers.xla import compiled


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class Tower(tf.keras.Model):
    """Encodes one side (query or candidate) into an embedding ``[batch, output_dim]``.

    Args:
      features: the tower's feature declarations (adapted: vocabularies filled in), or their dict form.
      config: the MLP's :class:`TowerConfig` (or its dict form).
      tables: embedding layers shared with the other tower (see ``FeatureEncoder``).
      history: how the history feature is read (:class:`HistoryEncoderConfig` or its dict form);
        with a sequence encoder the feature named ``history.feature`` (a ``[B, L]`` id sequence) is
        looked up in its (shared) table and encoded by it, the other features by the feature encoder.
      items: with ``history.items='candidate_tower'``, the layer that embeds the history's ids
        (:class:`~tfrec_towers.history_items.CandidateTowerItems`, built beside the candidate tower by
        :func:`tfrec_towers.model.build_towers`); ``None`` otherwise.

    Hyper-parameters in the config, state in weights: ``get_config`` holds the declarations
    without their vocabularies (only each one's ``vocabulary_size``), the MLP and history
    settings; the vocabularies are in the embedding tables' lookups and, with the embeddings,
    in checkpoints and SavedModels. A tower rebuilt by ``from_config`` has the same shape and
    sends every value to the OOV rows until a checkpoint is restored into it.

    Raises:
      ValueError: a sequence encoder is configured but the tower has no ``[B, L]`` id sequence
        feature named ``history.feature``; or ``history.items='candidate_tower'`` without ``items``.

    Call: a dict of raw feature tensors (extra keys are ignored) → ``[batch, output_dim]``.

    With :attr:`xla_training` (``training.jit_compile``), calls with ``training=True`` run the MLP
    head and the history encoder (unless its ``compiles_with_xla`` is false: the GRU's) XLA-compiled
    (:func:`tfrec_towers.xla.compiled`); the lookups, and every inference call, run as TensorFlow ops.
    """

    xla_training: bool = False

    def __init__(
        self,
        features: Sequence[Feature | Mapping[str, Any]],
        config: TowerConfig | Mapping[str, Any] = TowerConfig(),
        tables: Optional[Mapping[str, tf.keras.layers.Layer]] = None,
        history: HistoryEncoderConfig | Mapping[str, Any] = HistoryEncoderConfig(encoder="pooling"),
        items: Optional[tf.keras.layers.Layer] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config if isinstance(config, TowerConfig) else TowerConfig(**config)
        self.history = history if isinstance(history, HistoryEncoderConfig) else HistoryEncoderConfig(**history)
        self._features = [feature_from_dict(f) if isinstance(f, Mapping) else f for f in features]
        self.history_feature: Optional[SequenceFeature] = None
        if (self.history.items == "candidate_tower") != (items is not None):
            raise ValueError(
                "`items` (the candidate tower's item embedding) is what `history.items`='candidate_tower' "
                f"reads the history through, and only then: history.items={self.history.items!r}, "
                f"items={'given' if items is not None else None}. Build the towers with `build_towers`."
            )
        self.history_items = items
        if self.history.is_sequential:
            history_feature = next((f for f in self._features if f.name == self.history.feature), None)
            if not isinstance(history_feature, SequenceFeature) or not history_feature.is_matrix:
                raise ValueError(
                    f"`history.encoder`={self.history.encoder!r} needs an id-matrix sequence feature named "
                    f"{self.history.feature!r}; the tower's features are {[f.name for f in self._features]}. "
                    "Name it with `model.history.feature`, or pool the history with `model.history.encoder=pooling`."
                )
            self.history_feature = history_feature
            tables = dict(tables) if tables is not None else build_embedding_tables(self._features)
            side = [f for f in self._features if f is not self.history_feature]
            self.encoder: Optional[FeatureEncoder] = FeatureEncoder(side, tables, name="features") if side else None
            self.history_table = tables[history_feature.table]
            self.history_encoder = make_history_encoder(self.history)
        else:
            self.encoder = FeatureEncoder(self._features, tables, name="features")
        self.hidden = []
        for i, units in enumerate(self.config.hidden_units):
            self.hidden.append(tf.keras.layers.Dense(units, activation=self.config.activation, name=f"hidden_{i}"))
            if self.config.normalization == "batch":
                self.hidden.append(tf.keras.layers.BatchNormalization(name=f"batch_norm_{i}"))
            elif self.config.normalization == "layer":
                self.hidden.append(tf.keras.layers.LayerNormalization(name=f"layer_norm_{i}"))
            if self.config.dropout > 0:
                self.hidden.append(tf.keras.layers.Dropout(self.config.dropout, name=f"dropout_{i}"))
        self.projection = (
            tf.keras.layers.Dense(self.config.output_dim, name="projection") if self.config.projection else None
        )

    @property
    def features(self) -> Sequence[Feature]:
        return self._features

    def _encode_history(
        self, feature: SequenceFeature, inputs: Mapping[str, tf.Tensor], training: bool, return_sequences: bool
    ) -> tf.Tensor:
        ids = inputs[feature.name]
        if not return_sequences:
            ids = ids[:, -self.history.max_length :]
        mask = tf.not_equal(ids, tf.constant(feature.padding, ids.dtype))
        encoder = self.history_encoder
        if training and self.xla_training and getattr(encoder, "compiles_with_xla", True):
            encoder = compiled(encoder, "__call__")
        if self.history_items is not None:
            embedded = self.history_items(ids, training=training)
        else:
            embedded = self.history_table(ids)
        return encoder(embedded, mask, training=training, return_sequences=return_sequences)

    def _head_of(self, training: bool):
        """:meth:`_head`, XLA-compiled in training with :attr:`xla_training`."""
        return compiled(self, "_head") if training and self.xla_training else self._head

    def _head(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """MLP, projection and L2 normalisation over the last axis: ``[..., in] → [..., output_dim]``."""
        for layer in self.hidden:
            x = layer(x, training=training)
        if self.projection is not None and not (
            self.config.projection == "auto" and x.shape[-1] == self.config.output_dim
        ):
            x = self.projection(x)
        elif self.projection is None and x.shape[-1] != self.config.output_dim:
            raise ValueError(
                f"`model.{self.name}.projection` is false, so the tower's output is its "
                f"{'last hidden layer' if self.hidden else 'concatenated features'}, {x.shape[-1]} wide, but "
                f"`model.{self.name}.output_dim` is {self.config.output_dim}: make them equal "
                "(`features.embedding_dim`, `hidden_units`), or keep the projection."
            )
        if self.config.l2_normalize:
            x = tf.math.l2_normalize(x, axis=-1)
        return x

    @tf.autograph.experimental.do_not_convert  # plain Python control flow: tracing needs no conversion
    def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        parts = [] if self.encoder is None else [self.encoder(inputs)]
        if self.history_feature is None:
            return self._head_of(training)(parts[0], training)
        parts.append(self._encode_history(self.history_feature, inputs, training, return_sequences=False))
        return self._head_of(training)(tf.concat(parts, axis=-1), training)

    @tf.autograph.experimental.do_not_convert  # plain Python control flow: tracing needs no conversion
    def sequence_embeddings(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """The query of every history prefix in one pass: ``[batch, L, output_dim]``.

        Position ``l`` sees the history items ``≤ l`` (causal) and the example's other features
        (``[batch]`` each, broadcast over positions); padding positions hold embeddings of the
        features alone and must be left out by the caller.

        Raises:
          ValueError: the tower has no sequence history encoder (``history.encoder``='pooling').
        """
        if self.history_feature is None:
            raise ValueError(
                f"{self.name} pools its history inside the feature encoder (`history.encoder`='pooling'): "
                "every-position training needs a sequence encoder (mean, attention, gru or transformer)."
            )
        sequence = self._encode_history(self.history_feature, inputs, training, return_sequences=True)
        if self.encoder is not None:
            side = self.encoder(inputs)[:, tf.newaxis, :]
            side = tf.tile(side, tf.stack([1, tf.shape(sequence)[1], 1]))
            sequence = tf.concat([side, sequence], axis=-1)
        return self._head_of(training)(sequence, training)

    def get_config(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "features": [feature_to_dict(without_vocabulary(f)) for f in self._features],
            "config": dataclasses.asdict(self.config),
            "history": dataclasses.asdict(self.history),
        }


_PREDICT_FUNCTIONS: "weakref.WeakKeyDictionary[tf.keras.Model, Any]" = weakref.WeakKeyDictionary()


def _predict_function(tower: tf.keras.Model):
    """One traced inference function per tower, reused across calls (batch size left dynamic)."""
    if tower not in _PREDICT_FUNCTIONS:
        _PREDICT_FUNCTIONS[tower] = tf.function(
            lambda batch: tower(batch, training=False), reduce_retracing=True, autograph=False
        )
    return _PREDICT_FUNCTIONS[tower]


def check_embeddings(what: str, embeddings: Any, num_rows: int) -> np.ndarray:
    """A tower's output as numpy, if it is ``float32 [num_rows, dim]``.

    Args:
      what: the tower, as the error names it (e.g. ```candidate_model```).
      embeddings: what the tower returned for ``num_rows`` rows.
      num_rows: the rows fed to it.

    Raises:
      ValueError: naming ``what``, for any other output.
    """
    if (
        not isinstance(embeddings, tf.Tensor)
        or embeddings.dtype != tf.float32
        or embeddings.shape.rank != 2
        or embeddings.shape[0] != num_rows
    ):
        received = (
            f"{embeddings.dtype.name} {embeddings.shape}" if isinstance(embeddings, tf.Tensor) else type(embeddings)
        )
        raise ValueError(
            f"{what} must return a float32 tensor of embeddings [batch, dim]. Received {received} for {num_rows} rows."
        )
    return embeddings.numpy()


def compute_embeddings(tower: tf.keras.Model, features: Mapping[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Runs ``tower`` over a feature dictionary in batches: ``float32 [num_rows, dim]``.

    Only the columns the tower reads are fed (those of its ``features`` declarations, all of
    ``features`` for a tower without them), so a catalogue of any size passes in bounded memory.

    Args:
      tower: raw features → ``float32 [batch, dim]``, e.g. a :class:`Tower`.
      features: ``{feature: numpy array [num_rows, ...]}``, the columns in the tower's input dtypes.
      batch_size: rows per call of the tower.

    Returns:
      ``float32 [num_rows, dim]`` (``[0, 0]`` without rows).

    Raises:
      ValueError: the tower returns anything but ``float32 [batch, dim]`` for a batch.
    """
    names = [f.name for f in tower.features] if hasattr(tower, "features") else list(features)
    columns = {name: features[name] for name in names}
    num_rows = len(next(iter(columns.values())))
    predict = _predict_function(tower)
    outputs = []
    with progress(f"Embedding with {tower.name}", total=num_rows, unit="rows") as bar:
        for start in range(0, num_rows, batch_size):
            batch = {name: tf.constant(values[start : start + batch_size]) for name, values in columns.items()}
            rows = len(next(iter(batch.values())))
            outputs.append(check_embeddings(f"The tower {tower.name!r}", predict(batch), rows))
            bar.update(rows)
    if not outputs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outputs).astype(np.float32)

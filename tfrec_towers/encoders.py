"""Keras layers that turn raw feature tensors into vectors, as the declarations of ``features.py`` say.

Every layer takes raw tensors (ids, strings, padded id matrices, numbers) so that the towers, and
the SavedModels exported from them, contain all preprocessing: no client-side lookups, and unknown
values land in out-of-vocabulary buckets instead of failing.

Hyper-parameters in the config, state in weights: every ``get_config`` holds sizes, dtypes and
widths; a vocabulary is state, kept in a checkpointable lookup table beside the embedding matrix
(:class:`EmbeddingTable`). Normalisation statistics and bucket boundaries, whose size is set by
the declaration (two numbers, ``num_buckets`` boundaries) and not by the data, stay in the config
as Keras' own ``Normalization``/``Discretization`` keep them.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tfrec_towers.features import (
    POOLINGS,
    BucketizedFeature,
    Feature,
    HashedFeature,
    NumericFeature,
    SequenceFeature,
    feature_from_dict,
    feature_to_dict,
    without_vocabulary,
)
from tfrec_towers.unique_ids import repeated_ids

_register = tf.keras.utils.register_keras_serializable(package="tfrec_towers")


@_register
class EmbeddingTable(tf.keras.layers.Layer):
    """Vocabulary lookup with OOV buckets followed by an embedding: ``E[lookup(x)]``.

    Row ``i < num_oov_buckets`` is an OOV bucket (values not in the vocabulary are hashed into
    one); row ``num_oov_buckets + j`` embeds the vocabulary's ``j``-th value. An empty vocabulary
    (no value reached the feature's ``min_count``) sends every value to the OOV buckets. With
    several OOV buckets an unknown integer ``x`` goes to ``x mod num_oov_buckets`` and an unknown
    string to its ``tf.strings.to_hash_bucket_fast`` bucket (for an empty vocabulary, integers
    are hashed by their decimal string), as Keras' ``IntegerLookup``/``StringLookup`` and
    ``Hashing`` do.

    Hyper-parameters in the config, state in weights: the config holds the dtype and sizes
    (``vocabulary_size``, never the values), the values live in ``vocabulary_table``, a
    ``tf.lookup.experimental.MutableHashTable`` (value → its row) that ``tf.train.Checkpoint`` and
    SavedModels save beside the embedding matrix. ``from_config`` builds a table of the same
    shape whose lookup is empty (every value OOV) until a checkpoint is restored into it.
    ``get_weights``/``set_weights`` carry the variables only; the vocabulary moves with checkpoints.

    Args:
      vocabulary: the known values (ints for ``key_dtype="int64"``, strings otherwise), distinct;
        ``None`` for a table whose vocabulary a checkpoint restores.
      key_dtype: ``"int64"`` or ``"string"``.
      embedding_dim: width of each embedding.
      num_oov_buckets: rows shared by out-of-vocabulary values.
      vocabulary_size: the number of known values; required without ``vocabulary``, and equal to
        ``len(vocabulary)`` when both are given.

    Raises:
      ValueError: naming the argument, for an unknown ``key_dtype``, a missing or mismatched
        ``vocabulary_size``, or repeated values in ``vocabulary``.

    Call: ``values`` of any shape ``[...]`` → ``[..., embedding_dim]``.
    """

    def __init__(
        self,
        vocabulary: Optional[Sequence[Union[int, str]]],
        key_dtype: str,
        embedding_dim: int,
        num_oov_buckets: int = 1,
        vocabulary_size: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if key_dtype not in ("int64", "string"):
            raise ValueError(f"`key_dtype` must be 'int64' or 'string'. Received: {key_dtype!r}")
        if vocabulary is not None:
            if vocabulary_size is not None and len(vocabulary) != vocabulary_size:
                raise ValueError(
                    f"`vocabulary_size` must equal the {len(vocabulary)} values of `vocabulary`. "
                    f"Received: {vocabulary_size}"
                )
            size = len(vocabulary)
        elif vocabulary_size is not None:
            size = int(vocabulary_size)
        else:
            raise ValueError("`vocabulary` or `vocabulary_size` is required. Received neither.")
        self.key_dtype = key_dtype
        self.embedding_dim = int(embedding_dim)
        self.num_oov_buckets = int(num_oov_buckets)
        self.vocabulary_size = size
        dtype = tf.int64 if key_dtype == "int64" else tf.string
        with tf.init_scope():
            # value → its row; a missing value gets the only OOV row 0, or -1 to hash it into one of several
            self.vocabulary_table = tf.lookup.experimental.MutableHashTable(
                dtype, tf.int64, default_value=0 if self.num_oov_buckets == 1 else -1
            )
            if vocabulary is not None and len(vocabulary):
                values = np.asarray(vocabulary, dtype=np.int64 if key_dtype == "int64" else object)
                repeated = repeated_ids(values)
                if repeated.size:
                    raise ValueError(
                        f"`vocabulary` must hold distinct values. Received {self.vocabulary_size} values, of which "
                        f"these repeat: {repeated[:5].tolist()}"
                    )
                keys = tf.constant(values, dtype)
                rows = tf.range(self.num_oov_buckets, self.num_oov_buckets + self.vocabulary_size, dtype=tf.int64)
                self.vocabulary_table.insert(keys, rows)
        self.embedding = tf.keras.layers.Embedding(
            self.vocabulary_size + self.num_oov_buckets, self.embedding_dim, name="embedding"
        )

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "EmbeddingTable":
        """A table of the configured shape with an empty lookup, for a checkpoint to fill (a
        config written by an earlier version, which held the ``vocabulary``, fills it instead)."""
        config = dict(config)
        return cls(config.pop("vocabulary", None), **config)

    def get_vocabulary(self) -> np.ndarray:
        """The known values in row order: ``int64 [V]``, or an ``object [V]`` array of ``str``."""
        keys, rows = (t.numpy() for t in self.vocabulary_table.export())
        values = keys[np.argsort(rows, kind="stable")]
        if self.key_dtype == "string":
            return np.array([v.decode("utf-8") for v in values], dtype=object)
        return values.astype(np.int64)

    def lookup(self, values: tf.Tensor) -> tf.Tensor:
        """The embedding row of each value, ``int64`` shaped as ``values``."""
        if self.key_dtype == "int64" and values.dtype != tf.int64:
            values = tf.cast(values, tf.int64)
        rows = self.vocabulary_table.lookup(values)
        rows.set_shape(values.shape)  # a MutableHashTable lookup has no static shape
        if self.num_oov_buckets == 1:
            return rows
        if self.key_dtype == "int64" and self.vocabulary_size > 0:
            oov = tf.math.floormod(values, self.num_oov_buckets)
        else:
            keys = tf.strings.as_string(values) if self.key_dtype == "int64" else values
            oov = tf.strings.to_hash_bucket_fast(keys, self.num_oov_buckets)
        return tf.where(rows >= 0, rows, oov)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        return self.embedding(self.lookup(values))

    def get_config(self) -> Dict[str, Any]:
        return {
            **super().get_config(),
            "key_dtype": self.key_dtype,
            "embedding_dim": self.embedding_dim,
            "num_oov_buckets": self.num_oov_buckets,
            "vocabulary_size": self.vocabulary_size,
        }


@_register
class HashedEmbedding(tf.keras.layers.Layer):
    """``E[hash(x) mod num_bins]`` for ids too many to keep a vocabulary of.

    Call: ``values`` (int64 or string) of any shape ``[...]`` → ``[..., embedding_dim]``.
    """

    def __init__(self, num_bins: int, embedding_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_bins <= 0:
            raise ValueError(f"`num_bins` must be a positive int. Received: {num_bins}")
        self.num_bins = int(num_bins)
        self.embedding_dim = int(embedding_dim)
        self.hashing = tf.keras.layers.Hashing(self.num_bins)
        self.embedding = tf.keras.layers.Embedding(self.num_bins, self.embedding_dim, name="embedding")

    def call(self, values: tf.Tensor) -> tf.Tensor:
        return self.embedding(self.hashing(values))

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "num_bins": self.num_bins, "embedding_dim": self.embedding_dim}


@_register
class MaskedPooling(tf.keras.layers.Layer):
    """Pools a sequence of vectors over its valid positions.

    mean: ``Σ_l m_l e_l / max(1, Σ_l m_l)``; sum: ``Σ_l m_l e_l``; max: ``max_{l: m_l} e_l``.
    A row with no valid position pools to zeros for every mode.

    Call: ``embeddings [batch, length, dim]``, ``mask [batch, length]`` (bool) → ``[batch, dim]``.
    """

    def __init__(self, pooling: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {list(POOLINGS)}. Received: {pooling!r}")
        self.pooling = pooling

    def call(self, embeddings: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        weights = tf.cast(mask, embeddings.dtype)[..., tf.newaxis]
        if self.pooling == "max":
            masked = tf.where(weights > 0, embeddings, tf.fill(tf.shape(embeddings), embeddings.dtype.min))
            has_any = tf.reduce_any(mask, axis=1, keepdims=True)
            return tf.where(has_any, tf.reduce_max(masked, axis=1), tf.zeros_like(embeddings[:, 0]))
        total = tf.reduce_sum(embeddings * weights, axis=1)
        if self.pooling == "sum":
            return total
        return total / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "pooling": self.pooling}


@_register
class NumericNormalization(tf.keras.layers.Layer):
    """Standardises a number: ``(f(x) − mean) / sqrt(variance + ε)``, ``f`` = identity or ``log1p``.

    Call: ``values [batch]`` (int or float) → ``[batch, 1]`` float32.
    """

    def __init__(self, mean: Optional[float], variance: Optional[float], log1p: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if variance is None or mean is None or variance < 0:
            raise ValueError(f"`mean` and a non-negative `variance` are required. Received: {mean!r}, {variance!r}")
        self.mean = float(mean)
        self.variance = float(variance)
        self.log1p = bool(log1p)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        values = tf.cast(values, tf.float32)
        if self.log1p:
            values = tf.math.log1p(tf.maximum(values, 0.0))
        return ((values - self.mean) / tf.sqrt(self.variance + 1e-6))[:, tf.newaxis]

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "mean": self.mean, "variance": self.variance, "log1p": self.log1p}


@_register
class BucketizedEmbedding(tf.keras.layers.Layer):
    """``E[i]`` with ``i = #{b ∈ boundaries : b ≤ x}`` (``len(boundaries) + 1`` rows).

    Call: ``values`` (int or float) of any shape ``[...]`` → ``[..., embedding_dim]``.
    """

    def __init__(self, boundaries: Sequence[float], embedding_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(boundaries) == 0 or any(b >= c for b, c in zip(boundaries, boundaries[1:])):
            raise ValueError(f"`boundaries` must be a non-empty increasing list. Received: {list(boundaries)}")
        self.boundaries = [float(b) for b in boundaries]
        self.embedding_dim = int(embedding_dim)
        self.embedding = tf.keras.layers.Embedding(len(self.boundaries) + 1, self.embedding_dim, name="embedding")

    def call(self, values: tf.Tensor) -> tf.Tensor:
        values = tf.cast(values, tf.float32)
        values = tf.where(tf.math.is_nan(values), tf.fill(tf.shape(values), float("-inf")), values)
        return self.embedding(tf.raw_ops.Bucketize(input=values, boundaries=self.boundaries))

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "boundaries": self.boundaries, "embedding_dim": self.embedding_dim}


def build_embedding_tables(features: Sequence[Feature]) -> Dict[str, tf.keras.layers.Layer]:
    """One embedding layer per table name; features naming the same table get the same layer.

    A declaration with a ``vocabulary`` fills its table's lookup; one with only a
    ``vocabulary_size`` (read back from a config) gives an empty lookup of that size, to be
    filled by restoring a checkpoint.

    Raises:
      ValueError: a feature was never adapted (no vocabulary, no size, or no boundaries).
    """
    tables: Dict[str, tf.keras.layers.Layer] = {}
    for feature in features:
        if isinstance(feature, NumericFeature) or feature.table in tables:
            continue
        if isinstance(feature, HashedFeature):
            tables[feature.table] = HashedEmbedding(
                feature.num_bins, feature.embedding_dim, name=f"{feature.table}_hashed"
            )
        elif isinstance(feature, BucketizedFeature):
            if feature.boundaries is None:
                raise ValueError(f"Feature `{feature.name}` has no boundaries: call `features.adapt` on data first.")
            tables[feature.table] = BucketizedEmbedding(
                feature.boundaries, feature.embedding_dim, name=f"{feature.table}_buckets"
            )
        else:
            if feature.vocabulary is None and feature.vocabulary_size is None:
                raise ValueError(f"Feature `{feature.name}` has no vocabulary: call `features.adapt` on data first.")
            tables[feature.table] = EmbeddingTable(
                feature.vocabulary,
                feature.dtype,
                feature.embedding_dim,
                feature.num_oov_buckets,
                vocabulary_size=feature.vocabulary_size,
                name=f"{feature.table}_embedding",
            )
    return tables


@_register
class FeatureEncoder(tf.keras.layers.Layer):
    """Encodes one tower's raw features and concatenates them: ``[e_1(x_1); …; e_F(x_F)]``.

    Hyper-parameters in the config, state in weights: ``get_config`` stores the declarations
    without their vocabularies (:func:`~tfrec_towers.features.without_vocabulary`); the values are
    in the tables' lookups, restored from a checkpoint.

    Args:
      features: the tower's declarations (or their dict form, as stored by ``get_config``).
      tables: embedding layers by table name, shared with the other tower; built from
        ``features`` when omitted (a reloaded encoder then owns its tables).

    Call: a dict of raw tensors holding at least this tower's features → ``[batch, total_dim]``.
    """

    def __init__(
        self,
        features: Sequence[Union[Feature, Mapping[str, Any]]],
        tables: Optional[Mapping[str, tf.keras.layers.Layer]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.features = [feature_from_dict(f) if isinstance(f, Mapping) else f for f in features]
        self.tables = dict(tables) if tables is not None else build_embedding_tables(self.features)
        self.poolers = {
            f.name: MaskedPooling(f.pooling, name=f"{f.name}_pooling")
            for f in self.features
            if isinstance(f, SequenceFeature)
        }
        self.normalizers = {
            f.name: NumericNormalization(f.mean, f.variance, f.log1p, name=f"{f.name}_normalization")
            for f in self.features
            if isinstance(f, NumericFeature)
        }

    def _encode(self, feature: Feature, values: tf.Tensor) -> tf.Tensor:
        if isinstance(feature, NumericFeature):
            return self.normalizers[feature.name](values)
        if isinstance(feature, SequenceFeature):
            if not feature.is_matrix:
                values = tf.strings.split(values, sep=feature.separator).to_tensor(default_value="")
            mask = tf.not_equal(values, tf.constant(feature.padding, values.dtype))
            return self.poolers[feature.name](self.tables[feature.table](values), mask)
        return self.tables[feature.table](values)

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        missing = [f.name for f in self.features if f.name not in inputs]
        if missing:
            raise KeyError(f"{self.name}: inputs lack the features {missing}; got {sorted(inputs)}.")
        return tf.concat([self._encode(f, inputs[f.name]) for f in self.features], axis=-1)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "features": [feature_to_dict(without_vocabulary(f)) for f in self.features]}

"""Feature declarations: each input is declared once and used by both towers, training and export.

A declaration says what a raw column is (its dtype and shape on the wire) and how the
model turns it into a vector:

* :class:`CategoricalFeature` — a vocabulary built from data plus out-of-vocabulary (OOV) buckets;
* :class:`HashedFeature` — no vocabulary: ``hash(value) mod num_bins``;
* :class:`SequenceFeature` — multi-valued: a padded ``[B, L]`` matrix of ids (a watch history: int64
  padded with 0, or strings padded with ``""``) or a separator-joined string (``"Action|Comedy"``),
  embedded item by item and pooled under a mask;
* :class:`NumericFeature` — ``(f(x) − mean) / std`` with ``f`` the identity or ``log1p``;
* :class:`BucketizedFeature` — a number embedded by the bucket it falls in: ``E[#{b ∈ boundaries : b ≤ x}]``,
  the boundaries given or the quantiles of the data.

Vocabularies and normalisation statistics are learnt from data by :func:`adapt` and stored in the
declaration itself, so a :class:`FeatureSpec` written to JSON is enough to rebuild a model exactly.
Layer configs hold hyper-parameters only: a tower's config carries its declarations as
:func:`without_vocabulary` gives them (the vocabulary replaced by its ``vocabulary_size``), and the
values themselves live in the model's weights (see ``encoders.EmbeddingTable``).
Features that name the same ``embedding_table`` share one vocabulary and one embedding matrix
(e.g. the query tower's ``history`` and the candidate tower's ``movie_id``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Iterable, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrec_towers.progress import progress

IdDtype = Literal["int64", "string"]
NumericDtype = Literal["int64", "float32"]
Pooling = Literal["mean", "sum", "max"]
POOLINGS: Tuple[str, ...] = ("mean", "sum", "max")


def _check_positive(name: str, field: str, value: Optional[int]) -> None:
    if value is not None and (not isinstance(value, (int, np.integer)) or value <= 0):
        raise ValueError(f"Feature `{name}`: `{field}` must be a positive int. Received: {value!r}")


def _check_dtype(name: str, dtype: str, allowed: Sequence[str]) -> None:
    if dtype not in allowed:
        raise ValueError(f"Feature `{name}`: `dtype` must be one of {list(allowed)}. Received: {dtype!r}")


@dataclasses.dataclass(frozen=True)
class _VocabularyFeature:
    """Fields shared by the features that look values up in a vocabulary learnt from data.

    Values outside the vocabulary (unseen at training, or below ``min_count``) are hashed into
    ``num_oov_buckets`` OOV rows, so an unknown id never fails a request. Features naming the
    same ``embedding_table`` share one vocabulary and one embedding matrix.

    ``vocabulary`` holds the values once learnt (:func:`adapt`); ``vocabulary_size`` declares only
    how many there are, for a declaration read back from a layer config whose values a checkpoint
    restores (:func:`without_vocabulary`). At most one of the two is given.
    """

    name: str
    dtype: IdDtype = "int64"
    embedding_dim: int = 32
    num_oov_buckets: int = 1
    min_count: int = 1
    max_vocabulary_size: Optional[int] = None
    embedding_table: Optional[str] = None
    vocabulary: Optional[Tuple[Union[int, str], ...]] = None
    vocabulary_size: Optional[int] = None

    def __post_init__(self) -> None:
        _check_dtype(self.name, self.dtype, ("int64", "string"))
        for field in ("embedding_dim", "num_oov_buckets", "min_count", "max_vocabulary_size"):
            _check_positive(self.name, field, getattr(self, field))
        size = self.vocabulary_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0):
            raise ValueError(f"Feature `{self.name}`: `vocabulary_size` must be an int ≥ 0. Received: {size!r}")
        if size is not None and self.vocabulary is not None:
            raise ValueError(
                f"Feature `{self.name}`: give `vocabulary` or `vocabulary_size` (for a vocabulary held by a "
                f"model's weights), not both. Received {len(self.vocabulary)} values and a size of {size}."
            )

    @property
    def table(self) -> str:
        """Name of the embedding table this feature reads (its own name unless shared)."""
        return self.embedding_table or self.name


@dataclasses.dataclass(frozen=True)
class CategoricalFeature(_VocabularyFeature):
    """A single id or category per example, looked up in a vocabulary learnt from data."""


@dataclasses.dataclass(frozen=True)
class HashedFeature:
    """A high-cardinality id embedded through ``hash(value) mod num_bins`` (no vocabulary)."""

    name: str
    num_bins: int
    dtype: IdDtype = "string"
    embedding_dim: int = 32

    def __post_init__(self) -> None:
        _check_dtype(self.name, self.dtype, ("int64", "string"))
        _check_positive(self.name, "num_bins", self.num_bins)
        _check_positive(self.name, "embedding_dim", self.embedding_dim)

    @property
    def table(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class SequenceFeature(_VocabularyFeature):
    """A multi-valued feature pooled under a mask: ``pool({e(x_l) : x_l != padding})``.

    ``dtype="int64"``: the raw input is an ``int64 [B, L]`` matrix padded with ``padding_value``.
    ``dtype="string"`` with a ``separator``: the raw input is a ``string [B]`` of values joined by
    ``separator`` (``"Action|Comedy"``); with ``separator=None``: a ``string [B, L]`` matrix padded
    with ``""`` (a history of string ids). Empty strings are padding. ``pooling`` is ``mean``,
    ``sum`` or ``max`` over the valid positions (an all-padding row pools to zeros).
    """

    pooling: Pooling = "mean"
    separator: Optional[str] = "|"
    padding_value: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"Feature `{self.name}`: `pooling` must be one of {list(POOLINGS)}. Received: {self.pooling!r}"
            )
        if self.separator is not None and not self.separator:
            raise ValueError(f"Feature `{self.name}`: `separator` must be a non-empty string or None.")

    @property
    def is_matrix(self) -> bool:
        """True when the raw input is a padded ``[B, L]`` matrix (an id history), not joined strings."""
        return self.dtype == "int64" or self.separator is None

    @property
    def padding(self) -> Union[int, str]:
        """The value that pads a row of the matrix: ``padding_value`` for int64, ``""`` for strings."""
        return self.padding_value if self.dtype == "int64" else ""


@dataclasses.dataclass(frozen=True)
class NumericFeature:
    """A numeric value standardised with statistics learnt from data: ``(f(x) − μ) / σ``."""

    name: str
    dtype: NumericDtype = "float32"
    log1p: bool = False
    mean: Optional[float] = None
    variance: Optional[float] = None

    def __post_init__(self) -> None:
        _check_dtype(self.name, self.dtype, ("int64", "float32"))


@dataclasses.dataclass(frozen=True)
class BucketizedFeature:
    """A number embedded by its bucket: ``E[i]`` with ``i = #{b ∈ boundaries : b ≤ x}``.

    ``boundaries`` (increasing) are given, or learnt by :func:`adapt` as the ``num_buckets``-quantiles
    of the data (repeated quantiles merged). ``num_buckets + 1`` rows at most; NaN falls in bucket 0.
    """

    name: str
    dtype: NumericDtype = "float32"
    num_buckets: int = 10
    embedding_dim: int = 32
    boundaries: Optional[Tuple[float, ...]] = None

    def __post_init__(self) -> None:
        _check_dtype(self.name, self.dtype, ("int64", "float32"))
        _check_positive(self.name, "num_buckets", self.num_buckets)
        _check_positive(self.name, "embedding_dim", self.embedding_dim)
        if self.boundaries is not None:
            values = np.asarray(self.boundaries, np.float64)
            if values.ndim != 1 or not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
                raise ValueError(
                    f"Feature `{self.name}`: `boundaries` must be finite and increasing. Received: {self.boundaries!r}"
                )

    @property
    def table(self) -> str:
        return self.name


Feature = Union[CategoricalFeature, HashedFeature, SequenceFeature, NumericFeature, BucketizedFeature]
_KINDS: Dict[str, type] = {
    "categorical": CategoricalFeature,
    "hashed": HashedFeature,
    "sequence": SequenceFeature,
    "numeric": NumericFeature,
    "bucketized": BucketizedFeature,
}


def without_vocabulary(feature: Feature) -> Feature:
    """The declaration as a layer config holds it: a learnt ``vocabulary`` replaced by its
    ``vocabulary_size`` (the values live in the model's weights); other declarations unchanged."""
    if isinstance(feature, _VocabularyFeature) and feature.vocabulary is not None:
        return dataclasses.replace(feature, vocabulary=None, vocabulary_size=len(feature.vocabulary))
    return feature


def feature_to_dict(feature: Feature) -> Dict[str, Any]:
    """JSON-ready form of a declaration, with its ``kind``."""
    kind = next(k for k, cls in _KINDS.items() if isinstance(feature, cls))
    values = dataclasses.asdict(feature)
    for field in ("vocabulary", "boundaries"):
        if values.get(field) is not None:
            values[field] = list(values[field])
    return {"kind": kind, **values}


def feature_from_dict(values: Mapping[str, Any]) -> Feature:
    """Inverse of :func:`feature_to_dict`."""
    values = dict(values)
    kind = values.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"Feature {values.get('name')!r}: `kind` must be one of {list(_KINDS)}. Received: {kind!r}")
    for field in ("vocabulary", "boundaries"):
        if values.get(field) is not None:
            values[field] = tuple(values[field])
    return _KINDS[kind](**values)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """The features of both towers and the candidate id column.

    Attributes:
      query: declarations read by the query tower.
      candidate: declarations read by the candidate tower.
      candidate_id: the raw column holding the candidate id (returned by retrieval).
    """

    query: Tuple[Feature, ...]
    candidate: Tuple[Feature, ...]
    candidate_id: str

    def __post_init__(self) -> None:
        for side in ("query", "candidate"):
            names = [f.name for f in getattr(self, side)]
            if not names:
                raise ValueError(f"FeatureSpec: the {side} tower needs at least one feature.")
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"FeatureSpec: {side} features declared twice: {duplicates}")
        if self.candidate_id not in [f.name for f in self.candidate]:
            raise ValueError(
                f"FeatureSpec: `candidate_id` {self.candidate_id!r} must be one of the candidate features "
                f"{[f.name for f in self.candidate]}."
            )
        tables: Dict[str, _VocabularyFeature] = {}
        for feature in self.all_features:
            if not isinstance(feature, _VocabularyFeature):
                continue
            owner = tables.setdefault(feature.table, feature)
            if owner.dtype != feature.dtype or owner.embedding_dim != feature.embedding_dim:
                raise ValueError(
                    f"Features `{owner.name}` and `{feature.name}` share the embedding table "
                    f"`{feature.table}` but differ in dtype or embedding_dim."
                )

    @property
    def all_features(self) -> Tuple[Feature, ...]:
        return self.query + self.candidate

    @property
    def candidate_id_feature(self) -> Feature:
        return next(f for f in self.candidate if f.name == self.candidate_id)

    def to_json(self) -> str:
        return json.dumps(
            {
                "query": [feature_to_dict(f) for f in self.query],
                "candidate": [feature_to_dict(f) for f in self.candidate],
                "candidate_id": self.candidate_id,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        values = json.loads(text)
        return cls(
            query=tuple(feature_from_dict(f) for f in values["query"]),
            candidate=tuple(feature_from_dict(f) for f in values["candidate"]),
            candidate_id=values["candidate_id"],
        )


def _tensor_spec(feature: Feature) -> tf.TensorSpec:
    if isinstance(feature, (NumericFeature, BucketizedFeature)):
        return tf.TensorSpec([None], tf.float32 if feature.dtype == "float32" else tf.int64, feature.name)
    dtype = tf.string if feature.dtype == "string" else tf.int64
    if isinstance(feature, SequenceFeature) and feature.is_matrix:
        return tf.TensorSpec([None, None], dtype, feature.name)
    return tf.TensorSpec([None], dtype, feature.name)


def input_signature(features: Iterable[Feature]) -> Dict[str, tf.TensorSpec]:
    """The raw-feature ``tf.TensorSpec`` of each feature, with a free batch (and history) axis."""
    return {f.name: _tensor_spec(f) for f in features}


def _sequence_values(feature: SequenceFeature, column: np.ndarray) -> np.ndarray:
    if feature.is_matrix:
        values = np.asarray(column).reshape(-1)
        return values[values != feature.padding]
    tokens = [t for text in column for t in str(text).split(feature.separator) if t]
    return np.asarray(tokens, dtype=object)


def _vocabulary(values: np.ndarray, feature: _VocabularyFeature) -> Tuple:
    """Values by descending count (ties by value), above ``min_count``, capped in size."""
    codes, unique = pd.factorize(values.astype(np.int64) if feature.dtype == "int64" else values)
    counts = np.bincount(codes[codes >= 0], minlength=len(unique))
    unique = np.asarray(unique, np.int64) if feature.dtype == "int64" else np.asarray(unique).astype(str)
    order = np.lexsort((unique, -counts))
    unique, counts = unique[order], counts[order]
    unique = unique[counts >= feature.min_count][: feature.max_vocabulary_size]
    return tuple(unique.tolist())


def quantile_boundaries(values: np.ndarray, num_buckets: int) -> Tuple[float, ...]:
    """The inner ``num_buckets``-quantiles of the finite ``values``, repeats merged (at least one)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (0.0,)
    inner = (
        np.quantile(values, np.linspace(0.0, 1.0, num_buckets + 1)[1:-1])
        if num_buckets > 1
        else np.median(values)[None]
    )
    return tuple(float(b) for b in np.unique(inner))


def adapt(spec: FeatureSpec, *tables: Mapping[str, np.ndarray]) -> FeatureSpec:
    """Learn vocabularies and normalisation statistics from data.

    Every feature reads its column in each of ``tables`` that has it (e.g. the training examples
    and the candidate catalogue); features sharing an embedding table pool their values into one
    vocabulary, counted by the table owner's ``min_count`` and ``max_vocabulary_size`` (the owner
    is the feature named like the table, e.g. ``movie_id`` for ``embedding_table="movie_id"``). Declarations that
    already carry a vocabulary (or mean/variance) are kept as they are.

    Raises:
      KeyError: a feature's column is in none of the tables.
    """
    pooled: Dict[str, list] = {}
    with progress("Collecting feature values", total=len(spec.all_features), unit="features") as bar:
        for feature in bar.track(spec.all_features):
            columns = [t[feature.name] for t in tables if feature.name in t]
            if not columns:
                raise KeyError(
                    f"Feature `{feature.name}` is declared but no input table has a column of that name "
                    f"(columns seen: {sorted({c for t in tables for c in t})})."
                )
            if isinstance(feature, SequenceFeature):
                values = [_sequence_values(feature, c) for c in columns]
            else:
                values = [np.asarray(c).reshape(-1) for c in columns]
            if not isinstance(feature, (NumericFeature, HashedFeature, BucketizedFeature)):
                pooled.setdefault(feature.table, []).extend(values)
            else:
                pooled[feature.name] = values

    owners: Dict[str, _VocabularyFeature] = {}
    for feature in spec.all_features:
        if isinstance(feature, _VocabularyFeature):
            if feature.name == feature.table or feature.table not in owners:
                owners[feature.table] = feature
    with progress("Building vocabularies", total=len(owners), unit="vocabularies") as bar:
        vocabularies = {
            table: (owner.vocabulary or _vocabulary(np.concatenate(pooled[table]), owner))
            for table, owner in bar.track(owners.items())
        }

    def adapted(feature: Feature) -> Feature:
        if isinstance(feature, _VocabularyFeature):
            return dataclasses.replace(feature, vocabulary=vocabularies[feature.table], vocabulary_size=None)
        if isinstance(feature, NumericFeature) and feature.mean is None:
            values = np.concatenate(pooled[feature.name]).astype(np.float64)
            if feature.log1p:
                values = np.log1p(np.maximum(values, 0.0))
            return dataclasses.replace(feature, mean=float(values.mean()), variance=float(values.var()))
        if isinstance(feature, BucketizedFeature) and feature.boundaries is None:
            return dataclasses.replace(
                feature, boundaries=quantile_boundaries(np.concatenate(pooled[feature.name]), feature.num_buckets)
            )
        return feature

    return FeatureSpec(
        query=tuple(adapted(f) for f in spec.query),
        candidate=tuple(adapted(f) for f in spec.candidate),
        candidate_id=spec.candidate_id,
    )

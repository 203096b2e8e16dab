"""The exported object and its three serving signatures, and the raw feature columns they take.

``serving_default`` (query features → ``candidate_ids [B, k]``, ``scores [B, k]``, best first),
``query_embedding`` (query features → ``embedding [B, d]``) and ``candidate_embedding`` (candidate
features → ``embedding [B, d]``), all on raw features named after their inputs.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from tfrec_towers.index import RetrievalIndex

SIGNATURE_NAMES: Tuple[str, ...] = ("serving_default", "query_embedding", "candidate_embedding")

Features = Dict[str, np.ndarray]
"""Raw feature columns, one row per example: ``{feature: numpy array [N, ...]}``."""


class RetrievalExport(tf.Module):
    """The exported object: both towers, the index and the three serving signatures.

    Args:
      query_model: raw query features → ``float32 [batch, dim]``.
      candidate_model: raw candidate features → ``float32 [batch, dim]``.
      index: a :class:`~tfrec_towers.index.RetrievalIndex` over the candidate embeddings.
      query_input_spec: ``{feature: tf.TensorSpec}`` of the query signature inputs.
      candidate_input_spec: ``{feature: tf.TensorSpec}`` of the candidate signature inputs.
      exclude_history: a query feature ``[B, L]`` of candidate ids whose ids ``serving_default``
        leaves out of each row's top k (:meth:`~tfrec_towers.index.RetrievalIndex.search_excluding`);
        None returns the plain top k.
    """

    def __init__(
        self,
        query_model: tf.keras.Model,
        candidate_model: tf.keras.Model,
        index: RetrievalIndex,
        query_input_spec: Mapping[str, tf.TensorSpec],
        candidate_input_spec: Mapping[str, tf.TensorSpec],
        exclude_history: Optional[str] = None,
    ) -> None:
        super().__init__(name="retrieval_export")
        self.query_model = query_model
        self.candidate_model = candidate_model
        self.index = index
        self.exclude_history = exclude_history
        self.serving_default = tf.function(self._retrieve, input_signature=[dict(query_input_spec)], autograph=False)
        self.query_embedding = tf.function(
            self._embed_queries, input_signature=[dict(query_input_spec)], autograph=False
        )
        self.candidate_embedding = tf.function(
            self._embed_candidates, input_signature=[dict(candidate_input_spec)], autograph=False
        )

    def _retrieve(self, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        query_embeddings = self.query_model(features, training=False)
        if self.exclude_history is None:
            scores, candidate_ids = self.index(query_embeddings)
        else:
            scores, candidate_ids = self.index.search_excluding(query_embeddings, features[self.exclude_history])
        return {"candidate_ids": candidate_ids, "scores": scores}

    def _embed_queries(self, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return {"embedding": self.query_model(features, training=False)}

    def _embed_candidates(self, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return {"embedding": self.candidate_model(features, training=False)}

    def signatures(self) -> Dict[str, Any]:
        """``{signature name: concrete function}`` for ``tf.saved_model.save``."""
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURE_NAMES}


def named_specs(argument: str, specs: Mapping[str, tf.TensorSpec]) -> Dict[str, tf.TensorSpec]:
    """Copies of the specs named after their feature (the signature's input names).

    Raises:
      ValueError: no spec, or a spec without rank ≥ 1 and an unknown batch dimension.
      TypeError: a value that is not a ``tf.TensorSpec``.
    """
    if not specs:
        raise ValueError(f"`{argument}` must map at least one feature name to a tf.TensorSpec.")
    named = {}
    for name, spec in specs.items():
        if not isinstance(spec, tf.TensorSpec):
            raise TypeError(f"`{argument}[{name!r}]` must be a tf.TensorSpec. Received: {spec!r}")
        if spec.shape.rank is None or spec.shape.rank < 1 or spec.shape[0] is not None:
            raise ValueError(
                f"`{argument}[{name!r}]` must have rank >= 1 and an unknown batch dimension, "
                f"e.g. [None] or [None, None]. Received shape {spec.shape}"
            )
        named[name] = tf.TensorSpec(spec.shape, spec.dtype, name=name)
    return named


def specs_to_json(specs: Mapping[str, tf.TensorSpec]) -> Dict[str, Dict[str, Any]]:
    """``{feature: {"dtype": "int64", "shape": [None, ...]}}``, as the metadata records a signature's inputs."""
    return {name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()} for name, spec in specs.items()}


def specs_from_json(specs: Mapping[str, Mapping[str, Any]]) -> Dict[str, tf.TensorSpec]:
    """The inverse of :func:`specs_to_json`: named ``tf.TensorSpec`` s."""
    return {name: tf.TensorSpec(spec["shape"], tf.as_dtype(spec["dtype"]), name=name) for name, spec in specs.items()}


def check_history_feature(
    exclude_history: str, query_spec: Mapping[str, tf.TensorSpec], id_spec: tf.TensorSpec
) -> None:
    """``exclude_history`` names a query feature ``[None, None]`` of the candidate id dtype.

    Raises:
      ValueError: naming the query features, if it does not.
    """
    spec = query_spec.get(exclude_history)
    if spec is None or spec.shape.rank != 2 or spec.dtype != id_spec.dtype:
        received = "no such query feature" if spec is None else f"{spec.dtype.name} {spec.shape.as_list()}"
        raise ValueError(
            f"`exclude_history` must name a query feature holding candidate ids ({id_spec.dtype.name} "
            f"[None, None], one history per row); the query features are {sorted(query_spec)}. "
            f"Received: {exclude_history!r} ({received})"
        )


def as_features(argument: str, columns: Mapping[str, Any], specs: Mapping[str, tf.TensorSpec]) -> Features:
    """Raw columns as numpy arrays of the spec dtypes, checked against the specs, equal row counts.

    Raises:
      ValueError: naming ``argument`` and the feature, for missing or unexpected features, a
        column of another dtype or shape, or columns of different lengths.
    """
    missing = sorted(set(specs) - set(columns))
    extra = sorted(set(columns) - set(specs))
    if missing or extra:
        raise ValueError(
            f"`{argument}` must have exactly the input spec's features {sorted(specs)}. "
            f"Missing: {missing}; unexpected: {extra}."
        )
    features: Features = {}
    for name, spec in specs.items():
        values = np.asarray(columns[name])
        if spec.dtype == tf.string:
            ok = values.dtype.kind in "USO" and all(isinstance(v, (str, bytes)) for v in values.flat)
            target = object
        else:
            target = spec.dtype.as_numpy_dtype
            ok = values.dtype.kind in "biuf" and np.can_cast(values.dtype, target, casting="same_kind")
        if not ok or not spec.shape.is_compatible_with(values.shape):
            raise ValueError(
                f"`{argument}[{name!r}]` must be a {spec.dtype.name} array of shape {spec.shape} "
                f"(padded, not ragged). Received dtype {values.dtype}, shape {values.shape}"
            )
        features[name] = values.astype(target)
    lengths = {name: len(values) for name, values in features.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"`{argument}` columns must have the same number of rows. Received: {lengths}")
    return features


def take_feature_rows(features: Features, positions: Union[slice, np.ndarray]) -> Features:
    """The rows ``positions`` of every column."""
    return {name: values[positions] for name, values in features.items()}


def num_rows(features: Features) -> int:
    """The number of rows of the (equally long) columns."""
    return len(next(iter(features.values())))


def placeholder_features(specs: Mapping[str, tf.TensorSpec], num_rows: int = 2) -> Features:
    """Zero / empty-string rows in the spec's shape (unknown inner dimensions of size 1)."""
    features: Features = {}
    for name, spec in specs.items():
        shape = [num_rows] + [dim if dim is not None else 1 for dim in spec.shape.as_list()[1:]]
        if spec.dtype == tf.string:
            features[name] = np.full(shape, b"", dtype=object)
        else:
            features[name] = np.zeros(shape, dtype=spec.dtype.as_numpy_dtype)
    return features

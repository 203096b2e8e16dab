"""A candidate corpus kept in a layer's weights: checked columns, their schema, their variables.

The mixed-negative sampler and the full-catalogue softmax hold the catalogue's raw candidate features
as non-trainable weights (in checkpoints and SavedModels), never in their configs: the config holds
only the ``columns`` schema (dtype and shape of each column), so ``from_config`` builds a layer of
the same shape whose columns are zeros (or empty strings) until a checkpoint restores them.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfrec_towers.unique_ids import repeated_ids


def _as_column(name: str, values: Any) -> np.ndarray:
    """One corpus column as ``int64``, ``float32`` or an ``object`` array of ``str``."""
    column = np.asarray(values)
    if column.ndim == 0 or len(column) == 0:
        raise ValueError(f"Corpus column {name!r} must be a non-empty array. Received shape {column.shape}")
    if column.dtype.kind in "iu":
        return column.astype(np.int64)
    if column.dtype.kind == "f":
        return column.astype(np.float32)
    if column.dtype.kind in "USO":
        flat = column.ravel()
        if all(isinstance(v, (str, bytes)) for v in flat):
            decoded = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
            return np.array(decoded, dtype=object).reshape(column.shape)
    raise ValueError(f"Corpus column {name!r} must hold int64, float32 or string values. Received dtype {column.dtype}")


def _corpus_arrays(corpus: Mapping[str, Any], candidate_id: str) -> Dict[str, np.ndarray]:
    """The corpus columns as arrays (:func:`_as_column`), checking that the ids are distinct."""
    if not corpus:
        raise ValueError("`corpus` must hold at least one column. Received: {}")
    columns = {name: _as_column(name, values) for name, values in corpus.items()}
    if candidate_id in columns and columns[candidate_id].ndim == 1:
        repeated = repeated_ids(columns[candidate_id])
        if repeated.size:
            raise ValueError(
                f"Corpus column {candidate_id!r} must hold distinct ids. Repeated: {repeated[:5].tolist()}"
            )
    return columns


def _schema(columns: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, Any]]:
    """``{name: {"dtype": ..., "shape": [...]}}`` of corpus arrays."""
    return {
        name: {"dtype": "string" if values.dtype == object else values.dtype.name, "shape": list(values.shape)}
        for name, values in columns.items()
    }


def corpus_initializer(values: Optional[np.ndarray]) -> Callable[[Any, Any], tf.Tensor]:
    """The initializer of a corpus column: ``values``, or zeros ("" for strings) for a checkpoint to fill."""
    if values is None:
        return lambda shape, dtype: tf.zeros(shape, dtype)
    return lambda shape, dtype: tf.constant(values, dtype=dtype)


def _checked_schema(columns: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """A ``columns`` schema in canonical form, each column a supported dtype of a non-empty shape."""
    if not columns:
        raise ValueError("`columns` must describe at least one corpus column. Received: {}")
    schema = {}
    for name, column in columns.items():
        dtype, shape = column.get("dtype"), [int(d) for d in column.get("shape", ())]
        if dtype not in ("int64", "float32", "string") or not shape or min(shape) <= 0:
            raise ValueError(
                f"`columns[{name!r}]` must be {{'dtype': 'int64' | 'float32' | 'string', 'shape': [N, ...]}} "
                f"with positive sizes. Received: {dict(column)}"
            )
        schema[name] = {"dtype": dtype, "shape": shape}
    return schema


def add_corpus_weights(
    layer: tf.keras.layers.Layer,
    corpus: Optional[Mapping[str, Any]],
    candidate_id: str,
    columns: Optional[Mapping[str, Mapping[str, Any]]],
    what: str,
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, tf.Variable]]:
    """Checks ``corpus`` (or, without it, its schema ``columns``) and adds every column to ``layer``
    as a non-trainable weight ``corpus_<name>``.

    Args:
      layer: the layer that keeps the corpus.
      corpus: the candidate tower's raw features, one row per candidate (ids unique): column name →
        ``int64 [N]`` / ``int64 [N, L]`` / ``float32 [N]`` / ``str [N]`` arrays; None for a layer
        whose corpus a checkpoint restores (then ``columns`` is required).
      candidate_id: the id column.
      columns: the schema, column name → ``{"dtype": "int64" | "float32" | "string", "shape": [N, ...]}``;
        must describe ``corpus`` when both are given.
      what: the layer's kind in messages ("sampler", "catalogue").

    Returns:
      ``(schema, {name: variable})``.

    Raises:
      ValueError: an empty corpus, columns of different lengths or unsupported dtypes, a
        ``candidate_id`` that is not an int64 or string ``[N]`` column, repeated ids, neither
        ``corpus`` nor ``columns``, or ``columns`` that do not describe ``corpus``.
    """
    data: Optional[Dict[str, np.ndarray]] = None
    if corpus is not None:
        data = _corpus_arrays(corpus, candidate_id)
        schema = _schema(data)
        if columns is not None and _checked_schema(columns) != schema:
            raise ValueError(f"`columns` must describe `corpus` {schema}. Received: {dict(columns)}")
    elif columns is not None:
        schema = _checked_schema(columns)
    else:
        raise ValueError(f"`corpus` or `columns` (its schema, for a {what} a checkpoint fills) is required.")
    lengths = {name: column["shape"][0] for name, column in schema.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Corpus columns have different lengths: {lengths}")
    if candidate_id not in schema:
        raise ValueError(f"`candidate_id` must name a corpus column {sorted(schema)}. Received: {candidate_id!r}")
    if len(schema[candidate_id]["shape"]) != 1 or schema[candidate_id]["dtype"] == "float32":
        raise ValueError(f"Corpus column {candidate_id!r} must hold int64 or string ids of shape [N]")
    weights = {
        name: layer.add_weight(
            name=f"corpus_{name}",
            shape=column["shape"],
            dtype=tf.as_dtype(column["dtype"]),
            initializer=corpus_initializer(None if data is None else data[name]),
            trainable=False,
        )
        for name, column in schema.items()
    }
    return schema, weights


def id_keys(ids: tf.Tensor) -> tf.Tensor:
    """A sortable int64 key per id: the id itself, or a string's 64-bit fingerprint."""
    ids = tf.convert_to_tensor(ids)
    return tf.strings.to_hash_bucket_fast(ids, 2**63 - 1) if ids.dtype == tf.string else tf.cast(ids, tf.int64)


def sorted_id_ranges(ids: tf.Tensor, wanted: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Where each wanted id's key sits among ``ids`` sorted by key: ``(order [N], low [K], counts [K])``.

    ``ids[order[low_k : low_k + counts_k]]`` are the ids whose key equals ``wanted_k``'s (found by binary
    search, ``O((N + K) log N)``); callers confirm a match on the ids themselves, so a fingerprint
    collision (:func:`id_keys`) can only be dropped, never taken for a match.
    """
    keys = id_keys(ids)
    order = tf.argsort(keys, stable=True)
    sorted_keys = tf.gather(keys, order)
    wanted_keys = id_keys(wanted)
    low = tf.searchsorted(sorted_keys, wanted_keys, side="left", out_type=tf.int32)
    counts = tf.searchsorted(sorted_keys, wanted_keys, side="right", out_type=tf.int32) - low
    return order, low, counts


def corpus_rows(corpus_ids: tf.Tensor, ids: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """The corpus row of each id: ``(rows int64 [K], found bool [K])``, ``rows`` 0 where not found.

    Args:
      corpus_ids: ``[N]`` the corpus's distinct ids (int64 or string).
      ids: ``[K]`` ids to locate, of ``corpus_ids``' dtype (:func:`sorted_id_ranges`).
    """
    ids = tf.convert_to_tensor(ids)
    order, low, _ = sorted_id_ranges(corpus_ids, ids)
    rows = tf.gather(order, tf.minimum(low, tf.size(order) - 1))
    found = tf.equal(tf.gather(corpus_ids, rows), ids)
    return tf.where(found, tf.cast(rows, tf.int64), tf.zeros_like(rows, tf.int64)), found

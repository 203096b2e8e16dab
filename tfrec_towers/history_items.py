"""History items read through the candidate tower: ``e_l = c(x(i_l))``.

With ``model.history.items: candidate_tower`` the vector of a history item ``i_l`` is not its row
of the id embedding table but the candidate tower's embedding ``c`` of the item's raw features
``x(i) = (i, a_1(i), …, a_F(i))`` — its id and the attributes the catalogue gives it — so the
history and the candidates share one item encoder, and an item seen only through its attributes
(a rare or new id, which falls in an out-of-vocabulary bucket) still reads as what it is (the item
model of Covington et al., RecSys 2016, and of Merlin's and TFRS's sequential examples).

* :class:`ItemAttributes` — the attributes of every catalogue item, looked up by id in the graph:
  checkpointable ``MutableHashTable`` s, so a SavedModel answers a
  request that sends only the history's ids (two lookups: id → catalogue row → value, the kernels
  TensorFlow has for every id and value type); an id the catalogue lacks (or padding) gets each
  attribute's missing value, which the candidate tower sends to its out-of-vocabulary rows (or, for
  a standardised number, the mean).
* :class:`CandidateTowerItems` — ``ids [...]`` → ``c(x(ids)) [..., d]``.

Hyper-parameters in the config, state in weights: ``get_config`` holds the attributes' names and
dtypes; their values are in the tables, which ``tf.train.Checkpoint`` and SavedModels save.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfrec_towers.config import ConfigError
from tfrec_towers.features import Feature, NumericFeature, input_signature

_register = tf.keras.utils.register_keras_serializable(package="tfrec_towers")


def _missing_value(feature: Feature, dtype: tf.DType) -> Any:
    """The raw value of an attribute the catalogue does not give: the empty string, the id ``-1``
    (out of every vocabulary the data builds), or a standardised number's mean (0 once standardised)."""
    if dtype == tf.string:
        return ""
    if isinstance(feature, NumericFeature) and feature.mean is not None:
        mean = float(np.expm1(feature.mean)) if feature.log1p else float(feature.mean)
        return mean if dtype == tf.float32 else int(round(mean))
    return -1 if dtype == tf.int64 else 0.0


def attribute_columns(candidate_features: Sequence[Feature], candidate_id: str) -> List[Dict[str, Any]]:
    """The candidate features other than the id, as :class:`ItemAttributes` takes them
    (``{"name", "dtype", "missing"}`` each).

    Raises:
      ConfigError: a candidate feature is a list per item (a ``[B, L]`` matrix): one value per item
        and attribute is what a history lookup can return.
    """
    signature = input_signature(candidate_features)
    columns = []
    for feature in candidate_features:
        if feature.name == candidate_id:
            continue
        spec = signature[feature.name]
        if spec.shape.rank != 1:
            raise ConfigError(
                f"`model.history.items`='candidate_tower' reads one value of each candidate feature per history "
                f"item, but `{feature.name}` is a list per item: give it as text joined by a separator, or "
                "leave it out of `features.candidate`."
            )
        columns.append({"name": feature.name, "dtype": spec.dtype.name, "missing": _missing_value(feature, spec.dtype)})
    return columns


@_register
class ItemAttributes(tf.keras.layers.Layer):
    """``ids [...]`` → ``{id_feature: ids, a_f: a_f(ids) [...]}``, the raw candidate features of each id.

    Args:
      id_feature: the candidate id's feature name.
      id_dtype: ``"int64"`` or ``"string"``.
      attributes: ``{"name", "dtype", "missing"}`` per attribute (:func:`attribute_columns`).

    The tables start empty (every id missing) until :meth:`fill` or a checkpoint fills them.
    """

    def __init__(
        self, id_feature: str, id_dtype: str, attributes: Sequence[Mapping[str, Any]] = (), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if id_dtype not in ("int64", "string"):
            raise ValueError(f"`id_dtype` must be 'int64' or 'string'. Received: {id_dtype!r}")
        self.id_feature = id_feature
        self.id_dtype = id_dtype
        self.attributes = [dict(a) for a in attributes]
        self.tables: Dict[str, tf.lookup.experimental.MutableHashTable] = {}
        with tf.init_scope():
            # id → its catalogue row (−1: not in the catalogue), then row → each attribute's value
            self.rows = tf.lookup.experimental.MutableHashTable(tf.as_dtype(id_dtype), tf.int64, default_value=-1)
            for attribute in self.attributes:
                self.tables[attribute["name"]] = tf.lookup.experimental.MutableHashTable(
                    tf.int64, tf.as_dtype(attribute["dtype"]), default_value=attribute["missing"]
                )

    def fill(self, columns: Mapping[str, Any]) -> None:
        """Stores every catalogue item's attributes (``columns``: the id and each attribute, one row per item).

        Raises:
          ValueError: ``columns`` lacks the id or an attribute.
        """
        missing = [name for name in [self.id_feature, *self.tables] if name not in columns]
        if missing:
            raise ValueError(f"The catalogue must hold the candidate features {missing} to read history items by.")
        keys = np.asarray(columns[self.id_feature], dtype=np.int64 if self.id_dtype == "int64" else object)
        rows = tf.range(len(keys), dtype=tf.int64)
        self.rows.insert(tf.constant(keys, tf.as_dtype(self.id_dtype)), rows)
        for attribute in self.attributes:
            dtype = tf.as_dtype(attribute["dtype"])
            values = np.asarray(columns[attribute["name"]])
            if dtype == tf.string:
                values = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
            self.tables[attribute["name"]].insert(rows, tf.constant(values, dtype))

    def call(self, ids: tf.Tensor) -> Dict[str, tf.Tensor]:
        features = {self.id_feature: ids}
        if self.tables:
            rows = tf.ensure_shape(self.rows.lookup(ids), ids.shape)  # the lookups lose the static shape
            for name, table in self.tables.items():
                features[name] = tf.ensure_shape(table.lookup(rows), ids.shape)
        return features

    def get_config(self) -> Dict[str, Any]:
        return {
            **super().get_config(),
            "id_feature": self.id_feature,
            "id_dtype": self.id_dtype,
            "attributes": [dict(a) for a in self.attributes],
        }


class CandidateTowerItems(tf.keras.layers.Layer):
    """``ids [...]`` → ``c(x(ids)) [..., d]``: the candidate tower's embedding of each id's item.

    The candidate tower runs once per distinct id of the call (with dropout in the candidate tower,
    the copies of one item in a batch therefore share its dropout mask).

    Args:
      candidate_tower: the tower that embeds the candidates (shared, trained with them).
      attributes: the catalogue's attributes by id (:class:`ItemAttributes`).

    Not serialisable on its own: it shares the candidate tower, so
    :func:`tfrec_towers.model.build_towers` (and ``TwoTowerModel.from_config``) build it beside it.
    """

    def __init__(self, candidate_tower: tf.keras.layers.Layer, attributes: ItemAttributes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.candidate_tower = candidate_tower
        self.attributes = attributes

    def call(self, ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        # Each distinct id of the batch is encoded once (a batch of histories repeats its popular
        # items many times over), then gathered back into place: the same values and gradients.
        distinct, where = tf.unique(tf.reshape(ids, [-1]))
        embeddings = tf.gather(self.candidate_tower(self.attributes(distinct), training=training), where)
        shape = tf.concat([tf.shape(ids), tf.shape(embeddings)[-1:]], axis=0)
        return tf.reshape(embeddings, shape)

"""The two-tower retrieval model: the model owns the towers, the task owns the loss.

``TwoTowerModel.compute_loss`` only wires features → embeddings → task, as TFRS's ``models/base.py``
intends, so replacing the loss (logQ correction, memory bank, mixed negatives, …) means passing
another task, not rewriting the model.

Two example formats feed the same model: a per-prefix example (history → its next item, the
candidate id ``[B]``) and a sequence example (a history ``[B, L]`` whose position ``l`` is followed
by the candidate of column ``l``: the candidate features are ``[B, L]``, padded with 0 or ""). A
sequence batch trains every position at once: its N valid positions become N (query, candidate)
pairs for the same task, so in-batch negatives span all positions of all sequences.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_towers.encoders import build_embedding_tables
from tfrec_towers.features import Feature, FeatureSpec, feature_from_dict
from tfrec_towers.history_encoders import HistoryEncoderConfig
from tfrec_towers.history_items import CandidateTowerItems, ItemAttributes, attribute_columns
from tfrec_towers.losses import cross_replica
from tfrec_towers.losses.negatives import NegativeSet, check_int
from tfrec_towers.losses.task import in_batch_softmax_task
from tfrec_towers.towers import Tower, TowerConfig


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class TwoTowerModel(tfrs.Model):
    """A query tower and a candidate tower trained with a retrieval task.

    Args:
      query_tower: raw query features → ``[batch, d]``.
      candidate_tower: raw candidate features → ``[batch, d]``.
      candidate_id: the feature holding the candidate id (for accidental-hit removal).
      task: a layer called as ``task(query_embeddings, candidate_embeddings,
        candidate_ids=..., compute_metrics=False)`` returning the loss; defaults to
        :func:`in_batch_softmax_task`. With ``mixed_negatives`` it also receives
        ``extra_negatives`` (a ``NegativeSet``), as ``losses.RetrievalLoss`` does.
      mixed_negatives: a ``MixedNegativeSampler``: in training, its B' corpus rows are encoded
        by the candidate tower in the same step and passed to the task as extra negatives
        (Yang et al., WWW 2020).
      sample_weight_feature: a feature holding each example's weight in the loss (e.g. an
        interaction's weight); ``fit`` on ``(features, sample_weight)`` pairs works too.
      bank_refresh_every_steps: ``N > 0``: every ``N`` training steps, before the task reads its
        memory bank, the stored candidates are re-encoded by the current candidate tower from
        ``mixed_negatives``' corpus (:meth:`~tfrec_towers.losses.memory_bank.CrossBatchMemoryBank.refresh`,
        inference mode, no gradient), so the bank's rows are never more than ``N`` steps stale; 0: off.
        Needs a task with a ``memory_bank`` and ``mixed_negatives``.

    Works with ``compile``/``fit``/``evaluate``, Keras callbacks and ``tf.train.Checkpoint``.

    With :attr:`trim_sequence_padding` (``training.group_by_length``), a sequence batch's slots that
    are padding in every sequence are cut before the towers see it: the same queries, less work.

    With :attr:`targets_per_batch` ``n̄ > 0``, a sequence batch's loss in training is the sum of its
    positions' losses over that fixed count, ``Σ_p w_p·ℓ_p / n̄`` (``w_p = 1`` without weights; under
    ``tf.distribute`` the sum runs over the global batch), instead of their mean
    ``Σ_p w_p·ℓ_p / Σ_p w_p``: the normalisation of fairseq's and Hugging Face's token-level losses
    by a fixed count. ``training.group_by_length`` sets it to the epoch's mean targets per batch: its
    batches hold sequences of similar length, so their target counts differ many times over, and a
    batch's mean would give each position of a batch of short sequences many times the weight of a
    position of a batch of long ones; over the fixed count every position weighs ``1/n̄``, as in
    randomly mixed batches, whose counts are all near ``n̄``.

    Hyper-parameters in the config, state in weights: ``get_config`` holds the towers', task's
    and sampler's hyper-parameters (sizes, dtypes, widths, seeds) and no data, so its size does
    not grow with the catalogue; vocabularies, training counts and the sampler's corpus are
    weights and lookup tables, saved by ``tf.train.Checkpoint`` and SavedModels.
    ``from_config`` builds a model of the same shape, which restoring the original's checkpoint
    makes identical to it.
    """

    def __init__(
        self,
        query_tower: tf.keras.Model,
        candidate_tower: tf.keras.Model,
        candidate_id: str,
        task: Optional[tf.keras.layers.Layer] = None,
        mixed_negatives: Optional[tf.keras.layers.Layer] = None,
        sample_weight_feature: Optional[str] = None,
        bank_refresh_every_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.candidate_id = candidate_id
        self.task = task if task is not None else in_batch_softmax_task()
        self.mixed_negatives = mixed_negatives
        self.sample_weight_feature = sample_weight_feature
        self.bank_refresh_every_steps = check_int("bank_refresh_every_steps", bank_refresh_every_steps, 0)
        if self.bank_refresh_every_steps and (getattr(task, "memory_bank", None) is None or mixed_negatives is None):
            raise ValueError(
                "`bank_refresh_every_steps` re-encodes a memory bank's rows from the mixed negatives' corpus: "
                "it needs a `task` with a `memory_bank` and `mixed_negatives`."
            )
        self._xla_training = False
        self.trim_sequence_padding = False
        self.targets_per_batch = 0.0

    @property
    def xla_training(self) -> bool:
        """Whether training steps run the numeric parts XLA-compiled (``training.jit_compile``): the
        towers' MLP heads and history encoders and the loss's mode (a :class:`Tower` and a
        :class:`~tfrec_towers.losses.RetrievalLoss` follow the setting; other towers and tasks run as
        they are). The lookups and every inference call run as TensorFlow ops; set it before the
        first ``fit`` (Keras traces the training step once)."""
        return self._xla_training

    @xla_training.setter
    def xla_training(self, enabled: bool) -> None:
        self._xla_training = bool(enabled)
        for part in (self.query_tower, self.candidate_tower, self.task):
            if hasattr(type(part), "xla_training"):
                part.xla_training = self._xla_training

    def call(self, features: Mapping[str, tf.Tensor], training: bool = False) -> Dict[str, tf.Tensor]:
        return {
            "query_embedding": self.query_tower(features, training=training),
            "candidate_embedding": self.candidate_tower(features, training=training),
        }

    def _every_position(
        self, features: Mapping[str, tf.Tensor], training: bool
    ) -> tuple[tf.Tensor, Dict[str, tf.Tensor], tf.Tensor]:
        """A sequence batch as N pairs: queries ``[N, d]``, candidate features ``[N]``, ids ``[N]``.

        Position ``l`` of row ``b`` is a pair when its candidate id is not padding (0 or "");
        the query tower's ``sequence_embeddings`` give the causal query of each position.
        """
        ids = features[self.candidate_id]
        padding = "" if ids.dtype == tf.string else tf.zeros([], ids.dtype)
        valid = tf.not_equal(ids, padding)
        names = [f.name for f in self.candidate_tower.features]
        if self.sample_weight_feature in features:
            names.append(self.sample_weight_feature)
        if self.trim_sequence_padding and not self._xla_training:
            features, valid = self._without_padding_slots(features, valid, names)
        queries = tf.boolean_mask(self.query_tower.sequence_embeddings(features, training=training), valid)
        candidates = {name: tf.boolean_mask(features[name], valid) for name in names}
        return queries, candidates, candidates[self.candidate_id]

    def _without_padding_slots(
        self, features: Mapping[str, tf.Tensor], valid: tf.Tensor, names: Sequence[str]
    ) -> tuple[Dict[str, tf.Tensor], tf.Tensor]:
        """The batch without the slots that are padding in every sequence (``trim_sequence_padding``).

        Sequences are left-padded, so those are the first ``s`` slots, ``s`` = the first slot any
        sequence uses; cutting them changes no valid position's query, as padding never does
        (:mod:`tfrec_towers.history_encoders`), and spares the encoder ``s`` positions per sequence.
        """
        first = tf.argmax(tf.cast(tf.reduce_any(valid, axis=0), tf.int32), output_type=tf.int32)
        history = getattr(getattr(self.query_tower, "history", None), "feature", None)
        sliced = {*names, *([history] if history else [])}
        trimmed = {
            name: value[:, first:] if name in sliced and value.shape.rank and value.shape.rank >= 2 else value
            for name, value in features.items()
        }
        return trimmed, valid[:, first:]

    def compute_loss(self, inputs: Any, training: bool = False) -> tf.Tensor:
        """The task's loss on a per-prefix batch, or on every valid position of a sequence batch
        (a candidate id of rank 2), weighted by ``sample_weight_feature`` or by the third (or
        second) element of a ``(features, labels, sample_weight)`` batch."""
        features, _, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(inputs)
        if isinstance(inputs, tuple) and len(inputs) == 2:  # (features, sample_weight): there are no labels
            sample_weight = inputs[1]
        sequences = features[self.candidate_id].shape.rank == 2
        if sequences:
            query_embeddings, features, ids = self._every_position(features, training)
        else:
            query_embeddings, ids = self.query_tower(features, training=training), features[self.candidate_id]
        if self.sample_weight_feature is not None and self.sample_weight_feature in features:
            sample_weight = features[self.sample_weight_feature]
        candidate_embeddings = self.candidate_tower(features, training=training)
        extra = {}
        if sample_weight is not None:
            extra["sample_weight"] = tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
        if self.bank_refresh_every_steps and training:
            self._refresh_bank_when_due()
        if self.mixed_negatives is not None and training:
            sampled, sampled_ids, log_q = self.mixed_negatives.sample()
            embeddings = self.candidate_tower(sampled, training=training)
            extra["extra_negatives"] = NegativeSet(embeddings, sampled_ids, log_q, tf.ones_like(log_q, tf.bool))
        loss = self.task(
            query_embeddings,
            candidate_embeddings,
            candidate_ids=ids,
            compute_metrics=False,
            training=training,
            **extra,
        )
        if sequences and training and self.targets_per_batch > 0:
            weight = extra.get("sample_weight")
            total = tf.cast(tf.size(ids), tf.float32) if weight is None else tf.reduce_sum(weight)
            loss = loss * cross_replica.global_sum(total) / self.targets_per_batch
        return loss

    def _refresh_bank_when_due(self) -> None:
        """Re-encodes the memory bank's rows at every ``bank_refresh_every_steps``-th step (from the first
        step after ``N`` enqueues on), from the mixed negatives' corpus."""
        assert self.mixed_negatives is not None  # checked in __init__
        bank, corpus = self.task.memory_bank, self.mixed_negatives.corpus
        steps = bank.steps.read_value()

        def encode(rows: tf.Tensor) -> tf.Tensor:
            return self.candidate_tower(
                {name: tf.gather(column, rows) for name, column in corpus.items()}, training=False
            )

        def refresh() -> tf.Tensor:
            return bank.refresh(corpus[self.candidate_id], encode)

        due = tf.logical_and(steps > 0, tf.equal(steps % self.bank_refresh_every_steps, 0))
        tf.cond(due, refresh, lambda: tf.zeros([], tf.int64))

    def get_config(self) -> Dict[str, Any]:
        """Towers, candidate id, and the task and sampler when they are serialisable layers:
        their hyper-parameters only (the state is in the weights).

        TFRS's ``Retrieval`` task has no config: a model built with it reloads with the default
        :func:`in_batch_softmax_task`.
        """
        serialize = tf.keras.utils.serialize_keras_object
        task_is_serialisable = not isinstance(self.task, tfrs.tasks.Retrieval)
        return {
            "query_tower": serialize(self.query_tower),
            "candidate_tower": serialize(self.candidate_tower),
            "candidate_id": self.candidate_id,
            "task": serialize(self.task) if task_is_serialisable else None,
            "mixed_negatives": serialize(self.mixed_negatives) if self.mixed_negatives is not None else None,
            "sample_weight_feature": self.sample_weight_feature,
            "bank_refresh_every_steps": self.bank_refresh_every_steps,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "TwoTowerModel":
        """Rebuilds the towers; two :class:`Tower` s get one set of tables, so sharing survives.

        The tables' lookups, the counts and the corpus are empty until a checkpoint is restored.
        """
        config = dict(config)
        for key in ("task", "mixed_negatives"):
            if config.get(key) is not None:
                config[key] = tf.keras.utils.deserialize_keras_object(config[key])
        serialized = [config.pop("query_tower"), config.pop("candidate_tower")]
        if all(s.get("class_name", "").endswith("Tower") for s in serialized):
            query_cfg, candidate_cfg = (s["config"] for s in serialized)
            towers = list(
                tower_pair(
                    [feature_from_dict(f) for f in query_cfg["features"]],
                    [feature_from_dict(f) for f in candidate_cfg["features"]],
                    config["candidate_id"],
                    TowerConfig(**query_cfg["config"]),
                    TowerConfig(**candidate_cfg["config"]),
                    HistoryEncoderConfig(**query_cfg.get("history", {"encoder": "pooling"})),
                    names=(query_cfg["name"], candidate_cfg["name"]),
                )
            )
        else:
            towers = [tf.keras.utils.deserialize_keras_object(s) for s in serialized]
        return cls(*towers, **config)


def build_towers(
    spec: FeatureSpec,
    query_config: TowerConfig,
    candidate_config: TowerConfig,
    history: HistoryEncoderConfig = HistoryEncoderConfig(),
) -> tuple[Tower, Tower]:
    """Both towers over one set of embedding tables (shared where the spec says so); the query
    tower reads its history as ``history`` says.

    Raises:
      ValueError: the towers' output dimensions differ (their dot product would be undefined).
    """
    if query_config.output_dim != candidate_config.output_dim:
        raise ValueError(
            "The query and candidate towers must have the same `output_dim`. "
            f"Received: {query_config.output_dim} and {candidate_config.output_dim}"
        )
    return tower_pair(spec.query, spec.candidate, spec.candidate_id, query_config, candidate_config, history)


def tower_pair(
    query_features: Sequence[Feature],
    candidate_features: Sequence[Feature],
    candidate_id: str,
    query_config: TowerConfig,
    candidate_config: TowerConfig,
    history: HistoryEncoderConfig,
    names: Tuple[str, str] = ("query_tower", "candidate_tower"),
) -> Tuple[Tower, Tower]:
    """The two towers over one set of embedding tables; with ``history.items='candidate_tower'`` the
    query tower reads its history's items through the candidate tower
    (:class:`~tfrec_towers.history_items.CandidateTowerItems`), whose attribute tables are empty until
    :func:`fill_history_items` or a checkpoint fills them."""
    tables = build_embedding_tables(list(query_features) + list(candidate_features))
    if history.items != "candidate_tower":
        query = Tower(query_features, query_config, tables, history, name=names[0])
        return query, Tower(candidate_features, candidate_config, tables, name=names[1])
    candidate = Tower(candidate_features, candidate_config, tables, name=names[1])
    id_feature = next(f for f in candidate_features if f.name == candidate_id)
    attributes = ItemAttributes(
        candidate_id,
        id_feature.dtype,
        attribute_columns(candidate_features, candidate_id),
        name="history_item_attributes",
    )
    items = CandidateTowerItems(candidate, attributes, name="history_items")
    return Tower(query_features, query_config, tables, history, items=items, name=names[0]), candidate


def fill_history_items(query_tower: Tower, corpus: Mapping[str, Any]) -> None:
    """Stores the catalogue's attributes for a query tower that reads its history's items through the
    candidate tower (nothing to do otherwise): ``corpus`` holds the candidate features' columns."""
    if query_tower.history_items is not None:
        query_tower.history_items.attributes.fill(corpus)

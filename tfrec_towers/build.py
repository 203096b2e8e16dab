"""The default model in one call: towers from the feature declarations, the configured loss, compiled.

:func:`build_model` is what ``tfrec-towers train`` trains, for users who bring their own ``tf.data``
pipeline: ``model.fit(dataset)`` on batches of raw features (optionally ``(features, sample_weight)``)
then trains the benchmarked default loss, in-batch softmax with logQ correction from the training
counts (Yi et al., RecSys 2019) plus mixed negatives drawn from the catalogue (Yang et al., WWW 2020),
unless ``config.loss`` says otherwise.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from tfrec_towers.config import ADAM_OPTIMIZERS, ConfigError, ExperimentConfig, LossConfig, TrainingConfig
from tfrec_towers.features import FeatureSpec, input_signature
from tfrec_towers.losses.factory import build_candidate_source, build_retrieval_task, mixed_negative_distribution
from tfrec_towers.model import TwoTowerModel, build_towers, fill_history_items
from tfrec_towers.optimizers import LazyAdam
from tfrec_towers.schedules import WarmupDecay
from tfrec_towers.tower_config import HistoryEncoderConfig
from tfrec_towers.towers import Tower

OPTIMIZERS = {
    "adam": tf.keras.optimizers.Adam,
    "lazy_adam": LazyAdam,
    "adagrad": tf.keras.optimizers.Adagrad,
    "sgd": tf.keras.optimizers.SGD,
}
"""``training.optimizer`` → its Keras optimizer class."""


def make_optimizer(training: TrainingConfig, total_steps: Optional[int] = None) -> tf.keras.optimizers.Optimizer:
    """The configured optimizer (``training.optimizer``) at ``training.learning_rate``, constant or
    on the configured warm-up and decay (:class:`~tfrec_towers.schedules.WarmupDecay`).

    Args:
      training: the training configuration.
      total_steps: the run's training steps (``training.epochs`` × steps per epoch), over which
        ``training.learning_rate_decay`` decays; required by a decay, unused otherwise.

    Raises:
      ConfigError: a decay without ``total_steps``, or with no more steps than the warm-up.
    """
    optimizer = OPTIMIZERS[training.optimizer]
    if training.optimizer in ADAM_OPTIMIZERS:
        optimizer = functools.partial(optimizer, beta_2=training.adam_beta_2)
    if not training.learning_rate_warmup_steps and training.learning_rate_decay == "none":
        return optimizer(learning_rate=training.learning_rate)
    decay = training.learning_rate_decay
    if decay != "none" and total_steps is None:
        raise ConfigError(
            f"`training.learning_rate_decay` {decay!r} decays over the run's steps: pass `total_steps` "
            "(`training.epochs` × steps per epoch)."
        )
    if decay != "none" and total_steps is not None and total_steps <= training.learning_rate_warmup_steps:
        raise ConfigError(
            f"`training.learning_rate_warmup_steps` ({training.learning_rate_warmup_steps}) must be below the run's "
            f"{total_steps} training steps (`training.epochs` × steps per epoch) for `training.learning_rate_decay` "
            f"{decay!r} to decay."
        )
    schedule = WarmupDecay(
        training.learning_rate,
        warmup_steps=training.learning_rate_warmup_steps,
        decay=decay,
        final_learning_rate_fraction=training.final_learning_rate_fraction,
        total_steps=total_steps,
    )
    return optimizer(learning_rate=schedule)


def needs_total_steps(config: ExperimentConfig) -> Dict[str, str]:
    """The parts of ``config`` that need the run's training steps (``total_steps`` of :func:`build_model`).

    Returns:
      ``{key: why}``: ``training.learning_rate_decay`` decays over them, a memory bank's
      ``loss.memory_bank_warmup_fraction`` is a share of them; empty when nothing needs them.
    """
    needs = {}
    if config.training.learning_rate_decay != "none":
        needs["training.learning_rate_decay"] = f"{config.training.learning_rate_decay!r} decays over the run's steps"
    if config.loss.memory_bank_size and config.loss.memory_bank_warmup_fraction > 0.0:
        needs["loss.memory_bank_warmup_fraction"] = (
            f"{config.loss.memory_bank_warmup_fraction} of the run's steps warm the memory bank up"
        )
    return needs


def training_data_needs(loss: LossConfig, history: Optional[HistoryEncoderConfig] = None) -> Dict[str, str]:
    """The parts of ``loss`` (and of ``history``) that read the training data: counts of its ids,
    draws from its corpus, its items' attributes.

    Returns:
      ``{argument of build_model: what the loss reads from it}``: ``training_ids`` for
      ``logq='counts'``, ``corpus`` for mixed negatives, ``full_softmax`` and a history read through
      the candidate tower (``history.items='candidate_tower'``); empty when nothing reads data.
    """
    needs = {}
    if history is not None and history.items == "candidate_tower":
        needs["corpus"] = "`model.history.items`='candidate_tower' reads each history item's attributes from it"
    if loss.logq == "counts":
        needs["training_ids"] = "`loss.logq`='counts' counts the training data's candidate ids"
    elif loss.mixed_negatives and loss.mixed_negatives_alpha > 0.0:
        needs["training_ids"] = "`loss.mixed_negatives_alpha` draws by the training data's candidate counts"
    if loss.mixed_negatives:
        needs["corpus"] = f"`loss.mixed_negatives`={loss.mixed_negatives} draws negatives from its candidate corpus"
    if loss.mode == "full_softmax":
        needs["corpus"] = "`loss.mode`='full_softmax' scores every candidate of its catalogue"
    return needs


def _corpus_columns(spec: FeatureSpec, corpus: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """The candidate features' columns of ``corpus`` (a dict of arrays or a DataFrame)."""
    missing = [f.name for f in spec.candidate if f.name not in corpus]
    if missing:
        raise ValueError(
            f"`corpus` must hold the candidate features {[f.name for f in spec.candidate]}; it lacks {missing}."
        )
    return {f.name: np.asarray(corpus[f.name]) for f in spec.candidate}


def _check_unprojected_towers(spec: FeatureSpec, config: ExperimentConfig, query: Tower, candidate: Tower) -> None:
    """A tower without its projection (``projection: false``) is called once on a one-row probe, so a
    width other than ``output_dim`` is a configuration error now, not at the first training step.

    Raises:
      ConfigError: the tower's output is not ``output_dim`` wide (the message names the keys).
    """
    for tower, features, tower_config in (
        (query, spec.query, config.model.query_tower),
        (candidate, spec.candidate, config.model.candidate_tower),
    ):
        if tower_config.projection is not False:
            continue
        probe = {
            name: tf.zeros([1 if size is None else size for size in signature.shape], signature.dtype)
            for name, signature in input_signature(features).items()
        }
        try:
            tower(probe)
        except ValueError as error:
            raise ConfigError(str(error)) from None


def build_model(
    spec: FeatureSpec,
    config: ExperimentConfig = ExperimentConfig(),
    *,
    training_ids: Optional[np.ndarray] = None,
    corpus: Optional[Mapping[str, Any]] = None,
    sample_weight_feature: Optional[str] = None,
    total_steps: Optional[int] = None,
    for_inference: bool = False,
) -> TwoTowerModel:
    """Towers from the adapted spec and the configured loss (``config.loss``), compiled with
    ``config.training``'s optimizer and ``steps_per_execution``, its numeric parts XLA-compiled in
    training with ``training.jit_compile`` (:attr:`TwoTowerModel.xla_training`); only the towers
    with ``for_inference``.

    Args:
      spec: the adapted feature spec (:func:`tfrec_towers.features.adapt`).
      config: the experiment configuration (its ``model``, ``loss`` and ``training`` sections);
        the default is the product's default model.
      training_ids: ``[num_examples]`` the candidate id of every training example, which
        ``loss.logq: counts`` counts (required then).
      corpus: the candidate catalogue, one row per candidate, with the candidate features' columns
        (a dict of arrays or a DataFrame; other columns are ignored), from which
        ``loss.mixed_negatives`` draws and which ``loss.mode: full_softmax`` scores, and whose items'
        attributes a history read through the candidate tower (``model.history.items``) looks up by
        id (required then).
      sample_weight_feature: a feature of the training batches holding each example's weight in
        the loss; batches of ``(features, sample_weight)`` are weighted without it.
      total_steps: the training steps ``model.fit`` will take (epochs × steps per epoch), over which
        ``training.learning_rate_decay`` decays and whose ``loss.memory_bank_warmup_fraction`` warms a
        memory bank up (required by both; see :func:`needs_total_steps`).
      for_inference: build only the towers, to restore trained weights into: the model holds no
        loss state and is not compiled, so it cannot be trained by mistake with a loss other than
        the configured one. ``training_ids`` and ``corpus`` are then not used.

    Returns:
      A :class:`~tfrec_towers.model.TwoTowerModel`: ``model.fit`` trains it,
      ``model.query_tower`` / ``model.candidate_tower`` embed raw features. Hyper-parameters in
      the config, state in weights: ``model.get_config()`` holds no vocabulary, count or corpus
      row (its size does not grow with the catalogue); they are in the weights and lookup tables
      that ``tf.train.Checkpoint`` and SavedModels save.

    Raises:
      ConfigError: ``training.example_format`` is ``every_position`` but the history is pooled; or
        ``model.history.items`` is ``candidate_tower`` and a candidate feature is a list per item; or
        the configured loss reads the training data and ``training_ids`` or ``corpus`` is None; or
        a learning-rate decay or a bank's warm-up share without ``total_steps`` (:func:`needs_total_steps`).
      ValueError: ``corpus`` lacks a candidate feature, or invalid towers (their output
        dimensions differ).
    """
    if config.training.example_format == "every_position" and not config.model.history.is_sequential:
        raise ConfigError(
            "`training.example_format` 'every_position' needs a sequence `model.history.encoder` "
            "(mean, attention, gru or transformer), not 'pooling'."
        )
    history = config.model.history
    if history.is_sequential and history.feature not in [f.name for f in spec.query]:
        raise ConfigError(
            f"`model.history.feature` is {history.feature!r}, but the query features are "
            f"{[f.name for f in spec.query]}: name the history feature, or set `model.history.encoder: pooling`."
        )
    query, candidate = build_towers(spec, config.model.query_tower, config.model.candidate_tower, history)
    _check_unprojected_towers(spec, config, query, candidate)
    if for_inference:
        return TwoTowerModel(query, candidate, spec.candidate_id)
    given = {"training_ids": training_ids, "corpus": corpus}
    missing = {
        name: why for name, why in training_data_needs(config.loss, config.model.history).items() if given[name] is None
    }
    if missing:
        wanted = {
            "training_ids": "`training_ids` (the candidate id of every training example)",
            "corpus": "`corpus` (the candidate catalogue's feature columns)",
        }
        raise ConfigError(
            f"The configured loss reads the training data ({'; '.join(missing.values())}): pass "
            f"{' and '.join(wanted[name] for name in missing)} to train, or `for_inference=True` for a model "
            "that only restores trained towers."
        )
    columns = None if corpus is None else _corpus_columns(spec, corpus)
    if columns is not None:
        fill_history_items(query, columns)
    ids = None if training_ids is None else np.asarray(training_ids)
    distribution = (
        None if columns is None else mixed_negative_distribution(config.loss, ids, columns[spec.candidate_id])
    )
    task = build_retrieval_task(
        config.loss,
        config.model.temperature,
        config.model.query_tower.output_dim,
        spec.candidate_id_feature.dtype,
        training_ids=ids,
        corpus_size=0 if columns is None else len(columns[spec.candidate_id]),
        mixed_distribution=distribution,
        total_steps=total_steps,
    )
    sampler = None
    if columns is not None:
        sampler = build_candidate_source(
            config.loss, columns, spec.candidate_id, seed=config.training.seed, mixed_distribution=distribution
        )
    model = TwoTowerModel(
        query,
        candidate,
        spec.candidate_id,
        task=task,
        mixed_negatives=sampler,
        sample_weight_feature=sample_weight_feature,
        bank_refresh_every_steps=config.loss.memory_bank_refresh_every_steps,
    )
    model.compile(
        optimizer=make_optimizer(config.training, total_steps), steps_per_execution=config.training.steps_per_execution
    )
    model.xla_training = config.training.jit_compile
    model.trim_sequence_padding = config.training.group_by_length
    return model

"""The main job: data → features → two-tower training → full-catalogue evaluation → export → verify.

Each step is an importable function, so a notebook can run any of them; the CLI is a thin shell
over :func:`train`, :func:`evaluate_run` and :func:`export_run`.

A run directory holds::

    config.json          the fully resolved configuration (repeat the run with it)
    feature_spec.json    the adapted feature declarations (vocabularies, statistics)
    checkpoint/          the trained weights (tf.train.Checkpoint)
    history.json         per-epoch training losses (and validation metrics, ``val_HR@10`` ...)
    metrics.json         HR@K / NDCG@K
    selection.json       with ``training.early_stopping.refit``: the validation run's best epoch and history
    collapse.json        whether the trained model collapsed (every candidate embedding one way, or every score the same)
    export/<model_name>/<version>/   the SavedModel
    verification.json    the fresh-process check of that export
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from tfrec_pipelines.candidate_table import CandidateSource, read_candidate_table
from tfrec_pipelines.checkpointing import fit_resumably, restore_towers
from tfrec_pipelines.data import RetrievalData, TrainingExamples, num_rows, take_rows
from tfrec_pipelines.dataset import steps_per_epoch
from tfrec_pipelines.distribute import is_chief, make_strategy
from tfrec_pipelines.run_directory import CHECKPOINTS_DIR, CONFIG_FILE, partial_directory, partial_run
from tfrec_pipelines.run_errors import RunError, TrainingInterrupted
from tfrec_pipelines.sequences import num_targets, sequence_examples, sequence_lengths, valid_positions
from tfrec_pipelines.sources import FEATURES_FILE, prepare_data
from tfrec_pipelines.validation import EarlyStopping, ValidationMetrics, evaluate_model
from tfrec_towers import build
from tfrec_towers.atomic_file import write_text_atomically
from tfrec_towers.collapse import NUM_CANDIDATES, NUM_QUERIES, CollapseCriteria, CollapseMonitor, collapse_summary
from tfrec_towers.config import (
    ConfigError,
    ExperimentConfig,
    TrainingConfig,
    config_from_dict,
    config_to_dict,
    save_config,
)
from tfrec_towers.evaluation import DEFAULT_KS
from tfrec_towers.export import NUM_SAMPLE_QUERIES, export_retrieval_model
from tfrec_towers.features import FeatureSpec, input_signature
from tfrec_towers.index import IndexConfig, index_kind
from tfrec_towers.losses import FullSoftmaxLoss
from tfrec_towers.model import TwoTowerModel
from tfrec_towers.projector import write_projector_embeddings
from tfrec_towers.towers import compute_embeddings
from tfrec_towers.tuning import TuningGrid, TuningResult, check_report_directory, save_tuning_report, tune_index
from tfrec_towers.verify import verify_export

logger = logging.getLogger(__name__)

SPEC_FILE, METRICS_FILE, HISTORY_FILE = "feature_spec.json", "metrics.json", "history.json"
SELECTION_FILE = "selection.json"  # a refit's validation run: its best epoch and history
REFIT_DIR = "refit"  # a refit's checkpoints, inside the validation run's
COLLAPSE_FILE = "collapse.json"  # whether the trained model collapsed (tfrec_towers.collapse.collapse_summary)
MAX_EVERY_POSITION_PAIRS = 8192  # above this many pairs per batch, every-position training warns
TENSORBOARD_DIR = "tensorboard"  # `tensorboard --logdir RUN/tensorboard` (training.tensorboard: true)
CHECKPOINT_DIR, EXPORT_DIR, VERIFICATION_FILE = "checkpoint", "export", "verification.json"


@dataclasses.dataclass
class RunResult:
    """What :func:`train` produced."""

    run_dir: Path
    metrics: Dict[str, float]
    export_path: Optional[Path]
    verification: Optional[dict]
    train_seconds: float
    examples_per_second: float
    collapse: Optional[Dict[str, Any]] = None  # collapse.json: whether the trained model collapsed


def load_data(config: ExperimentConfig) -> RetrievalData:
    """The configured data set, split by the leave-last-out protocol of docs/contracts.md
    (:func:`tfrec_pipelines.sources.prepare_data`)."""
    return prepare_data(config).data


def sample_weight_column(config: ExperimentConfig) -> Optional[str]:
    """The training examples' weight column: ``data.interactions.weight_column`` of one's own tables."""
    return config.data.interactions.weight_column if config.data.dataset == "interactions" else None


def build_model(
    spec: FeatureSpec,
    config: ExperimentConfig,
    data: Optional[RetrievalData] = None,
    *,
    for_inference: bool = False,
) -> TwoTowerModel:
    """Towers from the adapted spec and the configured loss (``config.loss``), compiled; only the
    towers with ``for_inference``: :func:`tfrec_towers.build.build_model` on the run's data, weighted
    by its weight column (:func:`sample_weight_column`).

    Args:
      spec: the adapted feature spec (:func:`tfrec_towers.features.adapt`).
      config: the experiment configuration.
      data: the training data, for the losses that read it (``loss.logq: counts`` counts its
        candidate ids, ``loss.mixed_negatives`` draws from its corpus, ``loss.mode: full_softmax``
        scores its catalogue) and for what counts the run's steps (a learning-rate decay, a memory
        bank's warm-up share: :func:`training_steps`); required for them.
      for_inference: build only the towers, to restore trained weights into (:func:`load_run`):
        the model holds no loss state and is not compiled, so it cannot be trained by mistake
        with a loss other than the configured one. ``data`` is then not used.

    Raises:
      ConfigError: ``training.example_format`` is ``every_position`` but the history is pooled; or
        the configured loss, learning-rate decay or bank warm-up reads the training data and ``data`` is None.
    """
    needs = build.training_data_needs(config.loss, config.model.history)
    if data is None and needs and not for_inference:
        raise ConfigError(
            f"The configured loss reads the training data ({'; '.join(needs.values())}): pass it as "
            "`build_model(spec, config, data)` to train, or `for_inference=True` for a model that only "
            "restores trained towers."
        )
    step_needs = build.needs_total_steps(config)
    if data is None and step_needs and not for_inference:
        raise ConfigError(
            f"{'; '.join(f'`{key}` {why}' for key, why in step_needs.items())}, counted on the training data: "
            "pass it as `build_model(spec, config, data)`."
        )
    return build.build_model(
        spec,
        config,
        training_ids=None if data is None else data.train[spec.candidate_id],
        corpus=None if data is None else data.candidates,
        sample_weight_feature=sample_weight_column(config),
        total_steps=training_steps(config, spec, data) if data is not None and step_needs else None,
        for_inference=for_inference,
    )


def training_steps(config: ExperimentConfig, spec: FeatureSpec, data: RetrievalData) -> int:
    """The steps :func:`fit_model` trains ``config`` for on ``data``: ``training.epochs`` × the batches
    of one epoch of its examples (per-prefix rows, or with ``every_position`` the sequences of
    :func:`~tfrec_pipelines.sequences.sequence_examples`).

    Raises:
      DataError: with ``every_position``, the history or candidate id column is missing, or the rows
        are not in the order sequence examples need.
    """
    examples: Mapping[str, Any] = data.train
    if config.training.example_format == "every_position":
        history = config.model.history
        examples = sequence_examples(
            data.train.select([name for name in (history.feature, spec.candidate_id) if name in data.train]),
            [spec.candidate_id],
            spec.candidate_id,
            history.max_length,
            history=history.feature,
        )
    return config.training.epochs * steps_per_epoch(num_rows(examples), config.training.batch_size)


def training_columns(data: RetrievalData, spec: FeatureSpec, weight_column: Optional[str] = None) -> TrainingExamples:
    """The training examples' columns that the towers read (and the sample-weight column), still
    unbuilt: what :func:`fit_model` trains on.

    Raises:
      KeyError: a feature (or the weight column) is not a column of the training examples.
    """
    return data.train.select([f.name for f in spec.all_features] + ([weight_column] if weight_column else []))


def fit_model(
    model: tf.keras.Model,
    features: Mapping[str, np.ndarray],
    training: TrainingConfig,
    verbose: int = 1,
    callbacks: Sequence[tf.keras.callbacks.Callback] = (),
    checkpoints: Optional[Path] = None,
    restore_from: Optional[Path] = None,
    validation: Optional[RetrievalData] = None,
) -> tuple[Dict[str, list], float, float]:
    """``model.fit`` on batches of ``features`` in a seeded order per epoch (with ``callbacks``),
    resumable from the checkpoints in ``checkpoints`` (see :func:`tfrec_pipelines.checkpointing.fit_resumably`).

    ``features`` is a feature dictionary or :class:`~tfrec_pipelines.data.TrainingExamples` (e.g.
    :func:`training_columns`), whose batches are looked up per step instead of built whole
    (:func:`tfrec_pipelines.checkpointing.training_batches`).

    With ``validation`` (a split holding validation interactions), every epoch end adds
    ``val_HR@K`` / ``val_NDCG@K`` (K in :data:`~tfrec_towers.evaluation.DEFAULT_KS` and the early
    stopping metric's) to the logs and the history; ``training.early_stopping`` then stops on them
    and ends with the best epoch's weights.

    Every epoch end also adds ``mean_resultant_length`` and ``score_spread`` of a fixed sample
    (:func:`collapse_monitor`) to the logs and the history, and warns when they show a collapse;
    with ``training.stop_on_collapse`` the collapse stops the run.

    With ``training.example_format`` ``every_position``, the per-prefix ``features`` are first
    regrouped into sequence examples of ``model.query_tower.history.max_length`` positions
    (:func:`tfrec_pipelines.sequences.sequence_examples`); examples/s then counts trained positions.
    With ``training.group_by_length`` as well, the model's ``targets_per_batch`` is set to the
    epoch's mean target weight per batch, so that a batch's loss is its positions' sum over that
    count (see :class:`~tfrec_towers.model.TwoTowerModel`).

    Returns:
      (per-epoch history, training seconds, training examples (targets) per second of the steps
      this call trained).

    Raises:
      ConfigError: ``training.early_stopping`` is set but ``validation`` is None or holds no
        validation interactions.
      RunError: the loss became NaN or infinite (the run stops at that batch); or, with
        ``training.stop_on_collapse``, a collapse check found the model collapsed (the run stops
        there; the message says what collapsed, where, and what to change).
      TrainingInterrupted: Ctrl-C stopped training after a checkpoint (only with ``checkpoints``).
    """
    epoch_callbacks, early_stopping = [], None
    if validation is not None and validation.validation is not None:
        stopping_k = (training.early_stopping.k,) if training.early_stopping is not None else ()
        epoch_callbacks.append(ValidationMetrics(validation, sorted({*DEFAULT_KS, *stopping_k})))
    if training.early_stopping is not None:
        if not epoch_callbacks:
            raise ConfigError(
                "`training.early_stopping` watches a validation metric, but the data holds no validation "
                "interactions: set `data.validation` to 'last' or 'time'."
            )
        early_stopping = EarlyStopping.from_config(training.early_stopping)
    # A two-tower model of this package is watched (another Keras model, e.g. a plain TFRS one, trains as
    # it is), on samples of the per-prefix examples: one query per example, one row per candidate.
    monitor = collapse_monitor(model, features, training, validation) if isinstance(model, TwoTowerModel) else None
    if training.example_format == "every_position":
        reading = model.query_tower.history
        weight = getattr(model, "sample_weight_feature", None)
        features = sequence_examples(
            features,
            [f.name for f in model.candidate_tower.features] + ([weight] if weight in features else []),
            model.candidate_id,
            reading.max_length,
            history=reading.feature,
        )
        positions = training.batch_size * reading.max_length
        # the full softmax scores each position against the catalogue in chunks: it has no in-batch matrix
        in_batch = not isinstance(getattr(model, "task", None), FullSoftmaxLoss)
        if in_batch and positions > MAX_EVERY_POSITION_PAIRS:
            logger.warning(
                "training.batch_size=%d sequences of up to %d items is up to %d (query, item) pairs per batch, "
                "an in-batch logit matrix of up to %d x %d: every-position training usually takes 32-128 sequences.",
                training.batch_size,
                reading.max_length,
                positions,
                positions,
                positions,
            )
    lengths = sequence_lengths(features, model.candidate_id) if training.group_by_length else None
    if lengths is not None and isinstance(model, TwoTowerModel):  # each position weighs 1/n̄ (TwoTowerModel)
        weight = _target_weight(features, model, lengths)
        model.targets_per_batch = weight / steps_per_epoch(len(lengths), training.batch_size)
    start = time.perf_counter()
    history, steps = fit_resumably(
        model,
        features,
        training,
        checkpoints,
        verbose,
        callbacks,
        restore_from,
        epoch_callbacks,
        early_stopping,
        collapse=monitor,
        lengths=lengths,
    )
    seconds = time.perf_counter() - start
    candidate_id = getattr(model, "candidate_id", None)
    per_epoch = (
        num_targets(features, candidate_id)
        if candidate_id is not None and candidate_id in features
        else num_rows(features)
    )
    examples = per_epoch * steps / steps_per_epoch(num_rows(features), training.batch_size)
    return history, seconds, examples / max(seconds, 1e-9)


def _target_weight(examples: Mapping[str, np.ndarray], model: TwoTowerModel, lengths: np.ndarray) -> float:
    """The summed weight of the sequence examples' valid positions: their count (the sum of
    ``lengths``, each example's :func:`~tfrec_pipelines.sequences.sequence_lengths`), or the sum of
    their ``sample_weight_feature`` values."""
    weight = model.sample_weight_feature
    if weight is None or weight not in examples:
        return float(lengths.sum())
    valid = valid_positions(examples, model.candidate_id)
    return float(np.asarray(examples[weight], np.float64)[valid].sum())


def collapse_monitor(
    model: TwoTowerModel,
    features: Mapping[str, np.ndarray],
    training: TrainingConfig,
    data: Optional[RetrievalData] = None,
) -> CollapseMonitor:
    """The collapse monitor of a run (:class:`~tfrec_towers.collapse.CollapseMonitor`), set by ``training``.

    Its fixed samples, seeded by ``training.seed``: up to :data:`~tfrec_towers.collapse.NUM_QUERIES`
    training examples of ``features`` (their query features) and up to
    :data:`~tfrec_towers.collapse.NUM_CANDIDATES` rows of the catalogue ``data.candidates`` (without
    ``data``: of the distinct candidates of ``features``). It checks at every epoch end and every
    ``training.collapse_check_every_steps`` steps, with the thresholds ``training.collapse_*``, and
    stops training at a collapse with ``training.stop_on_collapse``.

    Args:
      model: the two-tower model being trained.
      features: its training examples (a feature dictionary or :class:`~tfrec_pipelines.data.TrainingExamples`).
      training: the training configuration.
      data: the run's data (its catalogue is sampled).
    """
    queries = _sample_rows(features, NUM_QUERIES, training.seed)
    if data is None:
        distinct = np.unique(np.asarray(features[model.candidate_id]), return_index=True)[1]
        catalogue = take_rows(features, np.sort(distinct))
    else:
        catalogue = data.candidates
    candidates = _sample_rows(catalogue, NUM_CANDIDATES, training.seed)
    criteria = CollapseCriteria.from_config(training)
    return CollapseMonitor(
        {f.name: queries[f.name] for f in model.query_tower.features},
        {f.name: candidates[f.name] for f in model.candidate_tower.features},
        every_steps=training.collapse_check_every_steps,
        max_mean_resultant_length=criteria.max_mean_resultant_length,
        min_score_spread=criteria.min_score_spread,
        stop_on_collapse=training.stop_on_collapse,
    )


def _sample_rows(features: Mapping[str, np.ndarray], count: int, seed: int) -> Mapping[str, np.ndarray]:
    rows = num_rows(features)
    index = np.random.default_rng(seed).choice(rows, size=min(count, rows), replace=False)
    return take_rows(features, np.sort(index))


def candidate_corpus(
    spec: FeatureSpec, data: RetrievalData, candidates: Optional[CandidateSource] = None
) -> Dict[str, np.ndarray]:
    """The corpus to index: the run's catalogue, or a candidate feature table read with the run's candidate spec."""
    if candidates is None:
        return {f.name: data.candidates[f.name] for f in spec.candidate}
    return read_candidate_table(candidates, input_signature(spec.candidate))


def export_model(
    model: TwoTowerModel,
    spec: FeatureSpec,
    data: RetrievalData,
    export_base: Path,
    config: ExperimentConfig,
    index: Union[str, IndexConfig, None] = None,
    k: Optional[int] = None,
    candidates: Optional[CandidateSource] = None,
    index_settings: Optional[Dict[str, Any]] = None,
    exclude_history: Optional[bool] = None,
) -> Path:
    """Writes the SavedModel (docs/contracts.md): retrieval over the corpus plus both embeddings.

    Args:
      index: ``"brute-force"`` or ``"scann"`` (ScaNN parameters derived from the corpus size), or a
        full :class:`~tfrec_towers.index.IndexConfig` (e.g. ``tune-index``'s choice); default the
        run's ``export.index``.
      k: candidates per query, at least 1; overrides the index config's ``k`` (default the run's
        ``export.k``).
      candidates: a candidate feature table (DataFrame, or Parquet / CSV / TFRecord path) to index
        instead of the run's catalogue; ``serving_default`` returns the values of its id column.
      index_settings: :class:`~tfrec_towers.index.IndexConfig` fields overriding the index's, e.g.
        ``{"num_leaves": 1000, "num_leaves_to_search": 60}``.
      exclude_history: leave the query's history items (``model.history.feature``) out of
        ``serving_default``'s top k, still k results; default the run's ``export.exclude_history``.

    Up to :data:`~tfrec_towers.export.NUM_SAMPLE_QUERIES` held-out queries (seeded sample) make the
    warm-up requests and the verification sample on which ``verify`` measures recall and latency.

    Raises:
      ValueError: ``k`` is below 1, ``index`` is not an index kind, or another index setting is
        invalid (:class:`~tfrec_towers.index.IndexConfig`); with ``exclude_history``, the query
        features hold no id matrix named ``model.history.feature`` of the candidate ids' dtype; see
        also :func:`~tfrec_towers.export.export_retrieval_model`.
    """
    if not isinstance(index, IndexConfig):
        index = IndexConfig(kind=index_kind(config.export.index if index is None else index), k=config.export.k)
    index_config = dataclasses.replace(index, k=index.k if k is None else k, **(index_settings or {}))
    query_names = [f.name for f in spec.query]
    excluding = config.export.exclude_history if exclude_history is None else exclude_history
    return export_retrieval_model(
        query_model=model.query_tower,
        candidate_model=model.candidate_tower,
        query_input_spec=input_signature(spec.query),
        candidate_input_spec=input_signature(spec.candidate),
        candidates=candidate_corpus(spec, data, candidates),
        candidate_id=spec.candidate_id,
        export_base=export_base,
        model_name=config.export.model_name,
        index=index_config,
        metadata={"dataset": data.name, "feature_spec": json.loads(spec.to_json())},
        warmup_queries=_sample_rows(
            {n: data.eval_queries[n] for n in query_names}, NUM_SAMPLE_QUERIES, config.training.seed
        ),
        exclude_history=config.model.history.feature if excluding else None,
    )


def _check_new_run_dir(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise RunError(f"--output {output} is a file; give a directory for the run.")
    if output.is_dir() and any(output.iterdir()):
        held = "a run" if (output / CONFIG_FILE).exists() else "files"
        raise RunError(
            f"--output {output} already holds {held}. Choose a new directory, or re-export that run "
            f"with `tfrec-towers export --run {output}` to write a new version."
        )


def train(config: ExperimentConfig, output: str | Path, *, verbose: int = 1) -> RunResult:
    """Trains, evaluates, exports and verifies; the run directory appears only when all went well.

    The run is written into the sibling ``.<output.name>.partial`` of ``output`` and renamed at the
    end, so a failed or interrupted run leaves nothing half-written at ``output``. Training
    checkpoints go to its ``checkpoints/`` on the schedule of ``config.training``; after a crash,
    a kill or Ctrl-C, calling ``train`` again with the same configuration resumes from the latest
    one (:mod:`tfrec_pipelines.checkpointing`); other failures keep the directory only if it holds one.

    Raises:
      RunError: ``output`` is a file or already holds a run; the ``.partial`` directory holds a run
        of another configuration; training diverged, or collapsed with ``training.stop_on_collapse``
        (the message names the last good checkpoint).
      TrainingInterrupted: Ctrl-C stopped training after writing a checkpoint, or stopped the
        evaluation or export after training; rerunning the same command resumes (after training,
        it only evaluates and exports).
    """
    output = Path(output)
    strategy = make_strategy(config.training.distribute)  # before any other TensorFlow work
    if not is_chief(strategy):
        # A non-chief worker of a multi-worker run trains in step with the chief, writes nothing.
        scratch = Path(tempfile.mkdtemp(prefix="tfrec-towers-worker-"))
        try:  # resuming (on a shared file system) from the chief's checkpoints
            return _train_into(config, scratch, verbose, strategy, partial_directory(output) / CHECKPOINTS_DIR)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    _check_new_run_dir(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with partial_run(output, config, keep=[TENSORBOARD_DIR]) as work:
        result = _train_into(config, work, verbose, strategy)
        if output.exists():
            output.rmdir()
        os.rename(work, output)
    shutil.rmtree(output / CHECKPOINTS_DIR, ignore_errors=True)  # the final weights are in checkpoint/
    _warn_of_collapse(result.collapse, output)
    return _relocate(result, work, output)


def _relocate(result: RunResult, old: Path, new: Path) -> RunResult:
    export = None if result.export_path is None else new / result.export_path.relative_to(old)
    return dataclasses.replace(result, run_dir=new, export_path=export)


def _train_into(
    config: ExperimentConfig,
    run_dir: Path,
    verbose: int,
    strategy: tf.distribute.Strategy,
    restore_from: Optional[Path] = None,
) -> RunResult:
    save_config(config, run_dir / CONFIG_FILE)
    fitted = fit_configured(config, run_dir, verbose, strategy, restore_from)
    if fitted.selection is not None:
        (run_dir / SELECTION_FILE).write_text(json.dumps(fitted.selection, indent=2) + "\n")
    logger.info("Training finished: evaluating and exporting the run.")
    try:
        metrics, export_path, verification, collapse = _finish_run(
            fitted.model, fitted.spec, fitted.data, fitted.config, run_dir, fitted.history
        )
    except KeyboardInterrupt:  # Ctrl-C after training: the checkpoints hold the trained model
        raise TrainingInterrupted(
            f"Interrupted after training, while evaluating and exporting; the trained run is kept in {run_dir}: "
            "rerun the same command to evaluate and export it (training is not repeated)."
        ) from None
    return RunResult(
        run_dir, metrics, export_path, verification, fitted.train_seconds, fitted.examples_per_second, collapse
    )


@dataclasses.dataclass
class FittedModel:
    """What :func:`fit_configured` trained.

    Attributes:
      model, spec, data: the trained model, its adapted feature spec and the data it trained on.
      config: the configuration of that training (with a refit, :func:`refit_config` of the given one).
      history: its per-epoch history.
      train_seconds: the training time, a refit's validation run included.
      examples_per_second: training examples (targets) per second of the last training.
      selection: with a refit, the validation run (see :func:`fit_configured`); else None.
    """

    model: TwoTowerModel
    spec: FeatureSpec
    data: RetrievalData
    config: ExperimentConfig
    history: Dict[str, list]
    train_seconds: float
    examples_per_second: float
    selection: Optional[Dict[str, Any]] = None


def fit_configured(
    config: ExperimentConfig,
    run_dir: Optional[Path] = None,
    verbose: int = 1,
    strategy: Optional[tf.distribute.Strategy] = None,
    restore_from: Optional[Path] = None,
) -> FittedModel:
    """Reads the configured data, builds the model and trains it, as ``train`` does before evaluating.

    With ``training.early_stopping.refit``, the validation run trains first (early stopping on the
    validation split), then a new model from the same seed trains on :func:`refit_config` for the
    best epoch's number of epochs; ``selection`` then holds the validation run: ``metric``,
    ``best_epoch`` (1-based), ``best_value``, ``epochs_trained``, ``train_seconds`` and ``history``.

    Args:
      config: the experiment configuration.
      run_dir: the (in-progress) run directory: the resolved declarations and feature spec are
        written there and training checkpoints in its ``checkpoints/`` (a refit's in
        ``checkpoints/refit/``, beside the validation run's selection), so that rerunning resumes;
        None: nothing is written and nothing resumes.
      verbose: Keras's verbosity.
      strategy: the ``tf.distribute`` strategy to build the model under (None: the default one).
      restore_from: the checkpoints to resume from instead of ``run_dir``'s (a non-chief worker's).
    """
    strategy = strategy or tf.distribute.get_strategy()
    checkpoints = None if run_dir is None else run_dir / CHECKPOINTS_DIR
    stopping = config.training.early_stopping
    if stopping is None or not stopping.refit:
        return _fit(config, config.training.epochs, run_dir, verbose, strategy, checkpoints, restore_from)
    selection = _select_epochs(config, checkpoints, verbose, strategy, restore_from, run_dir)
    logger.info(
        "Refitting on the training and validation interactions for %d epochs (the best by %s).",
        selection["best_epoch"],
        selection["metric"],
    )
    fitted = _fit(
        refit_config(config),
        selection["best_epoch"],
        run_dir,
        verbose,
        strategy,
        None if checkpoints is None else checkpoints / REFIT_DIR,
        None if restore_from is None else restore_from / REFIT_DIR,
    )
    return dataclasses.replace(
        fitted, train_seconds=selection["train_seconds"] + fitted.train_seconds, selection=selection
    )


def refit_config(config: ExperimentConfig) -> ExperimentConfig:
    """The configuration a refit trains (``training.early_stopping.refit``): the same model, loss and
    schedule on the training and validation interactions together (``data.validation: none``),
    without early stopping. Its ``training.epochs`` stays the configured number, so a learning-rate
    schedule or a bank warm-up spans the same run as in the validation run; the refit stops after
    the best epoch."""
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, validation="none"),
        training=dataclasses.replace(config.training, early_stopping=None),
    )


def _select_epochs(
    config: ExperimentConfig,
    checkpoints: Optional[Path],
    verbose: int,
    strategy: tf.distribute.Strategy,
    restore_from: Optional[Path],
    run_dir: Optional[Path],
) -> Dict[str, Any]:
    """The validation run of a refit: trains ``config`` with early stopping (resumably, in
    ``checkpoints``) and returns its selection (:func:`fit_configured`), also kept as
    ``checkpoints/selection.json`` so that a resumed run does not repeat it."""
    for directory in (checkpoints, restore_from):
        if directory is not None and (directory / SELECTION_FILE).is_file():
            return json.loads((directory / SELECTION_FILE).read_text())
    assert config.training.early_stopping is not None
    trained = _fit(config, config.training.epochs, run_dir, verbose, strategy, checkpoints, restore_from)
    history, seconds = trained.history, trained.train_seconds
    stopping = EarlyStopping.from_config(config.training.early_stopping)
    best, _ = stopping.decide(history)
    assert best is not None  # at least one epoch was trained
    selection = {
        "metric": stopping.metric,
        "best_epoch": best + 1,
        "best_value": history[stopping.metric][best],
        "epochs_trained": len(history[stopping.metric]),
        "train_seconds": seconds,
        "history": history,
    }
    if checkpoints is not None:
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_text_atomically(checkpoints / SELECTION_FILE, json.dumps(selection, indent=2) + "\n")
    logger.info(
        "Validation run: the best epoch is %d of %d, %s = %.4f.",
        best + 1,
        selection["epochs_trained"],
        stopping.metric,
        selection["best_value"],
    )
    return selection


def _fit(
    config: ExperimentConfig,
    epochs: int,
    run_dir: Optional[Path],
    verbose: int,
    strategy: tf.distribute.Strategy,
    checkpoints: Optional[Path],
    restore_from: Optional[Path],
) -> FittedModel:
    """Reads the data of ``config``, builds its model and trains it for ``epochs`` epochs (the schedule
    spans ``training.epochs``); writes the declarations and feature spec into ``run_dir`` (if any)."""
    tf.keras.utils.set_random_seed(config.training.seed)
    prepared = prepare_data(config)
    data = prepared.data
    logger.info(
        "Data %s: %d training examples, %d eval queries, %d candidates",
        data.name,
        len(data.train[data.candidate_id]),
        len(data.eval_targets),
        len(data.candidates[data.candidate_id]),
    )
    spec = prepared.adapted_spec()
    if run_dir is not None:
        prepared.write_declarations(run_dir / FEATURES_FILE)
        (run_dir / SPEC_FILE).write_text(spec.to_json())

    with strategy.scope():
        model = build_model(spec, config, data)
    columns = training_columns(data, spec, prepared.weight_column)
    callbacks = (
        [tf.keras.callbacks.TensorBoard(str(run_dir / TENSORBOARD_DIR))]
        if config.training.tensorboard and run_dir is not None
        else []
    )
    training = (
        config.training if epochs == config.training.epochs else dataclasses.replace(config.training, epochs=epochs)
    )
    history, seconds, examples_per_second = fit_model(
        model, columns, training, verbose, callbacks, checkpoints, restore_from, data
    )
    return FittedModel(model, spec, data, config, history, seconds, examples_per_second)


def _finish_run(
    model: TwoTowerModel,
    spec: FeatureSpec,
    data: RetrievalData,
    config: ExperimentConfig,
    run_dir: Path,
    history: Dict[str, list],
) -> Tuple[Dict[str, float], Path, Optional[dict], Dict[str, Any]]:
    """Writes the trained run's history, weights, projector embeddings, collapse summary, metrics,
    export and verification.

    Returns:
      ``(metrics, export path, verification report or None, collapse summary)``.
    """
    (run_dir / HISTORY_FILE).write_text(json.dumps(history))
    collapse = training_collapse(history, config.training)
    (run_dir / COLLAPSE_FILE).write_text(json.dumps(collapse, indent=2) + "\n")
    tf.train.Checkpoint(model=model).write(str(run_dir / CHECKPOINT_DIR / "model"))
    if config.training.tensorboard_embeddings:  # the projector: candidate embeddings labelled with their features
        embeddings = compute_embeddings(model.candidate_tower, data.candidates)
        write_projector_embeddings(run_dir / TENSORBOARD_DIR, embeddings, data.candidates)

    metrics = evaluate_model(model, data)
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    verification = None
    export_path = export_model(model, spec, data, run_dir / EXPORT_DIR, config)
    if config.export.verify:
        verification = verify_export(export_path)
        (run_dir / VERIFICATION_FILE).write_text(json.dumps(verification, indent=2) + "\n")
    return metrics, export_path, verification, collapse


def training_collapse(history: Mapping[str, List[float]], training: TrainingConfig) -> Dict[str, Any]:
    """Whether the model a training ``history`` ended with collapsed (:func:`~tfrec_towers.collapse.collapse_summary`
    with the thresholds of ``training``): the last epoch's values, or under early stopping the best epoch's."""
    final = None
    if training.early_stopping is not None and any(history.values()):
        final = EarlyStopping.from_config(training.early_stopping).decide(history)[0]
    return collapse_summary(history, CollapseCriteria.from_config(training), final)


def _warn_of_collapse(collapse: Optional[Mapping[str, Any]], run_dir: Path) -> None:
    """Logs a warning when the run's model collapsed, at its end or in an earlier epoch."""
    if not collapse or not collapse["collapsed_epochs"]:
        return
    epochs = ", ".join(map(str, collapse["collapsed_epochs"]))
    if collapse["collapsed"]:
        final = collapse["final"]
        logger.warning(
            "The trained model is collapsed (epoch %d: %s); its metrics and export are those of a collapsed "
            "model (%s). %s",
            final["epoch"],
            " and ".join(final["findings"]),
            run_dir / COLLAPSE_FILE,
            collapse["advice"],
        )
    else:
        logger.warning(
            "The model collapsed in epoch %s and recovered by the end of training (%s).",
            epochs,
            run_dir / COLLAPSE_FILE,
        )


def load_run(run_dir: str | Path) -> tuple[ExperimentConfig, FeatureSpec, TwoTowerModel]:
    """Rebuilds a trained model's towers from a run directory (configuration, features, checkpoint).

    The model is built for inference (:func:`build_model` with ``for_inference=True``): its towers
    hold the trained weights, checked against the checkpoint (:func:`tfrec_pipelines.checkpointing.restore_towers`).

    Raises:
      RunError: the directory is not a complete run, or its checkpoint does not fit the towers its
        configuration and feature spec describe (the message names the variables that differ).
    """
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, SPEC_FILE, CHECKPOINT_DIR):
        if not (run_dir / name).exists():
            raise RunError(f"{run_dir} is not a tfrec-towers run: {name} is missing.")
    config = config_from_dict(json.loads((run_dir / CONFIG_FILE).read_text()))
    if (run_dir / FEATURES_FILE).is_file():  # the declarations the run resolved, so its data is read the same way
        values = config_to_dict(config)
        values["features"].update(json.loads((run_dir / FEATURES_FILE).read_text()))
        config = config_from_dict(values)
    spec = FeatureSpec.from_json((run_dir / SPEC_FILE).read_text())
    model = build_model(spec, config, for_inference=True)
    restore_towers(model, run_dir / CHECKPOINT_DIR / "model")
    return config, spec, model


def evaluate_run(run_dir: str | Path, data_dir: Optional[str] = None) -> Dict[str, float]:
    """Re-evaluates a run on its data (or on ``data_dir``, a MovieLens directory) and returns metrics,
    split and filtered as the run's ``data.split`` and ``evaluation.filter_seen`` say."""
    config, _, model = load_run(run_dir)
    if data_dir is not None:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, dataset="movielens", data_dir=data_dir)
        )
    return evaluate_model(model, load_data(config))


def export_run(
    run_dir: str | Path,
    export_base: Optional[str | Path] = None,
    index: Union[str, IndexConfig, None] = None,
    k: Optional[int] = None,
    candidates: Optional[CandidateSource] = None,
    index_settings: Optional[Dict[str, Any]] = None,
    exclude_history: Optional[bool] = None,
) -> Path:
    """Exports a trained run as a new SavedModel version (under ``RUN/export`` by default).

    ``index``, ``k``, ``candidates``, ``index_settings`` and ``exclude_history`` are those of
    :func:`export_model` (``None``: the run's configuration).
    """
    config, spec, model = load_run(run_dir)
    base = Path(run_dir) / EXPORT_DIR if export_base is None else Path(export_base)
    return export_model(
        model,
        spec,
        load_data(config),
        base,
        config,
        index=index,
        k=k,
        candidates=candidates,
        index_settings=index_settings,
        exclude_history=exclude_history,
    )


def tune_run(
    run_dir: str | Path,
    output: str | Path,
    candidates: Optional[CandidateSource] = None,
    k: int = 10,
    target_recall: float = 0.95,
    grid: Optional[TuningGrid] = None,
    num_queries: int = 1000,
) -> Tuple[TuningResult, Dict[str, Path]]:
    """Tunes the retrieval index of a trained run on its held-out queries; saves the report in ``output``.

    The queries are up to ``num_queries`` of the run's evaluation queries (seeded sample), the
    corpus is the run's catalogue or the ``candidates`` table, both embedded by the trained towers.

    Returns:
      ``(result, {"json": path, "plot": path})``; export with ``result.chosen.config``
      (``tfrec-towers export --index-config OUTPUT/tuning.json``).

    Raises:
      NotADirectoryError: if ``output`` is a file (checked before tuning).
      ValueError: see :func:`tfrec_towers.tuning.tune_index`.
    """
    check_report_directory(output)
    config, spec, model = load_run(run_dir)
    data = load_data(config)
    corpus = candidate_corpus(spec, data, candidates)
    queries = _sample_rows({f.name: data.eval_queries[f.name] for f in spec.query}, num_queries, config.training.seed)
    result = tune_index(
        compute_embeddings(model.candidate_tower, corpus),
        corpus[spec.candidate_id],
        compute_embeddings(model.query_tower, queries),
        k=k,
        target_recall=target_recall,
        grid=grid,
    )
    return result, save_tuning_report(result, output)

"""Hyper-parameter search with Optuna, trained and scored on the validation split only.

A search space is a YAML file mapping dotted configuration keys to a range or a list of choices::

    training.learning_rate: {low: 0.0003, high: 0.01, log: true}   # float bounds: a float range
    model.history.num_layers: {low: 1, high: 3}                     # integer bounds: an integer range
    loss.mixed_negatives: {choices: [0, 256, 1024]}

Every key and both ends of every range (every choice) are checked against the configuration
before any trial starts (:func:`load_space`). Each trial applies its sampled values to the base
configuration as ``train --set`` would (:func:`tfrec_towers.config.apply_overrides`), trains on the
training split and reports the validation metric of every epoch to Optuna, whose median pruner
stops a trial that falls below the median of the earlier trials at the same epoch; its TPE
sampler picks the next values. The test split is dropped as soon as the data is read, so no trial
can evaluate on it, and nothing is exported. The data is read once per search (again only when a
trial's values change what is read: a ``data.*`` or ``evaluation.*`` key, the feature declarations,
or ``training.seed`` of the synthetic data).

The study lives in ``OUTPUT/study.db`` (SQLite), so running the same search again continues it;
``OUTPUT`` also receives, rewritten after every trial, ``trials.csv`` and ``results.md`` (one row
per trial), ``search.png`` (the metric per trial and the best so far; the ``report`` extra) and
``best.yaml``, the best trial's whole configuration, which ``tfrec-towers train --config`` reads.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

import tensorflow as tf
import yaml

from tfrec_pipelines.data import RetrievalData
from tfrec_pipelines.distribute import make_strategy
from tfrec_pipelines.run_directory import config_differences
from tfrec_pipelines.run_errors import RunError
from tfrec_pipelines.sources import PreparedData, prepare_data, spec_for
from tfrec_pipelines.train import build_model, fit_model, training_columns
from tfrec_pipelines.validation import VALIDATION_PREFIX, EarlyStopping
from tfrec_towers.atomic_file import write_atomically, write_text_atomically
from tfrec_towers.config import ConfigError, ExperimentConfig, apply_overrides, config_to_dict
from tfrec_towers.evaluation import DEFAULT_KS
from tfrec_towers.extras import missing_extra

try:
    import optuna
    from optuna.trial import FrozenTrial, TrialState
except ModuleNotFoundError as e:
    raise missing_extra("tune", "The hyper-parameter search", e) from e

logger = logging.getLogger(__name__)

STUDY_FILE, TRIALS_FILE, RESULTS_FILE, PLOT_FILE, BEST_FILE = (
    "study.db",
    "trials.csv",
    "results.md",
    "search.png",
    "best.yaml",
)
STUDY_NAME = "tfrec-towers"
PRUNER_STARTUP_TRIALS = 5
"""Completed trials before the median pruner stops any trial (it needs earlier epochs to compare with)."""
RANGE_FIELDS = {"low", "high", "log", "step", "type"}


@dataclasses.dataclass(frozen=True)
class Range:
    """Values from ``low`` to ``high`` (both included), on a log scale with ``log``, every ``step`` if set.

    Attributes:
      kind: ``int`` or ``float``: the type of the values sampled.
    """

    kind: Literal["int", "float"]
    low: float
    high: float
    log: bool = False
    step: Optional[float] = None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution sampling this range."""
        if self.kind == "int":
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def extremes(self) -> Tuple[Any, ...]:
        """The values checked against the configuration before a search: both ends."""
        return (self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of ``choices`` (numbers, text, true/false or null)."""

    choices: Tuple[Any, ...]

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution sampling one of the choices."""
        return optuna.distributions.CategoricalDistribution(self.choices)

    def extremes(self) -> Tuple[Any, ...]:
        """The values checked against the configuration before a search: every choice."""
        return self.choices


SearchSpace = Dict[str, Union[Range, Choice]]
"""``{dotted configuration key: its range or choices}``, in the space file's order."""


def space_to_dict(space: SearchSpace) -> Dict[str, Dict[str, Any]]:
    """The space as plain values (what the study records, to refuse another space later)."""
    return {key: dataclasses.asdict(dimension) for key, dimension in space.items()}


def with_values(config: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """``config`` with ``{dotted key: value}`` applied through the ``--set`` path (:func:`apply_overrides`).

    Raises:
      ConfigError: a key is unknown or a value invalid (the message names the key).
    """
    return apply_overrides(config, [f"{key}={json.dumps(value)}" for key, value in values.items()])


def _check_searchable(config: ExperimentConfig, base: ExperimentConfig) -> None:
    """Raises ConfigError unless ``config`` trains with a validation split under ``base``'s strategy."""
    if config.data.validation == "none":
        raise ConfigError(
            "`data.validation` must be 'last' or 'time': the search scores trials on the validation split."
        )
    if config.training.distribute != base.training.distribute:
        raise ConfigError(
            "`training.distribute` cannot change between trials: the search builds one strategy for all of them."
        )


def _number(value: Any, key: str, field: str, where: str) -> Union[int, float]:
    """``value`` as a finite int or float (a text such as ``1e-4``, which YAML reads as text, as a float)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: `{key}`: `{field}` must be a finite number. Received: {value!r}")
    return value


def _parse_range(key: str, entry: Mapping[str, Any], where: str) -> Range:
    unknown = sorted(set(entry) - RANGE_FIELDS)
    if unknown or "low" not in entry or "high" not in entry:
        raise ConfigError(
            f"{where}: `{key}` must be a range {{low, high, log, step, type}} or {{choices: [...]}}. "
            f"Received: {dict(entry)!r}"
        )
    low, high = _number(entry["low"], key, "low", where), _number(entry["high"], key, "high", where)
    kind = entry.get("type", "int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: `{key}`: `type` must be 'int' or 'float'. Received: {kind!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: `{key}`: an integer range needs integer bounds. Received: {low!r} to {high!r}")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: `{key}`: `log` must be true or false. Received: {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: `{key}`: the range is empty: `low` ({low!r}) must be below `high` ({high!r}).")
    if log and low <= 0:
        raise ConfigError(f"{where}: `{key}`: a log range needs `low` > 0. Received: {low!r}")
    step = entry.get("step")
    if step is not None:
        step = _number(step, key, "step", where)
        if log or step <= 0 or (kind == "int" and not float(step).is_integer()):
            raise ConfigError(
                f"{where}: `{key}`: `step` must be positive (an integer for an integer range) and cannot "
                f"combine with `log`. Received: {step!r}"
            )
    if kind == "int":
        return Range("int", int(low), int(high), log, None if step is None else int(step))
    return Range("float", float(low), float(high), log, None if step is None else float(step))


def _parse_choice(key: str, choices: Any, where: str) -> Choice:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: `{key}`: `choices` must be a non-empty list. Received: {choices!r}")
    for choice in choices:
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise ConfigError(
                f"{where}: `{key}`: each choice must be a number, a text, true/false or null. Received: {choice!r}"
            )
    if len({json.dumps(c) for c in choices}) < len(choices):
        raise ConfigError(f"{where}: `{key}`: `choices` must be distinct. Received: {choices!r}")
    return Choice(tuple(choices))


def parse_space(values: Any, base: ExperimentConfig, where: str = "the search space") -> SearchSpace:
    """Validates a search space (a mapping read from YAML) against ``base``'s configuration schema.

    Each key must be a configuration value (not a section); each end of a range and each choice,
    applied alone to ``base``, must give a valid configuration that keeps a validation split
    (``data.validation`` ``last`` or ``time``) and ``base``'s ``training.distribute``.

    Args:
      values: ``{dotted key: {low, high[, log][, step][, type]} or {choices: [...]}}``.
      base: the base configuration, with a validation split (:func:`search_base` gives it one).
      where: the space's file, for the messages.

    Returns:
      The space, in the mapping's order.

    Raises:
      ConfigError: ``base`` has no validation split; the space is empty or not a mapping, a key is
        unknown, a range is malformed or empty, or a value is invalid for its key (the message names
        ``where`` and the key).
    """
    if not isinstance(values, Mapping) or not values:
        raise ConfigError(
            f"{where} must map configuration keys to ranges or choices, e.g. "
            f"`training.learning_rate: {{low: 0.0003, high: 0.01, log: true}}`. Received: {values!r}"
        )
    _check_searchable(base, base)
    space: SearchSpace = {}
    for key, entry in values.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"{where}: `{key}` must be a range {{low, high, log, step, type}} or {{choices: [...]}}. "
                f"Received: {entry!r}"
            )
        if "choices" in entry:
            if len(entry) > 1:
                raise ConfigError(f"{where}: `{key}`: `choices` stands alone. Received: {dict(entry)!r}")
            dimension: Union[Range, Choice] = _parse_choice(str(key), entry["choices"], where)
        else:
            dimension = _parse_range(str(key), entry, where)
        for value in dimension.extremes():
            try:
                config = with_values(base, {key: value})
                _check_searchable(config, base)
            except ConfigError as e:
                raise ConfigError(f"{where}: `{key}` = {value!r}: {e}") from e
        space[str(key)] = dimension
    return space


def load_space(path: Union[str, Path], base: ExperimentConfig) -> SearchSpace:
    """Reads and validates a YAML search space file (:func:`parse_space`).

    Raises:
      ConfigError: the file is missing or not valid YAML, or the space is invalid (the message
        names the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Search space file {path} does not exist (or is not a file).")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"Search space file {path} is not valid UTF-8 YAML ({e}).") from e
    return parse_space(values, base, str(path))


def search_base(config: ExperimentConfig) -> ExperimentConfig:
    """The configuration trials start from: ``config``, with ``data.validation: last`` if it has no
    validation split (logged).

    Raises:
      ConfigError: ``training.distribute`` is ``multi_worker`` (a search runs on one machine).
    """
    if config.training.distribute == "multi_worker":
        raise ConfigError(
            "`training.distribute` 'multi_worker' is not supported by the search: use 'none' or 'mirrored'."
        )
    if config.data.validation == "none":
        logger.info(
            "The base configuration has no validation split: the search holds out each user's last training "
            "interaction (`data.validation: last`); best.yaml keeps that setting."
        )
        return with_values(config, {"data.validation": "last"})
    return config


def validation_only(data: RetrievalData) -> RetrievalData:
    """``data`` without its test split: the validation interactions are both its evaluated ones and
    its ``validation``, so nothing that evaluates the result can reach the test split.

    Raises:
      ValueError: the data has no validation interactions.
    """
    return dataclasses.replace(data.validation_data(), validation=data.validation)


def _data_key(config: ExperimentConfig) -> str:
    """What :func:`~tfrec_pipelines.sources.prepare_data` reads of ``config``: equal keys, equal data."""
    values = config_to_dict(config)
    read = {
        "data": values["data"],
        "evaluation": values["evaluation"],
        "declarations": [values["features"]["query"], values["features"]["candidate"]],
        "seed": config.training.seed if config.data.dataset == "synthetic" else None,
    }
    return json.dumps(read, sort_keys=True)


class _SearchData:
    """The prepared data of the last data key asked for, its test split dropped (:func:`validation_only`)."""

    def __init__(self) -> None:
        self.key: Optional[str] = None
        self.prepared: Optional[PreparedData] = None

    def get(self, config: ExperimentConfig) -> PreparedData:
        key = _data_key(config)
        if self.prepared is None or key != self.key:
            if self.prepared is not None:
                logger.info("This trial changes what the data reads: reading it again.")
            prepared = prepare_data(config)
            self.prepared = dataclasses.replace(prepared, data=validation_only(prepared.data))
            self.key = key
        return self.prepared


class _ReportEpochs(tf.keras.callbacks.Callback):
    """Reports the validation metric of every epoch to the trial (step = epoch, from 1); stops
    training when the pruner says the trial cannot catch up."""

    def __init__(self, trial: optuna.Trial, history_key: str) -> None:
        super().__init__()
        self.trial = trial
        self.history_key = history_key
        self.pruned_after: Optional[int] = None

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self.trial.report(float((logs or {})[self.history_key]), epoch + 1)
        if self.trial.should_prune():
            self.pruned_after = epoch + 1
            self.model.stop_training = True


def _final_value(history: Mapping[str, List[float]], config: ExperimentConfig, history_key: str) -> float:
    """The metric of the model training ended with: the best epoch's under early stopping, else the last."""
    epoch = len(history[history_key]) - 1
    if config.training.early_stopping is not None:
        best, _ = EarlyStopping.from_config(config.training.early_stopping).decide(history)
        epoch = epoch if best is None else best
    return float(history[history_key][epoch])


def _run_trial(
    trial: optuna.Trial,
    config: ExperimentConfig,
    prepared: PreparedData,
    strategy: tf.distribute.Strategy,
    history_key: str,
    verbose: int,
) -> float:
    """Trains ``config`` on ``prepared`` and returns its validation metric.

    Raises:
      optuna.TrialPruned: the pruner stopped the trial.
      RunError: training diverged.
    """
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(config.training.seed)
    spec = dataclasses.replace(prepared, spec=spec_for(prepared, config.features)).adapted_spec()
    with strategy.scope():
        model = build_model(spec, config, prepared.data)
    reporter = _ReportEpochs(trial, history_key)
    columns = training_columns(prepared.data, spec, prepared.weight_column)
    history, _, _ = fit_model(model, columns, config.training, verbose, [reporter], validation=prepared.data)
    if reporter.pruned_after is not None:
        raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_after}")
    return _final_value(history, config, history_key)


@dataclasses.dataclass
class SearchResult:
    """What :func:`run_search` produced.

    Attributes:
      study: the Optuna study (every trial of ``OUTPUT/study.db``).
      best: the best completed trial, or None.
      best_config: its whole configuration (as ``best.yaml``), or None.
      paths: ``{"study", "trials", "results", "best", "plot"}``: the files written (``best`` only with
        a completed trial, ``plot`` only with matplotlib).
      failed: the trials of this run that failed (training diverged, or an invalid combination of values).
    """

    study: optuna.Study
    best: Optional[FrozenTrial]
    best_config: Optional[ExperimentConfig]
    paths: Dict[str, Path]
    failed: int = 0


def _open_study(output: Path, base: ExperimentConfig, space: SearchSpace, metric: str, seed: int) -> optuna.Study:
    """Creates ``output/study.db`` or continues the search it holds, refusing another search.

    Raises:
      NotADirectoryError: ``output`` is a file.
      RunError: ``output`` holds files but no study, or a study of another base configuration,
        space or metric (the message names what differs).
    """
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} is a file: give a directory for the search.")
    database = output / STUDY_FILE
    if output.is_dir() and any(output.iterdir()) and not database.is_file():
        raise RunError(f"--output {output} holds files but no {STUDY_FILE}: choose a new directory for the search.")
    output.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=f"sqlite:///{database.resolve()}",
        study_name=STUDY_NAME,
        direction="maximize",
        load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS),
    )
    recorded = json.loads(
        json.dumps({"base_config": config_to_dict(base), "space": space_to_dict(space), "metric": metric})
    )
    if not study.user_attrs:
        for name, value in recorded.items():
            study.set_user_attr(name, value)
    for name, what in (("base_config", "base configuration"), ("space", "search space"), ("metric", "metric")):
        held = study.user_attrs.get(name)
        if held != recorded[name]:
            current = recorded[name]
            keys = (
                config_differences(held, current) if isinstance(held, Mapping) and isinstance(current, Mapping) else []
            )
            differ = (
                f"in {', '.join(f'`{key}`' for key in keys)}" if keys else f"{held!r} there, {recorded[name]!r} here"
            )
            raise RunError(
                f"{database} holds a search of another {what} ({differ}): run it again with the same one, "
                "or give a new --output."
            )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        logger.warning("Trial %d was left running by a search that stopped: recorded as failed.", trial.number)
        study.tell(trial.number, state=TrialState.FAIL)
    # Seeded by the trials so far too: a resumed search samples new values, not the first ones again.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study


def _epochs(trial: FrozenTrial) -> int:
    return len(trial.intermediate_values)


def _metric_value(trial: FrozenTrial) -> Optional[float]:
    """A completed trial's value; a pruned one's last reported value."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    if trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def _seconds(trial: FrozenTrial) -> Optional[float]:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)


def trial_rows(study: optuna.Study, space: SearchSpace, metric: str) -> Tuple[List[str], List[List[Any]]]:
    """``(header, rows)``: per trial its number, state, sampled values, metric (a pruned trial's last
    reported one), epochs reported and seconds; a value the trial did not reach is None."""
    header = ["number", "state", *space, metric, "epochs", "seconds"]
    rows = [
        [t.number, t.state.name, *(t.params.get(key) for key in space), _metric_value(t), _epochs(t), _seconds(t)]
        for t in study.get_trials(deepcopy=False)
    ]
    return header, rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _results_markdown(
    study: optuna.Study, space: SearchSpace, metric: str, best: Optional[FrozenTrial], output: Path
) -> str:
    header, rows = trial_rows(study, space, metric)
    counts = {state: sum(row[1] == state.name for row in rows) for state in TrialState}
    lines = [
        "# Hyper-parameter search",
        "",
        f"Validation {metric} (higher is better; the test split is never read). Trials: "
        f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed.",
        "",
    ]
    if best is not None:
        values = ", ".join(f"`{key}` = {_cell(value)}" for key, value in best.params.items())
        lines += [
            f"Best: trial {best.number}, {metric} {_cell(best.value)} ({values}). Train it with "
            f"`tfrec-towers train --config {output / BEST_FILE} --output RUN`.",
            "",
        ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _plot(study: optuna.Study, metric: str, path: Path) -> bool:
    """Writes the metric of every trial and the best so far; False (logged) without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as e:
        logger.info("No %s: %s", path.name, missing_extra("report", "The search plot", e))
        return False
    trials = study.get_trials(deepcopy=False)
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for state, marker, color in ((TrialState.COMPLETE, "o", "tab:blue"), (TrialState.PRUNED, "x", "0.5")):
        shown = [(t.number, _metric_value(t)) for t in trials if t.state == state and _metric_value(t) is not None]
        if shown:
            axes.scatter(*zip(*shown), marker=marker, color=color, label=state.name.lower())
    best, steps = -math.inf, []
    for trial in trials:
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            best = max(best, trial.value)
        if best > -math.inf:
            steps.append((trial.number, best))
    if steps:
        axes.step(*zip(*steps), where="post", color="tab:green", label="best so far")
    axes.set_xlabel("trial")
    axes.set_ylabel(f"validation {metric}")
    axes.set_title(f"Hyper-parameter search: {len(trials)} trials")
    axes.grid(True, alpha=0.3)
    if steps:
        axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    write_atomically(path, lambda partial: figure.savefig(partial, format="png", dpi=100))
    return True


def _best(study: optuna.Study) -> Optional[FrozenTrial]:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def write_outputs(
    study: optuna.Study, base: ExperimentConfig, space: SearchSpace, metric: str, output: Path
) -> Tuple[Optional[FrozenTrial], Optional[ExperimentConfig], Dict[str, Path]]:
    """Writes ``trials.csv``, ``results.md``, ``search.png`` and ``best.yaml`` (each atomically).

    Returns:
      ``(best trial or None, its configuration or None, {name: path written})``.
    """
    paths = {"study": output / STUDY_FILE, "trials": output / TRIALS_FILE, "results": output / RESULTS_FILE}
    header, rows = trial_rows(study, space, metric)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if value is None else value for value in row] for row in rows])
    write_text_atomically(paths["trials"], table.getvalue())
    best = _best(study)
    write_text_atomically(paths["results"], _results_markdown(study, space, metric, best, output))
    if _plot(study, metric, output / PLOT_FILE):
        paths["plot"] = output / PLOT_FILE
    best_config = None
    if best is not None:
        best_config = with_values(base, best.params)
        paths["best"] = output / BEST_FILE
        comment = f"# Trial {best.number} of the search in {output}: validation {metric} {best.value:.6g}.\n"
        write_text_atomically(
            paths["best"], comment + yaml.safe_dump(config_to_dict(best_config), sort_keys=False, allow_unicode=True)
        )
    return best, best_config, paths


def validation_metrics(config: ExperimentConfig) -> List[str]:
    """The validation metrics every trial of ``config`` reports: HR@K and NDCG@K for K in
    :data:`~tfrec_towers.evaluation.DEFAULT_KS` and ``training.early_stopping``'s K."""
    stopping = config.training.early_stopping
    ks = sorted({*DEFAULT_KS, *((stopping.k,) if stopping is not None else ())})
    return [f"{name}@{k}" for name in ("HR", "NDCG") for k in ks]


def run_search(
    config: ExperimentConfig,
    space: Union[str, Path, Mapping[str, Any]],
    trials: int,
    output: Union[str, Path],
    *,
    metric: str = "HR@10",
    timeout: Optional[float] = None,
    seed: int = 0,
    verbose: int = 0,
) -> SearchResult:
    """Searches ``space`` around ``config`` until ``output``'s study holds ``trials`` complete or pruned trials.

    Each trial trains the base configuration with its sampled values on the training split and is
    scored by ``metric`` on the validation split (:func:`search_base` adds one if ``config`` has
    none); the test split is dropped when the data is read (:func:`validation_only`) and nothing is
    exported. The per-epoch validation values go to Optuna's median pruner (after
    :data:`PRUNER_STARTUP_TRIALS` completed trials); a TPE sampler seeded by ``seed`` picks the values.
    A trial that fails (training diverged, or its values do not combine into a valid configuration)
    is recorded as failed and does not count: run the search again to add trials in its place.

    Args:
      config: the base configuration.
      space: the search space's YAML file (:func:`load_space`), or the mapping it holds (:func:`parse_space`).
      trials: how many complete or pruned trials the study should hold (at least 1).
      output: the search directory (``study.db`` and the reports); an existing one continues its search.
      metric: the validation metric to maximise (one of :func:`validation_metrics`).
      timeout: seconds after which no new trial starts (the running one finishes); None: no limit.
      seed: the sampler's seed.
      verbose: Keras's verbosity while a trial trains.

    Returns:
      The study, the best trial and its configuration, and the paths written.

    Raises:
      ConfigError: the space or the metric is invalid, or ``trials`` is below 1.
      RunError: ``output`` holds another search (the message names what differs), or files but no study.
      NotADirectoryError: ``output`` is a file.
      FileNotFoundError, DataError: the data cannot be read.
      KeyboardInterrupt: Ctrl-C; the interrupted trial is recorded as failed and the reports are
        written: run the search again to continue.
    """
    if trials < 1:
        raise ConfigError(f"The number of trials must be at least 1. Received: {trials!r}")
    base = search_base(config)
    space = load_space(space, base) if isinstance(space, (str, Path)) else parse_space(space, base)
    if metric not in validation_metrics(base):
        raise ConfigError(
            f"The search metric must be a validation metric of the runs, one of {validation_metrics(base)}. "
            f"Received: {metric!r}"
        )
    output = Path(output)
    strategy = make_strategy(base.training.distribute)
    study = _open_study(output, base, space, metric, seed)
    distributions = {key: dimension.distribution() for key, dimension in space.items()}
    data, history_key = _SearchData(), f"{VALIDATION_PREFIX}{metric}"
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = trials - len(study.get_trials(deepcopy=False, states=counted))
    deadline = None if timeout is None else time.monotonic() + timeout
    if remaining > 0:  # a table that cannot be read stops the search before any trial is recorded
        data.get(base)
    failed, outputs = 0, None
    for _ in range(max(remaining, 0)):
        if deadline is not None and time.monotonic() >= deadline:
            logger.info("The search's time (%g s) is up: no new trial starts.", timeout)
            break
        trial = study.ask(distributions)
        try:
            trial_config = with_values(base, trial.params)
            value = _run_trial(trial, trial_config, data.get(trial_config), strategy, history_key, verbose)
        except optuna.TrialPruned as e:
            pruned = study.tell(trial, state=TrialState.PRUNED)
            logger.info("Trial %d %s (%s %s).", trial.number, e, metric, _cell(_metric_value(pruned)))
        except (RunError, ConfigError) as e:  # diverged, or values that do not combine: the search goes on
            failed += 1
            study.tell(trial, state=TrialState.FAIL)
            logger.warning("Trial %d failed with %s: %s", trial.number, trial.params, e)
        except BaseException:  # Ctrl-C, unreadable data: the trial is recorded as failed, the search stops
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
            logger.info("Trial %d: %s %.4f with %s.", trial.number, metric, value, trial.params)
        finally:
            outputs = write_outputs(study, base, space, metric, output)
    best, best_config, paths = outputs or write_outputs(study, base, space, metric, output)
    return SearchResult(study, best, best_config, paths, failed)

"""Input pipelines and jobs: tables, splits, presets, the run lifecycle, streaming and batch embedding.

The data and jobs API, each name imported on first use::

    import tfrec_pipelines as tp
    from tfrec_towers.config import ExperimentConfig, apply_overrides

    config = apply_overrides(ExperimentConfig(), ["data.dataset=interactions", "data.interactions.path=logs.csv"])
    prepared = tp.prepare_data(config)          # tables → split → declared or inferred features
    result = tp.train_run(config, "runs/shop")  # the whole run: train → evaluate → export → verify
    tp.evaluate_run("runs/shop")                # HR@K / NDCG@K of a finished run (docs/contracts.md)
    tp.export_run("runs/shop", "/models")       # a new SavedModel version

Groups: data preparation (``prepare_data``, ``read_table``, ``read_interaction_tables``,
``load_movielens``, ``make_synthetic``), the run functions (``train_run``, ``evaluate_run``,
``export_run``, ``tune_run``, ``load_run``; ``train_run`` is :func:`tfrec_pipelines.train.train`, named
apart from its module), the hyper-parameter search (``run_search``: docs/tuning.md, the ``tune`` extra)
and the step-by-step ones a notebook calls
(``build_model``, ``fit_model``, ``evaluate_model``, ``export_model``), streaming beyond memory
(``stream_statistics``, ``adapted_spec``, ``stream_examples``: docs/streaming.md) and the Beam batch
embedding job (``run_embed_job``, ``EmbedJobConfig``: the ``beam`` extra).
"""

import importlib as _importlib

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)

_PUBLIC = {
    # data preparation
    "prepare_data": "sources",
    "PreparedData": "sources",
    "read_table": "tables",
    "read_interaction_tables": "interactions",
    "InteractionTables": "interactions",
    "load_movielens": "movielens",
    "make_synthetic": "synthetic",
    "RetrievalData": "data",
    "DataError": "data",
    # the run lifecycle
    "train_run": "train:train",
    "RunResult": "train",
    "evaluate_run": "train",
    "export_run": "train",
    "tune_run": "train",
    "run_search": "search",
    "load_run": "train",
    "build_model": "train",
    "fit_model": "train",
    "evaluate_model": "validation",
    "export_model": "train",
    "RunError": "run_errors",
    # streaming beyond memory
    "stream_statistics": "streaming",
    "adapted_spec": "streaming",
    "stream_examples": "streaming",
    # the Beam batch embedding job
    "run_embed_job": "embed_job",
    "EmbedJobConfig": "embed_job",
}
"""``{public name: the module of this package defining it}`` (``module:name`` when the names differ)."""

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    """Imports a public name's module on first use and keeps the value.

    Raises:
      AttributeError: ``name`` is not public.
      MissingExtraError: the name needs an extra that is not installed (``run_embed_job``: ``beam``).
    """
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = _PUBLIC[name].partition(":")
    value = getattr(_importlib.import_module(f"{__name__}.{module}"), attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))

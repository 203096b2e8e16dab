"""tfrec-towers: two-tower retrieval on Keras 2 / TensorFlow Recommenders.

TFRS needs Keras 2 (``tf-keras``). TensorFlow resolves ``tf.keras`` lazily and reads
``TF_USE_LEGACY_KERAS`` when it does, so the package sets the variable here, before
any of its modules touches TensorFlow, instead of relying on the user's shell.

The public API, for a user's own ``tf.data`` pipeline; each name is imported on first use, so
``import tfrec_towers`` (and ``import tfrec_towers.config``) stays cheap until a model is built::

    import tfrec_towers as tt

    spec = tt.adapt(tt.FeatureSpec(query=(...), candidate=(...), candidate_id="item_id"), train, catalogue)
    model = tt.build_model(spec, tt.ExperimentConfig(), training_ids=train["item_id"], corpus=catalogue)
    model.fit(dataset, epochs=10, callbacks=[tt.RetrievalMetrics(eval_queries, eval_targets, catalogue)])
    tt.export_model(model, catalogue, "/models", index="scann")

Groups, as in ``tfrs.layers`` / ``tfrs.tasks``: the configuration (``ExperimentConfig`` and its
sections, ``load_config``, ``apply_overrides``, ``save_config``), feature declarations
(``FeatureSpec``, ``adapt``), towers and the model (``Tower``, ``build_model``, ``TwoTowerModel``),
the loss layers and negative sources (also under ``tt.losses``: ``RetrievalLoss`` and the
frequency, logQ, memory-bank, mixed-negative, adaptive and temperature layers), evaluation
(``RetrievalMetrics``, ``target_ranks``, ``metrics_from_ranks``), the index (``IndexConfig``,
``build_index``, ``tune_index``) and export (``export_model``, ``verify_export``). The SavedModel
each export writes and the protocol behind every metric are in ``docs/contracts.md``.
"""

import importlib as _importlib
import os as _os
import sys as _sys

_os.environ["TF_USE_LEGACY_KERAS"] = "1"
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if "tensorflow" in _sys.modules:
    # TensorFlow was imported first: fine unless tf.keras already resolved to Keras 3.
    if not _sys.modules["tensorflow"].keras.__name__.startswith("tf_keras"):
        raise ImportError(
            "tf.keras already resolved to Keras 3 before tfrec_towers was imported. "
            "TensorFlow Recommenders needs Keras 2: import tfrec_towers before using "
            "tf.keras, or set TF_USE_LEGACY_KERAS=1 in the environment."
        )

__version__ = "0.1.0"

_PUBLIC = {
    # configuration
    "ExperimentConfig": "config",
    "DataConfig": "config",
    "FeaturesConfig": "config",
    "ModelConfig": "config",
    "LossConfig": "config",
    "TrainingConfig": "config",
    "ExportConfig": "config",
    "EvaluationConfig": "config",
    "TowerConfig": "tower_config",
    "HistoryEncoderConfig": "tower_config",
    "ConfigError": "config",
    "load_config": "config",
    "save_config": "config",
    "apply_overrides": "config",
    "config_from_dict": "config",
    "config_to_dict": "config",
    # feature declarations and their vocabularies
    "CategoricalFeature": "features",
    "HashedFeature": "features",
    "SequenceFeature": "features",
    "NumericFeature": "features",
    "BucketizedFeature": "features",
    "FeatureSpec": "features",
    "adapt": "features",
    "input_signature": "features",
    # towers and the model
    "Tower": "towers",
    "compute_embeddings": "towers",
    "TwoTowerModel": "model",
    "build_towers": "model",
    "build_model": "build",
    # the retrieval task, its negative sources and logit transforms (tfrec_towers.losses)
    "RetrievalLoss": "losses",
    "CountsFrequencyTable": "losses",
    "StreamingFrequencyEstimator": "losses",
    "LogQCorrection": "losses",
    "CrossBatchMemoryBank": "losses",
    "MixedNegativeSampler": "losses",
    "AdaptiveMarginTemperature": "losses",
    "Temperature": "losses",
    "SampledSoftmaxLoss": "losses",
    "BinaryCrossEntropyLoss": "losses",
    "BPRLoss": "losses",
    "HingeLoss": "losses",
    "SoftmaxHingeLoss": "losses",
    "SymmetricSoftmaxLoss": "losses",
    # evaluation
    "RetrievalMetrics": "callbacks",
    "target_ranks": "evaluation",
    "metrics_from_ranks": "evaluation",
    # the index, export and verification
    "IndexConfig": "index",
    "build_index": "index",
    "exact_top_k": "index",
    "TuningGrid": "tuning",
    "tune_index": "tuning",
    "export_model": "export",
    "export_retrieval_model": "export",
    "verify_export": "verify",
    "ExportVerificationError": "verify",
    # optional dependencies
    "MissingExtraError": "extras",
}
"""``{public name: the module of this package defining it}``."""

_SUBPACKAGES = ("losses",)
"""Modules reachable as attributes without an import (``tt.losses.NegativeSet``), like ``tfrs.layers``."""

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    """Imports a public name's module (or a subpackage) on first use and keeps the value.

    Raises:
      AttributeError: ``name`` is not public.
    """
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"{__name__}.{name}")
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))

"""tfrec-towers: two-tower retrieval on Keras 2 / TensorFlow Recommenders.

TFRS needs Keras 2 (``tf-keras``). TensorFlow resolves ``tf.keras`` lazily and reads
``TF_USE_LEGACY_KERAS`` when it does, so the package sets the variable here, before
any of its modules touches TensorFlow, instead of relying on the user's shell.

The public API, for a user's own ``tf.data`` pipeline (each name is imported on first use, so
``import tfrec_towers`` itself stays cheap)::

    import tfrec_towers as tt

    spec = tt.adapt(tt.FeatureSpec(query=(...), candidate=(...), candidate_id="item_id"), train, catalogue)
    model = tt.build_model(spec, tt.ExperimentConfig(), training_ids=train["item_id"], corpus=catalogue)
    model.fit(dataset, epochs=10, callbacks=[tt.RetrievalMetrics(eval_queries, eval_targets, catalogue)])
    tt.export_model(model, catalogue, "/models", index="scann")
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
    # feature declarations and their vocabularies
    "CategoricalFeature": "features",
    "HashedFeature": "features",
    "SequenceFeature": "features",
    "NumericFeature": "features",
    "BucketizedFeature": "features",
    "FeatureSpec": "features",
    "adapt": "features",
    "input_signature": "features",
    # configuration
    "ExperimentConfig": "config",
    "ModelConfig": "config",
    "LossConfig": "config",
    "TrainingConfig": "config",
    "ExportConfig": "config",
    "ConfigError": "config",
    "load_config": "config",
    "TowerConfig": "towers",
    "HistoryEncoderConfig": "history_encoders",
    # towers and the model
    "Tower": "towers",
    "compute_embeddings": "towers",
    "TwoTowerModel": "model",
    "build_towers": "model",
    "build_model": "build",
    # evaluation
    "RetrievalMetrics": "callbacks",
    "target_ranks": "evaluation",
    "metrics_from_ranks": "evaluation",
    # serving
    "IndexConfig": "index",
    "export_model": "export",
    "export_retrieval_model": "export",
    "verify_export": "verify",
}
"""``{public name: the module of this package defining it}``."""

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    """Imports a public name's module on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _importlib.import_module(f"{__name__}.{_PUBLIC[name]}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

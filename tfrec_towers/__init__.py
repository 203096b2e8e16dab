"""tfrec-towers: two-tower retrieval on Keras 2 / TensorFlow Recommenders.

TFRS needs Keras 2 (``tf-keras``). TensorFlow resolves ``tf.keras`` lazily and reads
``TF_USE_LEGACY_KERAS`` when it does, so the package sets the variable here, before
any of its modules touches TensorFlow, instead of relying on the user's shell.
"""

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

"""Input pipelines and jobs: readers, MovieLens, synthetic data, train/evaluate."""

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

"""The ``tf.distribute`` strategy a training run uses (``training.distribute`` in the configuration).

* ``none`` — the default strategy: one device (all local CPU cores, or one GPU).
* ``mirrored`` — :class:`tf.distribute.MirroredStrategy` over every local GPU (or the given
  ``devices``): one replica per device, the global batch split between them.
* ``multi_worker`` — :class:`tf.distribute.MultiWorkerMirroredStrategy` over the machines that
  the ``TF_CONFIG`` environment variable lists (run the same command on each; see the README's
  "Distributed training").

Under any of them the retrieval loss gathers the in-batch (and mixed) negatives, the memory bank's
writes and the frequency estimator's updates across replicas (``tfrec_towers.losses.cross_replica``),
so every replica scores against the global batch, as one device with the same global batch would.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import tensorflow as tf

from tfrec_towers.config import ConfigError

STRATEGIES = ("none", "mirrored", "multi_worker")


def make_strategy(name: str, devices: Optional[Sequence[str]] = None) -> tf.distribute.Strategy:
    """The strategy called ``name``; create it before building the model, and build under its scope.

    Args:
      name: one of :data:`STRATEGIES`.
      devices: for ``mirrored``, the devices to mirror on (default: every local GPU, else the CPU).

    Returns:
      A ``tf.distribute.Strategy``.

    Raises:
      ConfigError: an unknown ``name``; ``multi_worker`` without a ``TF_CONFIG`` that parses as JSON
        with a ``cluster`` and a ``task``.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"`training.distribute` must be one of {list(STRATEGIES)}. Received: {name!r}")
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(list(devices) if devices else None)
    raw = os.environ.get("TF_CONFIG")
    try:
        tf_config = json.loads(raw) if raw else None
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"`training.distribute`='multi_worker': TF_CONFIG is not valid JSON ({error}): {raw!r}"
        ) from error
    if not isinstance(tf_config, dict) or "cluster" not in tf_config or "task" not in tf_config:
        raise ConfigError(
            "`training.distribute`='multi_worker' needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}. '
            f"Received: {raw!r}"
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run: always, except for the non-chief workers of ``multi_worker``.

    The chief is the ``chief`` task if the cluster has one, else worker 0 (Keras's convention).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief

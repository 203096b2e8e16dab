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

``multi_worker`` is TensorFlow's strategy with two gaps of its collectives closed
(:class:`MultiWorkerExtended`): a variable holding strings (a memory bank of string ids, the
mixed-negative corpus) starts from each worker's own value instead of failing to broadcast, and a
tensor read straight from the input pipeline (it carries no device) can be gathered across workers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional, Sequence

import tensorflow as tf
from tensorflow.python.distribute.collective_all_reduce_strategy import CollectiveAllReduceExtended
from tensorflow.python.trackable.base import CheckpointInitialValue

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
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    strategy.extended.__class__ = MultiWorkerExtended  # the same object, two methods overridden
    return strategy


class MultiWorkerExtended(CollectiveAllReduceExtended):
    """``MultiWorkerMirroredStrategy``'s implementation, with two of its gaps closed.

    * A new variable starts on every worker from the chief's value, broadcast by a collective
      that carries numbers only: a ``tf.string`` variable failed to be created. Strings are never
      random initial values but data every worker reads alike (ids, a candidate corpus), so a string
      variable starts from each worker's own value, as on one machine.
    * ``ReplicaContext.all_gather`` and ``all_reduce`` send each value to its own device; with one
      device per worker, a tensor read straight from the input pipeline has none, and failed with
      "destinations can not be empty". It now goes to the worker's device.
    """

    def _get_variable_creator_initial_value(
        self, replica_id: int, device: Optional[str], primary_var: Any, **kwargs: Any
    ) -> Callable[[], Any]:
        dtype = kwargs.get("dtype") or getattr(kwargs["initial_value"], "dtype", None)
        if replica_id != 0 or dtype is None or tf.as_dtype(dtype) != tf.string:
            return super()._get_variable_creator_initial_value(replica_id, device, primary_var, **kwargs)

        def own_value() -> tf.Tensor:
            with tf.device(device):
                value = kwargs["initial_value"]
                value = value() if callable(value) else value
                value = value.wrapped_value if isinstance(value, CheckpointInitialValue) else value
                return tf.convert_to_tensor(value, dtype=tf.string)

        return own_value

    def _gather_to_implementation(self, value: Any, destinations: Any, axis: Any, options: Any) -> Any:
        return super()._gather_to_implementation(value, self._placed(destinations), axis, options)

    def _batch_reduce_to(self, reduce_op: Any, value_destination_pairs: Any, options: Any) -> Any:
        pairs = [(value, self._placed(destinations)) for value, destinations in value_destination_pairs]
        return super()._batch_reduce_to(reduce_op, pairs, options)

    def _placed(self, destinations: Any) -> Any:
        """``destinations``, or this worker's first device where it is a tensor's empty device string."""
        return self.worker_devices[0] if isinstance(destinations, str) and not destinations else destinations


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

"""Candidate sampling probabilities for the logQ correction: streamed or counted.

Two providers share the :class:`CandidateProbability` interface, so the loss takes either:

- :class:`StreamingFrequencyEstimator`: Yi et al., RecSys 2019, "Sampling-Bias-Corrected
  Neural Modeling for Large Corpus Item Recommendations", Algorithms 2 and 3. It learns
  from the training stream itself, one update per batch, and tracks drifting popularity.
- :class:`CountsFrequencyTable`: exact ``p_j = c_j / Σ_k c_k`` from counts the pipeline
  computed over the training data, for a fixed data set.

One unit for the loss: :meth:`CandidateProbability.log_example_probability` is the log
probability that *one training example* has candidate ``j``, whatever the provider. Each
provider converts its own estimate: the table's ``p_j`` is already per example; the
estimator's native :meth:`StreamingFrequencyEstimator.probability` is the probability that a
candidate appears in *a batch* (``≈ B · p_j`` for a rare item in batches of ``B`` examples),
which it divides by ``B``.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np
import tensorflow as tf

from tfrec_towers.config import DEFAULT_FREQUENCY_LEARNING_RATE
from tfrec_towers.losses.negatives import check_int
from tfrec_towers.losses.temperature import check_real
from tfrec_towers.unique_ids import repeated_ids

KeyDtype = Literal["int64", "string"]

_KEY_DTYPES = ("int64", "string")


@runtime_checkable
class CandidateProbability(Protocol):
    """What the loss needs from a sampling-probability provider."""

    def log_example_probability(self, ids: tf.Tensor, batch_size: tf.Tensor) -> tf.Tensor:
        """``ids [N]`` → ``float32 [N]`` ``log p_j``: the probability that one training example has candidate ``j``.

        ``batch_size`` is ``B``, the examples per training step (int scalar), for a provider that
        estimates per-step probabilities.
        """

    def update(self, ids: tf.Tensor) -> None:
        """Observes one training batch of candidate ids ``[N]`` (a no-op when fixed)."""


def check_key_dtype(field: str, value: Any) -> KeyDtype:
    """``value`` checked to be an id dtype, ``"int64"`` or ``"string"``.

    Raises:
      ValueError: naming ``field``, for another value.
    """
    if value not in _KEY_DTYPES:
        raise ValueError(f"`{field}` must be one of {_KEY_DTYPES}. Received: {value!r}")
    return value


def _keys_as_strings(ids: tf.Tensor, key_dtype: KeyDtype) -> tf.Tensor:
    """The string form of ``ids`` (decimal for integers), checking the dtype."""
    ids = tf.convert_to_tensor(ids)
    if key_dtype == "string":
        if ids.dtype != tf.string:
            raise TypeError(f"Expected string ids (`key_dtype='string'`). Received: {ids.dtype.name}")
        return ids
    if not ids.dtype.is_integer:
        raise TypeError(f"Expected integer ids (`key_dtype='int64'`). Received: {ids.dtype.name}")
    return tf.strings.as_string(ids)


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class StreamingFrequencyEstimator(tf.keras.layers.Layer):
    """Streaming per-batch sampling probability of each candidate, from hashed gap averages.

    Yi et al., RecSys 2019, Algorithms 2 (one hash) and 3 (``m`` hashes). Step ``t`` is one
    call to :meth:`update` (one training batch). For every hash ``i``:
    ``B_i[h_i(y)] ← (1 − α) · B_i[h_i(y)] + α · (t − A_i[h_i(y)]);  A_i[h_i(y)] ← t``,
    so ``B`` is a moving average of the number of steps between two appearances of ``y``
    and ``p̂(y) = 1 / max_i B_i[h_i(y)]`` (collisions only shorten gaps, so the longest
    estimated gap is the least contaminated one).

    What :meth:`probability` means: the probability that ``y`` appears (at least once) in
    one training batch, estimated as one over its average gap in steps. It is not the
    per-example probability ``p_y``: for a rare item in batches of ``B`` examples it is
    ``≈ B · p_y``; :meth:`log_example_probability`, what the loss reads, divides by ``B``.

    Hashes: hash ``i`` of id ``y`` is
    ``tf.strings.to_hash_bucket_strong(str(y), hash_buckets, key=[i, 0])``, where ``str(y)``
    is the decimal form of an integer id (``tf.strings.as_string``) or the string id itself.

    Initial state and two rules the paper leaves open:

    - ``A = 0`` and ``B = 0`` everywhere; steps count from 1, so ``A = 0`` marks a bucket
      never updated. The first update of a bucket sets ``B`` to the observed gap
      ``t − 0 = t`` (the waiting time until the first appearance, which on a stationary
      stream is distributed like any other gap) instead of averaging it with a constant
      prior. A constant prior such as ``H`` or ``1/α`` would be forgotten only as
      ``(1 − α)^n`` after ``n`` appearances, so it would bias every estimate for the first
      ``~1/α`` appearances, and rare items never appear that often.
    - A candidate one of whose buckets was never updated has never appeared; its gap is
      then at least ``t`` and its estimate is ``1 / max(t, 1)`` (1 before any update).
    - Duplicates in one batch: every bucket hit in a step (by the same id repeated or by
      colliding ids) is updated exactly once, with the gap ``t − A``. The estimate is the
      probability of appearing in a batch, not the number of copies, and the result does
      not depend on the order of ids in the batch.

    State (non-trainable weights, saved by checkpoints): ``step`` = ``t`` (int64 scalar);
    ``last_seen`` = ``A`` and ``gap`` = ``B``, each stored flat as
    ``[num_hashes * hash_buckets]`` with hash ``i`` at ``[i * H, (i + 1) * H)`` (distributed
    variables support row scatters only). Under ``tf.distribute`` the weights are mirrored
    with ``ONLY_FIRST_REPLICA`` aggregation: the first replica's update is applied to all
    copies, so call :meth:`update` with the ids gathered across replicas (what the loss
    gathers for in-batch negatives); with per-replica ids the estimate is that of one
    replica's batch.

    Args:
      num_hashes: ``m``, the number of independent hash arrays.
      hash_buckets: ``H``, the size of each hash array.
      learning_rate: ``α`` in ``(0, 1]``, the weight of the newest gap
        (default :data:`DEFAULT_FREQUENCY_LEARNING_RATE`).
      key_dtype: ``"int64"`` or ``"string"``, the dtype of the candidate ids.
      **kwargs: passed to ``tf.keras.layers.Layer``.

    Raises:
      ValueError: naming the argument, for a non-positive ``num_hashes`` or
        ``hash_buckets``, ``learning_rate`` outside ``(0, 1]`` or an unknown ``key_dtype``.
    """

    def __init__(
        self,
        num_hashes: int = 2,
        hash_buckets: int = 2**17,
        learning_rate: float = DEFAULT_FREQUENCY_LEARNING_RATE,
        key_dtype: KeyDtype = "int64",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_hashes = check_int("num_hashes", num_hashes, 1)
        self.hash_buckets = check_int("hash_buckets", hash_buckets, 1)
        self.learning_rate = check_real("learning_rate", learning_rate, 0.0, 1.0, low_open=True)
        self.key_dtype = check_key_dtype("key_dtype", key_dtype)
        size = self.num_hashes * self.hash_buckets
        state = dict(
            trainable=False,
            initializer="zeros",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self.step = self.add_weight(name="step", shape=[], dtype=tf.int64, **state)
        self.last_seen = self.add_weight(name="last_seen", shape=[size], dtype=tf.int64, **state)
        self.gap = self.add_weight(name="gap", shape=[size], dtype=tf.float32, **state)
        self.built = True

    def _buckets(self, ids: tf.Tensor) -> tf.Tensor:
        """``ids [N]`` → ``int64 [m, N]`` indices into the flat ``last_seen`` and ``gap``."""
        keys = tf.reshape(_keys_as_strings(ids, self.key_dtype), [-1])
        return tf.stack(
            [
                tf.strings.to_hash_bucket_strong(keys, self.hash_buckets, key=[i, 0]) + i * self.hash_buckets
                for i in range(self.num_hashes)
            ]
        )

    def update(self, ids: tf.Tensor) -> None:
        """Advances one step and records the candidates of one training batch.

        Args:
          ids: ``[N]`` candidate ids of the batch (``key_dtype``); repeats allowed.

        Raises:
          TypeError: if the ids' dtype does not match ``key_dtype``.
        """
        buckets, _ = tf.unique(tf.reshape(self._buckets(ids), [-1]))
        step = self.step.read_value() + 1
        last_seen = tf.gather(self.last_seen, buckets)
        observed = tf.cast(step - last_seen, tf.float32)
        previous = tf.gather(self.gap, buckets)
        gap = tf.where(
            last_seen > 0,
            (1.0 - self.learning_rate) * previous + self.learning_rate * observed,
            observed,
        )
        self.gap.scatter_update(tf.IndexedSlices(gap, buckets))
        self.last_seen.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(buckets), step), buckets))
        self.step.assign(step)

    def _estimated_gap(self, ids: tf.Tensor) -> tf.Tensor:
        """``max_i B_i[h_i(y)]`` (``t`` for never-seen buckets), at least 1, shaped as ids."""
        buckets = self._buckets(ids)
        never_seen = tf.equal(tf.gather(self.last_seen, buckets), 0)
        step = tf.cast(self.step, tf.float32)
        gaps = tf.where(never_seen, step, tf.gather(self.gap, buckets))
        return tf.reshape(tf.maximum(tf.reduce_max(gaps, axis=0), 1.0), tf.shape(ids))

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        """``ids [N]`` → ``float32 [N]`` in ``(0, 1]``: ``p̂ = 1 / max_i B_i[h_i(y)]``."""
        return 1.0 / self._estimated_gap(ids)

    def log_probability(self, ids: tf.Tensor) -> tf.Tensor:
        """``ids [N]`` → ``float32 [N]`` ``log p̂ = −log max_i B_i[h_i(y)]`` (≤ 0)."""
        return -tf.math.log(self._estimated_gap(ids))

    def log_example_probability(self, ids: tf.Tensor, batch_size: tf.Tensor) -> tf.Tensor:
        """``ids [N]`` → ``float32 [N]`` ``log(p̂ / B)``: the per-batch estimate in per-example units.

        For a rare item ``p̂ ≈ B · p_y`` in batches of ``B`` examples, so ``p̂ / B`` is the
        per-example ``p_y`` of :class:`CandidateProbability`.

        Args:
          ids: ``[N]`` candidate ids (``key_dtype``).
          batch_size: ``B``, the examples of one training step (the global batch under ``tf.distribute``).
        """
        return self.log_probability(ids) - tf.math.log(tf.cast(batch_size, tf.float32))

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        """``ids [N]`` → ``float32 [N]`` :meth:`log_probability` (no update)."""
        return self.log_probability(ids)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            num_hashes=self.num_hashes,
            hash_buckets=self.hash_buckets,
            learning_rate=self.learning_rate,
            key_dtype=self.key_dtype,
        )
        return config


def _as_vocabulary(field: str, ids: Union[Sequence[Any], np.ndarray]) -> np.ndarray:
    """Training ids as ``int64 [V]`` or an ``object [V]`` array of ``str``."""
    values = np.asarray(ids)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"`{field}` must be a non-empty 1-D list of ids. Received shape {values.shape}")
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind in "USO" and all(isinstance(v, (str, bytes)) for v in values):
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    raise ValueError(f"`{field}` must hold integer or string ids. Received dtype {values.dtype}")


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class CountsFrequencyTable(tf.keras.layers.Layer):
    """Exact per-example sampling probabilities ``p_j = c_j / Σ_k c_k`` from training counts.

    ``c_j`` is the number of training examples whose candidate is ``j`` (or any positive
    weight), so ``p_j`` is the probability that one training example has candidate ``j``
    and, in batches of ``B`` examples, an in-batch negative is ``j`` with probability ``p_j``
    per row. Ids absent from training get ``default_probability``; by default half the
    smallest observed probability, i.e. rarer than anything seen but still finite, so an
    unseen candidate gets the largest logQ boost without an infinite logit.

    Hyper-parameters in the config, state in weights: the config holds ``key_dtype`` and
    ``default_probability``; the counts are in ``counts_table``, a
    ``tf.lookup.experimental.MutableHashTable`` id → ``c_j``, and their sum and the unseen ids'
    probability in the non-trainable weights ``total_count`` and ``unseen_probability``, all
    saved by ``tf.train.Checkpoint`` and SavedModels. ``from_config`` builds an empty table
    (every id unseen, with probability ``default_probability`` or 1) that restoring a
    checkpoint fills. There is no state to update:
    :meth:`update` is a no-op, kept for :class:`CandidateProbability`.

    Args:
      ids: ``[V]`` distinct training candidate ids, integers or strings; ``None`` (with
        ``counts``) for a table a checkpoint fills.
      counts: ``[V]`` positive counts aligned with ``ids``.
      default_probability: probability of an unseen id, in ``(0, 1]``; ``None`` for
        ``min_j p_j / 2``.
      key_dtype: ``"int64"`` or ``"string"``, the ids' dtype; required without ``ids``,
        inferred from them otherwise.
      **kwargs: passed to ``tf.keras.layers.Layer``.

    Raises:
      ValueError: naming the argument, for empty or repeated ``ids``, ``counts`` of another
        length or not all positive and finite, ``ids`` without ``counts`` (or the reverse), a
        ``key_dtype`` missing or other than the ids', or ``default_probability`` outside ``(0, 1]``.
    """

    def __init__(
        self,
        ids: Optional[Union[Sequence[Any], np.ndarray]] = None,
        counts: Optional[Union[Sequence[float], np.ndarray]] = None,
        default_probability: Optional[float] = None,
        key_dtype: Optional[KeyDtype] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (ids is None) != (counts is None):
            raise ValueError("`ids` and `counts` must be given together (or neither, for a table a checkpoint fills).")
        self.default_probability = (
            None
            if default_probability is None
            else check_real("default_probability", default_probability, 0.0, 1.0, low_open=True)
        )
        total = 0.0  # an empty table until a checkpoint is restored: every id unseen
        unseen = 1.0 if self.default_probability is None else self.default_probability
        if ids is not None:
            keys = _as_vocabulary("ids", ids)
            inferred: KeyDtype = "int64" if keys.dtype == np.int64 else "string"
            if key_dtype is not None and check_key_dtype("key_dtype", key_dtype) != inferred:
                raise ValueError(f"`key_dtype` is {key_dtype!r} but the `ids` are {inferred} ids.")
            key_dtype = inferred
            repeated = repeated_ids(keys)
            if repeated.size:
                raise ValueError(f"`ids` must be distinct. Repeated: {repeated[:5].tolist()}")
            values = np.asarray(counts, dtype=np.float64)
            if values.shape != keys.shape:
                raise ValueError(f"`counts` must have one entry per id ({keys.size}). Received shape {values.shape}")
            if not np.all(np.isfinite(values) & (values > 0)):
                raise ValueError(f"`counts` must all be positive and finite. Received min {float(values.min())!r}")
            total = float(values.sum())
            if default_probability is None:
                unseen = float((values / total).min()) / 2.0
        elif key_dtype is None:
            raise ValueError("`key_dtype` ('int64' or 'string') is required without `ids`.")
        self.key_dtype: KeyDtype = check_key_dtype("key_dtype", key_dtype)
        with tf.init_scope():
            self.counts_table = tf.lookup.experimental.MutableHashTable(
                tf.as_dtype(self.key_dtype), tf.float64, default_value=0.0
            )
            if ids is not None:
                self.counts_table.insert(tf.constant(keys, dtype=self.key_dtype), tf.constant(values, tf.float64))
        state = dict(shape=[], trainable=False)
        self.total_count = self.add_weight(
            name="total_count", dtype=tf.float64, initializer=tf.keras.initializers.Constant(total), **state
        )
        self.unseen_probability = self.add_weight(
            name="unseen_probability", dtype=tf.float32, initializer=tf.keras.initializers.Constant(unseen), **state
        )
        self.built = True

    @classmethod
    def from_ids(
        cls,
        training_ids: Union[Sequence[Any], np.ndarray],
        default_probability: Optional[float] = None,
        **kwargs: Any,
    ) -> "CountsFrequencyTable":
        """Counts the candidate id of every training example.

        Args:
          training_ids: ``[E]`` the candidate id of each training example (repeats counted).
          default_probability: as in the constructor.
          **kwargs: passed to the constructor.

        Returns:
          The table with ``p_j = (number of examples with id j) / E``.
        """
        import pandas as pd  # hashed counting: no sort of the E ids, only of the V distinct ones

        values = np.asarray(training_ids)
        if values.ndim != 1 or values.size == 0:
            _as_vocabulary("training_ids", values)  # raises, naming the shape
        codes, distinct = pd.factorize(values)
        if (codes < 0).any():  # a missing value (None, NaN): not an id
            _as_vocabulary("training_ids", values)  # raises, naming the dtype
        # convert the V distinct values, then merge those that convert alike (b"a" and "a")
        ids, merged = np.unique(_as_vocabulary("training_ids", np.asarray(distinct)), return_inverse=True)
        counts = np.bincount(merged, weights=np.bincount(codes)).astype(np.int64)
        return cls(ids, counts, default_probability=default_probability, **kwargs)

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        """``ids [N]`` → ``float32 [N]`` ``p_j``, or the default for unseen ids."""
        ids = tf.convert_to_tensor(ids)
        if self.key_dtype == "int64":
            if not ids.dtype.is_integer:
                raise TypeError(f"Expected integer ids. Received: {ids.dtype.name}")
            ids = tf.cast(ids, tf.int64)
        elif ids.dtype != tf.string:
            raise TypeError(f"Expected string ids. Received: {ids.dtype.name}")
        counts = self.counts_table.lookup(ids)
        counts.set_shape(ids.shape)  # a MutableHashTable lookup has no static shape
        probability = tf.cast(counts / self.total_count, tf.float32)
        return tf.where(counts > 0, probability, self.unseen_probability)

    @property
    def ids(self) -> np.ndarray:
        """The counted ids, sorted: ``int64 [V]`` or an ``object [V]`` array of ``str``."""
        return self._counted()[0]

    @property
    def counts(self) -> np.ndarray:
        """``float64 [V]`` the counts ``c_j``, aligned with :attr:`ids`."""
        return self._counted()[1]

    def _counted(self) -> Tuple[np.ndarray, np.ndarray]:
        keys, values = (t.numpy() for t in self.counts_table.export())
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        if self.key_dtype == "string":
            keys = np.array([k.decode("utf-8") for k in keys], dtype=object)
        return keys, values

    def log_probability(self, ids: tf.Tensor) -> tf.Tensor:
        """``ids [N]`` → ``float32 [N]`` ``log p_j``."""
        return tf.math.log(self.probability(ids))

    def log_example_probability(self, ids: tf.Tensor, batch_size: tf.Tensor) -> tf.Tensor:
        """``ids [N]`` → ``float32 [N]`` ``log p_j``: counts are per example already, ``batch_size`` is unused."""
        del batch_size
        return self.log_probability(ids)

    @tf.autograph.experimental.do_not_convert
    def update(self, ids: tf.Tensor) -> None:
        """No-op: the counts are fixed (see :class:`CandidateProbability`)."""
        del ids

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        """``ids [N]`` → ``float32 [N]`` :meth:`log_probability`."""
        return self.log_probability(ids)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(key_dtype=self.key_dtype, default_probability=self.default_probability)
        return config

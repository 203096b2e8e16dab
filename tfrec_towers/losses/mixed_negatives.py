"""Mixed negative sampling: draws from the whole corpus besides in-batch negatives.

Yang et al., WWW 2020, "Mixed Negative Sampling for Learning Two-tower Neural Networks in
Recommendations" (MNS): in-batch negatives are drawn with the unigram (popularity)
distribution, so rare and fresh candidates are almost never negatives; adding ``B'``
candidates drawn uniformly from the corpus fixes that selection bias. Between the two, draws
by a smoothed popularity ``q_j ∝ p_j^α`` (:func:`popularity_log_probabilities`; word2vec's
``α = 0.75``, Mikolov et al., NeurIPS 2013) make popular items hard negatives more often than
uniform draws do, without taking only the head. This module only draws the rows: the model
encodes them with the candidate tower and builds a
:class:`~tfrec_towers.losses.negatives.NegativeSet`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from tfrec_towers.losses.corpus import add_corpus_weights, corpus_initializer
from tfrec_towers.losses.negatives import check_int


def _checked_log_probabilities(values: Any, corpus_size: int) -> np.ndarray:
    """``values`` as float64 ``[N]`` log probabilities of a distribution over the ``N`` corpus rows.

    Raises:
      ValueError: another shape, a non-finite value, or probabilities that do not sum to 1.
    """
    log_q = np.asarray(values, np.float64)
    if log_q.shape != (corpus_size,) or not np.all(np.isfinite(log_q)):
        raise ValueError(
            f"`log_probabilities` must be [{corpus_size}] finite log probabilities, one per corpus row. "
            f"Received shape {log_q.shape}"
        )
    total = float(np.exp(log_q).sum())
    if abs(total - 1.0) > 1e-4:
        raise ValueError(f"`log_probabilities` must be normalised (their probabilities sum to {total:.6f}, not 1).")
    return log_q


def popularity_log_probabilities(log_p: np.ndarray, alpha: float) -> Tuple[np.ndarray, float]:
    """``(log q [N], log Z)``: ``q_j = p_j^α / Z`` with ``Z = Σ_k p_k^α``, the smoothed popularity of each corpus row.

    ``α = 0`` is the uniform distribution, ``α = 1`` the popularity itself; ``p_j`` need not be
    normalised (only the ratios matter), so per-example probabilities or counts both work.

    Args:
      log_p: ``[N]`` finite ``log p_j`` of the corpus rows, in corpus order.
      alpha: ``α ≥ 0``.

    Returns:
      ``log q`` as float64 and ``log Z`` (a ``p`` given in other units only shifts ``log Z``).

    Raises:
      ValueError: an empty or non-finite ``log_p``, or a negative ``alpha``.
    """
    log_p = np.asarray(log_p, np.float64)
    if log_p.ndim != 1 or not len(log_p) or not np.all(np.isfinite(log_p)):
        raise ValueError("`log_p` must be a non-empty [N] array of finite log probabilities.")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"`alpha` must be a finite number ≥ 0. Received: {alpha}")
    scaled = alpha * log_p
    top = scaled.max()
    log_normaliser = float(top + np.log(np.exp(scaled - top).sum()))
    return scaled - log_normaliser, log_normaliser


def _replica_id() -> Union[int, tf.Tensor]:
    """The replica's index in its ``tf.distribute`` sync group (0 outside a strategy)."""
    context = tf.distribute.get_replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


def _stateless_seed(seed: Union[int, tf.Tensor]) -> tf.Tensor:
    """An int seed ``s`` → ``[s, 0]``; a ``[2]`` tensor is used as is."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], dtype=tf.int64)
    return tf.cast(tf.reshape(seed, [2]), tf.int64)


@tf.keras.utils.register_keras_serializable(package="tfrec_towers")
class MixedNegativeSampler(tf.keras.layers.Layer):
    """Draws ``num_negatives`` corpus rows with replacement, uniformly or by given probabilities.

    Uniformly, every draw picks row ``j`` with probability ``1 / |corpus|``, so
    ``log_q = −log |corpus|`` for every sample. With ``log_probabilities`` (e.g.
    :func:`popularity_log_probabilities`), a draw picks row ``j`` with probability ``q_j``: a
    uniform number ``u`` is located in the cumulative sums ``F_j = Σ_{k ≤ j} q_k`` (the row is the
    first ``j`` with ``F_j > u``), and ``log_q`` of each sample is its ``log q_j``, exactly. Within this source alone that correction
    is a constant shift and changes nothing, but MNS puts these logits in one softmax with
    the in-batch negatives, whose ``log_q`` varies with popularity: the constant sets how
    much the uniform negatives weigh against the in-batch ones. Dropping it while the
    in-batch logits get ``−log q`` (a boost of several nats for all but the most popular
    items) would under-weight every uniform negative against the in-batch ones.
    Units: ``1 / |corpus|`` is the probability of one draw, the per-example unit of every
    ``log_q`` (:meth:`~tfrec_towers.losses.frequency.CandidateProbability.log_example_probability`).

    Hyper-parameters in the config, state in weights: the corpus columns are non-trainable
    weights (in checkpoints and SavedModels); the config holds only their ``columns`` schema
    (dtype and shape of each), so ``from_config`` builds a sampler of the same shape whose
    columns are zeros (or empty strings) until a checkpoint is restored into it. Random
    numbers are ``tf.random.stateless_uniform`` draws, so they work in ``tf.function`` and
    are reproducible. With a seed, :meth:`sample` is a
    pure function of that seed. Without one, draw ``k`` (counted by the weight ``draws``)
    uses the seed ``[rng_seed, k]`` folded with the replica id, so every replica of a
    ``tf.distribute`` strategy draws different rows; ``rng_seed`` is a weight too (the
    layer's ``seed`` or, when None, a random one), so a restored checkpoint continues the
    same sequence. Under ``tf.distribute`` the counter is mirrored with
    ``ONLY_FIRST_REPLICA`` aggregation: it advances once per step.

    Args:
      corpus: the candidate tower's raw features, one row per candidate (ids unique):
        column name → ``int64 [N]`` / ``int64 [N, L]`` / ``float32 [N]`` / ``str [N]``
        arrays (the column types of ``pipelines/data.py``); ``None`` for a sampler whose
        corpus a checkpoint restores (then ``columns`` is required).
      num_negatives: ``B' > 0``, rows per :meth:`sample`.
      candidate_id: the id column of ``corpus``.
      seed: ``rng_seed`` of the unseeded draws, ≥ 0; ``None`` for a random one.
      columns: the corpus schema, column name → ``{"dtype": "int64" | "float32" | "string",
        "shape": [N, ...]}`` (what :meth:`get_config` stores); must match ``corpus`` when
        both are given.
      log_probabilities: ``[N]`` ``log q_j`` of each corpus row (normalised: ``Σ q_j = 1``), or
        None for uniform draws. Kept in weights (``log_q`` and the cumulative sums), not in the config.
      weighted: draw by probabilities; implied by ``log_probabilities``, and what ``from_config``
        uses to build a weighted sampler whose probabilities a checkpoint restores.
      **kwargs: passed to ``tf.keras.layers.Layer``.

    Raises:
      ValueError: for a non-positive ``num_negatives``, an empty corpus, columns of
        different lengths or unsupported dtypes, a ``candidate_id`` that is not a column,
        repeated ids, neither ``corpus`` nor ``columns``, ``columns`` that do not
        describe ``corpus``, or ``log_probabilities`` that are not ``[N]`` finite values summing to 1.
    """

    def __init__(
        self,
        corpus: Optional[Mapping[str, Any]],
        num_negatives: int,
        candidate_id: str,
        seed: Optional[int] = None,
        columns: Optional[Mapping[str, Mapping[str, Any]]] = None,
        log_probabilities: Optional[np.ndarray] = None,
        weighted: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_negatives = check_int("num_negatives", num_negatives, 1)
        self.candidate_id = candidate_id
        self.seed = None if seed is None else check_int("seed", seed, 0)
        self.columns, self.corpus = add_corpus_weights(self, corpus, candidate_id, columns, "sampler")
        self.corpus_size = self.columns[candidate_id]["shape"][0]
        rng_seed = int(np.random.default_rng().integers(2**62)) if self.seed is None else self.seed
        self.rng_seed = self.add_weight(
            name="rng_seed",
            shape=[],
            dtype=tf.int64,
            initializer=tf.keras.initializers.Constant(rng_seed),
            trainable=False,
        )
        self.draws = self.add_weight(
            name="draws",
            shape=[],
            dtype=tf.int64,
            initializer="zeros",
            trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self.weighted = bool(weighted) or log_probabilities is not None
        self.log_q: Optional[tf.Variable] = None
        self.cumulative: Optional[tf.Variable] = None
        if self.weighted:
            log_q = (
                None if log_probabilities is None else _checked_log_probabilities(log_probabilities, self.corpus_size)
            )
            self.log_q = self.add_weight(
                name="log_q",
                shape=[self.corpus_size],
                dtype=tf.float32,
                initializer=corpus_initializer(None if log_q is None else log_q.astype(np.float32)),
                trainable=False,
            )
            self.cumulative = self.add_weight(
                name="cumulative",
                shape=[self.corpus_size],
                dtype=tf.float64,
                initializer=corpus_initializer(None if log_q is None else np.cumsum(np.exp(log_q))),
                trainable=False,
            )
        self.built = True

    @tf.autograph.experimental.do_not_convert  # plain Python control flow: tracing needs no conversion
    def sample(self, seed: Optional[Union[int, tf.Tensor]] = None) -> Tuple[Dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
        """Draws ``B'`` corpus rows uniformly with replacement.

        Args:
          seed: ``None`` for the layer's next draw (advances ``draws``); an int or an int
            ``[2]`` tensor for a draw determined by the seed alone.

        Returns:
          ``(features, ids, log_q)``: ``features`` maps every corpus column to its
          ``B'`` sampled rows, ``ids`` ``[B']`` is ``features[candidate_id]`` and
          ``log_q`` ``float32 [B']`` is each draw's ``log q_j`` (``−log |corpus|`` when uniform).
        """
        shape = [self.num_negatives]
        if seed is None:
            draw = self.draws.read_value()
            self.draws.assign_add(1)
            seed = tf.random.experimental.stateless_fold_in(tf.stack([self.rng_seed.read_value(), draw]), _replica_id())
        if self.cumulative is not None and self.log_q is not None:
            uniform = tf.random.stateless_uniform(shape, seed=_stateless_seed(seed), dtype=tf.float64)
            total = self.cumulative[-1]  # 1 up to rounding: scale u so that every draw lands on a row
            rows = tf.searchsorted(self.cumulative, uniform * total, side="right", out_type=tf.int64)
            rows = tf.minimum(rows, self.corpus_size - 1)
            log_q = tf.gather(self.log_q, rows)
        else:
            rows = tf.random.stateless_uniform(
                shape, seed=_stateless_seed(seed), minval=0, maxval=self.corpus_size, dtype=tf.int64
            )
            log_q = tf.fill(shape, tf.constant(-math.log(self.corpus_size), dtype=tf.float32))
        features = {name: tf.gather(column, rows) for name, column in self.corpus.items()}
        return features, features[self.candidate_id], log_q

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "MixedNegativeSampler":
        """A sampler of the configured ``columns`` with zero rows, for a checkpoint to fill (a
        config written by an earlier version, which held the ``corpus``, fills them instead)."""
        config = dict(config)
        return cls(config.pop("corpus", None), **config)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(
            num_negatives=self.num_negatives,
            candidate_id=self.candidate_id,
            seed=self.seed,
            columns={name: {"dtype": c["dtype"], "shape": list(c["shape"])} for name, c in self.columns.items()},
            weighted=self.weighted,
        )
        return config

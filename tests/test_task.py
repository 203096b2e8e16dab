"""The composed retrieval loss against a numpy re-computation, TFRS, and inside model.fit."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401
from tfrec_towers.config import AdaptiveConfig, ConfigError, LossConfig, config_from_dict
from tfrec_towers.features import CategoricalFeature, FeatureSpec, SequenceFeature, adapt
from tfrec_towers.losses.factory import build_mixed_sampler, build_retrieval_task
from tfrec_towers.losses.negatives import NegativeSet
from tfrec_towers.losses.task import RetrievalLoss, in_batch_softmax_task
from tfrec_towers.model import TwoTowerModel, build_towers
from tfrec_towers.towers import TowerConfig


def _unit(rng, rows, dim=4):
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_loss(q, v, ids, tau, negatives=(), log_p=None, bank_valid_slots=0, mixed=0, corpus=0):
    """Sampled softmax over [positive, in-batch, extra negatives], accidental hits masked.

    negatives: (embeddings, ids, valid, per-example p) of extra sources; log_p: per-example
    probability function of in-batch ids, or None for no logQ correction.
    """
    neg_e = [v] + [n[0] for n in negatives]
    neg_ids = [ids] + [n[1] for n in negatives]
    neg_valid = [np.ones(len(ids), bool)] + [n[2] for n in negatives]
    neg_e, neg_ids, neg_valid = np.concatenate(neg_e), np.concatenate(neg_ids), np.concatenate(neg_valid)
    pos = (q * v).sum(1) / tau
    neg = q @ neg_e.T / tau
    if log_p is not None:
        p_neg = np.concatenate([log_p(ids)] + [n[3] for n in negatives])
        expected = lambda p: (len(ids) + bank_valid_slots) * p + (mixed / corpus if mixed else 0.0)  # noqa: E731
        pos = pos - np.log(expected(log_p(ids)))
        neg = neg - np.log(expected(p_neg))[None, :]
    losses = []
    for i in range(len(ids)):
        keep = neg_valid & (neg_ids != ids[i])
        row = np.concatenate([[pos[i]], neg[i][keep]])
        losses.append(np.log(np.exp(row - row.max()).sum()) + row.max() - pos[i])
    return float(np.mean(losses))


@pytest.mark.parametrize("seed", range(3))
def test_plain_configuration_equals_tfrs_and_numpy(seed):
    rng = np.random.default_rng(seed)
    q, v = _unit(rng, 6), _unit(rng, 6)
    ids = np.array([1, 2, 2, 3, 4, 2], np.int64)  # duplicates: accidental hits
    ours = RetrievalLoss(temperature=None)
    from tfrec_towers.losses.temperature import Temperature

    ours = RetrievalLoss(temperature=Temperature(0.2))
    tfrs_task = in_batch_softmax_task(0.2)
    got = ours(tf.constant(q), tf.constant(v), tf.constant(ids), training=True).numpy()
    reference = tfrs_task(tf.constant(q), tf.constant(v), candidate_ids=tf.constant(ids), compute_metrics=False).numpy()
    assert got == pytest.approx(reference, rel=1e-5)
    assert got == pytest.approx(_numpy_loss(q, v, ids, 0.2), rel=1e-5)


def test_counts_logq_subtracts_log_expected_count_on_every_logit():
    rng = np.random.default_rng(0)
    q, v = _unit(rng, 5), _unit(rng, 5)
    ids = np.array([1, 1, 2, 3, 9], np.int64)  # 9 never seen in training
    training_ids = np.array([1, 1, 1, 1, 2, 2, 3, 4])
    task = build_retrieval_task(
        LossConfig(logq="counts", mixed_negatives=0), 0.5, 4, "int64", training_ids=training_ids
    )
    got = task(tf.constant(q), tf.constant(v), tf.constant(ids), training=True).numpy()
    counts = {1: 4, 2: 2, 3: 1, 4: 1}
    default = min(counts.values()) / 8 / 2  # unseen ids: half the smallest observed probability

    def p(x):
        return np.array([counts.get(int(i), 0) / 8 if int(i) in counts else default for i in x])

    assert got == pytest.approx(_numpy_loss(q, v, ids, 0.5, log_p=p), rel=1e-5)


def test_memory_bank_not_full_then_warm_up_then_used():
    rng = np.random.default_rng(1)
    first_v, second_v = _unit(rng, 3), _unit(rng, 3)
    q = _unit(rng, 3)
    first_ids, second_ids = np.array([10, 11, 12]), np.array([12, 13, 14])
    for warmup in (0, 2):
        task = build_retrieval_task(
            LossConfig(
                memory_bank_size=5,
                memory_bank_warmup_fraction=0.0,
                memory_bank_warmup_steps=warmup,
                logq="none",
                mixed_negatives=0,
            ),
            0.5,
            4,
            "int64",
        )
        first = task(tf.constant(q), tf.constant(first_v), tf.constant(first_ids), training=True).numpy()
        assert first == pytest.approx(_numpy_loss(q, first_v, first_ids, 0.5), rel=1e-5)  # empty bank
        second = task(tf.constant(q), tf.constant(second_v), tf.constant(second_ids), training=True).numpy()
        if warmup == 0:
            # bank: 3 of 5 slots hold the first batch; id 12 is an accidental hit for row 0
            bank = (first_v, first_ids, np.ones(3, bool), np.zeros(3))
            expected = _numpy_loss(q, second_v, second_ids, 0.5, negatives=[bank])
        else:
            expected = _numpy_loss(q, second_v, second_ids, 0.5)  # still warming up: in-batch only
        assert second == pytest.approx(expected, rel=1e-5)


def test_evaluation_calls_leave_the_state_alone():
    rng = np.random.default_rng(2)
    q, v = _unit(rng, 3), _unit(rng, 3)
    task = build_retrieval_task(
        LossConfig(logq="streaming", memory_bank_size=4, memory_bank_warmup_fraction=0.0, mixed_negatives=0),
        0.5,
        4,
        "int64",
    )
    task(tf.constant(q), tf.constant(v), tf.constant([1, 2, 3], tf.int64), training=False)
    assert int(task.memory_bank.rows_written.numpy()) == 0
    assert int(task.candidate_probability.step.numpy()) == 0


def test_batch_of_one():
    rng = np.random.default_rng(3)
    q, v = _unit(rng, 1), _unit(rng, 1)
    task = build_retrieval_task(
        LossConfig(logq="counts", memory_bank_size=4, memory_bank_warmup_fraction=0.0, mixed_negatives=0),
        0.5,
        4,
        "int64",
        training_ids=np.array([5, 6]),
    )
    assert task(tf.constant(q), tf.constant(v), tf.constant([5], tf.int64), training=True).numpy() == pytest.approx(
        0.0, abs=1e-6
    )
    v2 = _unit(rng, 1)
    second = task(tf.constant(q), tf.constant(v2), tf.constant([6], tf.int64), training=True).numpy()
    bank = (v, np.array([5]), np.ones(1, bool), np.array([0.5]))
    expected = _numpy_loss(
        q, v2, np.array([6]), 0.5, negatives=[bank], log_p=lambda x: np.full(len(x), 0.5), bank_valid_slots=1
    )
    assert second == pytest.approx(expected, rel=1e-5)


def test_mixed_negatives_use_the_mixture_probability():
    rng = np.random.default_rng(4)
    q, v, extra = _unit(rng, 4), _unit(rng, 4), _unit(rng, 3)
    ids, extra_ids = np.array([1, 2, 3, 4]), np.array([4, 7, 8])  # 4 is an accidental hit for row 3
    training_ids = np.array([1, 2, 3, 4, 4, 7, 8, 8])
    task = build_retrieval_task(
        LossConfig(logq="counts", mixed_negatives=3), 0.5, 4, "int64", training_ids=training_ids, corpus_size=10
    )
    negatives = NegativeSet(
        tf.constant(extra), tf.constant(extra_ids), tf.fill([3], -np.log(10.0)), tf.ones([3], tf.bool)
    )
    got = task(tf.constant(q), tf.constant(v), tf.constant(ids), extra_negatives=negatives, training=True).numpy()
    counts = {1: 1, 2: 1, 3: 1, 4: 2, 7: 1, 8: 2}

    def p(x):
        return np.array([counts[int(i)] / 8 for i in x])

    source = (extra, extra_ids, np.ones(3, bool), p(extra_ids))
    assert got == pytest.approx(_numpy_loss(q, v, ids, 0.5, negatives=[source], log_p=p, mixed=3, corpus=10), rel=1e-5)


def test_adaptive_with_item_anchored_term_matches_numpy():
    rng = np.random.default_rng(5)
    q, v = _unit(rng, 4), _unit(rng, 4)
    ids = np.array([1, 2, 3, 2])
    alpha, d0, t0, w = 0.5, 0.01, 1 / 30, 0.05
    task = build_retrieval_task(
        LossConfig(adaptive=AdaptiveConfig(enabled=True), logq="none", mixed_negatives=0), 0.05, 4, "int64"
    )
    got = task(tf.constant(q), tf.constant(v), tf.constant(ids), training=True).numpy()

    def anchored(anchor, positive, negatives, hardness_from, mask):
        losses = []
        for i in range(len(anchor)):
            s_i = anchor[i] @ positive[i]
            terms = [0.0]
            for j in range(len(negatives)):
                if not mask[i, j]:
                    continue
                c = np.clip((hardness_from[i] @ negatives[j] + 1) / 2, 0, 1)
                delta, tau = d0 * (1 - alpha * c), max(t0 * (1 - alpha * c), 1e-3)
                terms.append((anchor[i] @ negatives[j] - s_i + delta) / tau)
            terms = np.array(terms)
            losses.append(np.log(np.exp(terms - terms.max()).sum()) + terms.max())
        return np.mean(losses)

    distinct = ids[:, None] != ids[None, :]
    query_term = anchored(q, v, v, v, distinct)
    item_term = anchored(v, q, q, q, distinct)
    assert got == pytest.approx((1 - w) * query_term + w * item_term, rel=1e-4)


def test_config_round_trip_of_the_composed_task():
    task = build_retrieval_task(
        LossConfig(
            mode="hinge",
            margin=0.2,
            logq="streaming",
            memory_bank_size=8,
            memory_bank_warmup_fraction=0.0,
            mixed_negatives=0,
        ),
        0.1,
        4,
        "int64",
    )
    rebuilt = RetrievalLoss.from_config(task.get_config())
    assert rebuilt.get_config() == task.get_config()


def test_bad_combinations_fail_at_construction_naming_the_field():
    with pytest.raises(ConfigError, match="`loss.margin` is required"):
        LossConfig(mode="hinge")
    with pytest.raises(ConfigError, match="`loss.margin` applies only"):
        LossConfig(mode="softmax", margin=0.1)
    with pytest.raises(ConfigError, match="symmetric"):
        LossConfig(mode="symmetric", memory_bank_size=16)
    with pytest.raises(ConfigError, match="`loss.memory_bank_size` must be ≥ 0"):
        config_from_dict({"loss": {"memory_bank_size": -1}})
    with pytest.raises(ConfigError, match=r"`loss.frequency.learning_rate` \(α\) must be in \(0, 1\]"):
        config_from_dict({"loss": {"frequency": {"learning_rate": 1.5}}})
    with pytest.raises(ConfigError, match="`model.temperature` must be a positive"):
        config_from_dict({"model": {"temperature": -0.1}})
    with pytest.raises(ConfigError, match="learnable_temperature"):
        LossConfig(adaptive=AdaptiveConfig(enabled=True), learnable_temperature=True)
    with pytest.raises(ValueError, match="capacity"):
        from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank

        CrossBatchMemoryBank(0, 4)


def test_model_fit_updates_bank_estimator_and_uses_mixed_negatives():
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    rows = 192
    users = rng.integers(1, 20, rows)
    items = (users % 8 + 1).astype(np.int64)
    data = {
        "user_id": users.astype(np.int64),
        "history": rng.integers(0, 9, (rows, 3)).astype(np.int64),
        "item_id": items,
        "category": np.array([f"c{i % 3}" for i in items], object),
    }
    catalogue = {
        "item_id": np.arange(1, 9, dtype=np.int64),
        "category": np.array([f"c{i % 3}" for i in range(1, 9)], object),
    }
    spec = adapt(
        FeatureSpec(
            query=(
                CategoricalFeature("user_id", embedding_dim=8),
                SequenceFeature("history", embedding_dim=8, embedding_table="item_id"),
            ),
            candidate=(
                CategoricalFeature("item_id", embedding_dim=8),
                CategoricalFeature("category", dtype="string", embedding_dim=4),
            ),
            candidate_id="item_id",
        ),
        data,
        catalogue,
    )
    config = LossConfig(logq="streaming", memory_bank_size=50, memory_bank_warmup_fraction=0.0, mixed_negatives=4)
    query, candidate = build_towers(
        spec, TowerConfig(hidden_units=(), output_dim=8), TowerConfig(hidden_units=(), output_dim=8)
    )
    task = build_retrieval_task(config, 0.1, 8, "int64", corpus_size=8)
    model = TwoTowerModel(
        query, candidate, "item_id", task=task, mixed_negatives=build_mixed_sampler(config, catalogue, "item_id")
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    history = model.fit(tf.data.Dataset.from_tensor_slices(data).batch(32), epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert int(task.memory_bank.rows_written.numpy()) == rows * 3
    assert int(task.candidate_probability.step.numpy()) == 6 * 3

    rebuilt = TwoTowerModel.from_config(model.get_config())
    assert isinstance(rebuilt.task, RetrievalLoss)
    assert rebuilt.task.get_config() == task.get_config()
    assert rebuilt.mixed_negatives.get_config() == model.mixed_negatives.get_config()


def _numeric_gradient(loss, x, eps=1e-6):
    """Central differences of a float64 numpy loss with respect to every entry of ``x``."""
    gradient = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        gradient[index] = (loss(x + step) - loss(x - step)) / (2 * eps)
    return gradient


@pytest.mark.parametrize("trains", ["both_towers", "query_tower"])
@pytest.mark.parametrize("learnable", [False, True])
def test_gradients_with_bank_logq_and_mixed_negatives_match_finite_differences(learnable, trains):
    rng = np.random.default_rng(6)
    q, v, extra, first_v = _unit(rng, 4), _unit(rng, 4), _unit(rng, 3), _unit(rng, 3)
    ids, extra_ids, first_ids = np.array([1, 2, 2, 3]), np.array([3, 5, 6]), np.array([2, 4, 5])
    training_ids = np.array([1, 2, 2, 3, 3, 3, 4, 5, 6, 6])
    config = LossConfig(
        logq="counts",
        memory_bank_size=5,
        memory_bank_warmup_fraction=0.0,
        mixed_negatives=3,
        learnable_temperature=learnable,
        memory_bank_trains=trains,
    )
    task = build_retrieval_task(config, 0.5, 4, "int64", training_ids=training_ids, corpus_size=10)
    counts = {1: 1, 2: 2, 3: 3, 4: 1, 5: 1, 6: 2}

    def p(x):
        return np.array([counts[int(i)] / 10 for i in x])

    def negatives(e):
        return NegativeSet(tf.constant(e), tf.constant(extra_ids), tf.zeros([3]), tf.ones([3], tf.bool))

    task(
        tf.constant(_unit(rng, 3)),
        tf.constant(first_v),
        tf.constant(first_ids),
        extra_negatives=negatives(extra),
        training=True,
    )
    tensors = [tf.constant(x) for x in (q, v, extra)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        loss = task(tensors[0], tensors[1], tf.constant(ids), extra_negatives=negatives(tensors[2]), training=True)
    variables = [task.temperature.log_temperature] if learnable else []
    got = tape.gradient(loss, tensors + variables)

    # bank: 3 of 5 slots written by the first call (log_q as stored then: the same counts)
    def numpy_loss(q, v, extra, tau=0.5):
        sources = [
            (first_v.astype(np.float64), first_ids, np.ones(3, bool), p(first_ids)),
            (extra, extra_ids, np.ones(3, bool), p(extra_ids)),
        ]
        return _numpy_loss(q, v, ids, tau, negatives=sources, log_p=p, bank_valid_slots=3, mixed=3, corpus=10)

    # the softmax without the bank (in-batch and mixed negatives, logQ with B draws from p)
    def own_loss(q, v, extra, tau=0.5):
        sources = [(extra, extra_ids, np.ones(3, bool), p(extra_ids))]
        return _numpy_loss(q, v, ids, tau, negatives=sources, log_p=p, bank_valid_slots=0, mixed=3, corpus=10)

    # both towers learn from every negative; or the candidate side learns from the softmax without the bank
    candidate_side = numpy_loss if trains == "both_towers" else own_loss
    q64, v64, e64 = (x.astype(np.float64) for x in (q, v, extra))
    assert float(loss) == pytest.approx(numpy_loss(q64, v64, e64), abs=1e-5)
    np.testing.assert_allclose(got[0].numpy(), _numeric_gradient(lambda x: numpy_loss(x, v64, e64), q64), atol=2e-4)
    np.testing.assert_allclose(got[1].numpy(), _numeric_gradient(lambda x: candidate_side(q64, x, e64), v64), atol=2e-4)
    np.testing.assert_allclose(got[2].numpy(), _numeric_gradient(lambda x: candidate_side(q64, v64, x), e64), atol=2e-4)
    if learnable:
        log_tau = np.array([np.log(0.5)])
        expected = _numeric_gradient(lambda x: numpy_loss(q64, v64, e64, tau=np.exp(x[0])), log_tau)
        if trains == "query_tower":  # τ scales both losses
            expected = expected + _numeric_gradient(lambda x: own_loss(q64, v64, e64, tau=np.exp(x[0])), log_tau)
        assert got[3].numpy() == pytest.approx(expected[0], abs=2e-4)


def test_adaptive_gradients_with_memory_bank_match_finite_differences():
    rng = np.random.default_rng(7)
    q, v, bank_v = _unit(rng, 4), _unit(rng, 4), _unit(rng, 3)
    ids, bank_ids = np.array([1, 2, 3, 2]), np.array([3, 7, 8])
    alpha, d0, t0, w = 0.5, 0.01, 1 / 30, 0.05
    task = build_retrieval_task(
        LossConfig(
            memory_bank_size=4,
            memory_bank_warmup_fraction=0.0,
            adaptive=AdaptiveConfig(enabled=True),
            logq="none",
            mixed_negatives=0,
            memory_bank_trains="both_towers",  # one loss for both towers: its finite differences
        ),
        0.05,
        4,
        "int64",
    )
    task(tf.constant(_unit(rng, 3)), tf.constant(bank_v), tf.constant(bank_ids), training=True)
    tensors = [tf.constant(q), tf.constant(v)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        loss = task(tensors[0], tensors[1], tf.constant(ids), training=True)
    got = tape.gradient(loss, tensors)

    def anchored(anchor, positive, negatives, hardness, mask):
        """ℓ_i = log(1 + Σ_j exp((a_i·n_j − a_i·p_i + δ_ij) / τ_ij)), hardness held fixed (stop-gradient)."""
        losses = []
        for i in range(len(anchor)):
            c = np.clip((hardness[i] + 1) / 2, 0, 1)
            delta, tau = d0 * (1 - alpha * c), np.maximum(t0 * (1 - alpha * c), 1e-3)
            terms = ((negatives @ anchor[i] - anchor[i] @ positive[i] + delta) / tau)[mask[i]]
            losses.append(np.logaddexp.reduce(np.concatenate([[0.0], terms])))
        return np.mean(losses)

    q64, v64, b64 = (x.astype(np.float64) for x in (q, v, bank_v))
    query_mask = np.concatenate([ids[:, None] != ids[None, :], ids[:, None] != bank_ids[None, :]], axis=1)
    query_hardness = v64 @ np.concatenate([v64, b64]).T
    item_hardness = q64 @ q64.T

    def numpy_loss(q, v):
        query_term = anchored(q, v, np.concatenate([v, b64]), query_hardness, query_mask)
        item_term = anchored(v, q, q, item_hardness, ids[:, None] != ids[None, :])
        return (1 - w) * query_term + w * item_term

    assert loss.numpy() == pytest.approx(numpy_loss(q64, v64), rel=1e-4)
    np.testing.assert_allclose(got[0].numpy(), _numeric_gradient(lambda x: numpy_loss(x, v64), q64), atol=2e-3)
    np.testing.assert_allclose(got[1].numpy(), _numeric_gradient(lambda x: numpy_loss(q64, x), v64), atol=2e-3)


@pytest.mark.parametrize("streamed", [True, False])
def test_deduplicated_weighted_bank_logq_matches_numpy(streamed, monkeypatch):
    """One copy per id in the bank: its logQ term is P(y among the W rows read) = 1 − (1 − p_y)^W,
    and each bank row weighs w in the partition sum; streamed and as one logit matrix."""
    rng = np.random.default_rng(11)
    q, v, extra, first_v = _unit(rng, 4), _unit(rng, 4), _unit(rng, 3), _unit(rng, 3)
    ids, extra_ids, first_ids = np.array([1, 2, 2, 3]), np.array([3, 5, 6]), np.array([5, 4, 5])
    training_ids = np.array([1, 2, 2, 3, 3, 3, 4, 5, 6, 6])
    config = LossConfig(
        logq="counts",
        memory_bank_size=5,
        memory_bank_warmup_fraction=0.0,
        memory_bank_deduplicate=True,
        memory_bank_weight=0.5,
        mixed_negatives=3,
    )
    task = build_retrieval_task(config, 0.5, 4, "int64", training_ids=training_ids, corpus_size=10)
    if not streamed:
        monkeypatch.setattr(RetrievalLoss, "streams_bank", property(lambda self: False))
    counts = {1: 1, 2: 2, 3: 3, 4: 1, 5: 1, 6: 2}

    def p(x):
        return np.array([counts[int(i)] / 10 for i in x])

    def negatives(e):
        return NegativeSet(tf.constant(e), tf.constant(extra_ids), tf.zeros([3]), tf.ones([3], tf.bool))

    task(tf.constant(_unit(rng, 3)), tf.constant(first_v), tf.constant(first_ids), negatives(extra), training=True)
    # slots 0, 1, 2 hold rows 0, 1, 2 (ids 5, 4, 5): the newest copy of 5 is slot 2, so slot 0 is dropped
    np.testing.assert_array_equal(task.memory_bank.read().valid.numpy(), [False, True, True, False, False])
    query = tf.constant(q)
    with tf.GradientTape() as tape:
        tape.watch(query)
        loss = task(query, tf.constant(v), tf.constant(ids), extra_negatives=negatives(extra), training=True)
    gradient = tape.gradient(loss, query).numpy()

    def numpy_loss(q, tau=0.5, w=0.5, window=3):
        def log_q(y):
            p_y = p(y)
            return np.log(4 * p_y + (1 - (1 - p_y) ** window) + 3 / 10)  # B·p + P(y in bank) + B'/N

        bank_v, bank_ids = first_v[1:].astype(np.float64), first_ids[1:]
        sources = [  # (embeddings, ids, weight in the partition sum)
            (v.astype(np.float64), ids, 1.0),
            (extra.astype(np.float64), extra_ids, 1.0),
            (bank_v, bank_ids, w),
        ]
        positive = (q * v).sum(1) / tau - log_q(ids)
        losses = []
        for i in range(4):
            total = np.exp(positive[i])
            for embeddings, source_ids, weight in sources:
                logits = embeddings @ q[i] / tau - log_q(source_ids)
                total += weight * np.exp(logits)[source_ids != ids[i]].sum()
            losses.append(np.log(total) - positive[i])
        return float(np.mean(losses))

    q64 = q.astype(np.float64)
    assert float(loss) == pytest.approx(numpy_loss(q64), abs=1e-5)
    np.testing.assert_allclose(gradient, _numeric_gradient(numpy_loss, q64), atol=2e-4)
    weighted_out = numpy_loss(q64, w=1e-12)  # the bank's weight matters: w → 0 removes its rows
    assert abs(numpy_loss(q64) - weighted_out) > 1e-3


def test_bank_weight_needs_the_softmax_and_a_positive_value():
    with pytest.raises(ConfigError, match=r"`loss.memory_bank_weight` must be a positive float"):
        LossConfig(memory_bank_size=8, memory_bank_weight=0.0)
    with pytest.raises(ConfigError, match=r"`loss.memory_bank_weight` .* needs `loss.mode: softmax`, not 'bpr'"):
        LossConfig(mode="bpr", memory_bank_size=8, memory_bank_weight=0.5)
    from tfrec_towers.losses.modes import BPRLoss

    with pytest.raises(ValueError, match=r"`memory_bank_weight` .* needs the softmax mode, not BPRLoss"):
        RetrievalLoss(mode=BPRLoss(), memory_bank_weight=0.5)
    with pytest.raises(ValueError, match=r"`memory_bank_weight` must be a finite float > 0"):
        RetrievalLoss(memory_bank_weight=float("nan"))

"""Mixed negatives drawn by smoothed popularity, q_j ∝ p_j^α: the distribution, the draws and their log q."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from tfrec_towers.losses.mixed_negatives import MixedNegativeSampler, popularity_log_probabilities

IDS = np.array([11, 3, 25, 7, 40], np.int64)
COUNTS = np.array([1.0, 2.0, 4.0, 1.0, 8.0])
CORPUS = {"movie_id": IDS, "year": np.array([1995.0, 1996.0, 1972.0, 1980.0, 1999.0], np.float32)}


def test_popularity_probabilities_by_hand():
    log_q, log_z = popularity_log_probabilities(np.log(COUNTS), 0.5)
    weights = np.array([1.0, np.sqrt(2.0), 2.0, 1.0, np.sqrt(8.0)])  # counts^0.5
    np.testing.assert_allclose(np.exp(log_q), weights / weights.sum(), rtol=1e-12)
    assert log_z == pytest.approx(np.log(weights.sum()), rel=1e-12)
    uniform, _ = popularity_log_probabilities(np.log(COUNTS), 0.0)
    np.testing.assert_allclose(np.exp(uniform), np.full(5, 0.2), rtol=1e-12)
    same, _ = popularity_log_probabilities(np.log(COUNTS / 16.0), 1.0)  # units do not matter
    np.testing.assert_allclose(np.exp(same), COUNTS / COUNTS.sum(), rtol=1e-12)


def test_draws_follow_the_probabilities_and_log_q_is_each_draws_own():
    log_q, _ = popularity_log_probabilities(np.log(COUNTS), 0.75)
    sampler = MixedNegativeSampler(CORPUS, 40_000, "movie_id", seed=3, log_probabilities=log_q)
    features, ids, sampled_log_q = sampler.sample()
    ids, sampled_log_q = ids.numpy(), sampled_log_q.numpy()
    row = {int(i): r for r, i in enumerate(IDS)}
    rows = np.array([row[int(i)] for i in ids])
    np.testing.assert_allclose(sampled_log_q, log_q[rows].astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(features["year"].numpy(), CORPUS["year"][rows])
    frequencies = np.bincount(rows, minlength=5) / len(rows)
    expected = np.exp(log_q)
    # binomial standard error at n = 40,000 is below 0.0025: five of them is far beyond sampling noise
    standard_errors = np.sqrt(expected * (1 - expected) / len(rows))
    assert np.all(np.abs(frequencies - expected) < 5 * standard_errors), (frequencies, expected)


def test_a_row_of_probability_one_is_always_drawn():
    log_q = np.log(np.array([1e-12, 1e-12, 1.0 - 4e-12, 1e-12, 1e-12]))
    _, ids, _ = MixedNegativeSampler(CORPUS, 500, "movie_id", seed=0, log_probabilities=log_q).sample()
    assert set(ids.numpy().tolist()) == {25}


def test_config_says_weighted_and_a_checkpoint_restores_the_probabilities(tmp_path):
    log_q, _ = popularity_log_probabilities(np.log(COUNTS), 0.75)
    sampler = MixedNegativeSampler(CORPUS, 64, "movie_id", seed=1, log_probabilities=log_q)
    config = sampler.get_config()
    assert config["weighted"] is True and "log_probabilities" not in config
    path = tf.train.Checkpoint(sampler=sampler).write(str(tmp_path / "ckpt"))
    restored = MixedNegativeSampler.from_config(config)
    tf.train.Checkpoint(sampler=restored).read(path).assert_consumed()
    for seed in (0, 5):
        a, b = sampler.sample(seed=seed), restored.sample(seed=seed)
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
        np.testing.assert_array_equal(a[2].numpy(), b[2].numpy())


@pytest.mark.parametrize(
    "log_p, alpha, message",
    [
        (np.array([]), 0.75, "non-empty"),
        (np.array([0.0, np.inf]), 0.75, "finite"),
        (np.array([0.0, 1.0]), -0.5, "`alpha` must be a finite number ≥ 0. Received: -0.5"),
    ],
)
def test_popularity_validation(log_p, alpha, message):
    with pytest.raises(ValueError, match=message):
        popularity_log_probabilities(log_p, alpha)


def test_the_sampler_refuses_probabilities_that_are_not_a_distribution_over_its_rows():
    with pytest.raises(ValueError, match=r"\[5\] finite log probabilities"):
        MixedNegativeSampler(CORPUS, 4, "movie_id", log_probabilities=np.zeros(4))
    with pytest.raises(ValueError, match="must be normalised"):
        MixedNegativeSampler(CORPUS, 4, "movie_id", log_probabilities=np.zeros(5))


def _unit(rng, rows, dim=4):
    values = rng.normal(size=(rows, dim))
    return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)


def test_the_logq_of_popularity_sampled_negatives_is_their_exact_expected_count():
    """Q_y = B·p_y + B'·p_y^α / Σ_k p_k^α on every logit, the positive's included (numpy by hand)."""
    from tfrec_towers.losses.frequency import CountsFrequencyTable
    from tfrec_towers.losses.negatives import NegativeSet
    from tfrec_towers.losses.task import RetrievalLoss
    from tfrec_towers.losses.temperature import Temperature

    rng = np.random.default_rng(7)
    training_ids = np.repeat(IDS, COUNTS.astype(int))  # 16 examples: p = counts / 16
    p = dict(zip(IDS.tolist(), COUNTS / COUNTS.sum()))
    alpha, tau = 0.75, 0.5
    log_q, log_z = popularity_log_probabilities(np.log(COUNTS / COUNTS.sum()), alpha)
    task = RetrievalLoss(
        temperature=Temperature(tau),
        candidate_probability=CountsFrequencyTable.from_ids(training_ids),
        num_mixed_negatives=3,
        corpus_size=5,
        mixed_negatives_alpha=alpha,
        mixed_log_normaliser=log_z,
    )
    q, v, extra = _unit(rng, 3), _unit(rng, 3), _unit(rng, 3)
    ids, extra_ids = np.array([11, 25, 40]), np.array([3, 40, 7])  # 40 is an accidental hit for row 2
    row = {int(i): r for r, i in enumerate(IDS)}
    mixed = NegativeSet(
        tf.constant(extra),
        tf.constant(extra_ids),
        tf.constant(log_q[[row[i] for i in extra_ids]], tf.float32),
        tf.ones([3], tf.bool),
    )
    got = task(tf.constant(q), tf.constant(v), tf.constant(ids), extra_negatives=mixed, training=True).numpy()

    def log_expected(y):
        return np.log(3 * p[y] + 3 * p[y] ** alpha / np.exp(log_z))

    losses = []
    for i in range(3):
        positive = q[i] @ v[i] / tau - log_expected(int(ids[i]))
        negatives = [
            q[i] @ e / tau - log_expected(int(y)) for e, y in zip([*v, *extra], [*ids, *extra_ids]) if y != ids[i]
        ]
        logits = np.array([positive, *negatives])
        losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - positive)
    assert got == pytest.approx(np.mean(losses), rel=1e-5)
    assert task.get_config()["mixed_negatives_alpha"] == alpha and "mixed_log_normaliser" not in task.get_config()


def test_the_configuration_builds_a_popularity_sampler_and_its_exact_logq_from_the_training_counts():
    from helpers import tiny_config, trainable

    config = tiny_config("loss.mixed_negatives_alpha=0.75", "loss.mixed_negatives=64")
    make_model, _, data = trainable(config)
    model = make_model()
    corpus_ids = model.mixed_negatives.corpus[data.candidate_id].numpy()
    train_ids = np.asarray(data.train[data.candidate_id])
    counts = np.array([(train_ids == i).sum() for i in corpus_ids], np.float64)
    seen = counts > 0
    p = np.where(seen, counts / len(train_ids), counts[seen].min() / len(train_ids) / 2)  # unseen: half the rarest
    expected = p**0.75 / (p**0.75).sum()
    np.testing.assert_allclose(np.exp(model.mixed_negatives.log_q.numpy()), expected, rtol=1e-5)
    assert float(model.task.mixed_log_normaliser.numpy()) == pytest.approx(np.log((p**0.75).sum()), rel=1e-5)
    uniform = trainable(tiny_config("loss.mixed_negatives=64"))[0]()
    assert uniform.mixed_negatives.log_q is None and uniform.task.mixed_log_normaliser is None


def test_popularity_draws_need_counted_probabilities_for_an_exact_logq():
    from tfrec_towers.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="exact only with `loss.logq: counts`"):
        config_from_dict({"loss": {"mixed_negatives_alpha": 0.75, "logq": "streaming"}})
    with pytest.raises(ConfigError, match="`loss.mixed_negatives_alpha` must be a number ≥ 0"):
        config_from_dict({"loss": {"mixed_negatives_alpha": -1.0}})
    assert (
        config_from_dict({"loss": {"mixed_negatives_alpha": 0.75, "logq": "none"}}).loss.mixed_negatives_alpha == 0.75
    )

"""LazyAdam against a numpy Adam written from the paper: looked-up rows move as Adam moves them, the
others not at all; dense variables exactly as Keras's Adam; checkpoints carry its moments."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)
from helpers import tiny_config
from tfrec_pipelines.sources import prepare_data
from tfrec_pipelines.train import build_model, fit_model, training_columns
from tfrec_towers.build import make_optimizer
from tfrec_towers.config import ConfigError, TrainingConfig
from tfrec_towers.optimizers import LazyAdam

LR, B1, B2, EPS = 0.01, 0.9, 0.999, 1e-7


def _numpy_lazy_adam(table, batches, b2=B2):
    """Adam (Kingma & Ba, Algorithm 1, Keras's ε placement) applied row-wise to the rows each step looks up."""
    w, m, v = (np.array(table, np.float64), np.zeros(table.shape), np.zeros(table.shape))
    for t, (rows, grads) in enumerate(batches, start=1):
        summed = {}
        for row, grad in zip(rows, grads):  # repeated rows: their gradients add up, as a lookup's do
            summed[row] = summed.get(row, 0) + grad
        alpha = LR * np.sqrt(1 - b2**t) / (1 - B1**t)
        for row, g in summed.items():
            m[row] = B1 * m[row] + (1 - B1) * g
            v[row] = b2 * v[row] + (1 - b2) * g * g
            w[row] -= alpha * m[row] / (np.sqrt(v[row]) + EPS)
    return w, m, v


def _lookup_steps():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(10, 3)).astype(np.float32)
    batches = [  # float32 gradients, as the variable's
        ([1, 4, 4, 7], rng.normal(size=(4, 3)).astype(np.float32)),
        ([4, 2], rng.normal(size=(2, 3)).astype(np.float32)),
        ([9, 1, 1], rng.normal(size=(3, 3)).astype(np.float32)),
    ]
    return table, batches


def test_looked_up_rows_follow_adam_and_the_others_stay_put():
    table, batches = _lookup_steps()
    variable = tf.Variable(table)
    optimizer = LazyAdam(learning_rate=LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    for rows, grads in batches:
        with tf.GradientTape() as tape:  # the loss Σ g·w[rows] has the gradient g at each looked-up row
            loss = tf.reduce_sum(tf.gather(variable, rows) * tf.constant(grads, tf.float32))
        gradient = tape.gradient(loss, variable)
        assert isinstance(gradient, tf.IndexedSlices)
        optimizer.apply_gradients([(gradient, variable)])
    expected_w, expected_m, expected_v = _numpy_lazy_adam(table, batches)
    # float32 arithmetic: 1 − β₂ is 0.00099998713 in float32 (a relative 1.3e-5 from 0.001)
    np.testing.assert_allclose(variable.numpy(), expected_w, rtol=5e-5, atol=1e-6)
    np.testing.assert_allclose(optimizer._momentums[0].numpy(), expected_m, rtol=5e-5, atol=1e-7)
    np.testing.assert_allclose(optimizer._velocities[0].numpy(), expected_v, rtol=5e-5, atol=1e-9)
    untouched = [0, 3, 5, 6, 8]
    np.testing.assert_array_equal(variable.numpy()[untouched], table[untouched])
    # Keras's Adam, by contrast, keeps moving row 7 (looked up at step 1 only) by its decaying momentum.
    dense = tf.Variable(table)
    adam = tf.keras.optimizers.Adam(learning_rate=LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    for rows, grads in batches:
        adam.apply_gradients([(tf.IndexedSlices(tf.constant(grads, tf.float32), tf.constant(rows)), dense)])
    assert not np.allclose(dense.numpy()[7], expected_w[7])


def test_dense_gradients_get_keras_adam_exactly():
    rng = np.random.default_rng(1)
    start = rng.normal(size=(4, 2)).astype(np.float32)
    lazy, plain = tf.Variable(start), tf.Variable(start)
    lazy_opt, plain_opt = LazyAdam(learning_rate=LR), tf.keras.optimizers.Adam(learning_rate=LR)
    for _ in range(3):
        grad = tf.constant(rng.normal(size=(4, 2)), tf.float32)
        lazy_opt.apply_gradients([(grad, lazy)])
        plain_opt.apply_gradients([(grad, plain)])
    np.testing.assert_array_equal(lazy.numpy(), plain.numpy())


def test_the_configuration_builds_it_and_it_round_trips_through_its_config():
    optimizer = make_optimizer(TrainingConfig(optimizer="lazy_adam", learning_rate=0.02))
    assert isinstance(optimizer, LazyAdam) and float(optimizer.learning_rate) == pytest.approx(0.02)
    again = tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(optimizer))
    assert isinstance(again, LazyAdam) and float(again.learning_rate) == pytest.approx(0.02)


@pytest.mark.parametrize("name", ["lazy_adam", "adam"])
@pytest.mark.parametrize("warmup", [0, 5])
def test_adam_beta_2_is_the_second_moment_decay_the_optimizer_steps_with(name, warmup):
    table, batches = _lookup_steps()
    training = TrainingConfig(optimizer=name, learning_rate=LR, adam_beta_2=0.98, learning_rate_warmup_steps=warmup)
    optimizer = make_optimizer(training)
    assert float(optimizer.beta_2) == pytest.approx(0.98)
    if warmup:
        return  # the schedule's rates are tests/test_schedules.py's; here only that β₂ reaches the optimizer
    variable = tf.Variable(table)
    for rows, grads in batches:
        optimizer.apply_gradients([(tf.IndexedSlices(tf.constant(grads), tf.constant(rows)), variable)])
    expected_w, _, expected_v = _numpy_lazy_adam(table, batches, b2=0.98)
    if name == "lazy_adam":  # Keras's Adam also moves untouched rows, so only its second moments compare
        np.testing.assert_allclose(variable.numpy(), expected_w, rtol=5e-5, atol=1e-6)
    # a row looked up once, at the first step, then decayed twice by β₂ (Adam) or never again (lazy)
    seen_once = 7
    decays = 2 if name == "adam" else 0
    np.testing.assert_allclose(
        optimizer._velocities[0].numpy()[seen_once],
        expected_v[seen_once] * 0.98**decays,
        rtol=5e-5,
    )


def test_adam_beta_2_needs_an_adam_and_a_value_in_the_open_unit_interval():
    for bad in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"training\.adam_beta_2"):
            TrainingConfig(adam_beta_2=bad)
    with pytest.raises(ConfigError, match=r"training\.adam_beta_2.*'sgd'"):
        TrainingConfig(optimizer="sgd", adam_beta_2=0.98)
    assert float(make_optimizer(TrainingConfig()).beta_2) == pytest.approx(0.999)  # Keras's default


def test_a_model_trains_with_it_and_its_checkpoint_restores_the_moments(tmp_path):
    config = tiny_config("training.optimizer=lazy_adam")
    tf.keras.utils.set_random_seed(0)
    prepared = prepare_data(config)
    data, spec = prepared.data, prepared.adapted_spec()
    model = build_model(spec, config, data)
    assert isinstance(model.optimizer, LazyAdam)
    history = fit_model(model, training_columns(data, spec, prepared.weight_column), config.training, 0)[0]
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"]).all()
    saved = tf.train.Checkpoint(optimizer=model.optimizer, model=model).save(str(tmp_path / "ckpt"))
    slots = [s.numpy() for s in model.optimizer._momentums]
    assert any(np.count_nonzero(s) for s in slots)
    for s in model.optimizer._momentums:
        s.assign(tf.zeros_like(s))
    tf.train.Checkpoint(optimizer=model.optimizer, model=model).restore(saved).assert_existing_objects_matched()
    for restored, expected in zip(model.optimizer._momentums, slots):
        np.testing.assert_array_equal(restored.numpy(), expected)

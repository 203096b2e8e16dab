"""Learning-rate warm-up and decay: the formula at hand-computed steps, the configuration, the optimizer it
builds, serialisation, and a resumed run continuing the schedule where it stopped."""

import math

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)
from helpers import tiny_config, trainable
from tfrec_pipelines.sources import prepare_data
from tfrec_pipelines.train import build_model, fit_model, training_steps
from tfrec_towers.build import make_optimizer
from tfrec_towers.config import ConfigError, TrainingConfig, apply_overrides, config_from_dict
from tfrec_towers.config_template import commented_yaml
from tfrec_towers.optimizers import LazyAdam
from tfrec_towers.schedules import WarmupDecay

# η = 0.01, W = 4 warm-up steps, T = 13 steps in all, f = 0.1: the decay runs over steps 4 … 12
# (T − 1 − W = 8 steps), so step 6 is p = 1/4 and step 8 is p = 1/2 of it.
PEAK, WARMUP, TOTAL, FRACTION = 0.01, 4, 13, 0.1
COSINE_QUARTER = 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))  # 0.0086819805
HAND = {
    # step: (cosine, linear); the warm-up is (t + 1)/W · η, shared by both
    0: (0.0025, 0.0025),  # warm-up start: η / W
    1: (0.005, 0.005),  # warm-up middle
    3: (0.01, 0.01),  # warm-up end: η
    4: (0.01, 0.01),  # decay start, p = 0
    6: (COSINE_QUARTER, 0.00775),  # p = 1/4: linear η (f + (1 − f) · 3/4)
    8: (0.0055, 0.0055),  # decay middle, p = 1/2: both η (f + (1 − f) / 2)
    12: (0.001, 0.001),  # the last step: f · η
    20: (0.001, 0.001),  # past the last step: stays at f · η
}


@pytest.mark.parametrize("decay, column", [("cosine", 0), ("linear", 1)])
def test_warmup_then_decay_matches_hand_computed_rates(decay, column):
    schedule = WarmupDecay(PEAK, WARMUP, decay, FRACTION, TOTAL)
    for step, expected in HAND.items():
        assert float(schedule(step)) == pytest.approx(expected[column], rel=1e-6), step
        assert float(schedule(tf.constant(step, tf.int64))) == pytest.approx(expected[column], rel=1e-6), step


def test_warmup_alone_then_constant_and_decay_alone_from_the_first_step():
    warmup = WarmupDecay(0.02, warmup_steps=5)
    assert [round(float(warmup(t)), 7) for t in (0, 2, 4, 5, 1000)] == [0.004, 0.012, 0.02, 0.02, 0.02]
    linear = WarmupDecay(0.02, decay="linear", final_learning_rate_fraction=0.0, total_steps=5)
    assert [round(float(linear(t)), 7) for t in range(6)] == [0.02, 0.015, 0.01, 0.005, 0.0, 0.0]
    single = WarmupDecay(0.02, warmup_steps=2, decay="cosine", final_learning_rate_fraction=0.5, total_steps=3)
    assert [round(float(single(t)), 7) for t in range(3)] == [0.01, 0.02, 0.01]  # one decay step: it is the last


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"warmup_steps": -1}, r"`warmup_steps` must be an int >= 0"),
        ({"decay": "exponential"}, r"`decay` must be one of 'none', 'cosine', 'linear'"),
        ({"final_learning_rate_fraction": 1.5}, r"`final_learning_rate_fraction` must be a float in \[0.0, 1.0\]"),
        ({"decay": "cosine"}, r"`total_steps` must exceed `warmup_steps` \(0\).*Received: None"),
        (
            {"decay": "linear", "warmup_steps": 10, "total_steps": 10},
            r"`total_steps` must exceed `warmup_steps` \(10\)",
        ),
    ],
)
def test_the_schedule_refuses_values_outside_their_ranges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WarmupDecay(0.01, **kwargs)


def test_get_config_holds_the_hyper_parameters_and_round_trips_through_the_optimizer():
    schedule = WarmupDecay(PEAK, WARMUP, "cosine", FRACTION, TOTAL)
    assert schedule.get_config() == {
        "learning_rate": PEAK,
        "warmup_steps": WARMUP,
        "decay": "cosine",
        "final_learning_rate_fraction": FRACTION,
        "total_steps": TOTAL,
    }
    optimizer = tf.keras.optimizers.Adam(learning_rate=schedule)
    restored = tf.keras.optimizers.Adam.from_config(optimizer.get_config())
    rebuilt = restored.get_config()["learning_rate"]
    assert isinstance(restored._learning_rate, WarmupDecay) and rebuilt["config"] == schedule.get_config()
    serialized = tf.keras.optimizers.schedules.serialize(schedule)
    again = tf.keras.optimizers.schedules.deserialize(serialized)
    for step, (cosine, _) in HAND.items():
        assert float(again(step)) == pytest.approx(cosine, rel=1e-6)


# --- the configuration ------------------------------------------------------------------------


def test_the_keys_are_validated_naming_them():
    with pytest.raises(ConfigError, match=r"`training.learning_rate_warmup_steps` must be ≥ 0 .*Received: -3"):
        config_from_dict({"training": {"learning_rate_warmup_steps": -3}})
    for fraction in (-0.1, 1.01):
        with pytest.raises(ConfigError, match=r"`training.final_learning_rate_fraction` must be in \[0, 1\]"):
            config_from_dict({"training": {"final_learning_rate_fraction": fraction}})
    with pytest.raises(
        ConfigError, match=r"`training.learning_rate_decay` must be one of \['none', 'cosine', 'linear'\]"
    ):
        config_from_dict({"training": {"learning_rate_decay": "step"}})
    config = config_from_dict(
        {
            "training": {
                "learning_rate_warmup_steps": 100,
                "learning_rate_decay": "cosine",
                "final_learning_rate_fraction": 0.05,
            }
        }
    )
    assert (config.training.learning_rate_warmup_steps, config.training.final_learning_rate_fraction) == (100, 0.05)


def test_init_writes_the_keys_with_their_comment():
    template = commented_yaml()
    for key, default in (
        ("learning_rate_warmup_steps", "0"),
        ("learning_rate_decay", "none"),
        ("final_learning_rate_fraction", "0.0"),
    ):
        lines = template.splitlines()
        index = lines.index(f"  {key}: {default}")
        assert lines[index - 1].startswith("  # "), key


def test_make_optimizer_without_a_schedule_is_the_constant_rate_optimizer_of_before():
    optimizer = make_optimizer(TrainingConfig())
    assert not isinstance(optimizer._learning_rate, tf.keras.optimizers.schedules.LearningRateSchedule)
    assert float(optimizer.learning_rate) == pytest.approx(0.003)
    warm = make_optimizer(TrainingConfig(learning_rate_warmup_steps=10))  # no decay: no step count needed
    assert float(warm._learning_rate(0)) == pytest.approx(0.0003)


def test_a_decay_needs_more_steps_than_the_warmup_naming_the_keys():
    decaying = TrainingConfig(learning_rate_decay="linear", learning_rate_warmup_steps=50)
    with pytest.raises(ConfigError, match=r"`training.learning_rate_decay` 'linear' decays over the run's steps"):
        make_optimizer(decaying)
    with pytest.raises(ConfigError, match=r"`training.learning_rate_warmup_steps` \(50\) must be below the run's 40"):
        make_optimizer(decaying, total_steps=40)
    config = tiny_config("training.learning_rate_decay=cosine", "loss.logq=none", "loss.mixed_negatives=0")
    with pytest.raises(ConfigError, match=r"`training.learning_rate_decay` 'cosine' decays .* pass it as"):
        build_model(_spec(config), config)  # without the data its steps are counted on


def _spec(config):
    return prepare_data(config).adapted_spec()


@pytest.mark.slow
def test_the_default_configuration_trains_bit_identically_to_a_constant_rate_lazy_adam():
    config = tiny_config("loss.mixed_negatives=0", "loss.logq=none")
    make_model, columns, _ = trainable(config)
    configured = make_model()  # each model is built, then trained, from the same seeded state
    history, _, _ = fit_model(configured, columns, config.training, 0)
    reference = make_model()
    reference.compile(optimizer=LazyAdam(learning_rate=config.training.learning_rate))
    fit_model(reference, columns, config.training, 0)
    for got, expected in zip(configured.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, expected)
    assert history["learning_rate"] == [pytest.approx(0.003)]


# --- resumed training continues the schedule ----------------------------------------------------

SCHEDULED = (
    "loss.mixed_negatives=0",
    "training.epochs=2",
    "training.checkpoint_every_steps=3",
    "training.learning_rate=0.01",
    "training.learning_rate_warmup_steps=4",
    "training.learning_rate_decay=cosine",
    "training.final_learning_rate_fraction=0.1",
)


class _Rates(tf.keras.callbacks.Callback):
    """``{step: rate applied at that step}`` of every batch; raises after batch ``crash_at`` (if set)."""

    def __init__(self, crash_at=None):
        super().__init__()
        self.rates, self.crash_at = {}, crash_at

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy()) - 1
        self.rates[step] = float(self.model.optimizer.learning_rate.numpy())
        if step + 1 == self.crash_at:
            raise RuntimeError("crash")


def _expected_rate(step, total):
    """The hand formula with η = 0.01, W = 4, f = 0.1 (the module docstring of schedules.py)."""
    if step < 4:
        return 0.01 * (step + 1) / 4
    progress = min(1.0, (step - 4) / (total - 1 - 4))
    return 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@pytest.mark.slow
def test_a_run_stopped_and_resumed_has_the_rates_of_an_unbroken_run_and_logs_them_per_epoch(tmp_path):
    config = tiny_config(*SCHEDULED)
    make_model, columns, data = trainable(config)
    per_epoch = math.ceil(len(columns["item_id"]) / config.training.batch_size)
    total = 2 * per_epoch
    assert training_steps(config, _spec(config), data) == total == 22

    unbroken = _Rates()
    expected_history, _, _ = fit_model(make_model(), columns, config.training, 0, [unbroken], tmp_path / "unbroken")
    assert sorted(unbroken.rates) == list(range(total))
    for step, rate in unbroken.rates.items():
        assert rate == pytest.approx(_expected_rate(step, total), rel=1e-6), step
    assert expected_history["learning_rate"] == [
        pytest.approx(_expected_rate(per_epoch - 1, total), rel=1e-6),
        pytest.approx(0.001, rel=1e-6),  # the last step: f · η
    ]

    crashed = _Rates(crash_at=8)  # the last checkpoint is at step 6, mid-epoch
    with pytest.raises(RuntimeError, match="crash"):
        fit_model(make_model(), columns, config.training, 0, [crashed], tmp_path / "resumed")
    resumed = _Rates()
    model = make_model()
    history, _, _ = fit_model(model, columns, config.training, 0, [resumed], tmp_path / "resumed")
    assert sorted(resumed.rates) == list(range(6, total))
    for step in range(6, total):
        assert resumed.rates[step] == unbroken.rates[step], step
    assert history["learning_rate"] == expected_history["learning_rate"]
    assert int(model.optimizer.iterations.numpy()) == total


def test_every_position_counts_the_steps_of_its_sequences():
    config = tiny_config(
        "training.example_format=every_position",
        "model.history.max_length=4",
        "training.batch_size=16",
        "training.epochs=3",
        "training.learning_rate_decay=linear",
    )
    _, _, data = trainable(config)
    # 120 synthetic users of 11 training items: 10 targets each, in ⌈10 / 4⌉ = 3 sequences: 360 sequences
    assert training_steps(config, _spec(config), data) == 3 * math.ceil(360 / 16)
    per_prefix = apply_overrides(config, ["training.example_format=per_prefix"])
    assert training_steps(per_prefix, _spec(per_prefix), data) == 3 * math.ceil(1320 / 16)

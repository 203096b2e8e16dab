"""The softmax → hinge curriculum (``loss.mode: softmax_hinge``): its value and gradient at each step against
numpy, the step counter (once per training step of the retrieval loss, split by tower or not, never in
evaluation; saved by checkpoints; the same on every replica), its configuration keys, and a short fit."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from helpers import tiny_config, trainable
from tfrec_pipelines.checkpointing import create_tower_variables
from tfrec_pipelines.dataset import epoch_batches
from tfrec_pipelines.train import fit_model
from tfrec_towers.config import AdaptiveConfig, ConfigError, ExperimentConfig, LossConfig, apply_overrides
from tfrec_towers.losses import modes
from tfrec_towers.losses.factory import build_retrieval_task
from tfrec_towers.losses.task import RetrievalLoss

# --- numpy references, one explicit loop per row ----------------------------------------------------------


def _np_softmax_row(positive, valid):
    logits = np.concatenate([[positive], valid]).astype(np.float64)
    top = logits.max()
    return np.log(np.exp(logits - top).sum()) + top - positive


def _np_hinge_row(positive, valid, margin, hardest):
    if len(valid) == 0:
        return 0.0
    used = valid.max(keepdims=True) if hardest else valid
    return np.mean(np.maximum(0.0, margin - positive + used))


def _np_loss(weight, positive, negative, mask, sample_weight, margin, hardest):
    """``Σ_i a_i·((1 − w)·CE_i + w·hinge_i) / Σ_i a_i``."""
    rows = []
    for i in range(len(positive)):
        valid = negative[i][mask[i]].astype(np.float64)
        softmax = _np_softmax_row(positive[i], valid)
        hinge = _np_hinge_row(positive[i], valid, margin, hardest)
        rows.append((1 - weight) * softmax + weight * hinge)
    return np.sum(sample_weight * np.array(rows)) / np.sum(sample_weight)


def _np_gradient(weight, positive, negative, mask, sample_weight, margin, hardest):
    """``(∂L/∂z_i [B], ∂L/∂z_ij [B, N])``: the softmax's ``p − 1`` and ``p_j``, the hinge's active pairs."""
    d_positive, d_negative = np.zeros(len(positive)), np.zeros(negative.shape)
    share = sample_weight / np.sum(sample_weight)
    for i in range(len(positive)):
        columns = np.flatnonzero(mask[i])
        logits = np.concatenate([[positive[i]], negative[i, columns]]).astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        d_positive[i] += share[i] * (1 - weight) * (p[0] - 1)
        d_negative[i, columns] += share[i] * (1 - weight) * p[1:]
        if len(columns) == 0:
            continue
        used = columns[[np.argmax(negative[i, columns])]] if hardest else columns
        for j in used:
            if margin - positive[i] + negative[i, j] > 0:
                d_negative[i, j] += share[i] * weight / len(used)
                d_positive[i] -= share[i] * weight / len(used)
    return d_positive, d_negative


def _batch(seed, batch=6, num_negatives=5):
    rng = np.random.default_rng(seed)
    positive = rng.normal(size=batch).astype(np.float32)
    negative = rng.normal(scale=1.5, size=(batch, num_negatives)).astype(np.float32)
    mask = rng.random((batch, num_negatives)) > 0.3
    mask[:, 0] = True
    mask[2] = False  # a row without a valid negative: its softmax and hinge are 0
    negative = np.where(mask, negative, np.nan).astype(np.float32)  # masked slots never enter the loss
    sample_weight = rng.uniform(0.2, 2.0, size=batch).astype(np.float32)
    sample_weight[4] = 0.0
    return positive, negative, mask, sample_weight


def _steps(loss):
    return int(loss.steps.numpy())


# --- (1) the value and the gradient at each step ----------------------------------------------------------

# (hinge_weight, hinge_start_steps, hinge_ramp_steps, {step t: w_t by hand})
SCHEDULES = [
    (0.8, 3, 4, {0: 0.0, 2: 0.0, 3: 0.0, 4: 0.2, 5: 0.4, 6: 0.6, 7: 0.8, 11: 0.8}),  # before, mid-ramp, after
    (1.0, 0, 2, {0: 0.0, 1: 0.5, 2: 1.0, 5: 1.0}),
    (0.5, 2, 0, {0: 0.0, 1: 0.0, 2: 0.5, 6: 0.5}),  # no ramp: a jump at the start
    (0.5, 0, 0, {0: 0.5, 3: 0.5}),  # a constant weighted sum
]


@pytest.mark.parametrize("hardest", [False, True], ids=["all_negatives", "hardest_negative"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"h{s[0]}_s{s[1]}_r{s[2]}")
def test_value_and_gradient_at_each_step_against_numpy(schedule, hardest):
    hinge_weight, start, ramp, expected_weights = schedule
    margin = 0.7
    positive, negative, mask, sample_weight = _batch(int(10 * hinge_weight) + start + ramp)
    loss = modes.make_mode_loss(
        "softmax_hinge",
        margin=margin,
        hardest_negative_only=hardest,
        hinge_weight=hinge_weight,
        hinge_start_steps=start,
        hinge_ramp_steps=ramp,
    )
    for step in range(max(expected_weights) + 1):
        assert _steps(loss) == step
        if step in expected_weights:
            weight = expected_weights[step]
            assert float(loss.current_hinge_weight()) == pytest.approx(weight, abs=1e-7)
            logits = tf.Variable(positive), tf.Variable(negative)
            with tf.GradientTape() as tape:
                got = loss(*logits, mask, sample_weight)
            d_positive, d_negative = tape.gradient(got, logits)
            expected = _np_loss(weight, positive, negative, mask, sample_weight, margin, hardest)
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
            np_positive, np_negative = _np_gradient(weight, positive, negative, mask, sample_weight, margin, hardest)
            np.testing.assert_allclose(d_positive.numpy(), np_positive, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(d_negative.numpy(), np_negative, rtol=1e-4, atol=1e-6)
        loss.finish_training_step()


def test_the_weight_is_read_from_the_counter_inside_the_graph():
    positive, negative, mask, sample_weight = _batch(1)
    loss = modes.SoftmaxHingeLoss(margin=0.5, hinge_start_steps=1, hinge_ramp_steps=2)
    traced = tf.function(lambda: loss(positive, negative, mask, sample_weight))
    for weight in (0.0, 0.0, 0.5, 1.0, 1.0):
        expected = _np_loss(weight, positive, negative, mask, sample_weight, 0.5, False)
        np.testing.assert_allclose(traced().numpy(), expected, rtol=1e-5, atol=1e-6)
        loss.finish_training_step()
    assert traced.experimental_get_tracing_count() == 1  # one graph for every step: no Python-side weight


def test_the_parts_are_the_softmax_and_the_hinge_modes():
    positive, negative, mask, sample_weight = _batch(2)
    curriculum = modes.SoftmaxHingeLoss(margin=0.4, hardest_negative_only=True, hinge_weight=1.0)
    softmax = modes.SampledSoftmaxLoss()(positive, negative, mask, sample_weight).numpy()
    hinge = modes.HingeLoss(margin=0.4, hardest_negative_only=True)(positive, negative, mask, sample_weight).numpy()
    np.testing.assert_allclose(curriculum(positive, negative, mask, sample_weight).numpy(), hinge, rtol=1e-6)
    half = modes.SoftmaxHingeLoss(margin=0.4, hardest_negative_only=True, hinge_weight=0.5)
    np.testing.assert_allclose(half(positive, negative, mask, sample_weight).numpy(), (softmax + hinge) / 2, rtol=1e-6)
    assert not curriculum.takes_log_sum_exp  # the hinge reads every logit: nothing is streamed to it
    with pytest.raises(ValueError, match="cannot take `extra_log_sum_exp`"):
        curriculum(positive, negative, mask, extra_log_sum_exp=tf.zeros([6]))


# --- (2) the counter in the retrieval loss: once per training step, never in evaluation -------------------

BATCH, DIM = 6, 4


def _embeddings(seed):
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    queries = unit(rng.normal(size=(BATCH, DIM))).astype(np.float32)
    candidates = unit(rng.normal(size=(BATCH, DIM))).astype(np.float32)
    ids = np.array([3, 7, 7, 1, 9, 4], np.int64)  # a repeated id: an accidental hit
    return tf.constant(queries), tf.constant(candidates), tf.constant(ids)


def _task(**overrides):
    options = dict(
        mode="softmax_hinge",
        margin=0.3,
        hinge_start_steps=1,
        hinge_ramp_steps=2,
        memory_bank_size=8,
        memory_bank_warmup_steps=0,
        memory_bank_warmup_fraction=0.0,
        logq="none",
        mixed_negatives=0,
    )
    return build_retrieval_task(LossConfig(**{**options, **overrides}), 0.1, DIM, "int64")


def _np_task_loss(weight, queries, candidates, ids, bank, bank_ids):
    """The task's loss by numpy: logits ⟨q_i, n_j⟩ / τ over the batch's candidates and the bank's rows, the
    negatives with the positive's id masked (the diagonal, an accidental hit, a stored copy)."""
    negatives = np.concatenate([candidates, np.reshape(bank, [-1, DIM])])
    negative_ids = np.concatenate([ids, np.asarray(bank_ids, np.int64)])
    positive = np.sum(queries * candidates, axis=1) / 0.1
    mask = ids[:, None] != negative_ids[None, :]
    return _np_loss(weight, positive, queries @ negatives.T / 0.1, mask, np.ones(BATCH), 0.3, False)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # memory bank, split by tower: the mode is called twice per training step
        {"memory_bank_trains": "both_towers"},  # memory bank, one call
        {"memory_bank_size": 0},  # in-batch negatives only
        {"memory_bank_size": 0, "adaptive": AdaptiveConfig(enabled=True, item_anchored_weight=0.3)},  # + item term
    ],
    ids=["bank_split_by_tower", "bank_both_towers", "in_batch", "adaptive_item_anchored"],
)
def test_the_counter_advances_once_per_training_step_and_never_in_evaluation(overrides):
    task = _task(**overrides)
    assert isinstance(task, RetrievalLoss) and isinstance(task.mode, modes.SoftmaxHingeLoss)
    assert not task.streams_bank  # with a bank, its logits are one matrix the hinge reads
    _, _, ids = _embeddings(0)
    train = tf.function(lambda q, v: task(q, v, ids, training=True))  # as in Keras's train_step
    evaluate = tf.function(lambda q, v: task(q, v, ids, training=False))
    enqueued, enqueued_ids = [], []  # every row the bank was given, oldest first: it keeps the last 8
    for step, weight in enumerate([0.0, 0.0, 0.5, 1.0, 1.0]):  # w_t by hand: start 1, ramp 2
        queries, candidates, _ = _embeddings(step)
        evaluated = evaluate(queries, candidates)
        evaluate(queries, candidates)  # twice: evaluation never counts
        assert _steps(task.mode) == step
        trained = train(queries, candidates)
        assert _steps(task.mode) == step + 1
        # the training step's loss is that of w_t, t the steps before it (the bank is read before the enqueue)
        np.testing.assert_allclose(trained.numpy(), evaluated.numpy(), rtol=1e-6)
        if task.adaptive is None:
            stored = slice(-8, None) if task.memory_bank is not None else slice(0)
            expected = _np_task_loss(
                weight, queries.numpy(), candidates.numpy(), ids.numpy(), enqueued[stored], enqueued_ids[stored]
            )
            np.testing.assert_allclose(evaluated.numpy(), expected, rtol=1e-5)
        enqueued.extend(candidates.numpy())
        enqueued_ids.extend(ids.numpy())
    if task.memory_bank is not None:
        assert int(task.memory_bank.steps.numpy()) == 5  # the bank's own count of training steps agrees


def test_an_xla_compiled_mode_counts_the_same_steps():
    eager, compiled = _task(), _task()
    compiled.xla_training = True
    queries, candidates, ids = _embeddings(3)
    steps = {id(t): tf.function(lambda q, v, t=t: t(q, v, ids, training=True)) for t in (eager, compiled)}
    for _ in range(3):
        plain = steps[id(eager)](queries, candidates)
        xla = steps[id(compiled)](queries, candidates)
        np.testing.assert_allclose(xla.numpy(), plain.numpy(), rtol=1e-5)
    assert _steps(eager.mode) == _steps(compiled.mode) == 3


# --- (3) configuration of the layer, checkpoints ----------------------------------------------------------


def test_config_holds_the_hyper_parameters_and_round_trips():
    loss = modes.make_mode_loss(
        "softmax_hinge",
        margin=0.25,
        hardest_negative_only=True,
        hinge_weight=0.6,
        hinge_start_steps=10,
        hinge_ramp_steps=30,
    )
    for _ in range(4):
        loss.finish_training_step()
    config = loss.get_config()
    assert {k: config[k] for k in modes.mode_options("softmax_hinge")} == {
        "margin": 0.25,
        "hardest_negative_only": True,
        "hinge_weight": 0.6,
        "hinge_start_steps": 10,
        "hinge_ramp_steps": 30,
    }
    assert "steps" not in config  # state lives in the weight, not in the config
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(loss))
    assert type(restored) is modes.SoftmaxHingeLoss and restored.get_config() == config
    assert modes.SoftmaxHingeLoss.from_config(config).get_config() == config
    assert _steps(restored) == 0
    task = _task(hardest_negative_only=True, hinge_weight=0.6)
    rebuilt = RetrievalLoss.from_config(task.get_config())
    assert rebuilt.get_config() == task.get_config() and type(rebuilt.mode) is modes.SoftmaxHingeLoss


def test_a_checkpoint_restores_the_counter(tmp_path):
    task = _task()
    queries, candidates, ids = _embeddings(5)
    for _ in range(3):
        task(queries, candidates, ids, training=True)
    path = tf.train.Checkpoint(task=task).save(str(tmp_path / "ckpt"))
    restored = RetrievalLoss.from_config(task.get_config())
    assert _steps(restored.mode) == 0
    tf.train.Checkpoint(task=restored).restore(path).assert_consumed()
    assert _steps(restored.mode) == 3
    assert float(restored.mode.current_hinge_weight()) == 1.0
    np.testing.assert_allclose(
        restored(queries, candidates, ids, training=False).numpy(),
        task(queries, candidates, ids, training=False).numpy(),
    )
    assert [w.name for w in task.mode.weights] == ["steps:0"] and not task.mode.trainable_weights


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "`margin` is required for the hinge loss"),
        ({"margin": 0.5, "hinge_weight": 0.0}, r"`hinge_weight` must be a float in \(0.0, 1.0\]. Received: 0.0"),
        ({"margin": 0.5, "hinge_weight": 1.5}, r"`hinge_weight` must be a float in \(0.0, 1.0\]"),
        ({"margin": 0.5, "hinge_start_steps": -1}, "`hinge_start_steps` must be"),
        ({"margin": 0.5, "hinge_ramp_steps": 2.5}, "`hinge_ramp_steps` must be"),
        ({"margin": 0.5, "hinge_ramp_steps": True}, "`hinge_ramp_steps` must be"),
        ({"margin": 0.5, "hardest_negative_only": 1}, "`hardest_negative_only` must be a bool"),
        ({"margin": 0.5, "negative_weight": 1.0}, "`negative_weight` is not an option of the 'softmax_hinge' mode"),
    ],
)
def test_the_layer_refuses_bad_options_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        modes.make_mode_loss("softmax_hinge", **kwargs)


# --- (4) the configuration keys -------------------------------------------------------------------------

BAD_CONFIGS = [
    (["loss.mode=softmax_hinge"], r"`loss\.margin` is required when `loss\.mode` is 'softmax_hinge'"),
    (["loss.mode=softmax_hinge", "loss.margin=0"], r"`loss\.margin` must be a positive float"),
    (
        ["loss.mode=softmax_hinge", "loss.margin=0.5", "loss.hinge_weight=0"],
        r"`loss\.hinge_weight` must be in \(0, 1\]",
    ),
    (
        ["loss.mode=softmax_hinge", "loss.margin=0.5", "loss.hinge_weight=1.01"],
        r"`loss\.hinge_weight` must be in \(0, 1\]",
    ),
    (
        ["loss.mode=softmax_hinge", "loss.margin=0.5", "loss.hinge_weight=.nan"],
        r"`loss\.hinge_weight` must be a finite number",
    ),
    (
        ["loss.mode=softmax_hinge", "loss.margin=0.5", "loss.hinge_start_steps=-1"],
        r"`loss\.hinge_start_steps` must be an integer ≥ 0\. Received: -1",
    ),
    (
        ["loss.mode=softmax_hinge", "loss.margin=0.5", "loss.hinge_ramp_steps=-5"],
        r"`loss\.hinge_ramp_steps` must be an integer ≥ 0\. Received: -5",
    ),
    (
        ["loss.mode=softmax_hinge", "loss.margin=0.5", "loss.hinge_ramp_steps=2.5"],
        r"`loss\.hinge_ramp_steps` must be an integer",
    ),
    (["loss.hinge_weight=0.5"], r"`loss\.hinge_weight` applies only to `loss\.mode` 'softmax_hinge', not 'softmax'"),
    (
        ["loss.mode=hinge", "loss.margin=0.5", "loss.hinge_start_steps=10"],
        r"`loss\.hinge_start_steps` applies only to .*'hinge'",
    ),
    (
        ["loss.mode=bpr", "loss.hinge_ramp_steps=100"],
        r"`loss\.hinge_ramp_steps` applies only to `loss\.mode` 'softmax_hinge', not 'bpr'",
    ),
    (
        ["loss.mode=bce", "loss.margin=0.5"],
        r"`loss\.margin` applies only to `loss\.mode` 'hinge' or 'softmax_hinge', not 'bce'",
    ),
    (
        ["loss.hardest_negative_only=true"],
        r"`loss\.hardest_negative_only` applies to the pair-wise modes and 'softmax_hinge'",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS, ids=[" ".join(o) for o, _ in BAD_CONFIGS])
def test_the_configuration_refuses_bad_keys_naming_them(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(ExperimentConfig(), overrides)


def test_the_configuration_builds_the_layer_with_its_keys():
    config = apply_overrides(
        ExperimentConfig(),
        [
            "loss.mode=softmax_hinge",
            "loss.margin=0.4",
            "loss.hardest_negative_only=true",
            "loss.hinge_weight=0.5",
            "loss.hinge_start_steps=100",
            "loss.hinge_ramp_steps=400",
            "loss.memory_bank_size=64",  # combines with every negative source, like the hinge
            "loss.memory_bank_warmup_fraction=0",
            "loss.logq=streaming",
        ],
    )
    task = build_retrieval_task(config.loss, 0.05, 8, "int64", corpus_size=50)
    assert isinstance(task.mode, modes.SoftmaxHingeLoss)
    assert {k: task.mode.get_config()[k] for k in modes.mode_options("softmax_hinge")} == {
        "margin": 0.4,
        "hardest_negative_only": True,
        "hinge_weight": 0.5,
        "hinge_start_steps": 100,
        "hinge_ramp_steps": 400,
    }
    default = LossConfig(mode="softmax_hinge", margin=0.1)
    assert (default.hinge_weight, default.hinge_start_steps, default.hinge_ramp_steps) == (1.0, 0, 0)


# --- (5) a short fit ---------------------------------------------------------------------------------


def test_a_ramped_run_trains_counts_its_steps_and_checkpoints_them(tmp_path):
    config = tiny_config(
        "loss.mode=softmax_hinge",
        "loss.margin=0.5",
        "loss.hardest_negative_only=true",
        "loss.hinge_start_steps=2",
        "loss.hinge_ramp_steps=6",
        "loss.memory_bank_size=256",  # split by tower: two calls of the mode per step
        "loss.logq=none",
        "loss.mixed_negatives=0",
    )
    make_model, columns, _ = trainable(config)
    model = make_model()
    assert isinstance(model.task.mode, modes.SoftmaxHingeLoss)
    create_tower_variables(model)
    towers = lambda m: m.query_tower.trainable_weights + m.candidate_tower.trainable_weights  # noqa: E731
    before = [w.numpy().copy() for w in towers(model)]
    history, _, _ = fit_model(model, columns, config.training, 0)
    steps = int(model.optimizer.iterations.numpy())
    assert steps > 8 and _steps(model.task.mode) == steps  # past the ramp, one count per optimizer step
    assert float(model.task.mode.current_hinge_weight()) == 1.0
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    assert all(not np.allclose(w.numpy(), b) for w, b in zip(towers(model), before) if w.shape.rank == 2)
    model.evaluate(epoch_batches(columns, 128, seed=0, epochs=1), verbose=0)
    assert _steps(model.task.mode) == steps  # evaluation does not advance the counter
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = make_model()
    assert _steps(fresh.task.mode) == 0
    tf.train.Checkpoint(model=fresh).restore(path)
    assert _steps(fresh.task.mode) == steps


# --- the same count on every replica ------------------------------------------------------------------

_DISTRIBUTED = textwrap.dedent(
    """
    import json
    import tfrec_towers
    import tensorflow as tf
    from tfrec_towers.config import LossConfig
    from tfrec_towers.losses.factory import build_retrieval_task
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    config = LossConfig(mode="softmax_hinge", margin=0.3, hinge_ramp_steps=4, memory_bank_size=8, memory_bank_warmup_fraction=0.0, logq="none",
                        mixed_negatives=0)
    with strategy.scope():
        task = build_retrieval_task(config, 0.1, 2, "int64")

    def replica_step(training):
        context = tf.distribute.get_replica_context()
        replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
        ids = tf.constant([1, 2], tf.int64) + 2 * replica
        embeddings = tf.one_hot(ids % 2, 2)
        return task(embeddings, embeddings, ids, training=training)

    train = tf.function(lambda: strategy.run(replica_step, (True,)))
    evaluate = tf.function(lambda: strategy.run(replica_step, (False,)))
    for _ in range(3):
        train()
    evaluate()
    print(json.dumps([int(v.numpy()) for v in task.mode.steps.values]))
    """
)


@pytest.mark.slow
def test_under_mirrored_strategy_every_replica_counts_each_step_once():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([sys.executable, "-c", _DISTRIBUTED], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [3, 3]

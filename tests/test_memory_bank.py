"""Tests of the cross-batch memory bank (CBNS, Wang et al. 2021)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank
from tfrec_towers.losses.negatives import NegativeSet


class ReferenceBank:
    """A FIFO ring buffer written one row at a time, in numpy."""

    def __init__(self, capacity, dim, id_dtype, warmup_steps):
        self.capacity, self.warmup_steps = capacity, warmup_steps
        self.embeddings = np.zeros((capacity, dim), np.float32)
        self.ids = np.zeros(capacity, np.int64) if id_dtype == "int64" else np.array([b""] * capacity, object)
        self.log_q = np.zeros(capacity, np.float32)
        self.rows = 0
        self.steps = 0

    def enqueue(self, embeddings, ids, log_q):
        for embedding, id_, q in zip(embeddings, ids, log_q):
            slot = self.rows % self.capacity
            self.embeddings[slot], self.ids[slot], self.log_q[slot] = embedding, id_, q
            self.rows += 1
        self.steps += 1

    def valid(self):
        warm = self.steps >= self.warmup_steps
        return np.array([warm and slot < self.rows for slot in range(self.capacity)])

    def newest_copies(self):
        """``valid()`` keeping, for each id, only the slot written last."""
        valid = self.valid()
        written = [max(n for n in range(self.rows) if n % self.capacity == s) if v else -1 for s, v in enumerate(valid)]
        newest = {}
        for slot in np.flatnonzero(valid):
            newest[self.ids[slot]] = max(newest.get(self.ids[slot], -1), written[slot])
        return np.array([bool(v) and written[s] == newest[self.ids[s]] for s, v in enumerate(valid)])


def make_batch(rng, size, dim, id_dtype, offset):
    embeddings = rng.normal(size=(size, dim)).astype(np.float32)
    ids = np.arange(offset, offset + size)
    ids = ids if id_dtype == "int64" else np.array([f"c{i}".encode() for i in ids], object)
    return embeddings, ids, rng.uniform(-5, 0, size=size).astype(np.float32)


def assert_same(bank_set, reference):
    assert isinstance(bank_set, NegativeSet)
    np.testing.assert_array_equal(bank_set.embeddings.numpy(), reference.embeddings)
    np.testing.assert_array_equal(bank_set.ids.numpy(), reference.ids)
    np.testing.assert_array_equal(bank_set.log_q.numpy(), reference.log_q)
    np.testing.assert_array_equal(bank_set.valid.numpy(), reference.valid())


def run_stream(capacity, batch_sizes, id_dtype="int64", warmup_steps=0, compiled=False, dim=3):
    rng = np.random.default_rng(capacity)
    bank = CrossBatchMemoryBank(capacity, dim, id_dtype, warmup_steps)
    reference = ReferenceBank(capacity, dim, id_dtype, warmup_steps)
    enqueue = tf.function(bank.enqueue) if compiled else bank.enqueue
    read = tf.function(bank.read) if compiled else bank.read
    assert_same(read(), reference)
    offset = 1
    for size in batch_sizes:
        embeddings, ids, log_q = make_batch(rng, size, dim, id_dtype, offset)
        offset += size
        enqueue(tf.constant(embeddings), tf.constant(ids), tf.constant(log_q))
        reference.enqueue(embeddings, ids, log_q)
        assert_same(read(), reference)
    return bank


def test_not_yet_full_bank_marks_unwritten_slots_invalid():
    bank = run_stream(5, [2])
    np.testing.assert_array_equal(bank.read().valid.numpy(), [True, True, False, False, False])
    np.testing.assert_array_equal(bank.read().ids.numpy()[:2], [1, 2])


@pytest.mark.parametrize("id_dtype", ["int64", "string"])
@pytest.mark.parametrize("compiled", [False, True])
def test_wraps_around_when_the_batch_does_not_divide_the_capacity(id_dtype, compiled):
    bank = run_stream(5, [3, 3, 3, 3], id_dtype, compiled=compiled)
    # 12 rows through 5 slots: rows 8..12 are kept, row n in slot (n - 1) % 5.
    expected = [11, 12, 8, 9, 10] if id_dtype == "int64" else [b"c11", b"c12", b"c8", b"c9", b"c10"]
    assert bank.read().ids.numpy().tolist() == expected
    assert int(bank.rows_written.numpy()) == 12 and int(bank.steps.numpy()) == 4


@pytest.mark.parametrize("compiled", [False, True])
def test_batch_larger_than_the_bank_keeps_the_most_recent_rows(compiled):
    bank = run_stream(3, [7, 2, 5, 1], compiled=compiled)
    # rows 1..15; the last three (13, 14, 15) sit in slots 0, 1, 2 ((n - 1) % 3).
    np.testing.assert_array_equal(bank.read().ids.numpy(), [13, 14, 15])


def test_warmup_hides_the_bank_until_enough_enqueues():
    run_stream(4, [1, 1, 1, 3], warmup_steps=3)  # the reference checks validity after each step
    bank = CrossBatchMemoryBank(4, 2, warmup_steps=2)
    for expected in ([False] * 4, [False] * 4, [True, True, False, False]):
        np.testing.assert_array_equal(bank.read().valid.numpy(), expected)
        bank.enqueue(tf.ones([1, 2]), tf.constant([1], tf.int64), tf.zeros([1]))


def test_without_warmup_rows_are_valid_after_the_first_enqueue():
    bank = CrossBatchMemoryBank(4, 2, warmup_steps=0)
    assert not bank.read().valid.numpy().any()
    bank.enqueue(tf.ones([3, 2]), tf.constant([1, 2, 3], tf.int64), tf.zeros([3]))
    np.testing.assert_array_equal(bank.read().valid.numpy(), [True, True, True, False])


def test_no_gradient_flows_through_stored_values():
    weight = tf.Variable([[2.0, -1.0]])
    features = tf.constant([[1.0], [3.0]])
    bank = CrossBatchMemoryBank(4, 2)
    with tf.GradientTape(persistent=True) as tape:
        embeddings = features * weight
        bank.enqueue(embeddings, tf.constant([1, 2], tf.int64), tf.zeros([2]))
        stored = bank.read()
        bank_only = tf.reduce_sum(stored.embeddings)
        total = tf.reduce_sum(embeddings) + bank_only
    assert tape.gradient(bank_only, weight) is None
    # d/dw Σ x·w = Σ x per column: only the live embeddings contribute.
    np.testing.assert_allclose(tape.gradient(total, weight).numpy(), [[4.0, 4.0]])
    np.testing.assert_allclose(stored.embeddings.numpy()[:2], [[2.0, -1.0], [6.0, -3.0]])
    assert bank.trainable_weights == []


def test_checkpoint_round_trip_is_exact(tmp_path):
    bank = run_stream(5, [3, 4], "string", warmup_steps=1)
    path = tf.train.Checkpoint(bank=bank).save(str(tmp_path / "ckpt"))
    restored = CrossBatchMemoryBank(5, 3, "string", 1)
    tf.train.Checkpoint(bank=restored).restore(path).assert_consumed()
    for name in ("embeddings", "ids", "log_q", "rows_written", "steps"):
        np.testing.assert_array_equal(getattr(restored, name).numpy(), getattr(bank, name).numpy())
    # the write pointer survived: the next row goes to slot 7 % 5 = 2 in both.
    for layer in (bank, restored):
        layer.enqueue(tf.zeros([1, 3]), tf.constant(["next"]), tf.zeros([1]))
    assert restored.read().ids.numpy()[2] == b"next"
    np.testing.assert_array_equal(restored.read().ids.numpy(), bank.read().ids.numpy())


class ToyModel(tf.keras.Model):
    """A one-layer candidate tower whose train_step reads the bank, then enqueues the batch."""

    def __init__(self):
        super().__init__()
        self.tower = tf.keras.layers.Dense(2, use_bias=False)
        self.bank = CrossBatchMemoryBank(6, 2, warmup_steps=1)

    def train_step(self, data):
        features, ids = data
        with tf.GradientTape() as tape:
            embeddings = self.tower(features)
            negatives = self.bank.read()
            scores = tf.matmul(embeddings, negatives.embeddings, transpose_b=True)
            loss = tf.reduce_mean(tf.square(embeddings)) + tf.reduce_mean(
                tf.where(negatives.valid[tf.newaxis, :], scores, 0.0)
            )
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        self.bank.enqueue(embeddings, ids, tf.zeros_like(embeddings[:, 0]))
        return {
            "loss": loss,
            "valid_negatives": tf.reduce_sum(tf.cast(negatives.valid, tf.float32)),
            "eager": float(tf.executing_eagerly()),
        }


def test_model_fit_enqueues_inside_the_compiled_train_step():
    tf.keras.utils.set_random_seed(0)
    model = ToyModel()
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1))
    features = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((features, np.arange(12, dtype=np.int64))).batch(4)
    history = model.fit(data, epochs=1, verbose=0)
    assert history.history["eager"] == [0.0]  # traced by tf.function
    assert history.history["valid_negatives"] == [6.0]  # last step read 8 rows through 6 slots
    np.testing.assert_array_equal(model.bank.ids.numpy(), [6, 7, 8, 9, 10, 11])
    assert int(model.bank.steps.numpy()) == 3 and int(model.bank.rows_written.numpy()) == 12


def test_saved_model_round_trip(tmp_path):
    bank = run_stream(4, [3, 2], warmup_steps=2)
    module = tf.Module()
    module.bank = bank
    module.read = tf.function(lambda: bank.read()._asdict(), input_signature=[])
    tf.saved_model.save(module, str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    restored = loaded.read()
    expected = bank.read()
    for field in NegativeSet._fields:
        np.testing.assert_array_equal(restored[field].numpy(), getattr(expected, field).numpy())


def test_deduplicated_bank_by_hand():
    bank = CrossBatchMemoryBank(4, 1, deduplicate=True)
    for batch in ([1, 2, 1], [3, 1]):  # rows 0..4; row 4 (id 1) overwrites slot 0 (row 0, id 1)
        bank.enqueue(
            tf.constant(np.arange(len(batch), dtype=np.float32)[:, None]),
            tf.constant(batch, tf.int64),
            tf.zeros([len(batch)]),
        )
    np.testing.assert_array_equal(bank.read().ids.numpy(), [1, 2, 1, 3])
    # id 1 sits in slot 0 (row 4) and slot 2 (row 2): only the newest, slot 0, stays valid
    np.testing.assert_array_equal(bank.read().valid.numpy(), [True, True, False, True])
    assert int(bank.window_size()) == 4  # the rows read from: every written slot
    empty = CrossBatchMemoryBank(4, 1, deduplicate=True, warmup_steps=1)
    assert not empty.read().valid.numpy().any() and int(empty.window_size()) == 0


@pytest.mark.parametrize("id_dtype", ["int64", "string"])
@pytest.mark.parametrize("compiled", [False, True])
def test_deduplicated_bank_keeps_the_newest_copy_of_each_id(id_dtype, compiled):
    rng = np.random.default_rng(3)
    bank = CrossBatchMemoryBank(7, 2, id_dtype, warmup_steps=2, deduplicate=True)
    reference = ReferenceBank(7, 2, id_dtype, warmup_steps=2)
    read = tf.function(bank.read) if compiled else bank.read
    window = tf.function(bank.window_size) if compiled else bank.window_size
    for size in (3, 5, 2, 9, 4, 6):  # ids drawn from 5 values: many duplicates, the bank wraps
        embeddings = rng.normal(size=(size, 2)).astype(np.float32)
        ids = rng.integers(1, 6, size=size)
        ids = ids if id_dtype == "int64" else np.array([f"c{i}".encode() for i in ids], object)
        bank.enqueue(tf.constant(embeddings), tf.constant(ids), tf.zeros([size]))
        reference.enqueue(embeddings, ids, np.zeros(size))
        got = read()
        np.testing.assert_array_equal(got.ids.numpy(), reference.ids)
        np.testing.assert_array_equal(got.valid.numpy(), reference.newest_copies())
        assert int(window()) == int(reference.valid().sum())
        valid_ids = got.ids.numpy()[got.valid.numpy()]
        assert len(set(valid_ids.tolist())) == len(valid_ids)  # one copy per id


def test_config_round_trip():
    bank = CrossBatchMemoryBank(128, 16, "string", 10, deduplicate=True, name="bank")
    config = json.loads(json.dumps(bank.get_config()))
    assert {k: config[k] for k in ("capacity", "embedding_dim", "id_dtype", "warmup_steps", "deduplicate")} == {
        "capacity": 128,
        "embedding_dim": 16,
        "id_dtype": "string",
        "warmup_steps": 10,
        "deduplicate": True,
    }
    rebuilt = CrossBatchMemoryBank.from_config(config)
    assert rebuilt.get_config() == bank.get_config() and rebuilt.embeddings.shape == (128, 16)
    revived = tf.keras.layers.deserialize(tf.keras.layers.serialize(bank))
    assert type(revived) is CrossBatchMemoryBank and revived.get_config() == bank.get_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"capacity": 0}, "`capacity` must be a positive int. Received: 0"),
        ({"capacity": -4}, "`capacity` must be a positive int. Received: -4"),
        ({"embedding_dim": 0}, "`embedding_dim` must be a positive int. Received: 0"),
        ({"warmup_steps": -1}, "`warmup_steps` must be an int >= 0. Received: -1"),
        ({"id_dtype": "int32"}, "`id_dtype` must be one of ('int64', 'string'). Received: 'int32'"),
        ({"deduplicate": 1}, "`deduplicate` must be a bool. Received: 1"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError) as error:
        CrossBatchMemoryBank(**{"capacity": 8, "embedding_dim": 4, **kwargs})
    assert str(error.value) == message


def test_enqueue_validation():
    bank = CrossBatchMemoryBank(8, 4)
    with pytest.raises(ValueError, match=r"Expected `embeddings` of shape \[batch, 4\]. Received: \(2, 3\)"):
        bank.enqueue(tf.zeros([2, 3]), tf.constant([1, 2], tf.int64), tf.zeros([2]))
    with pytest.raises(TypeError, match="Expected `ids` of dtype int64. Received: string"):
        bank.enqueue(tf.zeros([2, 4]), tf.constant(["a", "b"]), tf.zeros([2]))


_DISTRIBUTED = textwrap.dedent(
    """
    import json
    import tfrec_towers
    import tensorflow as tf
    from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        bank = CrossBatchMemoryBank(5, 1)

    def replica_step(ids):
        context = tf.distribute.get_replica_context()
        negatives = bank.read()
        everyone = context.all_gather(ids, axis=0)  # what the loss gathers for in-batch negatives
        bank.enqueue(tf.cast(everyone, tf.float32)[:, None], everyone, tf.zeros_like(everyone, tf.float32))
        return tf.reduce_sum(tf.cast(negatives.valid, tf.int64))

    @tf.function
    def step(per_replica):
        return strategy.run(replica_step, (per_replica,))

    batches = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    valid = []
    for replica_ids in batches:
        result = step(strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(replica_ids[context.replica_id_in_sync_group], tf.int64)))
        valid.append([int(v) for v in strategy.experimental_local_results(result)])
    print(json.dumps({"ids": bank.ids.numpy().tolist(), "copies": [v.numpy().tolist() for v in bank.ids.values],
                      "valid": valid}))
    """
)


@pytest.mark.slow
def test_under_mirrored_strategy_every_replica_holds_the_gathered_bank():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([sys.executable, "-c", _DISTRIBUTED], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # rows 1..8 through 5 slots, row n in slot (n - 1) % 5
    assert result["ids"] == [6, 7, 8, 4, 5]
    assert result["copies"] == [[6, 7, 8, 4, 5]] * 2
    assert result["valid"] == [[0, 0], [4, 4]]

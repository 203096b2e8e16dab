"""Tests of the streaming frequency estimator (Yi et al. 2019) and the exact counts table."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_towers.losses.frequency import (
    CandidateProbability,
    CountsFrequencyTable,
    StreamingFrequencyEstimator,
)


def hash_buckets(ids, num_hashes, buckets):
    """[m, N] bucket of every id under each hash, as documented: the hash itself, not the code."""
    keys = tf.constant(ids)
    if keys.dtype != tf.string:
        keys = tf.strings.as_string(keys)
    return np.stack([tf.strings.to_hash_bucket_strong(keys, buckets, key=[i, 0]).numpy() for i in range(num_hashes)])


class ReferenceEstimator:
    """Algorithms 2 and 3 of Yi et al. in numpy, with the documented initial state and rules."""

    def __init__(self, num_hashes, buckets, alpha):
        self.m, self.h, self.alpha = num_hashes, buckets, alpha
        self.t = 0
        self.a = np.zeros((num_hashes, buckets), np.int64)
        self.b = np.zeros((num_hashes, buckets), np.float64)

    def update(self, ids):
        self.t += 1
        hashed = hash_buckets(ids, self.m, self.h) if len(ids) else np.zeros((self.m, 0), np.int64)
        for i in range(self.m):
            for bucket in sorted(set(hashed[i].tolist())):  # a bucket hit twice in a step: once
                gap = self.t - self.a[i, bucket]
                first = self.a[i, bucket] == 0
                self.b[i, bucket] = gap if first else (1 - self.alpha) * self.b[i, bucket] + self.alpha * gap
                self.a[i, bucket] = self.t

    def probability(self, ids):
        hashed = hash_buckets(ids, self.m, self.h)
        gaps = np.where(
            np.take_along_axis(self.a, hashed, axis=1) == 0,
            float(self.t),
            np.take_along_axis(self.b, hashed, axis=1),
        )
        return 1.0 / np.maximum(gaps.max(axis=0), 1.0)


def test_hand_computed_single_hash():
    # ids 1, 2, 3 land in different buckets of a 2**20 table (checked below).
    assert len(set(hash_buckets(np.array([1, 2, 3]), 1, 2**20)[0])) == 3
    estimator = StreamingFrequencyEstimator(num_hashes=1, hash_buckets=2**20, learning_rate=0.5)
    np.testing.assert_allclose(estimator.probability(tf.constant([1, 3], tf.int64)).numpy(), [1.0, 1.0])
    for batch in ([1], [2], [1], [1, 1]):
        estimator.update(tf.constant(batch, tf.int64))
    # id 1: first seen t=1 -> B=1; t=3 gap 2 -> B=.5*1+.5*2=1.5; t=4 gap 1 (once) -> B=1.25
    # id 2: first seen t=2 -> B=2; id 3 never seen at t=4 -> gap >= 4.
    np.testing.assert_allclose(
        estimator.probability(tf.constant([1, 2, 3], tf.int64)).numpy(), [0.8, 0.5, 0.25], rtol=1e-6
    )
    np.testing.assert_allclose(
        estimator.log_probability(tf.constant([1, 2, 3], tf.int64)).numpy(),
        np.log([0.8, 0.5, 0.25]),
        rtol=1e-6,
    )
    assert int(estimator.step.numpy()) == 4


@pytest.mark.parametrize("key_dtype", ["int64", "string"])
@pytest.mark.parametrize("compiled", [False, True])
def test_matches_numpy_algorithm_with_collisions_and_duplicates(key_dtype, compiled):
    rng = np.random.default_rng(1)
    num_hashes, buckets, alpha = 3, 8, 0.3  # 8 buckets: collisions are certain
    estimator = StreamingFrequencyEstimator(num_hashes, buckets, alpha, key_dtype)
    reference = ReferenceEstimator(num_hashes, buckets, alpha)
    update = tf.function(estimator.update) if compiled else estimator.update
    universe = np.arange(20) if key_dtype == "int64" else np.array([f"item-{i}" for i in range(20)])
    batches = [rng.choice(universe, size=rng.integers(0, 7)) for _ in range(12)]  # repeats, one may be empty
    for batch in batches:
        update(tf.constant(batch, dtype=key_dtype))
        reference.update(batch)
        np.testing.assert_array_equal(estimator.last_seen.numpy().reshape(num_hashes, buckets), reference.a)
        np.testing.assert_allclose(estimator.gap.numpy().reshape(num_hashes, buckets), reference.b, rtol=1e-6)
    assert int(estimator.step.numpy()) == reference.t == len(batches)
    probe = np.concatenate([universe, [999] if key_dtype == "int64" else ["unseen"]])  # + a never-seen id
    probability = tf.function(estimator.probability) if compiled else estimator.probability
    np.testing.assert_allclose(
        probability(tf.constant(probe, dtype=key_dtype)).numpy(), reference.probability(probe), rtol=1e-6
    )


def _stream(rng, probabilities, steps, num_rare=2000, rare_probability=0.001):
    """Ids 1..k appear in a step independently with ``probabilities``; ids 1000+ are rare."""
    included = rng.random((steps, len(probabilities))) < np.asarray(probabilities)
    rare_counts = rng.binomial(num_rare, rare_probability, size=steps)
    rows = [
        np.concatenate([np.flatnonzero(included[t]) + 1, 1000 + rng.choice(num_rare, rare_counts[t], replace=False)])
        for t in range(steps)
    ]
    splits = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    return tf.constant(np.concatenate(rows), tf.int64), tf.constant(splits, tf.int64)


@pytest.mark.slow
def test_tracks_known_rates_and_a_switch_inside_tf_function():
    rng = np.random.default_rng(2)
    estimator = StreamingFrequencyEstimator(num_hashes=2, hash_buckets=2**14, learning_rate=0.002)

    @tf.function
    def run(ids, splits):
        for i in tf.range(tf.shape(splits, out_type=tf.int64)[0] - 1):
            estimator.update(ids[splits[i] : splits[i + 1]])

    frequent = tf.constant([1, 2, 3], tf.int64)
    for probabilities in ([0.5, 0.2, 0.05], [0.05, 0.5, 0.2]):  # then the popular item turns rare
        run(*_stream(rng, probabilities, 40_000))
        np.testing.assert_allclose(estimator.probability(frequent).numpy(), probabilities, rtol=0.1)
    rare = estimator.probability(tf.range(1000, 3000, dtype=tf.int64)).numpy()
    assert 0.0005 < np.median(rare) < 0.002  # true per-step probability 0.001
    assert int(estimator.step.numpy()) == 80_000


def test_checkpoint_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    estimator = StreamingFrequencyEstimator(2, 64, 0.1, "string")
    for _ in range(5):
        estimator.update(tf.constant(rng.choice(["a", "b", "c", "d"], size=3)))
    path = tf.train.Checkpoint(estimator=estimator).save(str(tmp_path / "ckpt"))
    restored = StreamingFrequencyEstimator(2, 64, 0.1, "string")
    tf.train.Checkpoint(estimator=restored).restore(path).assert_consumed()
    for name in ("step", "last_seen", "gap"):
        np.testing.assert_array_equal(getattr(restored, name).numpy(), getattr(estimator, name).numpy())
    probe = tf.constant(["a", "b", "c", "d", "never"])
    np.testing.assert_array_equal(restored.probability(probe).numpy(), estimator.probability(probe).numpy())


def test_saved_model_round_trip(tmp_path):
    estimator = StreamingFrequencyEstimator(2, 32, 0.5)
    for batch in ([1, 2], [1], [3, 1]):
        estimator.update(tf.constant(batch, tf.int64))
    module = tf.Module()
    module.estimator = estimator
    module.log_probability = tf.function(estimator.log_probability, input_signature=[tf.TensorSpec([None], tf.int64)])
    tf.saved_model.save(module, str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    probe = tf.constant([1, 2, 3, 4], tf.int64)
    np.testing.assert_array_equal(loaded.log_probability(probe).numpy(), estimator.log_probability(probe).numpy())


def test_estimator_config_round_trip():
    estimator = StreamingFrequencyEstimator(3, 1024, 0.05, "string", name="freq")
    config = estimator.get_config()
    assert {k: config[k] for k in ("num_hashes", "hash_buckets", "learning_rate", "key_dtype")} == {
        "num_hashes": 3,
        "hash_buckets": 1024,
        "learning_rate": 0.05,
        "key_dtype": "string",
    }
    rebuilt = StreamingFrequencyEstimator.from_config(json.loads(json.dumps(config)))
    assert rebuilt.get_config() == config
    assert rebuilt.gap.shape == (3 * 1024,)
    revived = tf.keras.layers.deserialize(tf.keras.layers.serialize(estimator))
    assert type(revived) is StreamingFrequencyEstimator and revived.get_config() == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_hashes": 0}, "`num_hashes` must be a positive int. Received: 0"),
        ({"hash_buckets": -3}, "`hash_buckets` must be a positive int. Received: -3"),
        ({"hash_buckets": 2.5}, "`hash_buckets` must be a positive int. Received: 2.5"),
        ({"learning_rate": 0.0}, "`learning_rate` must be a float in (0.0, 1.0]. Received: 0.0"),
        ({"learning_rate": 1.5}, "`learning_rate` must be a float in (0.0, 1.0]. Received: 1.5"),
        ({"key_dtype": "int32"}, "`key_dtype` must be one of ('int64', 'string'). Received: 'int32'"),
    ],
)
def test_estimator_validation(kwargs, message):
    with pytest.raises(ValueError) as error:
        StreamingFrequencyEstimator(**kwargs)
    assert str(error.value) == message


def test_estimator_rejects_ids_of_the_wrong_dtype():
    with pytest.raises(TypeError, match="key_dtype='string'"):
        StreamingFrequencyEstimator(key_dtype="string").update(tf.constant([1, 2], tf.int64))
    with pytest.raises(TypeError, match="key_dtype='int64'"):
        StreamingFrequencyEstimator().probability(tf.constant(["a"]))


_DISTRIBUTED = textwrap.dedent(
    """
    import json
    import tfrec_towers
    import tensorflow as tf
    from tfrec_towers.losses.frequency import StreamingFrequencyEstimator
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        estimator = StreamingFrequencyEstimator(2, 16, 0.5)
    batches = [[[1, 2], [7, 8]], [[1], [9]], [[3, 1], [7]]]

    @tf.function
    def step(per_replica):
        strategy.run(estimator.update, (per_replica,))

    for replica_ids in batches:
        step(strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(replica_ids[context.replica_id_in_sync_group], tf.int64)))
    copies = [v.numpy().tolist() for v in estimator.gap.values]
    print(json.dumps({"gap": estimator.gap.numpy().tolist(), "copies": copies,
                      "step": int(estimator.step.numpy())}))
    """
)


@pytest.mark.slow
def test_under_mirrored_strategy_first_replica_update_applies_to_all_copies():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([sys.executable, "-c", _DISTRIBUTED], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    reference = StreamingFrequencyEstimator(2, 16, 0.5)
    for first_replica_ids in ([1, 2], [1], [3, 1]):
        reference.update(tf.constant(first_replica_ids, tf.int64))
    assert result["step"] == 3
    np.testing.assert_array_equal(result["gap"], reference.gap.numpy())
    for copy in result["copies"]:
        np.testing.assert_array_equal(copy, reference.gap.numpy())


COUNT_IDS = np.array([10, 20, 30, 40], np.int64)
COUNTS = np.array([5, 1, 3, 1])


def test_counts_table_probabilities_are_counts_over_total():
    table = CountsFrequencyTable(COUNT_IDS, COUNTS)
    probe = tf.constant([30, 10, 40, 20, 10], tf.int64)
    expected = np.array([3, 5, 1, 1, 5]) / 10
    np.testing.assert_allclose(table.probability(probe).numpy(), expected, rtol=1e-7)
    np.testing.assert_allclose(table.log_probability(probe).numpy(), np.log(expected), rtol=1e-6)
    np.testing.assert_allclose(table(probe).numpy(), np.log(expected), rtol=1e-6)
    np.testing.assert_allclose(table.probability(tf.constant([7, 10], tf.int32)).numpy(), [0.05, 0.5], rtol=1e-7)


def test_counts_table_unseen_ids_get_the_default():
    default = CountsFrequencyTable(COUNT_IDS, COUNTS)
    np.testing.assert_allclose(default.probability(tf.constant([99], tf.int64)).numpy(), [0.1 / 2], rtol=1e-7)
    explicit = CountsFrequencyTable(COUNT_IDS, COUNTS, default_probability=1e-4)
    np.testing.assert_allclose(explicit.log_probability(tf.constant([99], tf.int64)).numpy(), [math.log(1e-4)])


def test_counts_table_from_training_ids_with_strings():
    table = CountsFrequencyTable.from_ids(np.array(["b", "a", "b", "c", "b", "a"], dtype=object))
    probe = tf.constant(["a", "b", "c", "zzz"])
    np.testing.assert_allclose(table.probability(probe).numpy(), [2 / 6, 3 / 6, 1 / 6, 1 / 12], rtol=1e-6)
    assert table.ids.tolist() == ["a", "b", "c"] and table.counts.tolist() == [2, 3, 1]


@pytest.mark.parametrize(
    "ids, counts, default_probability, expected",
    [
        (COUNT_IDS, COUNTS, 0.01, [0.1, 0.3, 0.1, 0.5, 0.01]),
        (["x", "y"], [2.5, 0.5], None, [1 / 6, 5 / 6, 1 / 12]),  # unseen: min p / 2, a restored weight
    ],
)
def test_counts_table_config_holds_no_ids_and_a_checkpoint_restores_them(
    ids, counts, default_probability, expected, tmp_path
):
    table = CountsFrequencyTable(ids, counts, default_probability=default_probability, name="counts")
    config = json.loads(json.dumps(table.get_config()))
    assert {k: config[k] for k in ("key_dtype", "default_probability")} == {
        "key_dtype": table.key_dtype,
        "default_probability": default_probability,
    }
    assert "ids" not in config and "counts" not in config
    rebuilt = CountsFrequencyTable.from_config(config)
    assert rebuilt.get_config() == table.get_config()
    probe = tf.constant(list(ids)[::-1] + ([0] if table.key_dtype == "int64" else ["unseen"]))
    assert rebuilt.ids.size == 0  # the counts are state: an empty table until restored
    path = tf.train.Checkpoint(table=table).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(table=rebuilt).read(path).assert_consumed()
    np.testing.assert_allclose(rebuilt.probability(probe).numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(rebuilt.probability(probe).numpy(), table.probability(probe).numpy())
    np.testing.assert_array_equal(rebuilt.counts, np.asarray(counts, np.float64)[np.argsort(ids)])
    revived = tf.keras.layers.deserialize(tf.keras.layers.serialize(table))
    assert type(revived) is CountsFrequencyTable and revived.get_config() == table.get_config()


def test_a_config_that_held_the_counts_still_loads_them():
    # the form earlier versions wrote: ids and counts, no `key_dtype`
    config = {
        "name": "counts",
        "trainable": True,
        "dtype": "float32",
        "ids": ["a", "b"],
        "counts": [1, 3],
        "default_probability": None,
    }
    table = CountsFrequencyTable.from_config(config)
    np.testing.assert_allclose(table.probability(tf.constant(["b", "a", "new"])).numpy(), [0.75, 0.25, 0.125])


def test_counts_table_saved_model_round_trip(tmp_path):
    table = CountsFrequencyTable(["x", "y", "z"], [1, 2, 7])
    module = tf.Module()
    module.table = table
    module.log_probability = tf.function(table.log_probability, input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    np.testing.assert_allclose(
        loaded.log_probability(tf.constant(["z", "x", "new"])).numpy(), np.log([0.7, 0.1, 0.05]), rtol=1e-6
    )


def test_counts_table_update_is_a_no_op_and_both_follow_the_protocol():
    table = CountsFrequencyTable(COUNT_IDS, COUNTS)
    assert table.update(tf.constant([10, 10], tf.int64)) is None
    np.testing.assert_allclose(table.probability(tf.constant([10], tf.int64)).numpy(), [0.5])
    assert isinstance(table, CandidateProbability)
    assert isinstance(StreamingFrequencyEstimator(), CandidateProbability)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ids": [], "counts": []}, "`ids` must be a non-empty 1-D list of ids. Received shape (0,)"),
        ({"ids": [1, 2, 1], "counts": [1, 1, 1]}, "`ids` must be distinct. Repeated: [1]"),
        ({"ids": [1, 2], "counts": [1]}, "`counts` must have one entry per id (2). Received shape (1,)"),
        ({"ids": [1, 2], "counts": [1, 0]}, "`counts` must all be positive and finite. Received min 0.0"),
        ({"ids": [1.5, 2.5], "counts": [1, 1]}, "`ids` must hold integer or string ids. Received dtype float64"),
        (
            {"ids": [1, 2], "counts": [1, 1], "default_probability": 0.0},
            "`default_probability` must be a float in (0.0, 1.0]. Received: 0.0",
        ),
    ],
)
def test_counts_table_validation(kwargs, message):
    with pytest.raises(ValueError) as error:
        CountsFrequencyTable(**kwargs)
    assert str(error.value) == message

"""Training under tf.distribute.MirroredStrategy on 2 logical CPU devices equals one device on the global batch.

The checks run in one subprocess: logical devices must be configured before TensorFlow initialises
its devices, which the rest of the suite has already done in this process.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # every check trains in a fresh process with two logical devices

_PRELUDE = textwrap.dedent(
    """
    import json
    import numpy as np
    import tfrec_towers
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def per_replica(values):
        '''Row halves of every array: replica r gets rows [r·B/2, (r+1)·B/2).'''
        def split(context):
            r = context.replica_id_in_sync_group
            return {k: tf.constant(v[r * len(v) // 2:(r + 1) * len(v) // 2]) for k, v in values.items()}
        return strategy.experimental_distribute_values_from_function(split)
    """
)

_STRINGS = textwrap.dedent(
    """
    from tfrec_towers.losses import cross_replica
    values = {"ids": np.array([b"a", b"", b"caf\\xc3\\xa9", b"\\xff\\x00x", b"longer id 42", b"z"], object)}
    gathered = strategy.run(tf.function(lambda f: (cross_replica.all_gather(f["ids"]), cross_replica.row_offset(tf.shape(f["ids"])[0]))),
                            (per_replica(values),))
    masks = strategy.run(tf.function(lambda f: cross_replica.all_gather(f["valid"])),
                         (per_replica({"valid": np.array([True, False, True, False, False, True])}),))
    strings = {
        "masks": [m.numpy().tolist() for m in strategy.experimental_local_results(masks)],
        "gathered": [[s.hex() for s in g.numpy().tolist()] for g in strategy.experimental_local_results(gathered[0])],
        "offsets": [int(o) for o in strategy.experimental_local_results(gathered[1])],
        "expected": [s.hex() for s in values["ids"].tolist()],
    }
    """
)


_MODEL = (
    _PRELUDE
    + _STRINGS
    + textwrap.dedent(
        """
    from tfrec_towers.config import AdaptiveConfig, LossConfig
    from tfrec_towers.features import CategoricalFeature, FeatureSpec, SequenceFeature, adapt
    from tfrec_towers.losses.factory import build_retrieval_task
    from tfrec_towers.model import TwoTowerModel, build_towers
    from tfrec_towers.history_encoders import HistoryEncoderConfig
    from tfrec_towers.towers import TowerConfig

    rng = np.random.default_rng(0)
    rows, batch = 64, 16
    users = rng.integers(1, 20, rows)
    data = {
        "user_id": users.astype(np.int64),
        "history": rng.integers(0, 13, (rows, 3)).astype(np.int64),
        "item_id": ((users * 7) % 12 + 1).astype(np.int64),
    }
    catalogue = {"item_id": np.arange(1, 13, dtype=np.int64)}
    spec = adapt(
        FeatureSpec(
            query=(CategoricalFeature("user_id", embedding_dim=8), SequenceFeature("history", embedding_dim=8, embedding_table="item_id")),
            candidate=(CategoricalFeature("item_id", embedding_dim=8),),
            candidate_id="item_id",
        ),
        data,
        catalogue,
    )
    CONFIGS = {
        "logq_streaming_bank": LossConfig(logq="streaming", memory_bank_size=40, memory_bank_warmup_fraction=0.0, mixed_negatives=0),
        "logq_counts_adaptive_bank": LossConfig(logq="counts", memory_bank_size=24, memory_bank_warmup_fraction=0.0, adaptive=AdaptiveConfig(enabled=True), mixed_negatives=0),
        "logq_counts_deduplicated_weighted_bank": LossConfig(logq="counts", memory_bank_size=24, memory_bank_warmup_fraction=0.0, memory_bank_deduplicate=True, memory_bank_weight=0.5, mixed_negatives=0),
    }

    def make_model(config):
        tf.keras.utils.set_random_seed(0)
        query, candidate = build_towers(spec, TowerConfig(hidden_units=(16,), output_dim=8), TowerConfig(hidden_units=(16,), output_dim=8),
                                        HistoryEncoderConfig(encoder="pooling"))
        task = build_retrieval_task(config, 0.1, 8, "int64", training_ids=data["item_id"], corpus_size=12)
        model = TwoTowerModel(query, candidate, "item_id", task=task)
        model.compile(optimizer=tf.keras.optimizers.SGD(0.5))
        model({k: v[:2] for k, v in data.items()})
        return model

    results = {}
    for name, config in CONFIGS.items():
        single = make_model(config)
        with strategy.scope():
            mirrored = make_model(config)
        mirrored.set_weights(single.get_weights())
        dataset = tf.data.Dataset.from_tensor_slices(data).batch(batch)
        single.fit(dataset, epochs=1, verbose=0)
        mirrored.fit(dataset, epochs=1, verbose=0)
        # One more batch, the loss value itself: Σ over replicas of their losses vs the global batch.
        probe = {k: tf.constant(v[:batch]) for k, v in data.items()}
        local = strategy.run(tf.function(lambda f: mirrored.compute_loss(f, training=False)),
                             (per_replica({k: v.numpy() for k, v in probe.items()}),))
        replica_losses = [float(x) for x in strategy.experimental_local_results(local)]
        # Without gathering, each replica would score against its own half only.
        half = {k: v[: batch // 2] for k, v in probe.items()}
        other = {k: v[batch // 2:batch] for k, v in probe.items()}
        results[name] = {
            "single_weights": [w.tolist() for w in single.get_weights()],
            "mirrored_weights": [w.tolist() for w in mirrored.get_weights()],
            "replicas": strategy.num_replicas_in_sync,
            "mirrored_variables": sum(len(getattr(v, "values", ())) == 2 for v in mirrored.variables),
            "mirrored_copies_agree": all(
                np.allclose(v.values[0].numpy(), v.values[1].numpy()) for v in mirrored.variables if hasattr(v, "values")
            ),
            "global_loss": float(single.compute_loss(probe, training=False)),
            "replica_losses": replica_losses,
            "local_only_loss": 0.5 * float(single.compute_loss(half, training=False) + single.compute_loss(other, training=False)),
            "bank_rows_written": [int(mirrored.task.memory_bank.rows_written.numpy()), int(single.task.memory_bank.rows_written.numpy())],
        }
    print("RESULT" + json.dumps({"models": results, "strings": strings}))
    """
    )
)


def _run(script):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(out for out in run.stdout.splitlines() if out.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def results():
    """One process: the string and mask gathers, then each configuration trained on one and two devices."""
    return _run(_MODEL)


@pytest.fixture(scope="module")
def model_results(results):
    return results["models"]


@pytest.mark.parametrize(
    "config", ["logq_streaming_bank", "logq_counts_adaptive_bank", "logq_counts_deduplicated_weighted_bank"]
)
def test_two_replicas_train_like_one_device_on_the_global_batch(model_results, config):
    import numpy as np

    result = model_results[config]
    # Four SGD steps on batches of 16 (8 per replica): the weights match one device's to float32
    # tolerance (the replicas sum their gradients in another order: weights of magnitude ~100 after
    # four steps at learning rate 0.5 differ by up to ~1e-5 relative).
    for single, mirrored in zip(result["single_weights"], result["mirrored_weights"]):
        np.testing.assert_allclose(mirrored, single, rtol=2e-5, atol=2e-5)
    assert result["replicas"] == 2 and result["mirrored_variables"] > 0 and result["mirrored_copies_agree"]
    # The bank took the gathered global batch each step on every replica, as on one device.
    assert result["bank_rows_written"] == [64, 64]


@pytest.mark.parametrize(
    "config", ["logq_streaming_bank", "logq_counts_adaptive_bank", "logq_counts_deduplicated_weighted_bank"]
)
def test_replica_losses_sum_to_the_global_batch_loss_and_negatives_are_global(model_results, config):
    result = model_results[config]
    assert sum(result["replica_losses"]) == pytest.approx(result["global_loss"], rel=1e-5)
    # Scoring each half against itself only gives a different (smaller-denominator) loss.
    assert abs(result["local_only_loss"] - result["global_loss"]) > 1e-3


def test_string_ids_and_bool_masks_are_gathered_exactly_in_replica_order(results):
    result = results["strings"]
    assert result["gathered"] == [result["expected"], result["expected"]]
    assert result["masks"] == [[True, False, True, False, False, True]] * 2
    assert result["offsets"] == [0, 3]

"""Refreshing a memory bank's stored candidates with the current candidate tower, and the corpus lookup it uses."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_towers.config import ConfigError, LossConfig
from tfrec_towers.features import CategoricalFeature, FeatureSpec, adapt
from tfrec_towers.history_encoders import HistoryEncoderConfig
from tfrec_towers.losses.corpus import corpus_rows
from tfrec_towers.losses.factory import build_retrieval_task
from tfrec_towers.losses.memory_bank import CrossBatchMemoryBank
from tfrec_towers.losses.mixed_negatives import MixedNegativeSampler
from tfrec_towers.model import TwoTowerModel, build_towers
from tfrec_towers.towers import TowerConfig


@pytest.mark.parametrize("dtype", ["int64", "string"])
def test_corpus_rows_locate_ids_and_flag_the_missing(dtype):
    corpus = [17, 3, 250, 9, 41]
    asked = [9, 17, 5, 41, 3, 3, 1000]
    if dtype == "string":
        corpus, asked = [f"item-{i}" for i in corpus], [f"item-{i}" for i in asked]
    rows, found = corpus_rows(tf.constant(corpus), tf.constant(asked))
    position = {value: row for row, value in enumerate(corpus)}
    np.testing.assert_array_equal(found.numpy(), [value in position for value in asked])
    np.testing.assert_array_equal(rows.numpy(), [position.get(value, 0) for value in asked])


def test_refresh_re_encodes_the_written_slots_whose_id_is_in_the_corpus():
    bank = CrossBatchMemoryBank(5, 2)
    stored = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], np.float32)
    bank.enqueue(tf.constant(stored), tf.constant([30, 90, 10], tf.int64), tf.constant([-1.0, -2.0, -3.0]))
    corpus_ids = tf.constant([10, 20, 30], tf.int64)  # 90 is not in the corpus
    table = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], np.float32)  # the "tower": row → embedding
    encoded_rows = []

    def encode(rows):
        encoded_rows.append(rows.numpy())
        return tf.gather(tf.constant(table), rows)

    assert int(bank.refresh(corpus_ids, encode)) == 2
    expected = np.zeros((5, 2), np.float32)
    expected[:3] = stored
    expected[0], expected[2] = table[2], table[0]  # ids 30 and 10 are corpus rows 2 and 0
    np.testing.assert_array_equal(bank.embeddings.numpy(), expected)  # id 90 and the unwritten slots kept
    np.testing.assert_array_equal(bank.ids.numpy()[:3], [30, 90, 10])
    np.testing.assert_array_equal(bank.log_q.numpy()[:3], [-1.0, -2.0, -3.0])
    assert int(bank.rows_written.numpy()) == 3 and int(bank.steps.numpy()) == 1
    assert encoded_rows[0].shape == (5,)  # one pass over the bank's slots


def _model(refresh_every, dropout=0.5):
    rng = np.random.default_rng(0)
    rows = 64
    users = rng.integers(1, 20, rows)
    data = {"user_id": users.astype(np.int64), "item_id": ((users * 7) % 12 + 1).astype(np.int64)}
    catalogue = {"item_id": np.arange(1, 13, dtype=np.int64)}
    spec = adapt(
        FeatureSpec(
            query=(CategoricalFeature("user_id", embedding_dim=8),),
            candidate=(CategoricalFeature("item_id", embedding_dim=8),),
            candidate_id="item_id",
        ),
        data,
        catalogue,
    )
    tf.keras.utils.set_random_seed(0)
    tower = TowerConfig(hidden_units=(16,), output_dim=8, dropout=dropout)
    query, candidate = build_towers(spec, tower, tower, HistoryEncoderConfig(encoder="pooling"))
    loss = LossConfig(memory_bank_size=64, memory_bank_warmup_fraction=0.0, mixed_negatives=4, logq="none")
    task = build_retrieval_task(loss, 0.1, 8, "int64", corpus_size=12)
    sampler = MixedNegativeSampler(catalogue, 4, "item_id", seed=0)
    model = TwoTowerModel(
        query, candidate, "item_id", task=task, mixed_negatives=sampler, bank_refresh_every_steps=refresh_every
    )
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0))  # the towers stay as built: refreshes are observable
    return model, data


@pytest.mark.parametrize("refresh_every", [0, 3])
def test_a_model_refreshes_its_bank_every_n_steps_before_reading_it(refresh_every):
    model, data = _model(refresh_every)
    model.fit(tf.data.Dataset.from_tensor_slices(data).batch(8).take(4), epochs=1, verbose=0)
    bank = model.task.memory_bank
    assert int(bank.steps.numpy()) == 4 and int(bank.rows_written.numpy()) == 32
    # in inference mode (no dropout) the candidate tower gives each stored id's embedding afresh
    fresh = model.candidate_tower({"item_id": tf.constant(bank.ids.numpy()[:32])}, training=False).numpy()
    same = np.isclose(bank.embeddings.numpy()[:32], fresh, atol=1e-6).all(axis=1)
    if refresh_every:
        # step 4 (after 3 enqueues) re-encoded rows 0..23; the last batch was enqueued as trained, with dropout
        assert same[:24].all() and same[24:].sum() <= 2
    else:
        assert same.sum() <= 4  # rows as enqueued, with dropout (a row whose dropped units were all 0 matches)


def test_refresh_needs_a_bank_and_a_corpus_and_round_trips_in_the_config():
    model, _ = _model(5, dropout=0.0)
    assert model.get_config()["bank_refresh_every_steps"] == 5
    with pytest.raises(
        ValueError, match="`bank_refresh_every_steps` .* needs a `task` with a `memory_bank` and `mixed_negatives`"
    ):
        TwoTowerModel(model.query_tower, model.candidate_tower, "item_id", task=model.task, bank_refresh_every_steps=5)
    with pytest.raises(ValueError, match="`bank_refresh_every_steps` must be an int >= 0"):
        TwoTowerModel(model.query_tower, model.candidate_tower, "item_id", bank_refresh_every_steps=-1)
    with pytest.raises(
        ConfigError,
        match=r"`loss.memory_bank_refresh_every_steps` .* needs `loss.memory_bank_size` > 0 and `loss.mixed_negatives` > 0",
    ):
        LossConfig(memory_bank_size=64, mixed_negatives=0, memory_bank_refresh_every_steps=10)
    with pytest.raises(ConfigError, match=r"`loss.memory_bank_refresh_every_steps` must be ≥ 0"):
        LossConfig(memory_bank_refresh_every_steps=-1)

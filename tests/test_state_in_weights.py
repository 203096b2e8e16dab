"""Hyper-parameters in the config, state in weights: a model over a million string ids has a small
config, rebuilds from it, and becomes the original again by restoring the original's checkpoint."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from tfrec_towers.build import build_model
from tfrec_towers.config import ExperimentConfig
from tfrec_towers.features import CategoricalFeature, FeatureSpec, SequenceFeature
from tfrec_towers.towers import TowerConfig

NUM_ITEMS = 1_000_000
NUM_POPULAR = 1_000  # items seen twice in training, the others once


@pytest.fixture(scope="module")
def million_item_model():
    """The default model (counts logQ + mixed negatives, attention history) over 1M string ids."""
    items = np.char.add("item-", np.arange(NUM_ITEMS).astype(str)).astype(object)
    vocabulary = tuple(items.tolist())
    spec = FeatureSpec(
        query=(
            CategoricalFeature("user_id", dtype="string", embedding_dim=8, vocabulary=("u1", "u2", "u3")),
            SequenceFeature(
                "history",
                dtype="string",
                separator=None,
                embedding_dim=8,
                embedding_table="item_id",
                vocabulary=vocabulary,
            ),
        ),
        candidate=(CategoricalFeature("item_id", dtype="string", embedding_dim=8, vocabulary=vocabulary),),
        candidate_id="item_id",
    )
    default = ExperimentConfig()
    towers = TowerConfig(hidden_units=(16,), output_dim=8)
    config = dataclasses.replace(
        default, model=dataclasses.replace(default.model, query_tower=towers, candidate_tower=towers)
    )
    assert (config.loss.logq, config.loss.mixed_negatives, config.model.history.encoder) == ("counts", 512, "attention")
    training_ids = np.concatenate([items, items[:NUM_POPULAR]])
    model = build_model(spec, config, training_ids=training_ids, corpus={"item_id": items})
    batch = {
        "user_id": tf.constant(["u2", "u1", "stranger", "u3"] * 8),
        "history": tf.constant([["", "item-3", "item-999999"], ["item-0", "never-seen", "item-42"]] * 16),
        "item_id": tf.constant(["item-7", "item-500000", "item-999999", "item-1"] * 8),
    }
    model.query_tower(batch), model.candidate_tower(batch)  # Keras creates the towers' variables here
    model.mixed_negatives.sample()  # the sampler's draw counter is state too
    return model, batch


def _numbers(model, batch):
    """What restoring must reproduce: both towers' embeddings, logQ probabilities, negatives (the
    seeded draw and the next unseeded one, which follows the restored counter)."""
    probe = tf.constant(["item-0", "item-999", "item-1000", "item-999999", "never-seen"])
    seeded, seeded_ids, _ = model.mixed_negatives.sample(seed=5)
    _, next_ids, _ = model.mixed_negatives.sample()
    return {
        "query": model.query_tower(batch).numpy(),
        "candidate": model.candidate_tower(batch).numpy(),
        "probability": model.task.candidate_probability.probability(probe).numpy(),
        "seeded_negatives": seeded_ids.numpy(),
        "next_negatives": next_ids.numpy(),
        "seeded_rows": seeded["item_id"].numpy(),
    }


def _without_build_records(config):
    towers = {
        key: {k: v for k, v in config[key].items() if k != "build_config"} for key in ("query_tower", "candidate_tower")
    }
    return {**config, **towers}


@pytest.mark.slow
def test_a_million_item_config_is_small_and_a_checkpoint_restores_the_model(million_item_model, tmp_path):
    model, batch = million_item_model
    config = model.get_config()
    text = json.dumps(config)
    assert len(text.encode("utf-8")) < 10_000
    assert "item-42" not in text and "u2" not in text  # no vocabulary, count or corpus row

    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    total = NUM_ITEMS + NUM_POPULAR
    # the numbers of the original: p_j = c_j / Σ c by hand, and the unseen id gets min p / 2
    expected = _numbers(model, batch)
    np.testing.assert_allclose(expected["probability"], np.array([2, 2, 1, 1, 0.5]) / total, rtol=1e-6)
    assert all(i.decode().startswith("item-") for i in expected["seeded_negatives"])

    rebuilt = type(model).from_config(json.loads(text))
    # Keras records the input shapes of a called tower (``build_config``): the rebuilt towers,
    # not called yet, lack only that record
    assert rebuilt.get_config() == _without_build_records(config)
    item_table = rebuilt.candidate_tower.encoder.tables["item_id"]
    assert item_table.vocabulary_size == NUM_ITEMS
    assert np.all(item_table.lookup(tf.constant(["item-0", "item-42"])).numpy() == 0)  # empty until restored
    assert float(rebuilt.task.candidate_probability.total_count.numpy()) == 0.0

    status = tf.train.Checkpoint(model=rebuilt).read(path)
    restored = _numbers(rebuilt, batch)  # the towers' variables are created here, and restored
    status.assert_existing_objects_matched()
    for name, values in expected.items():
        np.testing.assert_array_equal(restored[name], values, err_msg=name)
    assert json.loads(json.dumps(rebuilt.get_config())) == json.loads(text)  # called on the same batch: all of it
    assert rebuilt.query_tower.history_table is item_table  # shared between the towers, as before

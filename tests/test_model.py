"""TwoTowerModel: the loss against a numpy in-batch softmax, fit/evaluate/checkpoints, config."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401
from helpers import TINY, cli_sets, tiny_config, trainable
from tfrec_towers.cli import main
from tfrec_towers.config import ConfigError
from tfrec_towers.features import CategoricalFeature, FeatureSpec, SequenceFeature, adapt
from tfrec_towers.history_encoders import HistoryEncoderConfig
from tfrec_towers.model import TwoTowerModel, build_towers
from tfrec_towers.towers import Tower, TowerConfig, compute_embeddings


def _data(seed=0, rows=256):
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 30, rows)
    items = (users % 10) + 1  # each user prefers one item: learnable signal
    noise = rng.random(rows) < 0.2
    items[noise] = rng.integers(1, 11, noise.sum())
    return {
        "user_id": users.astype(np.int64),
        "history": rng.integers(0, 11, (rows, 4)).astype(np.int64),
        "item_id": items.astype(np.int64),
        "category": np.array([f"c{i % 3}" for i in items], object),
    }


def _spec(data):
    spec = FeatureSpec(
        query=(
            CategoricalFeature("user_id", embedding_dim=8),
            SequenceFeature("history", embedding_dim=8, embedding_table="item_id"),
        ),
        candidate=(
            CategoricalFeature("item_id", embedding_dim=8),
            CategoricalFeature("category", dtype="string", embedding_dim=4),
        ),
        candidate_id="item_id",
    )
    return adapt(spec, data)


def _model(data, temperature=0.1):
    from tfrec_towers.losses.task import in_batch_softmax_task

    config = TowerConfig(hidden_units=(16,), output_dim=8)
    query, candidate = build_towers(_spec(data), config, config)
    return TwoTowerModel(query, candidate, "item_id", task=in_batch_softmax_task(temperature))


def _numpy_in_batch_softmax(q, c, ids, temperature):
    scores = q @ c.T / temperature
    same = ids[:, None] == ids[None, :]
    scores = np.where(same & ~np.eye(len(ids), dtype=bool), scores - 1e9, scores)
    scores = scores - scores.max(axis=1, keepdims=True)
    log_softmax = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_softmax))


@pytest.mark.parametrize("seed", range(3))
def test_loss_is_in_batch_softmax_with_accidental_hits_removed(seed):
    data = _data(seed, rows=16)
    data["item_id"][:4] = 3  # duplicates in the batch
    model = _model(data, temperature=0.2)
    batch = {k: tf.constant(v) for k, v in data.items()}
    loss = model.compute_loss(batch).numpy()
    q = model.query_tower(batch).numpy()
    c = model.candidate_tower(batch).numpy()
    assert loss == pytest.approx(_numpy_in_batch_softmax(q, c, data["item_id"], 0.2), rel=1e-5)


@pytest.mark.slow
def test_fit_learns_and_works_with_callbacks_and_checkpoints(tmp_path):
    tf.keras.utils.set_random_seed(0)
    data = _data(1, rows=512)
    model = _model(data)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.02))
    ds = tf.data.Dataset.from_tensor_slices(data).shuffle(512, seed=0).batch(64)
    weights_path = str(tmp_path / "best.weights.h5")
    history = model.fit(
        ds,
        epochs=6,
        verbose=0,
        callbacks=[tf.keras.callbacks.ModelCheckpoint(weights_path, save_weights_only=True, monitor="loss")],
    )
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0]
    assert "loss" in model.evaluate(ds, return_dict=True, verbose=0)

    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    restored = _model(data)
    tf.train.Checkpoint(model=restored).read(str(tmp_path / "ckpt")).expect_partial()
    np.testing.assert_allclose(
        compute_embeddings(restored.candidate_tower, data), compute_embeddings(model.candidate_tower, data), rtol=1e-6
    )


def test_item_embeddings_are_shared_and_survive_from_config():
    data = _data()
    model = _model(data)
    q_tables, c_tables = model.query_tower.encoder.tables, model.candidate_tower.encoder.tables
    assert q_tables["item_id"] is c_tables["item_id"]
    rebuilt = TwoTowerModel.from_config(model.get_config())
    assert rebuilt.query_tower.encoder.tables["item_id"] is rebuilt.candidate_tower.encoder.tables["item_id"]
    assert isinstance(rebuilt.query_tower, Tower)
    assert rebuilt.query_tower.config == model.query_tower.config


def test_towers_must_agree_on_dimension():
    data = _data()
    with pytest.raises(ValueError, match="same `output_dim`"):
        build_towers(_spec(data), TowerConfig(output_dim=8), TowerConfig(output_dim=16))


def test_tower_config_validation():
    with pytest.raises(ValueError, match="`dropout` must be in"):
        TowerConfig(dropout=1.5)
    with pytest.raises(ValueError, match="`normalization`"):
        TowerConfig(normalization="group")
    with pytest.raises(ValueError, match="`hidden_units`"):
        TowerConfig(hidden_units=(0,))


def test_l2_normalised_embeddings_have_unit_norm():
    data = _data()
    model = _model(data)
    emb = compute_embeddings(model.query_tower, data, batch_size=100)
    assert emb.shape == (256, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_a_tower_without_projection_outputs_its_features_as_they_are():
    data = _data()
    spec = adapt(
        FeatureSpec(
            query=(SequenceFeature("history", embedding_dim=8, embedding_table="item_id"),),
            candidate=(CategoricalFeature("item_id", embedding_dim=8),),
            candidate_id="item_id",
        ),
        data,
    )
    bare = TowerConfig(hidden_units=(), output_dim=8, projection=False)
    query, candidate = build_towers(spec, bare, bare, HistoryEncoderConfig(encoder="mean"))
    embeddings = compute_embeddings(candidate, {"item_id": data["item_id"]}, batch_size=100)
    table = candidate.encoder.tables["item_id"]
    rows = table(tf.constant(data["item_id"])).numpy()  # the shared item table's rows, looked up
    np.testing.assert_allclose(embeddings, rows / np.linalg.norm(rows, axis=1, keepdims=True), rtol=1e-5)
    assert not candidate.projection and not [v for v in candidate.trainable_variables if "projection" in v.name]
    with pytest.raises(ValueError, match="`projection` must be true, false or 'auto'"):
        TowerConfig(projection="no")
    with pytest.raises(ValueError, match="`projection` must be true, false or 'auto'"):
        TowerConfig(projection=1)


def test_an_automatic_projection_projects_only_what_is_not_output_dim_wide():
    data = _data()
    spec = _spec(data)  # the history alone is 8 wide; the candidate's id and category are 8 + 4
    spec = FeatureSpec(query=spec.query[1:], candidate=spec.candidate, candidate_id="item_id")
    auto = TowerConfig(hidden_units=(), output_dim=8, projection="auto", l2_normalize=False)
    query, candidate = build_towers(spec, auto, auto, HistoryEncoderConfig(encoder="mean"))
    history = np.array([[0, 3, 5], [0, 0, 7]], np.int64)
    got = compute_embeddings(query, {"history": history}, batch_size=2)
    rows = query.history_table(tf.constant(history)).numpy()
    expected = np.stack([rows[0, 1:].mean(axis=0), rows[1, 2]])  # the mean of the rows, as they are
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not [v for v in query.trainable_variables if "projection" in v.name]

    features = {"item_id": data["item_id"][:5], "category": data["category"][:5]}
    embeddings = compute_embeddings(candidate, features, batch_size=5)
    kernel, bias = candidate.projection.kernel.numpy(), candidate.projection.bias.numpy()
    assert kernel.shape == (12, 8)  # projected: 12 wide is not output_dim
    concatenated = candidate.encoder(features).numpy()
    np.testing.assert_allclose(embeddings, concatenated @ kernel + bias, rtol=1e-5, atol=1e-6)


def test_a_tower_without_projection_must_already_be_output_dim_wide(tmp_path, capsys):
    sets = ("model.candidate_tower.projection=false",)  # the tiny towers' hidden layer is 16 wide, output_dim 8
    with pytest.raises(
        ConfigError,
        match=r"`model\.candidate_tower\.projection` is false.*16 wide.*`model\.candidate_tower\.output_dim` is 8",
    ):
        trainable(tiny_config(*sets))[0]()
    assert main(["train", "--output", str(tmp_path / "run"), *cli_sets(*TINY, *sets)]) == 2
    assert "`model.candidate_tower.projection` is false" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

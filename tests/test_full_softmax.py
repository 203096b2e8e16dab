"""The full-catalogue softmax: loss and gradients against numpy, chunking, the positive counted once,
the catalogue in weights, the configuration's rules, and a tiny run from the configuration that learns."""

import json

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)
from helpers import run_fresh_process, tiny_config, trainable
from tfrec_pipelines.sequences import sequence_examples
from tfrec_pipelines.train import train
from tfrec_towers.config import ConfigError, config_from_dict
from tfrec_towers.losses.full_softmax import FullCatalogue, FullSoftmaxLoss, full_softmax_row_losses
from tfrec_towers.losses.negatives import NegativeSet
from tfrec_towers.losses.temperature import Temperature
from tfrec_towers.model import TwoTowerModel

NUM_ITEMS, DIM, BATCH, TAU = 37, 6, 7, 0.5
CATALOGUE_IDS = np.arange(NUM_ITEMS, dtype=np.int64) * 10 + 5  # 5, 15, …, 365
# Rows 1 and 2 share a positive; row 5's positive (999) is not in the catalogue; row 6's is its last item.
POSITIVE_IDS = np.array([5, 125, 125, 205, 15, 999, 365], np.int64)
WEIGHTS = np.array([1.0, 2.0, 0.5, 0.0, 3.0, 1.0, 1.5], np.float32)


def _inputs(seed):
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    positives = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    catalogue = rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32)
    return queries, positives, catalogue


def _numpy_loss_and_gradients(queries, positives, catalogue, weights, tau=TAU):
    """float64 reference: ``L = Σ w_i ℓ_i / Σ w_i`` and ``∂L/∂queries``, ``∂L/∂catalogue``, ``∂L/∂positives``."""
    q, v, c = (np.asarray(x, np.float64) for x in (queries, positives, catalogue))
    positive = np.sum(q * v, axis=1) / tau
    logits = q @ c.T / tau
    negative = CATALOGUE_IDS[np.newaxis, :] != POSITIVE_IDS[:, np.newaxis]  # the positive's own row is left out
    all_logits = np.concatenate([positive[:, None], np.where(negative, logits, -np.inf)], axis=1)
    top = all_logits.max(axis=1, keepdims=True)
    log_normaliser = top[:, 0] + np.log(np.exp(all_logits - top).sum(axis=1))
    rows = log_normaliser - positive
    share = weights / weights.sum()
    probabilities = np.exp(all_logits - log_normaliser[:, None])  # [B, 1 + N], 0 where left out
    p_positive, p_catalogue = probabilities[:, 0], probabilities[:, 1:]
    d_positive = share * (p_positive - 1.0)  # ∂L/∂z_i
    d_logits = share[:, None] * p_catalogue  # ∂L/∂z_ij
    grad_q = (d_positive[:, None] * v + d_logits @ c) / tau
    grad_c = d_logits.T @ q / tau
    grad_v = d_positive[:, None] * q / tau
    return float(share @ rows), rows, grad_q, grad_c, grad_v


def _layer_loss_and_gradients(queries, positives, catalogue, chunk_size, weights=WEIGHTS, learnable=False):
    loss_layer = FullSoftmaxLoss(Temperature(TAU, learnable=learnable), chunk_size=chunk_size)
    q, v, c = (tf.constant(x) for x in (queries, positives, catalogue))
    with tf.GradientTape() as tape:
        tape.watch([q, v, c])
        catalogue_set = NegativeSet(c, tf.constant(CATALOGUE_IDS), tf.zeros([NUM_ITEMS]), tf.ones([NUM_ITEMS], tf.bool))
        loss = loss_layer(q, v, tf.constant(POSITIVE_IDS), extra_negatives=catalogue_set, sample_weight=weights)
    return (float(loss), *(g.numpy() for g in tape.gradient(loss, [q, c, v])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_gradients_match_numpy_on_a_partial_last_chunk(seed):
    queries, positives, catalogue = _inputs(seed)
    expected, _, grad_q, grad_c, grad_v = _numpy_loss_and_gradients(queries, positives, catalogue, WEIGHTS)
    got, got_q, got_c, got_v = _layer_loss_and_gradients(queries, positives, catalogue, chunk_size=8)  # 4·8 + 5
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(got_q, grad_q, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_c, grad_c, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_v, grad_v, rtol=1e-4, atol=1e-6)


def test_chunked_equals_unchunked_in_eager_and_in_a_graph():
    queries, positives, catalogue = _inputs(3)
    one_chunk = _layer_loss_and_gradients(queries, positives, catalogue, chunk_size=NUM_ITEMS)
    for chunk_size in (8, 36, 4096):
        chunked = _layer_loss_and_gradients(queries, positives, catalogue, chunk_size=chunk_size)
        np.testing.assert_allclose(chunked[0], one_chunk[0], rtol=1e-6)
        for got, expected in zip(chunked[1:], one_chunk[1:]):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)

    @tf.function
    def in_graph(q, c):
        with tf.GradientTape() as tape:
            tape.watch([q, c])
            z = tf.reduce_sum(q * positives, axis=1)
            loss = tf.reduce_sum(full_softmax_row_losses(q, z, POSITIVE_IDS, c, CATALOGUE_IDS, 8))
        return loss, tape.gradient(loss, [q, c])

    loss, (grad_q, grad_c) = in_graph(tf.constant(queries), tf.constant(catalogue))
    expected, rows, expected_q, expected_c, _ = _numpy_loss_and_gradients(
        queries, positives, catalogue, np.ones(BATCH), tau=1.0
    )
    np.testing.assert_allclose(float(loss), rows.sum(), rtol=1e-5)
    np.testing.assert_allclose(grad_q.numpy(), expected_q * BATCH, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_c.numpy(), expected_c * BATCH, rtol=1e-4, atol=1e-6)


def test_the_positive_is_counted_once_as_the_cross_entropy_over_the_catalogue():
    """When the positive's embedding is its catalogue row, the loss is SASRec's full cross-entropy,
    ``−log softmax(q Cᵀ / τ)[target]``, over the catalogue only; the absent positive adds one logit."""
    queries, _, catalogue = _inputs(4)
    in_catalogue = POSITIVE_IDS != 999
    target = np.searchsorted(CATALOGUE_IDS, POSITIVE_IDS[in_catalogue])
    positives = np.zeros_like(queries)
    positives[in_catalogue] = catalogue[target]
    positives[~in_catalogue] = catalogue[0] * 2.0
    loss_layer = FullSoftmaxLoss(Temperature(TAU), chunk_size=5)
    catalogue_set = NegativeSet(catalogue, CATALOGUE_IDS, np.zeros(NUM_ITEMS, np.float32), np.ones(NUM_ITEMS, bool))
    per_row = [
        float(loss_layer(queries[i : i + 1], positives[i : i + 1], POSITIVE_IDS[i : i + 1], catalogue_set))
        for i in range(BATCH)
    ]
    logits = queries.astype(np.float64) @ catalogue.T.astype(np.float64) / TAU
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(np.array(per_row)[in_catalogue], -log_softmax[in_catalogue, target], rtol=1e-5)
    absent = np.flatnonzero(~in_catalogue)[0]
    z = float(queries[absent].astype(np.float64) @ positives[absent] / TAU)
    expected = np.log(np.exp(z) + np.exp(logits[absent]).sum()) - z  # every catalogue item is a negative
    np.testing.assert_allclose(per_row[absent], expected, rtol=1e-5)


def test_sample_weights_and_a_learnable_temperature_take_their_gradient():
    queries, positives, catalogue = _inputs(5)
    unweighted, rows, *_ = _numpy_loss_and_gradients(queries, positives, catalogue, np.ones(BATCH))
    got = _layer_loss_and_gradients(queries, positives, catalogue, 8, weights=None)[0]
    np.testing.assert_allclose(got, rows.mean(), rtol=1e-5)
    assert unweighted == pytest.approx(rows.mean(), rel=1e-9)
    loss_layer = FullSoftmaxLoss(Temperature(TAU, learnable=True), chunk_size=8)
    catalogue_set = NegativeSet(catalogue, CATALOGUE_IDS, np.zeros(NUM_ITEMS, np.float32), np.ones(NUM_ITEMS, bool))
    with tf.GradientTape() as tape:
        loss = loss_layer(queries, positives, POSITIVE_IDS, catalogue_set, sample_weight=WEIGHTS)
    (grad_log_tau,) = tape.gradient(loss, loss_layer.trainable_variables)
    # ∂L/∂log τ by a central difference of the numpy loss in τ
    step = 1e-4
    higher, lower = (
        _numpy_loss_and_gradients(queries, positives, catalogue, WEIGHTS, tau=TAU * np.exp(s))[0] for s in (step, -step)
    )
    np.testing.assert_allclose(float(grad_log_tau), (higher - lower) / (2 * step), rtol=1e-3)


def test_string_ids_and_a_batch_without_its_positive_in_the_catalogue():
    queries, positives, catalogue = _inputs(6)
    string_ids = np.array([f"item-{i}" for i in CATALOGUE_IDS], dtype=object)
    positive_ids = np.array([f"item-{i}" for i in POSITIVE_IDS], dtype=object)
    loss_layer = FullSoftmaxLoss(Temperature(TAU), chunk_size=8)
    got = loss_layer(
        queries,
        positives,
        tf.constant(positive_ids.astype(str)),
        NegativeSet(
            catalogue, tf.constant(string_ids.astype(str)), tf.zeros([NUM_ITEMS]), tf.ones([NUM_ITEMS], tf.bool)
        ),
        sample_weight=WEIGHTS,
    )
    np.testing.assert_allclose(
        float(got), _numpy_loss_and_gradients(queries, positives, catalogue, WEIGHTS)[0], rtol=1e-5
    )


def test_without_the_catalogue_the_loss_says_where_it_comes_from():
    queries, positives, _ = _inputs(7)
    with pytest.raises(
        ValueError, match=r"scores the encoded catalogue, which TwoTowerModel passes as `extra_negatives`"
    ):
        FullSoftmaxLoss()(queries, positives, POSITIVE_IDS)
    with pytest.raises(ValueError, match=r"`chunk_size` must be a positive int. Received: 0"):
        FullSoftmaxLoss(chunk_size=0)


# --- the catalogue in weights, serialisation ---------------------------------------------------


def _catalogue():
    return {
        "item_id": CATALOGUE_IDS,
        "genre": np.array([f"g{i % 3}" for i in range(NUM_ITEMS)], dtype=object),
        "price": np.linspace(1.0, 2.0, NUM_ITEMS, dtype=np.float32),
    }


def test_the_catalogue_is_every_row_in_weights_and_its_config_holds_no_data(tmp_path):
    catalogue = FullCatalogue(_catalogue(), "item_id")
    features, ids, log_q = catalogue.sample()
    np.testing.assert_array_equal(ids.numpy(), CATALOGUE_IDS)
    assert [g.decode() for g in features["genre"].numpy()] == [f"g{i % 3}" for i in range(NUM_ITEMS)]
    np.testing.assert_array_equal(log_q.numpy(), np.zeros(NUM_ITEMS, np.float32))
    config = catalogue.get_config()
    assert config["columns"] == {
        "item_id": {"dtype": "int64", "shape": [NUM_ITEMS]},
        "genre": {"dtype": "string", "shape": [NUM_ITEMS]},
        "price": {"dtype": "float32", "shape": [NUM_ITEMS]},
    }
    assert len(json.dumps(config)) < 400  # the schema, not the rows
    tf.train.Checkpoint(catalogue=catalogue).write(str(tmp_path / "catalogue"))
    restored = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(catalogue))
    assert isinstance(restored, FullCatalogue) and not restored.sample()[1].numpy().any()  # zeros until restored
    tf.train.Checkpoint(catalogue=restored).read(str(tmp_path / "catalogue")).assert_consumed()
    np.testing.assert_array_equal(restored.sample()[1].numpy(), CATALOGUE_IDS)
    np.testing.assert_array_equal(restored.sample()[0]["price"].numpy(), _catalogue()["price"])


def test_the_catalogue_refuses_repeated_ids_and_a_missing_id_column():
    repeated = dict(_catalogue(), item_id=np.r_[CATALOGUE_IDS[:-1], CATALOGUE_IDS[0]])
    with pytest.raises(ValueError, match=r"Corpus column 'item_id' must hold distinct ids. Repeated: \[5\]"):
        FullCatalogue(repeated, "item_id")
    with pytest.raises(ValueError, match=r"`candidate_id` must name a corpus column"):
        FullCatalogue(_catalogue(), "movie_id")


def test_the_loss_config_round_trips():
    loss_layer = FullSoftmaxLoss(Temperature(0.07, learnable=True, min_temperature=0.01), chunk_size=512, name="full")
    restored = FullSoftmaxLoss.from_config(loss_layer.get_config())
    assert restored.chunk_size == 512 and restored.name == "full"
    assert restored.temperature.get_config() == loss_layer.temperature.get_config()
    again = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(loss_layer))
    assert isinstance(again, FullSoftmaxLoss) and again.get_config() == loss_layer.get_config()


# --- the configuration and the model -------------------------------------------------------------

FULL = ("loss.mode=full_softmax", "loss.logq=none", "loss.mixed_negatives=0")


@pytest.mark.parametrize(
    "loss, named",
    [
        ({"mode": "full_softmax"}, ["`loss.logq` must be 'none'", "`loss.mixed_negatives` must be 0"]),
        ({"mode": "full_softmax", "mixed_negatives": 0, "logq": "streaming"}, ["`loss.logq` must be 'none'"]),
        (
            {"mode": "full_softmax", "logq": "none", "mixed_negatives": 0, "memory_bank_size": 64},
            ["`loss.memory_bank_size` must be 0"],
        ),
        (
            {"mode": "full_softmax", "logq": "none", "mixed_negatives": 0, "adaptive": {"enabled": True}},
            ["`loss.adaptive.enabled` must be false"],
        ),
    ],
)
def test_contradictory_options_are_a_config_error_naming_them(loss, named):
    with pytest.raises(
        ConfigError, match="`loss.mode` 'full_softmax' scores every query against the whole catalogue"
    ) as e:
        config_from_dict({"loss": loss})
    for text in named:
        assert text in str(e.value)
    with pytest.raises(ConfigError, match=r"`loss.full_softmax_chunk` must be positive. Received: 0"):
        config_from_dict({"loss": {"full_softmax_chunk": 0}})


def _numpy_model_loss(queries, candidates, ids, catalogue, catalogue_ids, tau, weights=None):
    q, v, c = (np.asarray(x, np.float64) for x in (queries, candidates, catalogue))
    positive = np.sum(q * v, axis=1) / tau
    logits = np.where(catalogue_ids[None, :] != ids[:, None], q @ c.T / tau, -np.inf)
    rows = np.log(np.exp(positive) + np.exp(logits).sum(axis=1)) - positive
    weights = np.ones(len(rows)) if weights is None else np.asarray(weights, np.float64)
    return float(weights @ rows / weights.sum())


@pytest.mark.parametrize("example_format", ["per_prefix", "every_position"])
def test_the_model_of_the_configuration_scores_its_l2_normalised_towers_against_the_whole_catalogue(example_format):
    config = tiny_config(*FULL, f"training.example_format={example_format}", "model.history.max_length=4")
    make_model, columns, data = trainable(config)
    model = make_model()
    assert isinstance(model.task, FullSoftmaxLoss) and isinstance(model.mixed_negatives, FullCatalogue)
    assert model.mixed_negatives.corpus_size == len(data.candidates["item_id"]) == 300
    rebuilt = TwoTowerModel.from_config(json.loads(json.dumps(model.get_config())))  # hyper-parameters only
    assert (
        isinstance(rebuilt.task, FullSoftmaxLoss) and rebuilt.mixed_negatives.columns == model.mixed_negatives.columns
    )
    rows = np.arange(40) if example_format == "per_prefix" else np.arange(12 * 11)  # 12 users' rows
    batch = {name: tf.constant(np.asarray(values)[rows]) for name, values in columns.items()}
    if example_format == "every_position":
        sequences = sequence_examples(
            {n: np.asarray(v)[rows] for n, v in columns.items()},
            [f.name for f in model.candidate_tower.features],
            "item_id",
            4,
            history="history",
        )
        batch = {name: tf.constant(values) for name, values in sequences.items()}
    weights = np.linspace(0.5, 2.0, int(np.sum(np.asarray(batch["item_id"]) != 0)), dtype=np.float32)
    loss = model.compute_loss((batch, weights), training=True)

    if example_format == "per_prefix":
        queries = model.query_tower(batch).numpy()
        ids = batch["item_id"].numpy()
        candidates = model.candidate_tower(batch).numpy()
    else:
        valid = batch["item_id"].numpy() != 0
        queries = model.query_tower.sequence_embeddings(batch).numpy()[valid]
        ids = batch["item_id"].numpy()[valid]
        candidates = model.candidate_tower(
            {f.name: batch[f.name][valid] for f in model.candidate_tower.features}
        ).numpy()
    catalogue = model.candidate_tower({f.name: data.candidates[f.name] for f in model.candidate_tower.features}).numpy()
    np.testing.assert_allclose(np.linalg.norm(catalogue, axis=1), 1.0, rtol=1e-5)  # l2_normalize: cosines
    expected = _numpy_model_loss(
        queries, candidates, ids, catalogue, np.asarray(data.candidates["item_id"]), config.model.temperature, weights
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


@pytest.mark.slow
def test_a_tiny_run_with_full_softmax_from_the_configuration_learns(tmp_path):
    config = tiny_config(*FULL, "export.verify=false")
    result = train(config, tmp_path / "run", verbose=0)
    # 300 items, 10 ranked: a random ranking has HR@10 ≈ 10 / 290 ≈ 0.034
    assert result.metrics["HR@10"] > 0.15 and result.metrics["NDCG@10"] > 0.08
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["loss"]["mode"] == "full_softmax"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert np.isfinite(history["loss"]).all() and history["learning_rate"] == [pytest.approx(0.003)]


@pytest.mark.slow
def test_two_replicas_sum_to_the_loss_of_the_global_batch():
    script = """
    import json
    import numpy as np
    import tfrec_towers
    import tensorflow as tf
    from tfrec_towers.losses.full_softmax import FullSoftmaxLoss
    from tfrec_towers.losses.negatives import NegativeSet
    from tfrec_towers.losses.temperature import Temperature

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    queries, positives = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
    catalogue, ids = rng.normal(size=(11, 4)).astype(np.float32), np.arange(11, dtype=np.int64)
    positive_ids, weights = np.array([0, 3, 3, 10, 5, 42, 7, 1], np.int64), np.linspace(0.5, 4.0, 8).astype(np.float32)
    with strategy.scope():
        loss = FullSoftmaxLoss(Temperature(0.5), chunk_size=4)

    def step(context):
        r = context.replica_id_in_sync_group
        half = slice(4 * r, 4 * r + 4)
        return [tf.constant(a[half]) for a in (queries, positives, positive_ids, weights)]

    def replica_loss(q, v, y, w):
        return loss(q, v, y, NegativeSet(catalogue, ids, tf.zeros([11]), tf.ones([11], tf.bool)), sample_weight=w)

    values = strategy.experimental_distribute_values_from_function(step)
    shares = strategy.experimental_local_results(strategy.run(replica_loss, args=tuple(values)))
    print(json.dumps({"shares": [float(s) for s in shares]}))
    """
    shares = run_fresh_process(script)["shares"]
    expected = _numpy_model_loss(*_two_replica_inputs(), np.arange(11, dtype=np.int64), 0.5, np.linspace(0.5, 4.0, 8))
    assert sum(shares) == pytest.approx(expected, rel=1e-5)


def _two_replica_inputs():
    """The subprocess's queries, positives, positive ids and catalogue, drawn the same way."""
    rng = np.random.default_rng(0)
    queries, positives = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
    catalogue = rng.normal(size=(11, 4)).astype(np.float32)
    return queries, positives, np.array([0, 3, 3, 10, 5, 42, 7, 1], np.int64), catalogue

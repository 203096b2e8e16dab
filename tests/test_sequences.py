"""Sequence examples and every-position training: hand-built sequences, the loss against per-prefix
queries computed one by one, configuration, and a train → export → fresh-process verify round trip."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401
from tfrec_pipelines.data import DataError, HistoryWindows, leave_last_out, take_rows
from tfrec_pipelines.dataset import epoch_batches
from tfrec_pipelines.sequences import num_targets, sequence_examples
from tfrec_pipelines.train import build_model
from tfrec_towers.config import PLAIN_IN_BATCH, ConfigError, ExperimentConfig, LossConfig, apply_overrides, load_config
from tfrec_towers.export import export_retrieval_model
from tfrec_towers.features import CategoricalFeature, FeatureSpec, SequenceFeature, adapt, input_signature
from tfrec_towers.history_encoders import HistoryEncoderConfig
from tfrec_towers.index import IndexConfig
from tfrec_towers.losses.factory import build_candidate_source, build_retrieval_task
from tfrec_towers.model import TwoTowerModel, build_towers
from tfrec_towers.towers import TowerConfig
from tfrec_towers.verify import verify_export

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _split():
    """User 1: 5 6 7 | 8; user 2: 3 9 4 2 | 7; user 3: 1 | 2 (no pair); user 4: 4 (not evaluated)."""
    interactions = [
        (1, 5, 1),
        (1, 6, 2),
        (1, 7, 3),
        (1, 8, 4),
        (2, 3, 1),
        (2, 9, 2),
        (2, 4, 3),
        (2, 2, 4),
        (2, 7, 5),
        (3, 1, 1),
        (3, 2, 2),
        (4, 4, 1),
    ]
    users, items, times = (np.array(c, np.int64) for c in zip(*interactions))
    return leave_last_out(
        name="tiny",
        user_ids=users,
        item_ids=items,
        timestamps=times,
        users={"user_id": np.arange(1, 5, dtype=np.int64), "gender": np.array(["F", "M", "F", "M"], object)},
        candidates={
            "movie_id": np.arange(1, 10, dtype=np.int64),
            "genres": np.array([f"g{i % 3}" for i in range(1, 10)], object),
        },
        user_id="user_id",
        candidate_id="movie_id",
        column_types={},
        max_history=3,
    )


def test_sequence_examples_by_hand():
    examples = sequence_examples(_split().train, ["movie_id", "genres"], "movie_id", max_length=2)
    np.testing.assert_array_equal(examples["history"], [[5, 6], [0, 3], [9, 4]])
    np.testing.assert_array_equal(examples["movie_id"], [[6, 7], [0, 9], [4, 2]])
    assert examples["genres"].tolist() == [["g0", "g1"], ["", "g0"], ["g1", "g2"]]
    np.testing.assert_array_equal(examples["user_id"], [1, 2, 2])
    assert examples["gender"].tolist() == ["F", "M", "M"]
    assert num_targets(examples, "movie_id") == 5  # every training item but each user's first
    longer = sequence_examples(_split().train, ["movie_id", "genres"], "movie_id", max_length=4)
    np.testing.assert_array_equal(longer["history"], [[0, 0, 5, 6], [0, 3, 9, 4]])
    np.testing.assert_array_equal(longer["movie_id"], [[0, 0, 6, 7], [0, 9, 4, 2]])


def test_sequence_examples_of_the_split_never_build_its_history_matrix(monkeypatch):
    train = _split().train
    built = dict(train)  # the plain feature dictionary of the same rows
    monkeypatch.setattr(HistoryWindows, "read", lambda *args: pytest.fail("the [N, L] history matrix was built"))
    for rows in (train, built):
        examples = sequence_examples(rows, ["movie_id", "genres"], "movie_id", max_length=2)
        np.testing.assert_array_equal(examples["history"], [[5, 6], [0, 3], [9, 4]])  # as by hand above
        np.testing.assert_array_equal(examples["movie_id"], [[6, 7], [0, 9], [4, 2]])
        assert examples["gender"].tolist() == ["F", "M", "M"]
    with pytest.raises(DataError, match="Training row 0 neither starts a user"):
        sequence_examples(take_rows(train, np.array([1, 0, 2])), ["movie_id"], "movie_id", max_length=2)


def test_sequence_examples_refuse_rows_out_of_time_order():
    train = _split().train
    shuffled = take_rows(train, np.array([1, 0, 2, 3, 4, 5, 6, 7]))
    with pytest.raises(DataError, match="Training row 0 neither starts a user"):
        sequence_examples(shuffled, ["movie_id"], "movie_id", max_length=2)
    with pytest.raises(DataError, match=r"need the columns \['genre'\]"):
        sequence_examples(train, ["genre"], "movie_id", max_length=2)
    with pytest.raises(ValueError, match="`max_length` must be a positive int"):
        sequence_examples(train, ["movie_id"], "movie_id", max_length=0)


def _model(task, data):
    spec = adapt(
        FeatureSpec(
            query=(
                CategoricalFeature("user_id", embedding_dim=4),
                SequenceFeature("history", embedding_dim=8, embedding_table="movie_id"),
            ),
            candidate=(
                CategoricalFeature("movie_id", embedding_dim=8),
                SequenceFeature("genres", dtype="string", embedding_dim=4),
            ),
            candidate_id="movie_id",
        ),
        data.train,
        data.candidates,
    )
    history = HistoryEncoderConfig(encoder="transformer", num_layers=1, num_heads=2, dropout=0.0, max_length=4)
    tower = TowerConfig(hidden_units=(8,), output_dim=8)
    query, candidate = build_towers(spec, tower, tower, history)
    return TwoTowerModel(query, candidate, "movie_id", task=task)


def _numpy_loss(q, v, ids, temperature, log_q):
    """−(1/N) Σ_n log softmax over {positive n} ∪ {m : y_m ≠ y_n} of z_nm = ⟨q_n, v_m⟩/τ − log Q_m."""
    z = q @ v.T / temperature - log_q[np.newaxis, :]
    losses = []
    for n in range(len(ids)):
        logits = np.r_[z[n, n], z[n][ids != ids[n]]]
        losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - z[n, n])
    return float(np.mean(losses))


@pytest.mark.parametrize("loss", ["tfrs in-batch", "logQ (counts)"])
def test_every_position_loss_is_the_mean_of_the_per_prefix_losses(loss):
    tf.keras.utils.set_random_seed(0)
    data = _split()
    ids_seen = data.train["movie_id"]
    task = build_retrieval_task(
        PLAIN_IN_BATCH if loss == "tfrs in-batch" else LossConfig(logq="counts", mixed_negatives=0),
        0.2,
        8,
        "int64",
        training_ids=ids_seen,
    )
    model = _model(task, data)
    sequences = sequence_examples(data.train, ["movie_id", "genres"], "movie_id", max_length=4)
    batch = {k: tf.constant(v, tf.string if v.dtype == object else tf.int64) for k, v in sequences.items()}
    got = float(model.compute_loss(batch, training=False))

    queries, candidates, ids = [], [], []
    for b, pos in zip(*np.nonzero(sequences["movie_id"])):  # one per-prefix call per position
        prefix = np.zeros((1, 5), np.int64)
        prefix[0, 5 - (pos + 1) :] = sequences["history"][b, : pos + 1]
        queries.append(
            model.query_tower(
                {"history": tf.constant(prefix), "user_id": tf.constant(sequences["user_id"][b : b + 1])}
            ).numpy()[0]
        )
        candidates.append(
            model.candidate_tower(
                {
                    "movie_id": tf.constant([sequences["movie_id"][b, pos]]),
                    "genres": tf.constant([sequences["genres"][b, pos]]),
                }
            ).numpy()[0]
        )
        ids.append(sequences["movie_id"][b, pos])
    ids = np.array(ids)
    log_q = np.zeros(len(ids))
    if loss == "logQ (counts)":
        unique, counts = np.unique(ids_seen, return_counts=True)
        log_q = np.log(len(ids) * counts[np.searchsorted(unique, ids)] / len(ids_seen))
    expected = _numpy_loss(np.array(queries), np.array(candidates), ids, 0.2, log_q)
    assert len(ids) == 5
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_per_prefix_batches_still_train_the_same_model():
    data = _split()
    model = _model(build_retrieval_task(LossConfig(logq="streaming", mixed_negatives=0), 0.2, 8, "int64"), data)
    per_prefix = {k: tf.constant(v, tf.string if v.dtype == object else tf.int64) for k, v in data.train.items()}
    assert np.isfinite(float(model.compute_loss(per_prefix, training=True)))
    clone = TwoTowerModel.from_config(model.get_config())
    assert clone.query_tower.history == model.query_tower.history
    assert clone.query_tower.history_table is clone.candidate_tower.encoder.tables["movie_id"]


def test_configuration_fields_defaults_and_errors():
    default = ExperimentConfig()
    assert default.model.history.encoder == "attention" and default.training.example_format == "per_prefix"
    with pytest.raises(ConfigError, match="`model.history.encoder` must be one of"):
        apply_overrides(default, ["model.history.encoder=lstm"])
    with pytest.raises(ConfigError, match="`model.history`: `num_heads` must be a positive int. Received: 0"):
        apply_overrides(default, ["model.history.num_heads=0"])
    with pytest.raises(ConfigError, match="`training.example_format` must be one of"):
        apply_overrides(default, ["training.example_format=sequences"])
    config = apply_overrides(default, ["training.example_format=every_position", "model.history.encoder=pooling"])
    data = _split()
    spec = adapt(
        FeatureSpec(
            query=(SequenceFeature("history", embedding_dim=4, embedding_table="movie_id"),),
            candidate=(CategoricalFeature("movie_id", embedding_dim=4),),
            candidate_id="movie_id",
        ),
        data.train,
        data.candidates,
    )
    with pytest.raises(ConfigError, match="needs a sequence `model.history.encoder`"):
        build_model(spec, config, data)


def test_shipped_transformer_config_loads():
    config = load_config(CONFIGS / "movielens_transformer.yaml")
    assert config.model.history.encoder == "transformer"
    assert config.training.example_format == "every_position"
    assert config.data.dataset == "movielens"


@pytest.mark.slow
def test_every_position_model_exports_and_verifies_in_a_fresh_process(tmp_path):
    tf.keras.utils.set_random_seed(1)
    data = _split()
    model = _model(build_retrieval_task(LossConfig(logq="streaming", mixed_negatives=0), 0.2, 8, "int64"), data)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    sequences = sequence_examples(data.train, ["movie_id", "genres"], "movie_id", max_length=4)
    model.fit(epoch_batches(sequences, 2, seed=0, epochs=1), epochs=1, verbose=0)
    query_features, candidate_features = model.query_tower.features, model.candidate_tower.features
    export_path = export_retrieval_model(
        query_model=model.query_tower,
        candidate_model=model.candidate_tower,
        query_input_spec=input_signature(query_features),
        candidate_input_spec=input_signature(candidate_features),
        candidates={f.name: data.candidates[f.name] for f in candidate_features},
        candidate_id="movie_id",
        export_base=tmp_path / "export",
        model_name="sequential",
        index=IndexConfig(kind="brute-force", k=5),
        warmup_queries={f.name: data.eval_queries[f.name] for f in query_features},
    )
    report = verify_export(export_path)
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    loaded = tf.saved_model.load(str(export_path))  # any history length L, as DESIGN §5 says
    longer = np.concatenate([np.zeros((3, 4), np.int64), data.eval_queries["history"]], axis=1)
    queries = {"user_id": tf.constant(data.eval_queries["user_id"]), "history": tf.constant(longer)}
    expected = model.query_tower({"user_id": queries["user_id"], "history": tf.constant(data.eval_queries["history"])})
    got = loaded.signatures["query_embedding"](**queries)["embedding"]
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.slow
def test_every_position_batches_too_large_for_in_batch_logits_warn(caplog):
    from tfrec_pipelines.train import MAX_EVERY_POSITION_PAIRS, fit_model
    from tfrec_towers.config import TrainingConfig

    tf.keras.utils.set_random_seed(2)
    data = _split()
    model = _model(build_retrieval_task(PLAIN_IN_BATCH, 0.2, 8, "int64"), data)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    large = MAX_EVERY_POSITION_PAIRS // 4 + 1  # sequences of max_length 4
    fit_model(model, data.train, TrainingConfig(epochs=1, batch_size=large, example_format="every_position"), verbose=0)
    assert f"training.batch_size={large} sequences of up to 4 items" in caplog.text
    caplog.clear()
    history, _, _ = fit_model(
        model, data.train, TrainingConfig(epochs=1, batch_size=2, example_format="every_position"), verbose=0
    )
    assert "training.batch_size" not in caplog.text
    # the collapse checks sample the per-prefix examples (one row per distinct candidate), not the sequences
    from tfrec_towers.collapse import mean_resultant_length

    ids = np.unique(np.asarray(data.train["movie_id"]), return_index=True)[1]
    rows = {f.name: np.asarray(data.train[f.name])[np.sort(ids)] for f in model.candidate_tower.features}
    expected = mean_resultant_length(model.candidate_tower(rows).numpy())
    assert history["mean_resultant_length"][-1] == pytest.approx(expected, rel=1e-5)


def test_a_full_softmax_over_long_sequences_does_not_warn_of_an_in_batch_matrix(caplog):
    from tfrec_pipelines.train import MAX_EVERY_POSITION_PAIRS, fit_model
    from tfrec_towers.config import TrainingConfig
    from tfrec_towers.losses import FullSoftmaxLoss

    tf.keras.utils.set_random_seed(2)
    data = _split()
    towers = _model(FullSoftmaxLoss(), data)
    catalogue = build_candidate_source(
        LossConfig(mode="full_softmax", logq="none", mixed_negatives=0), data.candidates, "movie_id"
    )
    model = TwoTowerModel(towers.query_tower, towers.candidate_tower, "movie_id", FullSoftmaxLoss(), catalogue)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    large = MAX_EVERY_POSITION_PAIRS // 4 + 1  # sequences of max_length 4
    fit_model(model, data.train, TrainingConfig(epochs=1, batch_size=large, example_format="every_position"), verbose=0)
    assert "training.batch_size" not in caplog.text

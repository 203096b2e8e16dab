"""The Keras path: one's own tf.data pipeline → `import tfrec_towers as tt` → features, the default
model, `model.fit` with sample weights and the full-catalogue metrics callback → one-call export,
loaded in a fresh process that imports only TensorFlow."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers as tt
from helpers import run_fresh_process

NUM_ITEMS, NUM_USERS, HISTORY, K = 30, 24, 4, 5
ITEMS = np.array([f"item_{i:02d}" for i in range(NUM_ITEMS)], dtype=object)


def _interactions():
    """Per user a seeded sequence of 6 string item ids: the first 5 train (each with the up-to-4
    previous items as its ""-padded history), the last is held out."""
    rng = np.random.default_rng(0)
    train = {"user_id": [], "history": [], "item_id": []}
    weights, eval_queries, targets, seen = [], {"user_id": [], "history": []}, [], []
    for user in range(NUM_USERS):
        sequence = ITEMS[rng.choice(NUM_ITEMS, size=6, replace=False)].tolist()
        for position in range(6):
            previous = sequence[max(0, position - HISTORY) : position]
            history = [""] * (HISTORY - len(previous)) + previous
            if position < 5:
                train["user_id"].append(f"user_{user}")
                train["history"].append(history)
                train["item_id"].append(sequence[position])
                weights.append(1.0 + position % 2)
            else:
                eval_queries["user_id"].append(f"user_{user}")
                eval_queries["history"].append(history)
                targets.append(sequence[position])
                seen.append(sequence[:5])
    as_arrays = lambda table: {name: np.array(values, dtype=object) for name, values in table.items()}  # noqa: E731
    return as_arrays(train), np.array(weights, np.float32), as_arrays(eval_queries), np.array(targets, object), seen


def _numpy_metrics(query_embeddings, candidate_embeddings, targets, seen, ks):
    """HR@K / NDCG@K by sorting every candidate's score per query (ties against the target)."""
    scores = query_embeddings @ candidate_embeddings.T
    hr, ndcg = {k: [] for k in ks}, {k: [] for k in ks}
    for row, target in enumerate(targets):
        target_score = scores[row, list(ITEMS).index(target)]
        others = [c for c in range(NUM_ITEMS) if ITEMS[c] != target and ITEMS[c] not in seen[row]]
        rank = sum(scores[row, c] >= target_score for c in others)
        for k in ks:
            hr[k].append(float(rank < k))
            ndcg[k].append(1.0 / np.log2(rank + 2) if rank < k else 0.0)
    return {**{f"HR@{k}": np.mean(hr[k]) for k in ks}, **{f"NDCG@{k}": np.mean(ndcg[k]) for k in ks}}


FRESH_PROCESS = """
    import json, sys
    import tensorflow as tf

    loaded = tf.saved_model.load(sys.argv[1])
    queries = json.loads(sys.argv[2])
    out = loaded.signatures["serving_default"](
        user_id=tf.constant(queries["user_id"], tf.string), history=tf.constant(queries["history"], tf.string)
    )
    print(json.dumps({
        "ids": [[v.decode() for v in row] for row in out["candidate_ids"].numpy().tolist()],
        "id_dtype": out["candidate_ids"].dtype.name,
        "scores": out["scores"].numpy().tolist(),
        "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("tfrec_towers", "tfrec_pipelines")),
    }))
"""


@pytest.mark.slow
def test_own_tf_data_pipeline_to_a_served_string_id_export(tmp_path):
    tf.keras.utils.set_random_seed(0)
    train, weights, eval_queries, targets, seen = _interactions()
    catalogue = {"item_id": ITEMS}
    spec = tt.adapt(
        tt.FeatureSpec(
            query=(
                tt.CategoricalFeature("user_id", dtype="string", embedding_dim=8),
                tt.SequenceFeature(
                    "history", dtype="string", separator=None, embedding_dim=8, embedding_table="item_id"
                ),
            ),
            candidate=(tt.CategoricalFeature("item_id", dtype="string", embedding_dim=8),),
            candidate_id="item_id",
        ),
        train,
        catalogue,
    )
    default = tt.ExperimentConfig()
    towers = tt.TowerConfig(hidden_units=(16,), output_dim=8)
    config = dataclasses.replace(
        default, model=dataclasses.replace(default.model, query_tower=towers, candidate_tower=towers)
    )
    model = tt.build_model(spec, config, training_ids=train["item_id"], corpus=catalogue)
    assert (model.task.num_mixed_negatives, type(model.task.candidate_probability).__name__) == (
        512,
        "CountsFrequencyTable",
    )  # the default loss: logQ from the training counts + mixed negatives

    dataset = tf.data.Dataset.from_tensor_slices((train, weights)).shuffle(256, seed=0).batch(32)
    seen_indptr = np.cumsum([0] + [len(s) for s in seen])
    metrics = tt.RetrievalMetrics(
        eval_queries, targets, catalogue, seen_indptr=seen_indptr, seen_ids=np.concatenate(seen), ks=(5, 10)
    )
    stop = tf.keras.callbacks.EarlyStopping(monitor="val_HR@10", mode="max", patience=5)
    history = model.fit(dataset, epochs=3, callbacks=[metrics, stop], verbose=0).history
    assert len(history["val_HR@10"]) == len(history["loss"]) == 3
    assert np.all(np.isfinite(history["loss"]))

    query_embeddings = tt.compute_embeddings(model.query_tower, eval_queries)
    candidate_embeddings = tt.compute_embeddings(model.candidate_tower, catalogue)
    expected = _numpy_metrics(query_embeddings, candidate_embeddings, targets, seen, (5, 10))
    for name, value in expected.items():
        assert history[f"val_{name}"][-1] == pytest.approx(value, abs=1e-9)

    path = tt.export_model(model, catalogue, tmp_path / "models", k=K, warmup_queries=eval_queries)
    assert path == tmp_path / "models" / "tfrec_towers" / "1"
    rows = {name: values[:6].tolist() for name, values in eval_queries.items()}
    served = run_fresh_process(FRESH_PROCESS, path, json.dumps(rows))
    assert served["modules"] == [] and served["id_dtype"] == "string"
    scores = query_embeddings[:6] @ candidate_embeddings.T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    assert served["ids"] == ITEMS[best].tolist()
    np.testing.assert_allclose(served["scores"], np.take_along_axis(scores, best, axis=1), rtol=1e-5, atol=1e-6)

    excluding = tt.export_model(model, catalogue, tmp_path / "models", k=K, exclude_history=True)
    assert excluding.name == "2"
    out = tf.saved_model.load(str(excluding)).signatures["serving_default"](
        user_id=tf.constant(rows["user_id"]), history=tf.constant(rows["history"])
    )
    for row, ids in enumerate(out["candidate_ids"].numpy().astype(str).tolist()):
        ranked = ITEMS[np.argsort(-scores[row], kind="stable")].tolist()
        assert ids == [i for i in ranked if i not in rows["history"][row]][:K]


@pytest.mark.slow
def test_import_is_cheap_and_the_public_api_is_listed():
    script = (
        "import sys, tfrec_towers as tt; heavy = 'tensorflow' in sys.modules; "
        "names = [n for n in tt.__all__ if getattr(tt, n, None) is None]; print(heavy, names)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "False"  # the import alone loads no TensorFlow
    assert result.stdout.strip().endswith("[]")  # every public name resolves
    assert {"adapt", "build_model", "RetrievalMetrics", "export_model", "CategoricalFeature", "SequenceFeature"} <= set(
        tt.__all__
    )


def test_export_model_refuses_towers_without_feature_declarations():
    with pytest.raises(TypeError, match="must be a TwoTowerModel whose towers declare their features"):
        tt.export_model(tf.keras.Sequential(), {"item_id": ITEMS}, "/nonexistent")


def test_build_model_names_the_data_its_loss_reads():
    spec = tt.FeatureSpec(
        query=(
            tt.CategoricalFeature("user_id", dtype="string", vocabulary=("a",)),
            tt.SequenceFeature(
                "history", dtype="string", separator=None, embedding_table="item_id", vocabulary=tuple(ITEMS)
            ),
        ),
        candidate=(tt.CategoricalFeature("item_id", dtype="string", vocabulary=tuple(ITEMS)),),
        candidate_id="item_id",
    )
    with pytest.raises(
        tt.ConfigError,
        match=r"pass `training_ids` \(the candidate id of every training example\) "
        r"and `corpus` \(the candidate catalogue's feature columns\)",
    ):
        tt.build_model(spec)
    with pytest.raises(tt.ConfigError, match=r"\(`loss.mixed_negatives`=512 draws .*\): pass `corpus`"):
        tt.build_model(spec, training_ids=ITEMS)
    with pytest.raises(ValueError, match=r"`corpus` must hold the candidate features \['item_id'\]; it lacks"):
        tt.build_model(spec, training_ids=ITEMS, corpus={"id": ITEMS})

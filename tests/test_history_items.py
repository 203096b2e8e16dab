"""A history read through the candidate tower (``model.history.items: candidate_tower``): each history
item is the candidate tower's embedding of the catalogue row with its id, found in the graph."""

import dataclasses
import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401
from helpers import TINY_TOWERS, cli_sets, run_fresh_process
from tfrec_pipelines.train import evaluate_run
from tfrec_towers.build import build_model
from tfrec_towers.cli import main
from tfrec_towers.config import ConfigError, apply_overrides
from tfrec_towers.features import (
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    SequenceFeature,
    adapt,
)
from tfrec_towers.history_encoders import HistoryEncoderConfig
from tfrec_towers.history_items import ItemAttributes, attribute_columns
from tfrec_towers.model import TwoTowerModel, build_towers
from tfrec_towers.towers import Tower, TowerConfig, compute_embeddings

CATEGORIES = ["toys", "books", "tools"]


def _catalogue(string_ids):
    rng = np.random.default_rng(0)
    ids = np.arange(1, 13, dtype=np.int64)
    return {
        "item_id": ids.astype(str) if string_ids else ids,
        "category": np.array([CATEGORIES[i % 3] for i in range(12)], object),
        "tags": np.array(["a|b" if i % 2 else "c" for i in range(12)], object),
        "price": rng.uniform(1.0, 50.0, 12).astype(np.float32),
    }


def _spec(catalogue, string_ids):
    dtype = "string" if string_ids else "int64"
    spec = FeatureSpec(
        query=(SequenceFeature("history", dtype=dtype, embedding_dim=8, embedding_table="item_id", separator=None),),
        candidate=(
            CategoricalFeature("item_id", dtype=dtype, embedding_dim=8),
            CategoricalFeature("category", dtype="string", embedding_dim=4),
            SequenceFeature("tags", dtype="string", embedding_dim=4, separator="|"),
            NumericFeature("price"),
        ),
        candidate_id="item_id",
    )
    pad = "" if string_ids else 0
    return adapt(spec, {**catalogue, "history": np.array([[pad, catalogue["item_id"][0]]], catalogue["item_id"].dtype)})


def _rows(catalogue, ids):
    """The catalogue's rows of ``ids``, by a Python dict (the reference lookup)."""
    index = {key: i for i, key in enumerate(catalogue["item_id"].tolist())}
    return {name: column[[index[i] for i in ids]] for name, column in catalogue.items()}


@pytest.mark.parametrize("string_ids", [False, True])
def test_attributes_are_the_catalogue_rows_of_each_id_and_missing_values_otherwise(string_ids):
    catalogue = _catalogue(string_ids)
    spec = _spec(catalogue, string_ids)
    layer = ItemAttributes("item_id", spec.candidate_id_feature.dtype, attribute_columns(spec.candidate, "item_id"))
    layer.fill(catalogue)
    known = catalogue["item_id"][[3, 0, 7]]
    unknown = np.array(["never", ""], object) if string_ids else np.array([99, 0], np.int64)
    ids = np.concatenate([known, unknown]).reshape(1, 5)
    looked_up = {name: value.numpy() for name, value in layer(tf.constant(ids)).items()}
    expected = _rows(catalogue, known.tolist())
    assert set(looked_up) == {"item_id", "category", "tags", "price"}
    for name in ("category", "tags"):
        assert [v.decode() for v in looked_up[name][0, :3]] == list(expected[name])
        assert [v.decode() for v in looked_up[name][0, 3:]] == ["", ""]  # out of every vocabulary
    np.testing.assert_allclose(looked_up["price"][0, :3], expected["price"], rtol=1e-6)
    # a missing price is the mean the feature standardises by, so it reads as 0
    np.testing.assert_allclose(looked_up["price"][0, 3:], np.mean(catalogue["price"]), rtol=1e-5)


def test_the_missing_value_of_a_log_scaled_number_is_its_mean_on_the_raw_scale():
    features = (CategoricalFeature("item_id"), NumericFeature("views", log1p=True, mean=2.0, variance=1.0))
    (column,) = attribute_columns(features, "item_id")
    assert column == {"name": "views", "dtype": "float32", "missing": pytest.approx(np.expm1(2.0))}


def test_a_list_valued_candidate_feature_cannot_be_read_per_history_item():
    features = (
        CategoricalFeature("item_id"),
        SequenceFeature("tags", dtype="string", separator=None),
    )  # a [B, L] matrix
    with pytest.raises(ValueError, match="`tags` is a list per item"):
        attribute_columns(features, "item_id")


@pytest.mark.parametrize("string_ids", [False, True])
def test_the_history_is_read_as_the_candidate_tower_embeds_its_items(string_ids):
    catalogue = _catalogue(string_ids)
    spec = _spec(catalogue, string_ids)
    bare = TowerConfig(hidden_units=(), output_dim=8, projection=False, l2_normalize=False)
    candidate_config = TowerConfig(hidden_units=(16,), output_dim=8)
    query, candidate = build_towers(
        spec, bare, candidate_config, HistoryEncoderConfig(encoder="mean", items="candidate_tower")
    )
    query.history_items.attributes.fill(catalogue)
    pad = "" if string_ids else 0
    ids = catalogue["item_id"]
    histories = np.array([[pad, ids[2], ids[5], ids[5]], [pad, pad, pad, ids[11]]], dtype=ids.dtype)
    got = compute_embeddings(query, {"history": histories}, batch_size=8)
    # Reference: the candidate tower on the catalogue's own rows (looked up by a dict), averaged by numpy.
    items = compute_embeddings(candidate, catalogue, batch_size=16)
    row = {key: i for i, key in enumerate(ids.tolist())}
    expected = np.stack([items[[row[ids[2]], row[ids[5]], row[ids[5]]]].mean(axis=0), items[row[ids[11]]]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # One item encoder: the history trains the candidate tower's attribute embeddings too.
    names = {v.name for v in query.trainable_variables}
    assert any("category" in name for name in names) and any("hidden_0" in name for name in names)


def test_the_history_reads_ids_the_catalogue_lacks_as_the_candidate_tower_reads_unknown_items():
    catalogue = _catalogue(False)
    spec = _spec(catalogue, False)
    bare = TowerConfig(hidden_units=(), output_dim=8, projection=False, l2_normalize=False)
    query, candidate = build_towers(
        spec,
        bare,
        TowerConfig(hidden_units=(), output_dim=8),
        HistoryEncoderConfig(encoder="mean", items="candidate_tower"),
    )
    query.history_items.attributes.fill(catalogue)
    got = compute_embeddings(query, {"history": np.array([[0, 500]], np.int64)}, batch_size=1)
    mean_price = float(np.mean(catalogue["price"]))
    unknown = {"item_id": np.array([500]), "category": np.array([""], object), "tags": np.array([""], object)}
    expected = compute_embeddings(candidate, {**unknown, "price": np.array([mean_price], np.float32)}, batch_size=1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_the_attributes_are_state_saved_by_checkpoints_and_from_config_rebuilds_the_sharing(tmp_path):
    catalogue = _catalogue(True)
    spec = _spec(catalogue, True)
    config = TowerConfig(hidden_units=(16,), output_dim=8)
    query, candidate = build_towers(
        spec, config, config, HistoryEncoderConfig(encoder="transformer", items="candidate_tower")
    )
    query.history_items.attributes.fill(catalogue)
    model = TwoTowerModel(query, candidate, "item_id")
    histories = {"history": np.array([["", "3", "7"], ["11", "1", "2"]], object)}
    before = compute_embeddings(model.query_tower, histories, batch_size=2)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))

    rebuilt = TwoTowerModel.from_config(model.get_config())
    assert rebuilt.query_tower.history_items.candidate_tower is rebuilt.candidate_tower
    assert "toys" not in str(rebuilt.get_config())  # hyper-parameters only: no catalogue values...
    compute_embeddings(rebuilt.query_tower, histories, batch_size=2)  # builds the variables
    tf.train.Checkpoint(model=rebuilt).read(path).assert_existing_objects_matched()
    after = compute_embeddings(rebuilt.query_tower, histories, batch_size=2)
    np.testing.assert_allclose(after, before, rtol=1e-5)  # ...which the checkpoint restores


def test_configuration_errors_name_the_keys():
    with pytest.raises(ValueError, match="`items` must be one of"):
        HistoryEncoderConfig(items="attributes")
    with pytest.raises(ValueError, match="`items`='candidate_tower' needs a sequence `encoder`"):
        HistoryEncoderConfig(encoder="pooling", items="candidate_tower")
    catalogue = _catalogue(False)
    spec = _spec(catalogue, False)
    with pytest.raises(ValueError, match="`items`"):
        Tower(spec.query, TowerConfig(), history=HistoryEncoderConfig(encoder="mean", items="candidate_tower"))
    config = apply_overrides(
        tfrec_towers.config.ExperimentConfig(),
        ["model.history.items=candidate_tower", "loss.mixed_negatives=0", "loss.logq=none"],
    )
    with pytest.raises(ConfigError, match=r"`model\.history\.items`='candidate_tower' reads each history item"):
        build_model(spec, config)
    assert build_model(spec, config, for_inference=True).query_tower.history_items is not None


@pytest.mark.slow
def test_an_exported_model_reads_history_items_by_their_attributes_in_a_process_with_tensorflow_alone(tmp_path, capsys):
    rng = np.random.default_rng(0)
    items = pd.DataFrame(
        {
            "item_id": [f"item-{i:02d}" for i in range(30)],
            "category": [CATEGORIES[i % 3] for i in range(30)],
            "tags": ["a|b" if i % 2 else "c" for i in range(30)],
            "price": rng.uniform(1.0, 50.0, 30).round(2),
        }
    )
    items.to_csv(tmp_path / "items.csv", index=False)
    log = [(f"u{u}", f"item-{rng.integers(30):02d}", t) for u in range(40) for t in range(8)]
    pd.DataFrame(log, columns=["user_id", "item_id", "timestamp"]).to_csv(tmp_path / "log.csv", index=False)
    # The query is the mean of the history's candidate embeddings, exactly: no layer on top of it.
    (tmp_path / "mean.yaml").write_text(
        textwrap.dedent("""
            features:
              query: [{name: history, kind: history}]
            model:
              history: {encoder: mean, items: candidate_tower}
              query_tower: {hidden_units: [], projection: false, l2_normalize: false}
        """)
    )
    run = tmp_path / "run"
    args = [
        "--interactions",
        tmp_path / "log.csv",
        "--items",
        tmp_path / "items.csv",
        "--config",
        tmp_path / "mean.yaml",
    ]
    towers = [t for t in TINY_TOWERS if not t.startswith("model.query_tower.hidden_units")]
    sets = cli_sets(*towers, "training.epochs=2", "data.max_history=4")
    assert main(["train", "--output", str(run), *map(str, args), *sets]) == 0
    capsys.readouterr()
    assert json.loads((run / "verification.json").read_text())["ok"]
    # The attributes are restored with the checkpoint: the run re-evaluated from it agrees.
    assert evaluate_run(run) == pytest.approx(json.loads((run / "metrics.json").read_text()))

    probe = textwrap.dedent(f"""
        import csv, json, tensorflow as tf
        model = tf.saved_model.load({str(run / "export" / "tfrec_towers" / "1")!r})
        rows = list(csv.DictReader(open({str(tmp_path / "items.csv")!r})))
        pick = [rows[3], rows[17], rows[17]]
        items = model.signatures["candidate_embedding"](
            item_id=tf.constant([r["item_id"] for r in pick]), category=tf.constant([r["category"] for r in pick]),
            tags=tf.constant([r["tags"] for r in pick]), price=tf.constant([float(r["price"]) for r in pick]),
        )["embedding"].numpy()
        history = tf.constant([["", "item-03", "item-17", "item-17"], ["", "", "", "never-seen"]])
        query = model.signatures["query_embedding"](history=history)["embedding"].numpy()
        served = model.signatures["serving_default"](history=history)["candidate_ids"].numpy().astype(str)
        print(json.dumps(dict(items=items.tolist(), query=query.tolist(), served=served.tolist())))
    """)
    out = run_fresh_process(probe)
    # The exported query tower found each history item's attributes by its id, inside the graph.
    np.testing.assert_allclose(out["query"][0], np.mean(out["items"], axis=0), rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(out["query"][1]))  # an id the catalogue lacks fails nothing
    assert all(set(row) <= set(items["item_id"]) for row in out["served"])


def test_a_list_valued_candidate_column_is_a_configuration_error_naming_it():
    catalogue = _catalogue(False)
    spec = _spec(catalogue, False)
    listed = SequenceFeature("labels", dtype="string", separator=None, vocabulary=("x",))
    spec = dataclasses.replace(spec, candidate=(*spec.candidate, listed))
    config = apply_overrides(tfrec_towers.config.ExperimentConfig(), ["model.history.items=candidate_tower"])
    with pytest.raises(ConfigError, match="`labels` is a list per item"):
        build_model(spec, config, for_inference=True)

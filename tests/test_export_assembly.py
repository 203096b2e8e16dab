"""write_retrieval_export: the one assembly every export writes (metadata, signatures, warm-up)."""

import json

import numpy as np
import tensorflow as tf

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from helpers import CANDIDATE_SPEC, QUERY_SPEC, catalogue, make_candidate_tower, make_query_tower, queries
from tfrec_towers import warmup
from tfrec_towers.export.assembly import METADATA_FILENAME, METADATA_KEYS, write_retrieval_export
from tfrec_towers.export.signatures import named_specs
from tfrec_towers.index import IndexConfig, build_index


def test_the_version_holds_the_contract_metadata_and_serves_the_index(tmp_path):
    query_tower, candidate_tower = make_query_tower(), make_candidate_tower()
    corpus = catalogue()
    embeddings = candidate_tower(corpus).numpy()
    index = build_index(IndexConfig(k=3), embeddings, corpus["movie_id"])
    rows = queries()
    path = write_retrieval_export(
        tmp_path / "movies",
        4,
        "movies",
        query_tower,
        candidate_tower,
        index,
        named_specs("query", QUERY_SPEC),
        named_specs("candidate", CANDIDATE_SPEC),
        "movie_id",
        {"note": "sample"},
        (rows, corpus),
        warnings=["a warning"],
        metadata={"source": "test"},
    )
    assert path == tmp_path / "movies" / "4"
    meta = json.loads((path / "assets.extra" / METADATA_FILENAME).read_text())
    assert sorted(meta) == sorted(METADATA_KEYS + ("source",))
    assert (meta["version"], meta["k"], meta["embedding_dim"], meta["corpus_size"]) == (4, 3, embeddings.shape[1], 40)
    assert (meta["candidate_id_dtype"], meta["exclude_history"], meta["warnings"]) == ("int64", None, ["a warning"])
    assert meta["candidate_input_spec"] == {
        "movie_id": {"dtype": "int64", "shape": [None]},
        "genres": {"dtype": "string", "shape": [None]},
    }
    assert (path / "assets.extra" / warmup.WARMUP_FILENAME).is_file()

    served = tf.saved_model.load(str(path)).signatures["serving_default"](
        **{name: tf.constant(values) for name, values in rows.items()}
    )
    scores = query_tower(rows).numpy() @ embeddings.T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    assert served["candidate_ids"].numpy().tolist() == corpus["movie_id"][best].tolist()

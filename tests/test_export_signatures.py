"""The signature input specs survive the metadata's JSON form."""

import json

import tensorflow as tf

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from tfrec_towers.export.signatures import specs_from_json, specs_to_json


def test_specs_round_trip_through_json_with_their_names():
    specs = {"user_id": tf.TensorSpec([None], tf.int64), "history": tf.TensorSpec([None, None], tf.string)}
    written = json.loads(json.dumps(specs_to_json(specs)))
    assert written == {
        "user_id": {"dtype": "int64", "shape": [None]},
        "history": {"dtype": "string", "shape": [None, None]},
    }
    assert specs_from_json(written) == {
        "user_id": tf.TensorSpec([None], tf.int64, name="user_id"),
        "history": tf.TensorSpec([None, None], tf.string, name="history"),
    }

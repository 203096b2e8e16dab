"""RetrievalMetrics: HR@K / NDCG@K over the whole catalogue against hand-computed values, in `logs`,
History and EarlyStopping; argument validation."""

import math

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers as tt

# Three candidates and three queries with 2-d embeddings (the towers return them unchanged):
#   q0 = [1, 0]: scores 10 → 1, 20 → 0, 30 → 0.5; target 20
#   q1 = [0, 1]: scores 10 → 0, 20 → 1, 30 → 0.5; target 30
#   q2 = [1, 1]: scores 10 → 1, 20 → 1, 30 → 1;   target 10 (ties count against the target)
CANDIDATES = {
    "item_id": np.array([10, 20, 30], np.int64),
    "v": np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32),
}
QUERIES = {"q": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)}
TARGETS = np.array([20, 30, 10], np.int64)
# Unfiltered ranks: q0 2 (10 and 30 beat 20), q1 1 (20 beats 30), q2 2 (20 and 30 tie with 10).
UNFILTERED = {"HR@1": 0.0, "HR@2": 1 / 3, "NDCG@1": 0.0, "NDCG@2": (1 / math.log2(3)) / 3}
# With q0 having seen 10 and q1 having seen 20: ranks 1, 0, 2.
SEEN_INDPTR, SEEN_IDS = np.array([0, 1, 2, 2]), np.array([10, 20], np.int64)
FILTERED = {"HR@1": 1 / 3, "HR@2": 2 / 3, "NDCG@1": 1 / 3, "NDCG@2": (1 / math.log2(3) + 1.0) / 3}


class Passthrough(tf.keras.Model):
    """A tower returning one float column as its embedding."""

    def __init__(self, column):
        super().__init__()
        self.column = column

    def call(self, features, training=False):
        return tf.cast(features[self.column], tf.float32)


class FixedTwoTowerModel(tf.keras.Model):
    """Two fixed towers; a training step that changes nothing, so every epoch has the same metrics."""

    def __init__(self):
        super().__init__()
        self.query_tower, self.candidate_tower, self.candidate_id = Passthrough("q"), Passthrough("v"), "item_id"

    def train_step(self, data):
        return {"loss": tf.constant(0.0)}


def _callback(**kwargs):
    callback = tt.RetrievalMetrics(QUERIES, TARGETS, CANDIDATES, ks=(1, 2), **kwargs)
    callback.set_model(FixedTwoTowerModel())
    return callback


@pytest.mark.parametrize(
    "seen, expected", [({}, UNFILTERED), ({"seen_indptr": SEEN_INDPTR, "seen_ids": SEEN_IDS}, FILTERED)]
)
def test_metrics_equal_the_hand_computed_values(seen, expected):
    callback = _callback(**seen)
    callback.set_params({"epochs": 1})
    logs = {"loss": 0.5}
    callback.on_epoch_end(0, logs)
    assert logs.pop("loss") == 0.5
    assert logs == pytest.approx({f"val_{name}": value for name, value in expected.items()}, abs=1e-12)


def test_every_n_epochs_and_after_the_last_epoch_with_a_prefix():
    callback = _callback(every_n_epochs=2, prefix="catalogue_")
    callback.set_params({"epochs": 3})
    written = []
    for epoch in range(3):
        logs = {}
        callback.on_epoch_end(epoch, logs)
        written.append(sorted(logs))
    names = sorted(f"catalogue_{name}" for name in UNFILTERED)
    assert written == [[], names, names]


def test_fit_history_and_early_stopping_read_the_metrics():
    model = FixedTwoTowerModel()
    model.compile(optimizer="sgd")
    metrics = tt.RetrievalMetrics(QUERIES, TARGETS, CANDIDATES, ks=(1, 2), seen_indptr=SEEN_INDPTR, seen_ids=SEEN_IDS)
    stop = tf.keras.callbacks.EarlyStopping(monitor="val_HR@2", mode="max", patience=0)
    history = model.fit(
        tf.data.Dataset.from_tensor_slices(np.zeros(4)).batch(2), epochs=5, callbacks=[metrics, stop], verbose=0
    ).history
    # the metric never improves after epoch 0, so EarlyStopping (which needs it in logs) stops after epoch 1
    assert history["val_HR@2"] == pytest.approx([FILTERED["HR@2"]] * 2)
    assert history["val_NDCG@2"] == pytest.approx([FILTERED["NDCG@2"]] * 2)


def test_a_model_without_towers_is_refused_at_the_first_computation():
    callback = tt.RetrievalMetrics(QUERIES, TARGETS, CANDIDATES)
    callback.set_model(tf.keras.Sequential())
    with pytest.raises(TypeError, match="needs a two-tower model with `query_tower` and `candidate_tower`"):
        callback.compute()


@pytest.mark.parametrize(
    "change, error",
    [
        (dict(targets=TARGETS[:2]), r"`targets` must hold one candidate id per query \(3\)"),
        (dict(queries={"q": QUERIES["q"][:0]}), "`queries` must hold columns of one length, at least one row"),
        (dict(candidates={"item_id": CANDIDATES["item_id"], "v": CANDIDATES["v"][:2]}), "`candidates` must hold"),
        (dict(candidate_id="movie_id"), r"`candidate_id` 'movie_id' is not a column of `candidates`"),
        (dict(seen_indptr=SEEN_INDPTR), "`seen_indptr` and `seen_ids` go together"),
        (dict(seen_indptr=np.array([0, 1, 2]), seen_ids=SEEN_IDS), "`seen_indptr` must be 4 non-decreasing offsets"),
        (dict(seen_indptr=np.array([0, 2, 1, 2]), seen_ids=SEEN_IDS), "`seen_indptr` must be 4 non-decreasing"),
        (dict(seen_indptr=np.array([0, 1, 2, 3]), seen_ids=SEEN_IDS), r"from 0 to len\(seen_ids\) = 2"),
        (dict(ks=(10, 0)), r"`ks` must be a positive int. Received: 0"),
        (dict(ks=()), "`ks` must hold at least one cut-off"),
        (dict(every_n_epochs=0), "`every_n_epochs` must be a positive int"),
        (dict(batch_size=True), "`batch_size` must be a positive int"),
        (dict(prefix=None), "`prefix` must be a string"),
    ],
)
def test_invalid_arguments_are_refused(change, error):
    arguments = dict(queries=QUERIES, targets=TARGETS, candidates=CANDIDATES)
    arguments.update(change)
    with pytest.raises(ValueError, match=error):
        tt.RetrievalMetrics(**arguments)

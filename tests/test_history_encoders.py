"""History encoders: causality, padding invariance, numpy oracles, the tower around them, configs."""

import numpy as np
import pytest
import tensorflow as tf

import tfrec_towers  # noqa: F401
from tfrec_towers.features import CategoricalFeature, SequenceFeature
from tfrec_towers.history_encoders import (
    AttentionHistoryEncoder,
    GRUHistoryEncoder,
    HistoryEncoderConfig,
    MeanHistoryEncoder,
    TransformerHistoryEncoder,
    make_history_encoder,
    newest_positions,
)
from tfrec_towers.towers import Tower, TowerConfig

ENCODERS = ["mean", "attention", "gru", "transformer", "transformer_from_newest"]


def _encoder(kind):
    positions = "from_newest" if kind == "transformer_from_newest" else "from_oldest"
    return make_history_encoder(
        HistoryEncoderConfig(
            encoder=kind.removesuffix("_from_newest"),
            num_layers=2,
            num_heads=2,
            dropout=0.1,
            max_length=8,
            positions=positions,
        )
    )


def _batch(seed, batch=3, length=6, dim=4, padding=(2, 0, 5)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, dim)).astype(np.float32)
    mask = np.ones((batch, length), bool)
    for b, p in enumerate(padding):
        mask[b, :p] = False
    return x, mask


@pytest.mark.parametrize("kind", ENCODERS)
def test_changing_a_future_item_never_changes_an_earlier_position(kind):
    tf.keras.utils.set_random_seed(0)
    encoder = _encoder(kind)
    x, mask = _batch(0)
    before = encoder(tf.constant(x), tf.constant(mask), return_sequences=True).numpy()
    for position in (2, 4, 5):
        changed = x.copy()
        changed[:, position] = np.random.default_rng(position).normal(size=changed[:, position].shape)
        after = encoder(tf.constant(changed), tf.constant(mask), return_sequences=True).numpy()
        np.testing.assert_allclose(after[:, :position], before[:, :position], atol=1e-6)
        assert np.abs(after[1, position:] - before[1, position:]).max() > 1e-4  # the change is seen from there on


@pytest.mark.parametrize("kind", ENCODERS)
def test_padding_neither_its_amount_nor_its_content_changes_the_output(kind):
    tf.keras.utils.set_random_seed(1)
    encoder = _encoder(kind)
    x, mask = _batch(1)
    sequences = encoder(tf.constant(x), tf.constant(mask), return_sequences=True).numpy()
    summary = encoder(tf.constant(x), tf.constant(mask)).numpy()
    garbage = np.random.default_rng(2).normal(size=(3, 3, 4)).astype(np.float32)
    x_more = np.concatenate([garbage, np.where(mask[..., None], x, 7.0)], axis=1)
    mask_more = np.concatenate([np.zeros((3, 3), bool), mask], axis=1)
    sequences_more = encoder(tf.constant(x_more), tf.constant(mask_more), return_sequences=True).numpy()
    np.testing.assert_allclose(sequences_more[:, 3:], sequences, atol=1e-5)
    np.testing.assert_allclose(sequences_more[:, :3], 0.0)
    np.testing.assert_allclose(encoder(tf.constant(x_more), tf.constant(mask_more)).numpy(), summary, atol=1e-5)
    np.testing.assert_allclose(summary, sequences[:, -1], atol=1e-6)  # the summary is the newest position
    empty = encoder(tf.constant(x), tf.zeros_like(mask)).numpy()
    np.testing.assert_allclose(empty, 0.0)


def test_positions_from_newest_count_back_from_the_window_end_by_hand():
    mask = tf.constant([[False, True, True, True], [True, True, True, True]])
    np.testing.assert_array_equal(newest_positions(mask, 6).numpy(), [[2, 3, 4, 5], [2, 3, 4, 5]])
    np.testing.assert_array_equal(newest_positions(mask, 3).numpy(), [[0, 0, 1, 2], [0, 0, 1, 2]])


def test_transformer_from_newest_gives_the_newest_item_the_last_position():
    tf.keras.utils.set_random_seed(3)
    x, mask = _batch(5)
    encoder = TransformerHistoryEncoder(num_layers=1, num_heads=1, dropout=0.0, max_length=8, positions="from_newest")
    oldest = TransformerHistoryEncoder(num_layers=1, num_heads=1, dropout=0.0, max_length=8)
    encoder(tf.constant(x), tf.constant(mask))
    oldest(tf.constant(x), tf.constant(mask))
    oldest.set_weights(encoder.get_weights())
    # One valid item: its position is P − 1 from the newest, 0 from the oldest; with only rows 0 and
    # P − 1 swapped, the two encoders agree.
    single = np.zeros_like(mask)
    single[:, -1] = True
    table = encoder.positions.numpy()
    swapped = table.copy()
    swapped[[0, -1]] = table[[-1, 0]]
    oldest.positions.assign(swapped)
    np.testing.assert_allclose(
        encoder(tf.constant(x), tf.constant(single)).numpy(),
        oldest(tf.constant(x), tf.constant(single)).numpy(),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="`positions` must be one of"):
        TransformerHistoryEncoder(positions="newest")
    with pytest.raises(ValueError, match="`positions` must be one of"):
        HistoryEncoderConfig(positions="newest")
    with pytest.raises(ValueError, match="needs `encoder` 'transformer'"):
        HistoryEncoderConfig(encoder="attention", positions="from_newest")


def test_mean_encoder_matches_numpy_prefix_means():
    x, mask = _batch(3)
    got = MeanHistoryEncoder()(tf.constant(x), tf.constant(mask), return_sequences=True).numpy()
    for b in range(3):
        for pos in range(6):
            valid = x[b, : pos + 1][mask[b, : pos + 1]]
            expected = valid.mean(axis=0) if mask[b, pos] else np.zeros(4)
            np.testing.assert_allclose(got[b, pos], expected, rtol=1e-5, atol=1e-6)


def test_attention_encoder_matches_numpy():
    x, mask = _batch(4)
    encoder = AttentionHistoryEncoder(max_length=3)
    encoder(tf.constant(x), tf.constant(mask))
    rng = np.random.default_rng(5)
    encoder.recency.assign(rng.normal(size=3).astype(np.float32))
    got = encoder(tf.constant(x), tf.constant(mask), return_sequences=True).numpy()
    kernel, query, recency = encoder.keys.kernel.numpy(), encoder.query.numpy(), encoder.recency.numpy()
    for b in range(3):
        valid = np.flatnonzero(mask[b])
        for newest_rank, pos in enumerate(valid):
            items = valid[: newest_rank + 1]
            logits = (x[b, items] @ kernel @ query) / np.sqrt(4) + recency[
                np.minimum(newest_rank - np.arange(len(items)), 2)
            ]
            weights = np.exp(logits - logits.max())
            expected = (weights / weights.sum()) @ x[b, items]
            np.testing.assert_allclose(got[b, pos], expected, rtol=1e-4, atol=1e-5)


def test_gru_encoder_equals_a_gru_run_on_the_valid_items_alone():
    x, mask = _batch(6)
    encoder = GRUHistoryEncoder()
    got = encoder(tf.constant(x), tf.constant(mask), return_sequences=True).numpy()
    for b in range(3):
        valid = x[b][mask[b]][np.newaxis]
        expected = encoder.gru(tf.constant(valid)).numpy()[0]
        np.testing.assert_allclose(got[b][mask[b]], expected, rtol=1e-5, atol=1e-6)


def test_transformer_dropout_acts_only_in_training():
    tf.keras.utils.set_random_seed(7)
    encoder = TransformerHistoryEncoder(num_layers=1, num_heads=1, dropout=0.5, max_length=8)
    x, mask = _batch(7)
    a, b = (encoder(tf.constant(x), tf.constant(mask), training=False).numpy() for _ in range(2))
    np.testing.assert_allclose(a, b)
    assert np.abs(encoder(tf.constant(x), tf.constant(mask), training=True).numpy() - a).max() > 1e-4


@pytest.mark.parametrize("kind", ENCODERS)
def test_encoder_config_round_trip_and_checkpoint(kind, tmp_path):
    encoder = _encoder(kind)
    x, mask = _batch(8)
    expected = encoder(tf.constant(x), tf.constant(mask)).numpy()
    clone = type(encoder).from_config(encoder.get_config())
    assert clone.get_config() == encoder.get_config()
    clone(tf.constant(x), tf.constant(mask))
    path = tf.train.Checkpoint(encoder=encoder).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(encoder=clone).read(path).assert_consumed()
    np.testing.assert_allclose(clone(tf.constant(x), tf.constant(mask)).numpy(), expected, atol=1e-6)


def test_encoder_config_validation_names_the_argument():
    with pytest.raises(ValueError, match="`encoder` must be one of"):
        HistoryEncoderConfig(encoder="lstm")
    with pytest.raises(ValueError, match="`num_heads` must be a positive int. Received: 0"):
        HistoryEncoderConfig(num_heads=0)
    with pytest.raises(ValueError, match="`dropout` must be in"):
        TransformerHistoryEncoder(dropout=1.0)
    with pytest.raises(ValueError, match="`max_length` must be a positive int"):
        AttentionHistoryEncoder(max_length=0)
    with pytest.raises(ValueError, match="pools inside the feature encoder"):
        make_history_encoder(HistoryEncoderConfig(encoder="pooling"))


def _tower(kind, side=True):
    history = SequenceFeature("history", vocabulary=tuple(range(1, 13)), embedding_dim=8)
    features = [CategoricalFeature("user_id", vocabulary=(1, 2, 3), embedding_dim=4)] if side else []
    return Tower(
        features + [history],
        TowerConfig(hidden_units=(16,), output_dim=8),
        history=HistoryEncoderConfig(encoder=kind, num_layers=1, num_heads=2, dropout=0.0, max_length=6),
    )


@pytest.mark.parametrize("kind", [k for k in ENCODERS if k != "transformer_from_newest"])
def test_tower_sequence_embeddings_equal_the_per_prefix_queries(kind):
    # (Positions counted back from the newest slot depend on where the window ends, so a prefix inside
    # a sequence is read differently from the same prefix alone; SASRec trains that way.)
    tf.keras.utils.set_random_seed(9)
    tower = _tower(kind)
    history = np.array([[0, 0, 3, 5, 7, 11], [2, 4, 6, 8, 10, 12]], np.int64)
    users = np.array([1, 3], np.int64)
    sequences = tower.sequence_embeddings({"history": tf.constant(history), "user_id": tf.constant(users)}).numpy()
    for b in range(2):
        for pos in range(6):
            if history[b, pos] == 0:
                continue
            prefix = np.zeros((1, 9), np.int64)  # a longer padding than training used
            prefix[0, 9 - (pos + 1) :] = history[b, : pos + 1]
            query = tower({"history": tf.constant(prefix), "user_id": tf.constant(users[b : b + 1])}).numpy()[0]
            np.testing.assert_allclose(sequences[b, pos], query, atol=1e-5)


def test_tower_reads_only_the_last_max_length_items_and_round_trips(tmp_path):
    tower = _tower("transformer", side=False)
    long = np.arange(1, 13, dtype=np.int64)[np.newaxis]
    out = tower({"history": tf.constant(long)}).numpy()
    np.testing.assert_allclose(tower({"history": tf.constant(long[:, -6:])}).numpy(), out, atol=1e-6)
    clone = Tower.from_config(tower.get_config())
    assert clone.get_config() == tower.get_config()
    clone({"history": tf.constant(long)})
    path = tf.train.Checkpoint(tower=tower).write(str(tmp_path / "ckpt"))  # weights and the vocabulary
    tf.train.Checkpoint(tower=clone).read(path).assert_consumed()
    np.testing.assert_allclose(clone({"history": tf.constant(long)}).numpy(), out, atol=1e-6)


def test_pooling_tower_refuses_every_position_and_unknown_history_is_named():
    pooled = Tower([SequenceFeature("history", vocabulary=(1, 2), embedding_dim=4)], TowerConfig(output_dim=4))
    with pytest.raises(ValueError, match="every-position training needs a sequence encoder"):
        pooled.sequence_embeddings({"history": tf.constant([[1, 2]], tf.int64)})
    with pytest.raises(ValueError, match="needs an id-matrix sequence feature named 'events'"):
        Tower(
            [SequenceFeature("history", vocabulary=(1, 2), embedding_dim=4)],
            TowerConfig(output_dim=4),
            history=HistoryEncoderConfig(encoder="gru", feature="events"),
        )


@pytest.mark.parametrize("num_heads", [1, 2])
def test_the_sasrec_block_computes_what_the_reference_sasrec_written_apart_computes(num_heads):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.reference_transformer import MinimalSASRec

    tf.keras.utils.set_random_seed(3)
    length, dim = 6, 8
    reference = MinimalSASRec(20, length, dim=dim, num_layers=2, num_heads=num_heads, dropout=0.0)
    ids = np.array([[0, 0, 3, 7, 1, 9], [0, 0, 0, 0, 0, 4], [5, 6, 7, 8, 9, 10]], np.int32)
    expected = reference(tf.constant(ids)).numpy()
    encoder = TransformerHistoryEncoder(
        num_layers=2, num_heads=num_heads, dropout=0.0, max_length=length, positions="from_newest", block="sasrec"
    )
    embeddings, mask = reference.items(tf.constant(ids)), tf.constant(ids > 0)
    encoder(embeddings, mask, return_sequences=True)  # builds it, then it takes the reference's weights
    encoder.positions.assign(reference.positions.embeddings)
    for ours, (attention_norm, attention, feedforward_norm, feedforward) in zip(encoder.blocks, reference.blocks):
        ours["attention_norm"].set_weights(attention_norm.get_weights())
        ours["attention"].set_weights(attention.get_weights())
        ours["feedforward_norm"].set_weights(feedforward_norm.get_weights())
        ours["feedforward_hidden"].set_weights(feedforward.layers[0].get_weights())
        ours["feedforward_output"].set_weights(feedforward.layers[2].get_weights())
    encoder.output_norm.set_weights(reference.output_norm.get_weights())
    got = encoder(embeddings, mask, return_sequences=True).numpy()
    valid = ids > 0
    np.testing.assert_allclose(got[valid], expected[valid], rtol=2e-4, atol=2e-4)
    assert not np.allclose(got[valid], encoder_output_of_pre_norm(encoder, embeddings, mask)[valid], atol=1e-3)


def encoder_output_of_pre_norm(encoder, embeddings, mask):
    """The same weights read by the default block (which must differ)."""
    config = {**encoder.get_config(), "block": "pre_norm"}
    pre_norm = TransformerHistoryEncoder.from_config(config)
    pre_norm(embeddings, mask, return_sequences=True)
    pre_norm.set_weights(encoder.get_weights())
    return pre_norm(embeddings, mask, return_sequences=True).numpy()


def test_the_block_is_a_transformer_setting_named_in_errors():
    assert HistoryEncoderConfig(encoder="transformer", block="sasrec").block == "sasrec"
    with pytest.raises(ValueError, match="`block` must be one of"):
        HistoryEncoderConfig(encoder="transformer", block="post_norm")
    with pytest.raises(ValueError, match="`block`='sasrec' needs `encoder` 'transformer'"):
        HistoryEncoderConfig(encoder="gru", block="sasrec")
    layer = TransformerHistoryEncoder(block="sasrec")
    assert TransformerHistoryEncoder.from_config(layer.get_config()).block == "sasrec"

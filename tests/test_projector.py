"""TensorBoard projector files: the checkpointed tensor, metadata.tsv and projector_config.pbtxt."""

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.plugins import projector

import tfrec_towers  # noqa: F401  (selects Keras 2 before tf.keras is first used)
from helpers import tiny_config
from tfrec_pipelines.train import load_data, load_run, train
from tfrec_towers.config import ConfigError, ExperimentConfig, apply_overrides
from tfrec_towers.projector import write_projector_embeddings
from tfrec_towers.towers import compute_embeddings

TENSOR = "candidate_embeddings/.ATTRIBUTES/VARIABLE_VALUE"


def read_config(path):
    return text_format.Parse(path.read_text(), projector.ProjectorConfig())


def test_files_config_tensor_and_metadata_with_header_and_escapes(tmp_path):
    embeddings = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    metadata = {
        "movie_id": np.array([7, 3, 11, 5]),
        "genres": np.array(["Action|Comedy", "Drama\tNoir", "line\nbreak", "back\\slash"], dtype=object),
        "title": np.array([b"Heat", "Ran", "M", "Up"], dtype=object),
    }
    path = write_projector_embeddings(tmp_path / "tb", embeddings, metadata)

    assert path == tmp_path / "tb" / "projector_config.pbtxt"
    config = read_config(path)
    assert len(config.embeddings) == 1
    assert config.embeddings[0].tensor_name == TENSOR
    assert config.embeddings[0].metadata_path == "metadata.tsv"
    assert config.model_checkpoint_path == ""  # the projector finds the directory's latest checkpoint
    np.testing.assert_array_equal(tf.train.load_checkpoint(str(tmp_path / "tb")).get_tensor(TENSOR), embeddings)
    assert (tmp_path / "tb" / "metadata.tsv").read_text(encoding="utf-8") == (
        "movie_id\tgenres\ttitle\n"
        "7\tAction|Comedy\tHeat\n"
        "3\tDrama\\tNoir\tRan\n"
        "11\tline\\nbreak\tM\n"
        "5\tback\\\\slash\tUp\n"
    )


def test_one_column_has_no_header_and_rows_are_capped(tmp_path):
    embeddings = np.arange(12, dtype=np.float64).reshape(6, 2)
    write_projector_embeddings(tmp_path, embeddings, {"item_id": np.arange(10, 16)}, name="items", max_rows=4)

    config = read_config(tmp_path / "projector_config.pbtxt")
    assert config.embeddings[0].tensor_name == "items/.ATTRIBUTES/VARIABLE_VALUE"
    stored = tf.train.load_checkpoint(str(tmp_path)).get_tensor("items/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(stored, [[0, 1], [2, 3], [4, 5], [6, 7]])
    assert stored.dtype == np.float32
    assert (tmp_path / "metadata.tsv").read_text() == "10\n11\n12\n13\n"


def test_without_metadata_no_tsv_is_written(tmp_path):
    write_projector_embeddings(tmp_path, np.ones((2, 2), np.float32))
    assert not (tmp_path / "metadata.tsv").exists()
    assert read_config(tmp_path / "projector_config.pbtxt").embeddings[0].metadata_path == ""


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="Metadata column 'genres' must hold one value per embedding \\(3\\)"):
        write_projector_embeddings(tmp_path, np.ones((3, 2)), {"genres": np.array(["a", "b"])})
    with pytest.raises(ValueError, match="`embeddings` must be a non-empty float matrix"):
        write_projector_embeddings(tmp_path, np.ones(3))
    with pytest.raises(ValueError, match="`name` must be a Python identifier. Received: 'a/b'"):
        write_projector_embeddings(tmp_path, np.ones((3, 2)), name="a/b")
    with pytest.raises(ValueError, match="`max_rows` must be a positive int. Received: 0"):
        write_projector_embeddings(tmp_path, np.ones((3, 2)), max_rows=0)
    assert list(tmp_path.iterdir()) == []


def test_embeddings_need_tensorboard():
    with pytest.raises(ConfigError, match="`training.tensorboard_embeddings` needs `training.tensorboard: true`"):
        apply_overrides(ExperimentConfig(), ["training.tensorboard_embeddings=true"])


@pytest.mark.slow
def test_a_training_run_writes_its_candidates_for_the_projector(tmp_path):
    config = tiny_config(
        "data.num_items=120",
        "data.num_users=40",
        "data.interactions_per_user=6",
        "data.max_history=4",
        "training.batch_size=64",
        "export.k=5",
        "export.verify=false",
        "training.tensorboard=true",
        "training.tensorboard_embeddings=true",
    )
    run = tmp_path / "run"
    result = train(config, run, verbose=0)

    board = result.run_dir / "tensorboard"
    config_file = read_config(board / "projector_config.pbtxt")
    assert config_file.embeddings[0].tensor_name == TENSOR
    stored = tf.train.load_checkpoint(str(board)).get_tensor(TENSOR)
    assert stored.shape == (120, 8)  # 120 items, towers of width 8 (helpers.TINY_TOWERS)
    _, _, model = load_run(run)
    candidates = load_data(config).candidates
    np.testing.assert_allclose(stored, compute_embeddings(model.candidate_tower, candidates), rtol=1e-5, atol=1e-6)
    rows = (board / "metadata.tsv").read_text().splitlines()
    assert rows[0] == "item_id\tcategory"
    assert [int(row.split("\t")[0]) for row in rows[1:]] == list(range(1, 121))

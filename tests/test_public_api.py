"""The public API: ``import tfrec_towers as tt`` and ``import tfrec_pipelines`` give curated names, imported
on first use, and the README's library example runs as written and does what it says."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tfrec_pipelines
import tfrec_towers as tt

ROOT = Path(__file__).resolve().parent.parent
NUM_USERS, NUM_GROUPS, ITEMS_PER_GROUP, INTERACTIONS_PER_USER = 300, 20, 10, 12


def _fresh(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_USE_LEGACY_KERAS", None)  # the package must set it itself
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


@pytest.mark.parametrize("package", [tt, tfrec_pipelines], ids=["tfrec_towers", "tfrec_pipelines"])
def test_every_public_name_resolves_and_is_listed(package):
    assert package.__all__ and len(set(package.__all__)) == len(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="has no attribute 'NotAName'"):
        _ = package.NotAName


def test_public_names_are_the_defining_modules_objects():
    from tfrec_pipelines.train import train
    from tfrec_towers.build import build_model
    from tfrec_towers.losses.negatives import NegativeSet
    from tfrec_towers.losses.task import RetrievalLoss

    assert tt.build_model is build_model and tt.RetrievalLoss is RetrievalLoss
    assert tt.losses.NegativeSet is NegativeSet  # the subpackage is an attribute, like tfrs.layers
    assert tfrec_pipelines.train_run is train


@pytest.mark.slow
def test_importing_the_packages_does_not_import_tensorflow(tmp_path):
    completed = _fresh(
        "import os, sys\nimport tfrec_towers, tfrec_pipelines\n"
        "print(sorted(m for m in ('tensorflow', 'tf_keras', 'apache_beam', 'matplotlib') if m in sys.modules))\n"
        "print(os.environ['TF_USE_LEGACY_KERAS'])\nimport tensorflow as tf\nprint(tf.keras.__name__)",
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["[]", "1", "tf_keras.api._v2.keras"]


@pytest.mark.slow
def test_importing_the_config_module_does_not_import_tensorflow(tmp_path):
    completed = _fresh(
        "import sys\nimport tfrec_towers.config\n"
        "print(sorted(m for m in ('tensorflow', 'tf_keras') if m in sys.modules))",
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["[]"]


def _readme_library_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"<!-- example: library -->\n```python\n(.*?)```", readme, re.S).group(1)


def _grouped_interactions(path: Path) -> None:
    """Users of group g interact (90 %) with the items of group g: a structure a model can learn."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(NUM_USERS):
        group = user % NUM_GROUPS
        for timestamp in range(INTERACTIONS_PER_USER):
            own = rng.random() < 0.9
            item = (
                group * ITEMS_PER_GROUP + rng.integers(ITEMS_PER_GROUP)
                if own
                else rng.integers(NUM_GROUPS * ITEMS_PER_GROUP)
            )
            rows.append((f"u{user}", f"i{item}", timestamp))
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)


@pytest.mark.slow
def test_the_readme_library_example_runs_and_does_what_it_says(tmp_path):
    _grouped_interactions(tmp_path / "interactions.csv")
    completed = _fresh(_readme_library_example(), tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout
    hit_rate = float(re.search(r"^HR@10 ([0-9.]+)$", output, re.M).group(1))
    chance = 10 / (NUM_GROUPS * ITEMS_PER_GROUP)  # random ranking of the whole catalogue
    assert hit_rate > 5 * chance, output
    exported = re.search(r"^exported (\S+) verified True$", output, re.M)
    assert exported, output

    # An independent look at the export: load it here and ask for user u0's top 10 (group 0: items i0-i9).
    import tensorflow as tf

    serving = tf.saved_model.load(str(tmp_path / exported.group(1))).signatures["serving_default"]
    top = serving(user_id=tf.constant(["u0"]))["candidate_ids"].numpy()[0].astype(str)
    assert len(top) == 10
    assert sum(item in {f"i{i}" for i in range(ITEMS_PER_GROUP)} for item in top) >= 5, top

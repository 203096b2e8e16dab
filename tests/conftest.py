"""Shared fixtures and the ``slow`` marker.

The fixtures are session-scoped: each pytest-xdist worker builds one at most once, the first time a
test asks for it. Tests only read what a shared fixture made: a test that writes beside it (a new
export version, a report) works on a copy in its own ``tmp_path``.

Under ``--dist loadfile`` (setup.cfg's ``addopts``) a module's tests run on one worker, so each
module-scoped fixture is built once.
"""

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: a long end-to-end run: a training run through train or the command line (train, evaluate, "
        "export), a fresh process that loads TensorFlow (the verification worker, saved_model_cli, a "
        "multi-device strategy), a Beam job, a benchmark worker, a catalogue of a million items, or any "
        "other test that trains or exports for more than about 10 s on 2 cores (deselect with -m 'not slow')",
    )


def pytest_collection_modifyitems(items):
    """A test of the shared tiny run is ``slow``: it needs the run trained and exported end to end."""
    for item in items:
        if "tiny_run" in item.fixturenames:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def toy_export(tmp_path_factory):
    """``(path, query tower, candidate tower)``: the toy towers of helpers.py exported once (brute force,
    k = helpers.K, metadata ``{"dataset": "toy"}``) into a model directory that holds only version 1."""
    from helpers import export_models

    return export_models(tmp_path_factory.mktemp("toy_export"), metadata={"dataset": "toy"})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The directory of one run trained by the command line on helpers.TINY (300 synthetic items,
    120 users, one epoch, k = 10), exported with brute force as version 1, not verified."""
    from helpers import TINY, cli_sets
    from tfrec_towers.cli import EXIT_OK, main

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    arguments = ["--epochs", "1", "--index", "brute-force", *cli_sets(*TINY, "export.verify=false")]
    assert main(["--quiet", "train", "--output", str(run), *arguments]) == EXIT_OK
    return run

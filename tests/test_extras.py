"""Optional dependencies: each feature that needs an extra says which, from the library and the CLI,
and setup.cfg installs what the message names."""

import configparser
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tfrec_towers.extras import EXTRAS

ROOT = Path(__file__).resolve().parent.parent


def _without(modules: tuple, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter in which none of ``modules`` can be imported."""
    script = f"import sys\nsys.modules.update(dict.fromkeys({modules!r}))\n" + textwrap.dedent(code)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def _requirements(text: str) -> list:
    return [line.split(">")[0].split("=")[0].split("<")[0].strip() for line in text.strip().splitlines()]


def test_setup_cfg_extras_install_the_distributions_the_messages_name():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    extras = {name: _requirements(value) for name, value in setup["options.extras_require"].items()}
    core = _requirements(setup["options"]["install_requires"])
    for extra, distribution in {"beam": "apache-beam", "report": "matplotlib", "serving": "grpcio"}.items():
        assert EXTRAS[extra] == distribution
        assert distribution in extras[extra] and distribution not in core
    assert "tensorflow-serving-api" in core  # export's warm-up records are built from its protos


@pytest.mark.slow
def test_each_optional_feature_names_its_extra_when_the_dependency_is_missing(tmp_path):
    # One interpreter without apache-beam and matplotlib: each feature fails alone, naming its own extra.
    found = _without(
        ("apache_beam", "matplotlib"),
        """
        import importlib, json
        from tfrec_towers.extras import MissingExtraError
        from tfrec_towers.tuning import save_tuning_report
        beam, report = {}, []
        for name in ("tfrec_pipelines.embed_job", "tfrec_pipelines.embed_sources", "tfrec_pipelines.embed_output",
                     "tfrec_pipelines.index_from_embeddings"):
            try:
                importlib.import_module(name)
            except MissingExtraError as e:
                beam[name] = str(e)
        try:
            import tfrec_towers.report
        except MissingExtraError as e:
            report.append(str(e))
        try:
            save_tuning_report(None, "tuning")
        except MissingExtraError as e:
            report.append(str(e))
        print(json.dumps({"beam": beam, "report": report}))
    """,
        tmp_path,
    )
    assert found.returncode == 0, found.stderr
    messages = json.loads(found.stdout.strip().splitlines()[-1])
    assert len(messages["beam"]) == 4
    assert all("apache-beam" in m and "pip install 'tfrec-towers[beam]'" in m for m in messages["beam"].values())
    lines = messages["report"]
    assert [line.split(" needs ")[0] for line in lines] == ["The run report", "The tuning report's recall/QPS plot"]
    assert all("matplotlib" in line and line.endswith("pip install 'tfrec-towers[report]'") for line in lines)
    assert not (tmp_path / "tuning").exists()  # nothing written before the plot's import failed


@pytest.mark.slow
def test_the_cli_prints_an_error_line_and_exits_2_without_the_extra(tmp_path):
    # Both commands in one interpreter without apache-beam and matplotlib, each one's stderr captured.
    completed = _without(
        ("apache_beam", "matplotlib"),
        """
        import contextlib, io, json
        from tfrec_towers.cli import main
        out = {}
        for name, argv in (("embed", ["embed", "--model", "m", "--input", "in.parquet", "--output", "out"]),
                           ("report", ["report", "--run", "run"])):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(argv)
            out[name] = {"code": code, "stderr": err.getvalue()}
        print(json.dumps(out))
    """,
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    embed, report = result["embed"], result["report"]
    assert embed["code"] == 2, embed["stderr"]
    assert embed["stderr"].startswith("error: The batch embedding job needs apache-beam")
    assert "pip install 'tfrec-towers[beam]'" in embed["stderr"] and "Traceback" not in embed["stderr"]
    assert report["code"] == 2, report["stderr"]
    assert report["stderr"].strip().splitlines()[-1].startswith("error: The run report needs matplotlib")
    assert "pip install 'tfrec-towers[report]'" in report["stderr"] and "Traceback" not in report["stderr"]

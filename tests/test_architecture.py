"""The floor plan of docs/architecture.md: every import points down (or along) the floors.

core (``tfrec_towers``: features, encoders, towers, losses, model, evaluation, index, export, verify)
← data (``tfrec_pipelines``: readers, tables, splits, the tf.data input) ← jobs (the run lifecycle,
the Beam embedding job, index building) ← faces (the CLI and the report). The test reads every
module's source with :mod:`ast` (imports inside functions included) and fails on an import that
runs back up, naming both modules.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"tfrec_towers": ROOT / "tfrec_towers", "tfrec_pipelines": ROOT / "pipelines"}
FLOORS = ("core", "data", "jobs", "faces")
DATA = {
    "candidate_table",
    "data",
    "dataset",
    "formats",
    "declarations",
    "interactions",
    "movielens",
    "readers",
    "sequences",
    "sources",
    "splits",
    "streaming",
    "synthetic",
    "tables",
}
JOBS = {
    "__init__",
    "checkpointing",
    "distribute",
    "embed_job",
    "embed_output",
    "embed_sources",
    "index_from_embeddings",
    "run_directory",
    "run_errors",
    "search",
    "train",
    "validation",
}
FACES = {"cli", "config_template", "report", "report_data", "report_html"}


def floor(module: str) -> str:
    """The floor of a dotted module name of this project."""
    package, _, rest = module.partition(".")
    top = rest.split(".")[0] if rest else "__init__"
    if package == "tfrec_towers":
        return "faces" if top in FACES else "core"
    if top in DATA:
        return "data"
    if top in JOBS:
        return "jobs"
    raise AssertionError(f"{module} has no floor: add it to DATA or JOBS in this test and to docs/architecture.md")


def modules():
    """``(dotted name, path)`` of every module of the two packages."""
    for package, directory in PACKAGES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = path.relative_to(directory).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def project_imports(module: str, path: Path):
    """Every module of this project that ``path`` imports, with the line."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ("pipelines",):
                yield name, node.lineno
            elif name.split(".")[0] in PACKAGES:
                yield name, node.lineno


def test_no_import_runs_back_up_the_floors():
    upward = []
    for module, path in modules():
        own = FLOORS.index(floor(module))
        for target, line in project_imports(module, path):
            assert not target.startswith("pipelines"), (
                f"{path}:{line} imports {target}: the package installs as tfrec_pipelines"
            )
            if FLOORS.index(floor(target)) > own:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({floor(module)}) imports {target} ({floor(target)})")
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_the_loss_layers_do_not_import_the_model():
    """Inside the core, the losses sit below the model that uses them."""
    for module, path in modules():
        if module.startswith("tfrec_towers.losses"):
            targets = {target for target, _ in project_imports(module, path)}
            assert not {t for t in targets if t.startswith(("tfrec_towers.model", "tfrec_towers.build"))}, module


def test_every_module_has_a_floor_and_every_package_is_installed():
    """A new module gets a floor here (and in docs/architecture.md); a new subpackage is listed in setup.cfg."""
    for module, _ in modules():
        assert floor(module) in FLOORS
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    installed = {line.strip() for line in setup["options"]["packages"].replace(",", "\n").splitlines() if line.strip()}
    packages = {module for module, path in modules() if path.name == "__init__.py"}
    assert packages == installed


def test_the_lazy_public_names_respect_the_floors_too():
    """``tt.<name>`` imports its module on first use: the core package's names come from the core,
    the data and jobs package's names from those two floors."""
    import tfrec_pipelines
    import tfrec_towers

    for package, allowed in ((tfrec_towers, {"core"}), (tfrec_pipelines, {"data", "jobs"})):
        for name, module in package._PUBLIC.items():
            target = f"{package.__name__}.{module.split(':')[0]}"
            assert floor(target) in allowed, f"{package.__name__}.{name} comes from {target} ({floor(target)})"

"""The README's configuration block and "Your data" example are valid configurations, and the
block is the product's defaults."""

import re
from pathlib import Path

import yaml

from tfrec_towers.config import ExperimentConfig, config_from_dict

README_PATH = Path(__file__).resolve().parent.parent / "README.md"
README = README_PATH.read_text(encoding="utf-8")


def _yaml_block_after(heading: str) -> dict:
    section = README[README.index(heading) :]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))


def test_the_configuration_block_is_the_default_configuration():
    assert config_from_dict(_yaml_block_after("### Configuration")) == ExperimentConfig()


def test_the_your_data_example_is_a_valid_configuration():
    config = config_from_dict(_yaml_block_after("## Your data"))
    assert config.data.dataset == "interactions" and config.data.interactions.filter.values == (
        "purchase",
        "add_to_cart",
    )
    assert [d.kind for d in config.features.candidate] == ["id", "multi_valued", "numeric", "categorical"]


def test_every_committed_results_table_is_in_the_readme_as_written():
    """Each results block holds its benchmarks/results/NAME.md verbatim (``benchmarks/readme_tables.py``)."""
    results = README_PATH.parent / "benchmarks" / "results"
    blocks = dict(re.findall(r"<!-- results: ([\w-]+) -->\n(.*?)<!-- /results -->", README, re.S))
    committed = sorted(p.stem for p in results.glob("*.md"))
    assert sorted(blocks) == committed
    for name, body in blocks.items():
        assert body == (results / f"{name}.md").read_text(encoding="utf-8").rstrip() + "\n", name

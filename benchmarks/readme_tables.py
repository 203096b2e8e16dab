"""Copies the committed benchmark tables into the README: one command regenerates every results table.

Each generated block in ``README.md`` sits between ``<!-- results: NAME -->`` and
``<!-- /results -->`` and holds ``benchmarks/results/NAME.md`` verbatim (the table a benchmark wrote
from its JSON next to it)::

    python benchmarks/readme_tables.py           # rewrite the blocks
    python benchmarks/readme_tables.py --check   # exit 1 if a block differs from its results file
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL)


def render(readme: str, results_dir: Path) -> Tuple[str, List[str]]:
    """``readme`` with every block's body replaced by its results file, and the names of the blocks.

    Raises:
      FileNotFoundError: a block names a results file that does not exist.
    """
    names: List[str] = []

    def body(match: re.Match) -> str:
        name = match.group("name")
        names.append(name)
        table = (results_dir / f"{name}.md").read_text(encoding="utf-8")
        return f"{match.group(1)}{table.rstrip()}\n{match.group(4)}"

    return BLOCK.sub(body, readme), names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = parser.parse_args()
    path = ROOT / "README.md"
    readme = path.read_text(encoding="utf-8")
    rendered, names = render(readme, ROOT / "benchmarks" / "results")
    if args.check:
        if rendered != readme:
            print("README.md results tables differ from benchmarks/results: run python benchmarks/readme_tables.py")
            return 1
        return 0
    path.write_text(rendered, encoding="utf-8")
    print(f"README.md: {len(names)} tables from benchmarks/results ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A commented YAML of a configuration, for ``tfrec-towers init``.

The comments come from the configuration dataclasses' own docstrings (the first line of each
section's docstring above the section, the ``Attributes:`` entry of each field above the field), so
the example file can never drift from the defaults it documents: :func:`commented_yaml` of the
default configuration loads back as exactly ``ExperimentConfig()``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List

import yaml

from tfrec_towers.config import ExperimentConfig

_ATTRIBUTE = re.compile(r"^\s{6}([\w, ]+):\s*(.*)$")


def _field_comments(cls: type) -> Dict[str, str]:
    """``{field: description}`` from the ``Attributes:`` section of ``cls``'s docstring."""
    comments: Dict[str, str] = {}
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return comments
    current: List[str] = []
    for line in doc.split("Attributes:", 1)[1].splitlines():
        match = _ATTRIBUTE.match(line)
        if match:
            current = [name.strip() for name in match.group(1).split(",")]
            for name in current:
                comments[name] = match.group(2).strip()
        elif line.startswith(" " * 8) and current:
            for name in current:
                comments[name] += " " + line.strip()
        elif line.strip():
            current = []
    return comments


def _comment(text: str) -> str:
    """A docstring fragment as a YAML comment: reStructuredText ````x```` becomes ```x```."""
    return text.replace("``", "`")


def _plain(value: Any) -> Any:
    """Tuples as lists and sections (a row filter, a feature declaration) as mappings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _scalar(value: Any) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _section(instance: Any, indent: int) -> List[str]:
    lines: List[str] = []
    comments = _field_comments(type(instance))
    pad = " " * indent
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if field.name in comments:
            lines.append(f"{pad}# {_comment(comments[field.name])}")
        if dataclasses.is_dataclass(value):
            summary = (type(value).__doc__ or "").strip().splitlines()[0] if type(value).__doc__ else ""
            if summary and field.name not in comments:
                lines.append(f"{pad}# {_comment(summary)}")
            lines.append(f"{pad}{field.name}:")
            lines.extend(_section(value, indent + 2))
        else:
            lines.append(f"{pad}{field.name}: {_scalar(value)}")
    return lines


def commented_yaml(config: ExperimentConfig = ExperimentConfig()) -> str:
    """The configuration as YAML with a comment above every section and documented field.

    Args:
      config: the configuration to write (default: the defaults).

    Returns:
      YAML text that :func:`tfrec_towers.config.load_config` reads back as ``config``.
    """
    lines = [
        "# tfrec-towers experiment configuration (every key optional: omitted keys keep their defaults).",
        "# Use: tfrec-towers train --config THIS_FILE --output RUN [--set section.key=value ...]",
        "",
    ]
    for field in dataclasses.fields(config):
        section = getattr(config, field.name)
        lines.append(f"# {_comment((type(section).__doc__ or field.name).strip().splitlines()[0])}")
        lines.append(f"{field.name}:")
        lines.extend(_section(section, 2))
        lines.append("")
    return "\n".join(lines)

"""``docs/configuration.md``, written from the schema so it cannot drift from the code:
every key, its default, what it may take and what it does (:data:`HELP`).

    python -m diffdenoise.config.reference > docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import sys

from diffdenoise.config import schema
from diffdenoise.config.help import HELP

PREAMBLE = """# Configuration reference

Written by `python -m diffdenoise.config.reference` from `diffdenoise/config/schema.py`
(a test keeps this page equal to its output). A config is the schema's defaults below,
then each YAML file given (a file may name a `base:` file beside it), then dotted
overrides on the command line (`train.batch_size=16`). Unknown keys, wrong types and
values outside these ranges are refused with one line naming the key. How the shipped
settings were chosen: [experiments.md](experiments.md).
"""


def keys(cls: type, prefix: str = "") -> list[tuple[str, object]]:
    """``(dotted key, default)`` of every leaf of a schema dataclass, in schema order."""
    out = []
    for f in dataclasses.fields(cls):
        sub = getattr(schema, f.type, None) if isinstance(f.type, str) else None
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            out += keys(sub, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            out.append((f"{prefix}{f.name}", default))
    return out


def allowed(key: str) -> str:
    """What ``key`` may take, from the schema's choices and ranges."""
    if key in schema.CHOICES:
        return " \\| ".join(schema.CHOICES[key])
    if key not in schema.RANGES:
        return ""
    low, high, low_ok, high_ok = schema.RANGES[key]
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_ok else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if high_ok else '<'} {high:g}")
    return ", ".join(parts)


def render() -> str:
    lines, group = [PREAMBLE], None
    for key, default in keys(schema.Config):
        top = key.split(".")[0]
        if top != group:
            group = top
            lines += ["", f"## `{group}`", "", "| key | default | may take | what it does |",
                      "|---|---|---|---|"]  # fmt: skip
        shown = "`" + repr(default).replace("|", "\\|") + "`"
        lines.append(f"| `{key}` | {shown} | {allowed(key)} | {HELP[key]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())

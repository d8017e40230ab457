"""Every command the README shows still exists: its module and flags, make target, files
and config overrides. The outputs beside them were copied from real runs; this keeps the
commands themselves from drifting away from the code."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from diffdenoise.config import loading as config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_blocks(text: str) -> list[str]:
    """Command lines of the fenced blocks (no language or ``bash``), continuations joined."""
    lines, inside, keep = [], False, False
    for line in text.splitlines():
        if line.startswith("```"):
            inside, keep = not inside, line.strip() in ("```", "```bash")
            continue
        if inside and keep:
            lines.append(line)
    joined = "\n".join(lines).replace("\\\n", " ")
    return [ln.split(" # ")[0].strip() for ln in joined.splitlines()]


def commands(prefix: str) -> list[str]:
    found = []
    for doc in DOCS:
        for line in shell_blocks(doc.read_text()):
            line = re.sub(r"^(\w+=\S+ )+", "", line)  # leading VAR=value assignments
            if line.startswith(prefix):
                found.append(line)
    return found


@cache
def help_text(module: str, sub: str = "") -> str:
    args = [sys.executable, "-m", f"diffdenoise.{module}", *([sub] if sub else []), "--help"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(args)} failed: {proc.stderr[-300:]}"
    return proc.stdout


def test_the_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert len((ROOT / "bench" / "README.md").read_text().splitlines()) <= 300
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"


def test_relative_links_in_the_docs_lead_to_files():
    for doc in DOCS:
        for target in re.findall(r"\]\((?!https?:|#)([^)#]+)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links {target}, which is missing"


def test_the_readme_shows_commands_of_each_kind():
    assert len(commands("python -m diffdenoise.")) >= 15
    assert len(commands("make ")) >= 4
    assert commands("accelerate launch") and commands("sbatch ")


@pytest.mark.parametrize("line", commands("python -m diffdenoise."))
def test_module_commands_use_real_flags(line):
    words = shlex.split(line)
    module = words[2].removeprefix("diffdenoise.")
    sub = words[3] if module == "shard" and words[3:4] in (["merge"], ["verify"]) else ""
    text = help_text(module, sub)
    for flag in (w.split("=")[0] for w in words[3:] if w.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", text), f"{module} has no {flag}: {line}"


@pytest.mark.parametrize("line", commands("make "))
def test_make_targets_exist(line):
    target = shlex.split(line)[1]
    proc = subprocess.run(["make", "-n", target], capture_output=True, text=True, cwd=ROOT)
    assert "No rule to make target" not in proc.stderr, line


def launch_args(line: str) -> tuple[list[str], list[str]]:
    """Config files and ``key=value`` overrides after ``launch/train.py`` or an sbatch script."""
    words = shlex.split(line)
    start = next(i for i, w in enumerate(words) if w.endswith((".py", ".sbatch"))) + 1
    rest = words[start:]
    files = [w for w in rest if w.endswith(".yaml")]
    overrides = [w for w in rest if "=" in w and not w.startswith("-")]
    return files, overrides


@pytest.mark.parametrize(
    "line", [c for c in commands("accelerate launch") + commands("python launch/")]
)
def test_training_commands_load_their_config_and_overrides(line):
    for flag_file in re.findall(r"--config_file (\S+)", line):
        assert (ROOT / flag_file).is_file(), line
    files, overrides = launch_args(line)
    assert files, line
    overrides = [o.replace("<run>", "r") for o in overrides]
    config.load([ROOT / f for f in files], overrides)


@pytest.mark.parametrize("line", commands("sbatch "))
def test_sbatch_scripts_exist_and_take_their_config(line):
    script = next(w for w in shlex.split(line) if w.endswith(".sbatch"))
    assert (ROOT / script).is_file(), line
    files, overrides = launch_args(line)
    if script.endswith("train.sbatch"):
        config.load([ROOT / f for f in files], overrides)

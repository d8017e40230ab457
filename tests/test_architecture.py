"""The package's shape, checked from its source: subpackages import only downward, no
import cycle anywhere, command modules stay thin entries, modules and functions stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffdenoise"
# Lowest first: a subpackage may import its own modules and those before it, never after.
LAYERS = ["common", "config", "data", "models", "training", "inference", "evaluation", "bench"]
COMMANDS = ["demo_data", "evaluate", "export", "infer", "metrics", "quality", "reccorpus",
            "shard", "steptime", "stream", "summary", "train", "tune"]  # fmt: skip
LONG_FUNCTIONS = {("training.loop", "train")}  # the loop, written out in one place on purpose


def modules() -> dict[str, Path]:
    """``{"data.audio": path, ...}``: every module of the package, by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__") or "__init__"] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "diffdenoise" or node.module.startswith("diffdenoise."):
                base = node.module.removeprefix("diffdenoise").lstrip(".")
                for alias in node.names:
                    full = f"{base}.{alias.name}".lstrip(".")
                    out.add(full if full in known else base or "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("diffdenoise."):
                    out.add(alias.name.removeprefix("diffdenoise."))
    return out & known | {m for m in out if m not in known and m != "__init__"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def test_every_import_names_a_module_of_the_package(graph):
    known = set(graph)
    for name, deps in graph.items():
        assert deps <= known, f"{name} imports {deps - known}, which are not modules"


def test_no_import_cycle(graph):
    done, stack = set(), []

    def visit(node: str) -> None:
        if node in stack:
            cycle = [*stack[stack.index(node) :], node]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if node in done:
            return
        stack.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def layer(module: str) -> int | None:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def test_subpackages_import_only_downward(graph):
    upward = []
    for name, deps in graph.items():
        here = layer(name)
        if here is None:
            continue
        for dep in deps:
            there = layer(dep)
            if there is None or there > here:
                upward.append(f"{name} -> {dep}")
    assert not upward, "imports that run upward (or into a command module): " + ", ".join(upward)


def test_every_module_lives_in_a_subpackage_or_is_a_thin_command(graph):
    top = {name for name in graph if "." not in name and layer(name) is None}
    assert top == {"__init__", *COMMANDS}
    for command in COMMANDS:
        source = (PACKAGE / f"{command}.py").read_text()
        assert len(source.splitlines()) <= 12, f"{command}.py is more than a thin entry"
        assert 'if __name__ == "__main__":' in source and "import main" in source


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_and_functions_stay_small(name):
    path = modules()[name]
    tree = ast.parse(path.read_text())
    assert len(path.read_text().splitlines()) < 400, f"{path} has 400 lines or more"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and (name, node.name) not in LONG_FUNCTIONS:
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path}: {node.name} is {length} lines"


def test_the_package_exports_the_public_api_and_nothing_else():
    import diffdenoise

    assert sorted(diffdenoise.__all__) == sorted(
        ["Denoiser", "OnnxDenoiser", "StreamingDenoiser", "__version__", "build_model",
         "denoise_audio", "load_config", "model_for"]
    )  # fmt: skip
    for name in diffdenoise.__all__:
        assert getattr(diffdenoise, name) is not None
    cfg = diffdenoise.load_config(["configs/tiny.yaml"])
    assert diffdenoise.model_for(cfg).__class__.__name__ == "AudioDiffusionModel"


@pytest.mark.parametrize("family", ["unet", "spectral"])
def test_a_checkpoint_written_before_the_move_loads_and_gives_the_same_output(family):
    """``tests/data/premove-*/best.pt`` was written by main as it stood before the
    subpackages (the parent of commit 87024a8), with its output on a fixed input: no class
    path is pickled, so the move changes nothing."""
    import torch

    from diffdenoise.inference.loading import model_from_checkpoint

    folder = Path(__file__).parent / "data" / f"premove-{family}"
    model, _ = model_from_checkpoint(folder / "best.pt")
    saved = torch.load(folder / "io.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(saved["input"]), saved["output"])

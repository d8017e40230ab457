"""A non-editable install, used from outside the clone: the CLIs and the bench still work.

The fresh venv installs this project with ``pip install --no-deps .`` (a real wheel
build, not editable); its dependencies come from the development venv through a ``.pth``
file, so no download is needed.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    venv = tmp_path_factory.mktemp("install") / "venv"
    # no pip or setuptools of its own: the dev venv's (through the .pth) are current enough
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "dev_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path_factory.mktemp("build") / "src"  # setuptools builds in the tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "diffdenoise", "configs"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
        check=True, cwd=source.parent,
    )  # fmt: skip
    return python


def run(python, *args, cwd):
    return subprocess.run([python, *args], capture_output=True, text=True, cwd=cwd, check=True)


def test_installed_package_is_not_the_clone(installed, tmp_path):
    out = run(installed, "-c", "import diffdenoise, sys; print(diffdenoise.__file__)", cwd=tmp_path)
    assert str(ROOT) not in out.stdout and "site-packages" in out.stdout


def test_infer_help_runs_installed(installed, tmp_path):
    out = run(installed, "-m", "diffdenoise.infer", "--help", cwd=tmp_path)
    assert "usage: python -m diffdenoise.infer" in out.stdout


def test_bench_runs_installed_with_its_shipped_configs(installed, tmp_path):
    run(installed, "-m", "diffdenoise.bench", "--only", "B6", "--out", "b.json", cwd=tmp_path)
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["figure"].split(":")[1].split()[0] for r in rows] == [
        "bridge.yaml", "default.yaml", "gpu.yaml", "large.yaml", "realtime.yaml", "seed.yaml",
        "tiny.yaml",
    ]  # fmt: skip
    where = run(
        installed,
        "-c",
        "from diffdenoise.config import loading; print(loading.find_config('tiny'))",
        cwd=tmp_path,
    )
    assert str(ROOT) not in where.stdout and "share/diffdenoise/configs/tiny.yaml" in where.stdout

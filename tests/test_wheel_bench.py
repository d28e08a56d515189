"""`pocketsd bench` from an installed wheel, outside the source checkout: the harness ships in the package.

Offline by construction: the wheel is built from a copy of the sources with the setuptools already installed
(`--no-build-isolation --no-index`), installed with `--no-deps --no-index` into a fresh venv that borrows this
environment's site-packages for torch and diffusers, and run from an empty folder on the embedded reference model
(one kind, one image, one step: about a minute on two CPUs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None,
                                reason="building the wheel offline needs setuptools and pip in this environment")


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _sources(dest: Path) -> Path:
    """pyproject, README and the package only: building in the checkout would leave build/ and egg-info there."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "python" / "pocketsd", dest / "python" / "pocketsd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def test_bench_runs_from_an_installed_wheel(tmp_path):
    src = _sources(tmp_path / "src")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, src])
    (wheel,) = dist.glob("pocketsd-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the dependencies (torch, diffusers…) from this environment; a plain path, so its editable-install hook
    # (which would put the checkout back on the path) is not run
    (site / "_pocketsd_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run([python, "-c", "import pocketsd; print(pocketsd.__file__)"], cwd=work, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the installed copy, not the checkout

    _run([venv / "bin" / "pocketsd", "bench", "--steps", "1", "--kinds", "fp16", "--prompts", "1", "--seeds", "1"],
         cwd=work, env=env, timeout=600)
    doc = json.loads((work / "pocketsd-bench" / "generate.json").read_text())  # outside a checkout: ./pocketsd-bench
    (result,) = doc["results"]
    assert result["label"] == "fp16" and len(result["images"]) == 1 and len(result["images"][0]["unet_steps_s"]) == 1

"""The package as users install it: a wheel built from this repository, installed (not editable)
into a fresh virtual environment, run from a folder outside the repository, end to end:
export → replay → build → diff with a markdown summary and a single HTML file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

FACTORY_MODULE = """
import torch


class Forecaster(torch.nn.Module):
    def __init__(self, hidden: int = 6):
        super().__init__()
        self.rnn = torch.nn.GRU(3, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def build(hidden: int = 6):
    return Forecaster(hidden)
"""


@pytest.fixture(scope="module")
def gate_report(tmp_path_factory) -> Path:
    """The `gate-report` command of a fresh venv holding only the wheel (dependencies come from
    this test environment through a path entry, so nothing is downloaded)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # built from a copy: a build writes build/ beside its sources, never in the checkout
    for folder in ("reporter", "templates"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        check=True,
        timeout=600,
        env=_clean_env(),
    )
    (wheel,) = (work / "dist").glob("gate_reporter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "reporter/templates/base.html" in names and "reporter/templates/assets/site.js" in names
    packages = {str(path.relative_to(ROOT)) for path in (ROOT / "reporter").rglob("__init__.py")}
    assert packages and packages <= names, sorted(packages - names)  # every subpackage ships
    venv = work / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120, env=_clean_env()
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        timeout=600,
        env=_clean_env(),
    )
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True, env=_clean_env()
    )
    purelib = Path(purelib.stdout.strip())
    (purelib / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "gate-report"


def _clean_env() -> dict[str, str]:
    """The environment without anything that points Python at this checkout or another venv."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(command: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(command), *args], cwd=cwd, capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_the_installed_wheel_runs_end_to_end_outside_the_repository(gate_report, tmp_path):
    assert ROOT not in tmp_path.parents
    (tmp_path / "mymodels.py").write_text(FACTORY_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        import mymodels
    finally:
        sys.path.remove(str(tmp_path))
    for version, seed in (("v1", 0), ("v2", 1)):
        torch.manual_seed(seed)
        torch.save(mymodels.build().state_dict(), tmp_path / f"{version}.pt")
    np.savez(tmp_path / "holdout.npz", x=np.random.default_rng(0).standard_normal((40, 12, 3)).astype(np.float32))
    model = ["--factory", "mymodels:build", "--windows", "holdout.npz"]
    where = _run(gate_report.parent / "python", "-c", "import reporter; print(reporter.__file__)", cwd=tmp_path)
    assert str(gate_report.parent.parent) in where.stdout  # the wheel's copy, not this checkout
    _run(gate_report, "export", "v1.pt", *model, "-o", "exported/v1.onnx", cwd=tmp_path)
    for version in ("v1", "v2"):
        _run(
            gate_report,
            "replay",
            f"{version}.pt",
            *model,
            "--name",
            "mymodel",
            "--version",
            version,
            "-o",
            f"runs/{version}",
            cwd=tmp_path,
        )
    _run(gate_report, "build", "--runs", "runs/v1", "runs/v2", "-o", "site", cwd=tmp_path)
    _run(
        gate_report,
        "diff",
        "runs/v1",
        "runs/v2",
        "--markdown",
        "review/gates.md",
        "--single-file",
        "review/gates.html",
        cwd=tmp_path,
    )
    assert (tmp_path / "exported" / "v1.layers.json").is_file()
    assert "Gate Reporter" in (tmp_path / "site" / "index.html").read_text()
    assert len(list((tmp_path / "site" / "runs").rglob("*.html"))) > 4
    assert (tmp_path / "review" / "gates.md").read_text().startswith("## Gate Reporter: mymodel v1 → mymodel v2")
    assert "vegaEmbed" in (tmp_path / "review" / "gates.html").read_text()

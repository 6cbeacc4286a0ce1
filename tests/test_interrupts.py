"""Interrupted work loses nothing: a replay or build killed part-way (SIGINT as Ctrl-C, SIGTERM as
a job scheduler would) leaves the previous run and site intact and loadable, removes its staging
folders, and says so in one line, without a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reporter.runstore import Run
from tests.tiny_models import save_tiny

FACTORY = "tests.tiny_models:tiny_forecaster"
ENV = {
    **os.environ,
    "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
}  # the factory's package, from any folder


def _default_sigint() -> None:
    """In the child: SIGINT back to its default. A test runner started in the background (as CI and
    `make test &` start it) ignores SIGINT, and an ignored signal stays ignored across exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "reporter.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=_default_sigint,
    )


def _interrupt_after(process, marker: str, sig: int, delay: float = 1.0) -> tuple[int, str]:
    """Wait until stderr shows `marker`, let the work run a moment, send `sig`; return (code, stderr)."""
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if marker in line:
                break
        else:
            pytest.fail(f"the command ended before {marker!r}: {''.join(seen)}")
        time.sleep(delay)
        assert process.poll() is None, "the command finished before it could be interrupted: make its input larger"
        process.send_signal(sig)
        rest = process.stderr.read()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    return process.returncode, "".join(seen) + rest


def _big_windows(path, count=400_000):
    np.save(path, np.random.default_rng(0).standard_normal((count, 7, 3)).astype(np.float32))


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupted_replay_keeps_the_previous_run(tmp_path, sig, code, word):
    checkpoint, windows = save_tiny(tmp_path)
    base = ["replay", str(checkpoint), "--factory", FACTORY, "-o", str(tmp_path / "run"), "--provider", "cpu"]
    first = subprocess.run(
        [sys.executable, "-m", "reporter.cli", *base, "--windows", str(windows)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert first.returncode == 0, first.stderr
    before = {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir()}
    _big_windows(tmp_path / "big.npy")
    returncode, stderr = _interrupt_after(
        _start([*base, "--windows", str(tmp_path / "big.npy")], tmp_path), "provider:", sig
    )
    assert returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == f"gate-report: {word}; nothing half-written was left behind"
    assert "Traceback" not in stderr
    assert {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir()} == before
    assert Run.load(tmp_path / "run").meta["n_windows"] == 10
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_terminated_build_keeps_the_previous_site(tmp_path):
    save_tiny(tmp_path)
    (tmp_path / "reporter.toml").write_text(f"""[site]
title = "interrupted"
output = "site"

[[runs]]
model = "tiny"
version = "v1"
checkpoint = "tiny.pt"
factory = "{FACTORY}"
windows = "windows.npy"
""")
    np.save(tmp_path / "windows.npy", np.random.default_rng(1).standard_normal((20, 7, 3)).astype(np.float32))
    first = subprocess.run(
        [sys.executable, "-m", "reporter.cli", "build"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert first.returncode == 0, first.stderr
    site = {path.relative_to(tmp_path): path.read_bytes() for path in (tmp_path / "site").rglob("*") if path.is_file()}
    _big_windows(tmp_path / "windows.npy")  # the cache no longer matches: the next build replays
    returncode, stderr = _interrupt_after(_start(["build"], tmp_path), "replaying", signal.SIGTERM)
    assert returncode == 143 and "Traceback" not in stderr, stderr
    assert {
        path.relative_to(tmp_path): path.read_bytes() for path in (tmp_path / "site").rglob("*") if path.is_file()
    } == site
    leftovers = [path for path in [*tmp_path.iterdir(), *(tmp_path / "runs").iterdir()] if path.name.startswith(".")]
    assert leftovers == []
    assert len(list((tmp_path / "runs").iterdir())) == 1 and Run.load(next((tmp_path / "runs").iterdir()))

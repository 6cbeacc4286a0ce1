"""Determinism as the README states it: two replays of the same inputs from scratch (two sessions
side by side, many batches) write the same run directory byte for byte except `timings.json`, the
measured speed; and sites built from the two fresh replays are byte-identical."""

from __future__ import annotations

import numpy as np

from reporter.cli import main
from tests.tiny_models import save_tiny

FACTORY = "tests.tiny_models:tiny_forecaster"


def _files(folder) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_two_fresh_replays_and_their_sites_are_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    checkpoint, _ = save_tiny(tmp_path)
    windows = tmp_path / "many.npz"
    np.savez(windows, x=np.random.default_rng(9).standard_normal((300, 11, 3)).astype(np.float32))
    common = ["--factory", FACTORY, "--windows", str(windows), "--name", "tiny", "--version", "v1"]
    for replay in ("first", "second"):
        args = [
            "replay",
            str(checkpoint),
            *common,
            "--workers",
            "2",
            "--batch-size",
            "16",
            "-o",
            str(tmp_path / replay),
        ]
        assert main(args) == 0
        assert main(["build", "--runs", str(tmp_path / replay), "-o", str(tmp_path / f"site-{replay}")]) == 0
    first, second = _files(tmp_path / "first"), _files(tmp_path / "second")
    assert first.keys() == second.keys() and "timings.json" in first
    differing = sorted(name for name in first if first[name] != second[name])
    assert differing == ["timings.json"], differing
    assert _files(tmp_path / "site-first") == _files(tmp_path / "site-second")

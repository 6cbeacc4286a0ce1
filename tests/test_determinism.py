"""Determinism as the README states it: two replays of the same inputs from scratch (two sessions
side by side, many batches) write the same run directory byte for byte except `timings.json`, the
measured speed; and sites built from the two fresh replays are byte-identical.

Thread timing must not matter, so the two replays are run under opposite timings: in the first the
second session is slow, in the second the first one is. Each worker then takes a different set of
batches in each replay; a replay that folded batches by worker instead of by batch number would
group its sums differently and write different bytes (`make mutants`, `thread-order`). Left to the
scheduler, two workers on an idle machine tend to alternate the same way twice, which hides that."""

from __future__ import annotations

import threading
import time

import numpy as np

from reporter.cli import main
from reporter.replay.runner import Replayer
from tests.tiny_models import save_tiny

FACTORY = "tests.tiny_models:tiny_forecaster"
DELAY = 0.1  # seconds per batch for the slow session: far above a 16-window batch's run time, even on a busy machine


def _files(folder) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _slowed(slow: int):
    """`Replayer._run`, sleeping first when replay's worker thread runs session number `slow`."""
    run = Replayer._run

    def slowed(self, session, windows, indices):
        if threading.current_thread() is not threading.main_thread() and session is self._sessions[slow]:
            time.sleep(DELAY)
        return run(self, session, windows, indices)

    return slowed


def test_two_fresh_replays_and_their_sites_are_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    checkpoint, _ = save_tiny(tmp_path)
    windows = tmp_path / "many.npz"
    np.savez(windows, x=np.random.default_rng(9).standard_normal((300, 11, 3)).astype(np.float32))
    common = ["--factory", FACTORY, "--windows", str(windows), "--name", "tiny", "--version", "v1"]
    for replay, slow in (("first", 1), ("second", 0)):
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
        with monkeypatch.context() as slowed:
            slowed.setattr(Replayer, "_run", _slowed(slow))
            assert main(args) == 0
        assert main(["build", "--runs", str(tmp_path / replay), "-o", str(tmp_path / f"site-{replay}")]) == 0
    first, second = _files(tmp_path / "first"), _files(tmp_path / "second")
    assert first.keys() == second.keys() and "timings.json" in first
    differing = sorted(name for name in first if first[name] != second[name])
    assert differing == ["timings.json"], differing
    assert _files(tmp_path / "site-first") == _files(tmp_path / "site-second")

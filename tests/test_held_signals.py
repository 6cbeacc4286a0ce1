"""A Ctrl-C while replay's workers start is delivered once they all have, so none is left running
past the interrupted replay (a worker inside onnxruntime at shutdown aborts the process)."""

from __future__ import annotations

import signal
import threading

import pandas as pd
import pytest

from reporter.replay.held_signals import signals_held
from tests.test_batch_budget import _tiny_replayer


@pytest.fixture
def ctrl_c_raises():
    """SIGINT as an interactive shell leaves it (a runner started in the background ignores it)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_signal_within_the_block_is_raised_on_leaving_it_under_the_handler_it_had(ctrl_c_raises):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            signal.raise_signal(signal.SIGINT)
            reached.append("after the signal")
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with signals_held():
        pass  # nothing noted: nothing raised


def test_outside_the_main_thread_nothing_is_held(ctrl_c_raises):
    handlers = []

    def look():
        with signals_held():
            handlers.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    assert handlers == [signal.default_int_handler]


def test_ctrl_c_as_the_first_worker_starts_leaves_no_worker_running(tmp_path, monkeypatch, ctrl_c_raises):
    replayer, source = _tiny_replayer(tmp_path, (600, 12, 3), seed=7)
    before = replayer.replay(source, batch_size=8, progress=False).stats.to_frames().gate_stats
    started, start = [], threading.Thread.start

    def start_then_interrupt(thread):
        start(thread)
        started.append(thread)
        if len(started) == 1:
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C came while `start` waited for the thread

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        replayer.replay(source, batch_size=8, progress=False)
    assert len(started) == replayer.workers == 2  # every worker started before the interrupt came
    assert not any(thread.is_alive() for thread in started)  # and each was joined before replay raised
    monkeypatch.undo()
    again = replayer.replay(source, batch_size=8, progress=False)  # the replayer is not left broken
    assert len(again.features) == 600
    pd.testing.assert_frame_equal(again.stats.to_frames().gate_stats, before)

"""How a batch of windows becomes model calls, and the calls' outputs one batch's outputs.

    one call            windows [N, T, …] fill the model's input whole (the common case)
    one call per chunk  a streaming model takes one chunk per call and returns its next state
                        (`--carry IN=OUT`): windows are [N, T, …one call's input…], the model is
                        called T times with each state output fed back to its input, and a
                        window's gate trace is the calls' traces along time
    one call per window the model's input has no batch axis (e.g. [time, features]) or a fixed
                        batch of 1: each window is its own call

Gate outputs ([batch, time, directions, hidden]) are joined along time across chunks and along
the batch across windows (a layer in an If branch that only some of the calls took counts as not
run for the batch: its traces cannot be joined); the model's own outputs gain a call axis (axis 1) across chunks, so
per-step outputs stay [batch, time, …] and every later step reads them as it would.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from reporter.replay.feeds import Feeds

__all__ = ["run_calls"]

Call = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _chunks(run: Call, feeds: Feeds, windows: np.ndarray, indices: np.ndarray | None, gates: set[str]) -> dict:
    """Call the model once per chunk of these windows, each state output fed back to its input."""
    feed = feeds.batch(windows[:, 0], indices)
    calls = []
    for t in range(windows.shape[1]):
        feed[feeds.primary] = np.ascontiguousarray(windows[:, t])
        outputs = run(feed)
        calls.append(outputs)
        feed.update({state_in: outputs[state_out] for state_in, state_out in feeds.carry.items()})
    return {name: _along_calls([outputs[name] for outputs in calls], name in gates) for name in calls[0]}


def _along_calls(values: list[np.ndarray], gate: bool) -> np.ndarray:
    """A gate trace continues along time; a model output gains a call axis after the batch."""
    return _joined(values, axis=1) if gate else np.stack(values, axis=1)


def _joined(traces: list[np.ndarray], axis: int) -> np.ndarray:
    """One gate's traces of several calls joined; a layer that did not run in some of the calls
    (an If branch they did not take: batch 0) counts as not run for the whole batch."""
    ran = [trace.shape[0] > 0 for trace in traces]
    if any(ran) and not all(ran):
        return np.zeros((0, 0, *traces[0].shape[2:]), np.float32)
    return np.concatenate(traces, axis=axis)


def _windows_one_by_one(
    run: Call, feeds: Feeds, windows: np.ndarray, indices: np.ndarray | None, gates: set[str]
) -> dict[str, np.ndarray]:
    """One window per call: through a batch of 1, or through an input without a batch axis."""
    parts = []
    for k in range(len(windows)):
        part = None if indices is None else indices[k : k + 1]
        if feeds.carry:
            parts.append(_chunks(run, feeds, windows[k : k + 1], part, gates))
        elif feeds.batchless:
            outputs = run(feeds.batch(windows[k], part, batch=None))
            parts.append({name: value if name in gates else value[None] for name, value in outputs.items()})
        else:
            parts.append(run(feeds.batch(windows[k : k + 1], part)))
    return {
        name: _joined([part[name] for part in parts], 0) if name in gates else np.concatenate([p[name] for p in parts])
        for name in parts[0]
    }


def run_calls(run: Call, feeds: Feeds | None, windows: np.ndarray, indices: np.ndarray | None, gates: set[str]) -> dict:
    """Every graph output for a batch of windows, however many calls the model needs for them."""
    if feeds is None:
        raise ValueError("run_calls needs the model's feeds")
    if feeds.one_window_per_call:
        return _windows_one_by_one(run, feeds, windows, indices, gates)
    if feeds.carry:
        return _chunks(run, feeds, windows, indices, gates)
    return run(feeds.batch(windows, indices))

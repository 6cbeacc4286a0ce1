"""One pass over a gate trace for every statistic replay keeps: a compiled kernel (numba).

Replay's cost was the statistics, not the model: moments, extrema, saturation counts, two
histograms and eight anomaly features per window, each its own numpy pass with float64 temporaries,
about 19 ns per gate value per core (`gate-report bench --replay`). Here each value is read once
(and again as the next step's previous value), step by step and window by window within a step (the
order a time-major trace is stored in: replay keeps the Scan's, `replay.time_major`; a batch-major
trace is copied into it), and folds into every accumulator as it passes:

    per unit      shifted sums (mean and M2), min, max, values below/above the saturation
                  thresholds, the fixed-bin histogram
    per step      the sum and the fixed-bin histogram over windows and units
    per window    the anomaly features of `replay.anomaly` (mean, std, saturated shares, step
                  change, peak change, drift, zero crossings)
    per window × unit (on request, for h)   the step and value of the highest and lowest value,
                  which `replay.unit_tracks` ranks

It computes exactly what the numpy reading computes (`tests/stats_reference.py`): bins and counts
bit for bit (the same float32 products and floors, NaN as overflow, `hi` in the last bin), min and
max exactly (NaN propagates; of 0.0 and −0.0, whichever comes first), sums and moments to float
rounding (float64 sums shifted by each unit's first finite value, so M2 = Σd² − (Σd)²/n loses
nothing to a large mean). The kernel releases the GIL, so replay's worker threads run it side by
side. The kernels are in `pass_kernels`; rows of fewer than `LONG_ROW` units, for which LLVM
leaves the row kernel's loop scalar, go to a kernel that reads a step across windows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from reporter.replay.pass_kernels import LONG_ROW, row_kernel, short_row_kernel
from reporter.replay.timestep_stats import Bins, unit_trace

__all__ = ["FEATURES", "INT32_COUNTS", "GatePass", "float32_threshold", "gate_pass", "warm_up"]

FEATURES = ("mean", "std", "frac_low", "frac_high", "step_change", "peak_change", "drift", "zero_crossings")

INT32_COUNTS = 2**31  # values in a batch below which its counters are int32 (half the cache, narrower adds)
# Windows per histogram cell from which a step's counts go through a table (the kernels): adding
# the table into both histograms costs units × cells per step whatever the batch, so a batch of fewer
# windows counts each value in both histograms at once (1,024 units, 66 cells: the table was 1.2×
# slower at 20 windows, 6× at 1, and 0.98× at 32).
TABLE_FROM = 0.5


class GatePass(NamedTuple):
    """What one pass over one batch of one gate yields."""

    moments: dict[str, np.ndarray]  # per unit: `gate_moments` state
    steps: dict[str, np.ndarray]  # per step: `timestep_stats` state
    features: np.ndarray | None  # [B, len(FEATURES)] float64, or None when not asked
    peaks: tuple[np.ndarray, ...] | None  # (highest, its step, lowest, its step), each [B, U]


def gate_pass(
    trace: np.ndarray, bins: Bins, low: float, high: float, features: bool = False, peaks: bool = False
) -> GatePass:
    """Every statistic of one batch `[batch, time, directions, hidden]` of one gate, in one pass."""
    x = _time_major_rows(trace)
    steps, batch, units = x.shape
    cells = bins.count + 2
    if cells > 2**24:  # a cell's index goes through float32 (`StatsConfig` allows 2¹⁶ bins)
        raise ValueError(f"{bins.count} bins: at most 2²⁴ − 2 are counted exactly")
    scale = bins.count / (bins.hi - bins.lo)  # a power of two: products and floors are exact
    counter = np.int32 if x.size < INT32_COUNTS else np.int64  # no count within a batch passes x.size
    out = (
        np.zeros(units),
        np.zeros(units),
        np.full(units, np.inf, np.float32),
        np.full(units, -np.inf, np.float32),
        *(np.zeros(units, counter) for _ in range(2)),  # values below / above the thresholds
        np.zeros((units, cells), counter),
        np.zeros(steps),
        np.zeros((steps, cells), np.int64),
        np.empty((batch if features else 0, len(FEATURES))),
        # int32 steps: half the bytes, and the kernel ran at half speed with int64 ones at 512 forecaster windows
        *(np.empty((batch if peaks else 0, units), dtype) for dtype in (np.float32, np.int32, np.float32, np.int32)),
    )
    tabled = batch >= TABLE_FROM * cells
    table = np.zeros((units if tabled else 0, cells), np.uint16 if batch <= np.iinfo(np.uint16).max else counter)
    lanes = np.zeros((0 if tabled else 4, cells), counter)
    low32, high32 = float32_threshold(low, below=True), float32_threshold(high, below=False)
    edges = (bins.lo * scale - 1, bins.hi * scale, np.float32(bins.hi))  # clip range of floor(x·scale), and hi
    narrow = bins.exact_in_float32
    with np.errstate(invalid="ignore", over="ignore"):
        if tabled and units < LONG_ROW:  # rows `row_kernel` would run scalar
            shift = short_row_kernel(x, scale, narrow, *edges, low32, high32, peaks, table, out)
        else:
            shift = row_kernel(x, scale, narrow, *edges, low32, high32, peaks, table, lanes, out)
        s1, s2, smallest, largest, n_low, n_high, hist_u, step_total, hist_t, feats = out[:10]
        count = batch * steps
        moments = {
            "count": np.full(units, count, np.int64),
            "mean": shift + s1 / max(count, 1),
            "m2": s2 - s1 * s1 / max(count, 1),
            "min": smallest.astype(np.float64),
            "max": largest.astype(np.float64),
            "n_low": n_low.astype(np.int64),
            "n_high": n_high.astype(np.int64),
            "hist": hist_u.astype(np.int64),
        }
    moments["m2"] = np.where(moments["m2"] < 0, 0.0, moments["m2"])  # rounding below an exact 0 (a constant unit)
    per_step = {"count": np.full(steps, batch * units, np.int64), "total": step_total, "hist": hist_t}
    tops = (out[10], out[11].astype(np.int64), out[12], out[13].astype(np.int64)) if peaks else None
    return GatePass(moments, per_step, feats if features else None, tops)


def warm_up() -> None:
    """Load both kernels (compile them, when numba's cache is cold, as after an install), so that
    neither compiles while replay is timed: replay's own warm-up window, a batch of one, reaches
    only `row_kernel`, and `short_row_kernel` is what batches of many windows of few units run."""
    for units in (LONG_ROW, 1):
        gate_pass(np.zeros((64, 2, 1, units), np.float32), Bins(0.0, 1.0, 2), 0.25, 0.75, features=True, peaks=True)


def _time_major_rows(trace: np.ndarray) -> np.ndarray:
    """The trace as the kernel reads it: C-contiguous float32 `[time, batch, unit]`. A view when
    the trace is one replay kept time-major (`replay.time_major`: a one-direction trace that is a
    transposed view of `[time, 1, batch, hidden]`), else a copy. The copy costs 0.3 ns a value;
    reading batch-major rows step by step instead strides across windows, up to 2× slower per
    value (512 forecaster windows)."""
    if isinstance(trace, np.ndarray) and trace.ndim == 4 and trace.shape[2] == 1 and trace.dtype == np.float32:
        batch, steps, _, hidden = trace.shape
        stored = trace.transpose(1, 2, 0, 3)  # [T, 1, B, H]: contiguous when the trace is a view of one
        if stored.flags.c_contiguous:
            return stored.reshape(steps, batch, hidden)
    return np.ascontiguousarray(unit_trace(trace).transpose(1, 0, 2))


def float32_threshold(value: float, below: bool) -> np.float32:
    """The float32 t with (x < t) == (x < value) when `below`, (x > t) == (x > value) otherwise."""
    t = np.float32(value)
    if below and float(t) < value:
        return np.nextafter(t, np.float32(np.inf))
    if not below and float(t) > value:
        return np.nextafter(t, np.float32(-np.inf))
    return t

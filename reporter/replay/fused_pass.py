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
side.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from reporter.replay.timestep_stats import Bins, unit_trace

__all__ = ["FEATURES", "INT32_COUNTS", "GatePass", "float32_threshold", "gate_pass"]

INT32_COUNTS = 2**31  # values in a batch below which its counters are int32 (half the cache, narrower adds)
# Windows per histogram cell from which a step's counts go through a table (`_kernel`): adding the
# table into both histograms costs units × cells per step whatever the batch, so a batch of fewer
# windows counts each value in both histograms at once (1,024 units, 66 cells: the table was 1.2×
# slower at 20 windows, 6× at 1, and 0.98× at 32).
TABLE_FROM = 0.5
# Units per row up to which h's peaks are folded a whole step at a time (`_peaks`), not row by row
# in the kernel's loop: LLVM vectorises that loop 32 values at a time and runs a row of 32 or fewer
# scalar, branch by branch (the kernel took 4.0 ns a value for h at 32 units, 2.5 step-wide; at 128
# units row by row is 5% faster, as the step is not read twice, and inline, as a call per row cost 20%).
SHORT_ROW = 32
FEATURES = ("mean", "std", "frac_low", "frac_high", "step_change", "peak_change", "drift", "zero_crossings")


class GatePass(NamedTuple):
    """What one pass over one batch of one gate yields."""

    moments: dict[str, np.ndarray]  # per unit: `gate_moments` state
    steps: dict[str, np.ndarray]  # per step: `timestep_stats` state
    features: np.ndarray | None  # [B, len(FEATURES)] float64, or None when not asked
    peaks: tuple[np.ndarray, ...] | None  # (highest, its step, lowest, its step), each [B, U]


@numba.njit(cache=True, nogil=True)
def _shift_of(x, u):  # pragma: no cover - compiled
    """A unit's first finite value in the batch, window by window: sums are taken around it."""
    steps, batch, _ = x.shape
    for b in range(batch):
        for t in range(steps):
            v = x[t, b, u]
            if np.isfinite(v):
                return np.float64(v)
    return 0.0


@numba.njit(cache=True, nogil=True)
def _root(variance):  # pragma: no cover - compiled
    """A standard deviation from a variance that rounding may have left just below 0 (NaN stays)."""
    if variance != variance:
        return np.nan
    return np.sqrt(variance) if variance > 0 else 0.0


@numba.njit(cache=True, nogil=True)
def _peaks(row, t, up, up_t, down, down_t):  # pragma: no cover - compiled
    """Fold a row into each value's highest and lowest so far and their steps. Selects, not
    branches: vectorised; the first step wins a tie, as argmax."""
    for j in range(row.shape[0]):
        v = row[j]
        rise = v > up[j]
        up[j], up_t[j] = (v, t) if rise else (up[j], up_t[j])
        fall = v < down[j]
        down[j], down_t[j] = (v, t) if fall else (down[j], down_t[j])


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _kernel(x, scale, narrow, base, top, hi, low, high, want_peaks, table, lanes, out):  # pragma: no cover
    """Step by step and, within a step, window by window: `x` is `[time, batch, unit]`, read in
    memory order one row (one window, one step: `units` values in L1) at a time.

    One loop over a row folds each value into every accumulator: its bin, the per-unit sums,
    extrema and threshold counts, and the window's sums, step changes and zero crossings. Without
    branches (selects, and `t > 0` for the changes) the compiler vectorises it, and `reassoc` lets
    it keep the float sums in SIMD lanes: rounding, not exactness; bins, counts and extrema do not
    depend on order (but for the sign of a zero extremum: the first of 0.0 and −0.0 met stays).
    Merging the loops, one per statistic before, cut a fifth of the time per value.
    What cannot vectorise is the histogram increment. With `table` (`TABLE_FROM`) there is one per
    value, into the step's [unit, bin] counts, which at the step's end add into both histograms
    (per unit, per step) in vector loops: half the scattered increments of counting each histogram
    on its own. Without it (few windows) each value counts in the unit's histogram and in one of
    the step's 4 `lanes`. Increments index with unsigned integers (numba adds a negative-index
    check to signed ones). Counters have the width the caller chose: int32 unless a batch holds
    2³¹ values, and `table` a width that holds a step's windows."""
    (s1, s2, smallest, largest, n_low, n_high, hist_u, step_total, hist_t, feats, up, up_t, down, down_t) = out
    steps, batch, units = x.shape
    cells = hist_u.shape[1]
    shift = np.empty(units)
    for u in range(units):
        shift[u] = _shift_of(x, u)
    k = np.empty(units, np.uint32)
    over, edge = np.uint32(cells - 1), np.uint32(cells - 2)
    scale32, base32, top32 = np.float32(scale), np.float32(base), np.float32(top)
    # per window: the running sums of its features, and each unit's largest step change
    sums = np.zeros((7, batch))  # rows, not a generator of arrays: numba compiles none here
    w_shift, w1, w2, m_shift, m1, m2, jumps = sums[0], sums[1], sums[2], sums[3], sums[4], sums[5], sums[6]
    counts = np.zeros((3, batch), np.int64)
    w_low, w_high, cross = counts[0], counts[1], counts[2]
    peak = np.zeros((batch, units), np.float32)
    for b in range(batch):
        first = x[0, b, 0]
        w_shift[b] = np.float64(first) if np.isfinite(first) else 0.0
        if want_peaks:
            up[b, :], down[b, :], up_t[b, :], down_t[b, :] = -np.inf, np.inf, 0, 0
    for t in range(steps):
        later = t > 0
        for b in range(batch):
            row = x[t, b]
            prev = x[t - 1, b] if later else row
            changes = peak[b]
            ws = w_shift[b]
            total = shifted = square = change = 0.0
            row_low = row_high = crossings = 0
            for u in range(units):
                v = row[u]
                # its bin: 0 under, cells − 1 over and NaN
                if narrow:  # float32: 8 lanes where float64 allowed 4 (the kernel 3–9% faster at 32–128 units)
                    j = min(max(np.floor(v * scale32), base32), top32) - base32
                else:
                    j = np.float32(min(max(np.floor(np.float64(v) * scale), base), top) - base)
                k[u] = over if v != v else (edge if v == hi else np.uint32(np.int32(j)))
                # the unit's sums (shifted), extrema (NaN stays) and values past the thresholds
                d = np.float64(v) - shift[u]
                s1[u] += d
                s2[u] += d * d
                m = smallest[u]
                smallest[u] = v if (m == m and not v >= m) else m
                m = largest[u]
                largest[u] = v if (m == m and not v <= m) else m
                n_low[u] += v < low
                n_high[u] += v > high
                # the window's: sums, threshold counts, the change since the last step
                row_low += v < low
                row_high += v > high
                v64 = np.float64(v)
                total += v64
                shifted += v64 - ws
                square += (v64 - ws) * (v64 - ws)
                jump = abs(np.float32(v - prev[u]))
                change += np.float64(jump) if later else 0.0
                p = changes[u]
                changes[u] = jump if (later and p == p and not jump <= p) else p
                crossings += later and ((v > 0) != (prev[u] > 0))
            if table.size:
                for u in range(units):
                    table[np.uintp(u), k[u]] += 1
            else:  # few windows: straight into both, the step's in 4 lanes (no store-to-load stall on one bin)
                for u in range(units):
                    hist_u[np.uintp(u), k[u]] += 1
                    lanes[np.uintp(u) & np.uintp(3), k[u]] += 1
            step_total[t] += total
            if want_peaks and units > SHORT_ROW:  # selects, not branches: vectorised; the first step wins a tie
                for u in range(units):
                    v = row[u]
                    rise = v > up[b, u]
                    up[b, u], up_t[b, u] = (v, t) if rise else (up[b, u], up_t[b, u])
                    fall = v < down[b, u]
                    down[b, u], down_t[b, u] = (v, t) if fall else (down[b, u], down_t[b, u])
            w_low[b] += row_low
            w_high[b] += row_high
            w1[b] += shifted
            w2[b] += square
            jumps[b] += change
            cross[b] += crossings
            level = total / units
            if not later:
                m_shift[b] = level if np.isfinite(level) else 0.0
            m1[b] += level - m_shift[b]
            m2[b] += (level - m_shift[b]) ** 2
        if want_peaks and units <= SHORT_ROW:  # the whole step as one row
            flat = batch * units
            _peaks(
                x[t].reshape(flat),
                np.int32(t),
                up.reshape(flat),
                up_t.reshape(flat),
                down.reshape(flat),
                down_t.reshape(flat),
            )
        for u in range(table.shape[0]):
            for c in range(cells):
                hist_u[u, c] += table[u, c]
                hist_t[t, c] += table[u, c]
            table[u, :] = 0
        for lane in range(lanes.shape[0]):
            for c in range(cells):
                hist_t[t, c] += lanes[lane, c]
            lanes[lane, :] = 0
    n = steps * units
    pairs = max(1, (steps - 1) * units)
    for b in range(feats.shape[0]):
        peaks = 0.0
        for u in range(units):
            peaks += peak[b, u]
        feats[b, 0] = w_shift[b] + w1[b] / n
        feats[b, 1] = _root(w2[b] / n - (w1[b] / n) ** 2)
        feats[b, 2] = w_low[b] / n
        feats[b, 3] = w_high[b] / n
        feats[b, 4] = jumps[b] / pairs if steps > 1 else 0.0
        feats[b, 5] = peaks / units if steps > 1 else 0.0
        feats[b, 6] = _root(m2[b] / steps - (m1[b] / steps) ** 2)
        feats[b, 7] = cross[b] / pairs if steps > 1 else 0.0
    return shift


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
        shift = _kernel(x, scale, narrow, *edges, low32, high32, peaks, table, lanes, out)
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

"""One pass over a gate trace for every statistic replay keeps: a compiled kernel (numba).

Replay's cost was the statistics, not the model: moments, extrema, saturation counts, two
histograms and eight anomaly features per window, each its own numpy pass with float64
temporaries, about 19 ns per gate value per core (`gate-report bench --replay`). Here each value
is read once, in the trace's own order, and folds into every accumulator as it passes:

    per unit      shifted sums (mean and M2), min, max, values below/above the saturation
                  thresholds, the fixed-bin histogram
    per step      the sum and the fixed-bin histogram over windows and units
    per window    the anomaly features of `replay.anomaly` (mean, std, saturated shares, step
                  change, peak change, drift, zero crossings)
    per window × unit (on request, for h)   the step and value of the highest and lowest value,
                  which `replay.unit_tracks` ranks

It computes exactly what the numpy reading computes (`tests/stats_reference.py`): bins and
counts bit for bit (the same float32 products and floors, NaN as overflow, `hi` in the last
bin), min and max exactly (NaN propagates), sums and moments to float rounding (float64 sums
shifted by each unit's first finite value, so M2 = Σd² − (Σd)²/n loses nothing to a large mean).
The kernel releases the GIL, so replay's worker threads run it side by side.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from reporter.replay.timestep_stats import Bins, unit_trace

__all__ = ["FEATURES", "INT32_COUNTS", "GatePass", "float32_threshold", "gate_pass"]

INT32_COUNTS = 2**31  # values in a batch below which its counters are int32 (half the cache, narrower adds)
FEATURES = ("mean", "std", "frac_low", "frac_high", "step_change", "peak_change", "drift", "zero_crossings")


class GatePass(NamedTuple):
    """What one pass over one batch of one gate yields."""

    moments: dict[str, np.ndarray]  # per unit: `gate_moments` state
    steps: dict[str, np.ndarray]  # per step: `timestep_stats` state
    features: np.ndarray | None  # [B, len(FEATURES)] float64, or None when not asked
    peaks: tuple[np.ndarray, ...] | None  # (highest, its step, lowest, its step), each [B, U]


@numba.njit(cache=True, nogil=True)
def _shift_of(x, u):  # pragma: no cover - compiled
    """A unit's first finite value in the batch: sums are taken around it."""
    batch, steps, _ = x.shape
    for b in range(batch):
        for t in range(steps):
            v = x[b, t, u]
            if np.isfinite(v):
                return np.float64(v)
    return 0.0


@numba.njit(cache=True, nogil=True)
def _root(variance):  # pragma: no cover - compiled
    """A standard deviation from a variance that rounding may have left just below 0 (NaN stays)."""
    if variance != variance:
        return np.nan
    return np.sqrt(variance) if variance > 0 else 0.0


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _row_sums(row, shift):  # pragma: no cover - compiled
    """Σv, Σ(v − shift) and Σ(v − shift)² of a row of float32, as float64 in SIMD lanes
    (reassociated: rounding, not exactness). An index loop: numba's array iterator would not
    vectorise (7× slower)."""
    total = shifted = square = 0.0
    for u in range(row.shape[0]):
        v = np.float64(row[u])
        total += v
        shifted += v - shift
        square += (v - shift) * (v - shift)
    return total, shifted, square


@numba.njit(cache=True, nogil=True)
def _kernel(x, scale, narrow, base, top, hi, low, high, want_features, want_peaks, out):  # pragma: no cover
    """Row by row (one window, one step: `units` values in L1), each statistic is its own short
    loop without branches, so the compiler vectorises all but the histogram increments. Those
    index with unsigned integers (numba adds a negative-index check to signed ones). Counters
    (histograms, values past the thresholds) have the width the caller chose: int32 unless a batch
    holds 2³¹ values."""
    (s1, s2, smallest, largest, n_low, n_high, hist_u, step_total, hist_t, feats, up, up_t, down, down_t) = out
    batch, steps, units = x.shape
    cells = hist_u.shape[1]
    shift = np.empty(units)
    for u in range(units):
        shift[u] = _shift_of(x, u)
    lanes = np.zeros((steps, 4, cells), hist_u.dtype)  # 4 step histograms: no store-to-load stall on one bin
    k = np.empty(units, np.uintp)
    over, edge = np.uintp(cells - 1), np.uintp(cells - 2)
    prev = np.zeros(units, np.float32)
    jumps, peak = np.empty(units), np.empty(units)
    cross = np.empty(units, np.int64)
    scale32 = np.float32(scale)
    for b in range(batch):
        first = x[b, 0, 0]
        w_shift = np.float64(first) if np.isfinite(first) else 0.0
        low_before, high_before = n_low.sum(), n_high.sum()
        jumps[:], peak[:], cross[:] = 0.0, 0.0, 0
        m_shift = m1 = m2 = w1 = w2 = 0.0
        if want_peaks:
            up[b, :], down[b, :], up_t[b, :], down_t[b, :] = -np.inf, np.inf, 0, 0
        for t in range(steps):
            row = x[b, t]
            for u in range(units):  # the bin of every value: 0 under, cells − 1 over and NaN
                v = row[u]
                y = np.float64(np.floor(v * scale32)) if narrow else np.floor(np.float64(v) * scale)
                y = min(max(y, base), top)
                k[u] = over if v != v else (edge if v == hi else np.uintp(y - base))
            row_lanes = lanes[t]
            for u in range(units):
                hist_u[np.uintp(u), k[u]] += 1
                row_lanes[np.uintp(u) & np.uintp(3), k[u]] += 1
            for u in range(units):
                d = np.float64(row[u]) - shift[u]
                s1[u] += d
                s2[u] += d * d
            for u in range(units):
                v = row[u]
                m = smallest[u]
                smallest[u] = v if (m == m and not v >= m) else m
                m = largest[u]
                largest[u] = v if (m == m and not v <= m) else m
            for u in range(units):
                v = row[u]
                n_low[u] += v < low
                n_high[u] += v > high
            total, shifted, square = _row_sums(row, w_shift)
            step_total[t] += total
            if want_peaks:  # selects, not branches: vectorised; the first step wins a tie, as argmax
                for u in range(units):
                    v = row[u]
                    rise = v > up[b, u]
                    up[b, u], up_t[b, u] = (v, t) if rise else (up[b, u], up_t[b, u])
                    fall = v < down[b, u]
                    down[b, u], down_t[b, u] = (v, t) if fall else (down[b, u], down_t[b, u])
            if want_features:
                w1 += shifted
                w2 += square
                for u in range(units):  # a loop, not `prev[:] = row`: numba's slice copy costs 0.4 ns a value
                    v = row[u]
                    jump = abs(np.float32(v - prev[u]))
                    jumps[u] += jump if t > 0 else 0.0
                    p = peak[u]
                    peak[u] = jump if (t > 0 and p == p and not jump <= p) else p
                    cross[u] += (t > 0) and ((v > 0) != (prev[u] > 0))
                    prev[u] = v
                level = total / units
                if t == 0:
                    m_shift = level if np.isfinite(level) else 0.0
                m1 += level - m_shift
                m2 += (level - m_shift) ** 2
        if want_features:
            n = steps * units
            pairs = max(1, (steps - 1) * units)
            feats[b, 0] = w_shift + w1 / n
            feats[b, 1] = _root(w2 / n - (w1 / n) ** 2)
            feats[b, 2] = (n_low.sum() - low_before) / n
            feats[b, 3] = (n_high.sum() - high_before) / n
            feats[b, 4] = jumps.sum() / pairs if steps > 1 else 0.0
            feats[b, 5] = peak.sum() / units if steps > 1 else 0.0
            feats[b, 6] = _root(m2 / steps - (m1 / steps) ** 2)
            feats[b, 7] = cross.sum() / pairs if steps > 1 else 0.0
    for t in range(steps):
        for lane in range(4):
            for c in range(cells):
                hist_t[t, c] += lanes[t, lane, c]
    return shift


def gate_pass(
    trace: np.ndarray, bins: Bins, low: float, high: float, features: bool = False, peaks: bool = False
) -> GatePass:
    """Every statistic of one batch `[batch, time, directions, hidden]` of one gate, in one pass."""
    x = unit_trace(trace)
    batch, steps, units = x.shape
    cells = bins.count + 2
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
        *(np.empty((batch if peaks else 0, units), dtype) for dtype in (np.float32, np.int64, np.float32, np.int64)),
    )
    low32, high32 = float32_threshold(low, below=True), float32_threshold(high, below=False)
    narrow = scale >= 1  # float32 products are exact then; scaling down would lose subnormals
    with np.errstate(invalid="ignore", over="ignore"):
        edges = (bins.lo * scale - 1, bins.hi * scale, np.float32(bins.hi))  # clip range of floor(x·scale), and hi
        shift = _kernel(x, scale, narrow, *edges, low32, high32, features, peaks, out)
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
    return GatePass(moments, per_step, feats if features else None, out[10:] if peaks else None)


def float32_threshold(value: float, below: bool) -> np.float32:
    """The float32 t with (x < t) == (x < value) when `below`, (x > t) == (x > value) otherwise."""
    t = np.float32(value)
    if below and float(t) < value:
        return np.nextafter(t, np.float32(np.inf))
    if not below and float(t) > value:
        return np.nextafter(t, np.float32(-np.inf))
    return t

"""The compiled kernels of the fused statistics pass (`fused_pass`), in one file: numba's cache
follows the file a kernel is written in, not the files of what it calls, so a kernel in one file
calling a helper in another would keep running the helper's old code after an edit.

    row_kernel        a step row by row (one window's units): vectorised across units
    short_row_kernel  rows of fewer than LONG_ROW units: a step unit by unit across windows
    helpers           where a unit's sums are centred, h's highest and lowest values, the eight
                      anomaly features from a window's sums (one copy, for both kernels)

Why short rows have their own kernel: `row_kernel` vectorises its loop over a row's units, and
for fewer than `LONG_ROW` of them LLVM runs that loop scalar (its runtime checks that the kernel's
arrays do not overlap are not worth paying for a short row: the compiled code tests `units < 24`),
at 6–7 ns a value instead of 2. `short_row_kernel` first copies each step as `[unit, window]` (16 KB
at 16 units × 256 windows, in L1) and runs its loop over a step's windows for one unit at a time:
long, and vectorised. What the row kernel sums across a row (a window's totals, threshold counts,
changes, crossings) is there an array over the batch, added to element by element; each unit's
extrema are kept per window and folded window by window when the batch ends, so the sign of a zero
extremum is that of the first window that has one, not of the first value met. Bins, counts,
shifts, features and peaks are computed as in `row_kernel`, in the same float types. Only batches
that count a step through a table (`fused_pass.TABLE_FROM`) take it: in a batch of fewer windows
its loop would be the short one.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["LONG_ROW", "SHORT_ROW", "row_kernel", "short_row_kernel"]

# Units per row up to which h's peaks are folded a whole step at a time (`fold_peaks`), not row by row
# in the kernel's loop: LLVM vectorises that loop 32 values at a time and runs a row of 32 or fewer
# scalar, branch by branch (the kernel took 4.0 ns a value for h at 32 units, 2.5 step-wide; at 128
# units row by row is 5% faster, as the step is not read twice, and inline, as a call per row cost 20%).
SHORT_ROW = 32
LONG_ROW = 24  # units per row from which `row_kernel` is vectorised (and, from 32, faster)


@numba.njit(cache=True, nogil=True)
def unit_shift(x, u):  # pragma: no cover - compiled
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
def fold_peaks(row, t, up, up_t, down, down_t):  # pragma: no cover - compiled
    """Fold a row into each value's highest and lowest so far and their steps. Selects, not
    branches: vectorised; the first step wins a tie, as argmax."""
    for j in range(row.shape[0]):
        v = row[j]
        rise = v > up[j]
        up[j], up_t[j] = (v, t) if rise else (up[j], up_t[j])
        fall = v < down[j]
        down[j], down_t[j] = (v, t) if fall else (down[j], down_t[j])


@numba.njit(cache=True, nogil=True)
def _close_step(x, t, fold, up, up_t, down, down_t, table, hist_u, hist_t):  # pragma: no cover - compiled
    """The end of step `t`: h's peaks folded over the whole step as one row (when `fold`), and the
    step's [unit, bin] counts added into both histograms, then cleared for the next step."""
    if fold:
        flat = x.shape[1] * x.shape[2]
        fold_peaks(
            x[t].reshape(flat),
            np.int32(t),
            up.reshape(flat),
            up_t.reshape(flat),
            down.reshape(flat),
            down_t.reshape(flat),
        )
    for u in range(table.shape[0]):
        for c in range(table.shape[1]):
            hist_u[u, c] += table[u, c]
            hist_t[t, c] += table[u, c]
        table[u, :] = 0


@numba.njit(cache=True, nogil=True)
def window_features(feats, sums, counts, peak, steps, units):  # pragma: no cover - compiled
    """The features of `replay.anomaly` per window, from what a kernel summed over its values:
    `sums` rows (first value, Σ shifted, Σ shifted², level shift, Σ level, Σ level², Σ |change|),
    `counts` rows (below, above the thresholds; zero crossings), `peak` each unit's largest step
    change, `[window, unit]`."""
    w_shift, w1, w2, m1, m2, jumps = sums[0], sums[1], sums[2], sums[4], sums[5], sums[6]
    w_low, w_high, cross = counts[0], counts[1], counts[2]
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


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def row_kernel(x, scale, narrow, base, top, hi, low, high, want_peaks, table, lanes, out):  # pragma: no cover
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
        shift[u] = unit_shift(x, u)
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
        _close_step(x, t, want_peaks and units <= SHORT_ROW, up, up_t, down, down_t, table, hist_u, hist_t)
        for lane in range(lanes.shape[0]):
            for c in range(cells):
                hist_t[t, c] += lanes[lane, c]
            lanes[lane, :] = 0
    window_features(feats, sums, counts, peak, steps, units)
    return shift


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def short_row_kernel(x, scale, narrow, base, top, hi, low, high, want_peaks, table, out):  # pragma: no cover
    """`row_kernel`'s statistics of `x` (`[time, batch, unit]`), unit by unit within a step."""
    (s1, s2, smallest, largest, n_low, n_high, hist_u, step_total, hist_t, feats, up, up_t, down, down_t) = out
    steps, batch, units = x.shape
    cells = hist_u.shape[1]
    shift = np.empty(units)
    for u in range(units):
        shift[u] = unit_shift(x, u)
    over, edge = np.uint32(cells - 1), np.uint32(cells - 2)
    scale32, base32, top32 = np.float32(scale), np.float32(base), np.float32(top)
    sums = np.zeros((7, batch))  # per window, as `window_features` reads them
    w_shift, w1, w2, m_shift, m1, m2, jumps = sums[0], sums[1], sums[2], sums[3], sums[4], sums[5], sums[6]
    counts = np.zeros((3, batch), np.int64)
    w_low, w_high, cross = counts[0], counts[1], counts[2]
    total = np.empty(batch)  # the step's sum per window
    k = np.empty(batch, np.uint32)
    peak = np.zeros((units, batch), np.float32)  # per unit and window: the largest step change
    lows = np.full((units, batch), np.inf, np.float32)
    highs = np.full((units, batch), -np.inf, np.float32)
    step, last = np.empty((units, batch), np.float32), np.empty((units, batch), np.float32)
    for b in range(batch):
        first = x[0, b, 0]
        w_shift[b] = np.float64(first) if np.isfinite(first) else 0.0
        if want_peaks:
            up[b, :], down[b, :], up_t[b, :], down_t[b, :] = -np.inf, np.inf, 0, 0
    for t in range(steps):
        later = t > 0
        step, last = last, step
        for b in range(batch):
            for u in range(units):
                step[u, b] = x[t, b, u]
        total[:] = 0.0
        for u in range(units):
            row, prev = step[u], (last[u] if later else step[u])
            changes, mins, maxs = peak[u], lows[u], highs[u]
            centre = shift[u]
            a1 = a2 = 0.0
            below = above = 0
            for b in range(batch):
                v = row[b]
                # its bin: 0 under, cells − 1 over and NaN (as in `row_kernel`)
                if narrow:
                    j = min(max(np.floor(v * scale32), base32), top32) - base32
                else:
                    j = np.float32(min(max(np.floor(np.float64(v) * scale), base), top) - base)
                k[b] = over if v != v else (edge if v == hi else np.uint32(np.int32(j)))
                v64 = np.float64(v)
                d = v64 - centre
                a1 += d
                a2 += d * d
                m = mins[b]
                mins[b] = v if (m == m and not v >= m) else m
                m = maxs[b]
                maxs[b] = v if (m == m and not v <= m) else m
                is_low, is_high = v < low, v > high
                below += is_low
                above += is_high
                w_low[b] += is_low
                w_high[b] += is_high
                total[b] += v64
                e = v64 - w_shift[b]
                w1[b] += e
                w2[b] += e * e
                jump = abs(np.float32(v - prev[b]))
                jumps[b] += np.float64(jump) if later else 0.0
                p = changes[b]
                changes[b] = jump if (later and p == p and not jump <= p) else p
                cross[b] += later and ((v > 0) != (prev[b] > 0))
            s1[u] += a1
            s2[u] += a2
            n_low[u] += below
            n_high[u] += above
            for b in range(batch):
                table[np.uintp(u), k[b]] += 1
        level_sum = 0.0
        for b in range(batch):
            level_sum += total[b]
            level = total[b] / units
            if not later:
                m_shift[b] = level if np.isfinite(level) else 0.0
            m1[b] += level - m_shift[b]
            m2[b] += (level - m_shift[b]) ** 2
        step_total[t] += level_sum
        _close_step(x, t, want_peaks, up, up_t, down, down_t, table, hist_u, hist_t)
    for u in range(units):  # each unit's extrema, window by window
        for b in range(batch):
            v, m = lows[u, b], smallest[u]
            smallest[u] = v if (m == m and not v >= m) else m
            v, m = highs[u, b], largest[u]
            largest[u] = v if (m == m and not v <= m) else m
    window_features(feats, sums, counts, peak.T, steps, units)
    return shift

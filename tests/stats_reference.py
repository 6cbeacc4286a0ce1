"""The numpy reading of replay's statistics: what `reporter.replay.fused_pass` must equal.

This was replay's implementation before the fused kernel (one numpy pass per statistic, float64
temporaries); kept here as the oracle the kernel is tested against, bit for bit on bins and
counts, to float rounding on sums and moments.
"""

from __future__ import annotations

import numpy as np

from reporter.replay.fused_pass import float32_threshold
from reporter.replay.gate_moments import _empty_moments, merge_moments
from reporter.replay.timestep_stats import Bins, chunks, unit_trace


def _per_unit(flat: np.ndarray, reduce, steps: int) -> np.ndarray:
    """Reduce a `[windows, time * unit]` block over windows, then time (long inner loops are fast)."""
    return reduce(reduce(flat, axis=0).reshape(steps, -1), axis=0)


def _count_true(mask: np.ndarray, steps: int) -> np.ndarray:
    """Count True per unit of a `[windows, time * unit]` mask, summing bytes rather than ints."""
    per_cell = mask.view(np.uint8).sum(axis=0, dtype=np.uint16 if len(mask) < 1 << 16 else np.int64)
    return per_cell.reshape(steps, -1).sum(axis=0, dtype=np.int64)


def _block(xc: np.ndarray, bins: Bins, low: np.float32, high: np.float32):
    """Every statistic of one (windows, timesteps) block: per-unit state, per-step sums and counts."""
    windows, steps, units = xc.shape
    cells = bins.count + 2
    flat = np.ascontiguousarray(xc).reshape(windows, steps * units)
    smallest = _per_unit(flat, np.minimum.reduce, steps).astype(np.float64)
    largest = _per_unit(flat, np.maximum.reduce, steps).astype(np.float64)
    x64 = flat.astype(np.float64).reshape(-1, units)
    total = np.ones(len(x64)) @ x64
    step_total = (x64 @ np.ones(units)).reshape(windows, steps).sum(axis=0)
    mean = total / len(x64)
    x64 -= mean  # two-pass M2 within the block; blocks and batches combine by Chan's rule
    m2 = np.einsum("ij,ij->j", x64, x64)
    key_type = np.uint16 if steps * units * cells <= 1 << 16 else np.intp
    keys = bins.index(flat, key_type, (smallest.min(initial=bins.lo), largest.max(initial=bins.lo)))
    keys += (cells * np.arange(steps * units)).astype(key_type)
    joint = np.bincount(keys.ravel(), minlength=steps * units * cells).reshape(steps, units, cells)
    part = {
        "count": np.full(units, len(x64), np.int64),
        "mean": mean,
        "m2": m2,
        "min": smallest,
        "max": largest,
        "n_low": _count_true(flat < low, steps),
        "n_high": _count_true(flat > high, steps),
        "hist": joint.sum(axis=0),
    }
    return part, step_total, joint.sum(axis=1)


def gate_update(trace: np.ndarray, bins: Bins, low: float, high: float) -> tuple[dict, dict]:
    """Turn one batch `[batch, time, directions, hidden]` into fresh per-unit and per-timestep states."""
    x = unit_trace(trace)
    batch, steps, units = x.shape
    cells = bins.count + 2
    moments = _empty_moments(units, cells)
    per_step = {
        "count": np.full(steps, batch * units, np.int64),
        "total": np.zeros(steps),
        "hist": np.zeros((steps, cells), np.int64),
    }
    low32, high32 = float32_threshold(low, below=True), float32_threshold(high, below=False)
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN in a trace propagate, silently
        for bs, ts in chunks(batch, steps, units, cells):
            part, step_total, step_hist = _block(x[bs, ts], bins, low32, high32)
            moments = merge_moments(moments, part)
            per_step["total"][ts] += step_total
            per_step["hist"][ts] += step_hist
    return moments, per_step

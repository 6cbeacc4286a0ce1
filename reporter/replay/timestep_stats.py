"""Per-timestep gate trajectories, and the fixed histogram bins every gate statistic shares.

`TimestepStats` keeps, per timestep, a count, a float64 sum and a fixed-bin histogram over
windows and units; all three add under merge, so shards merge exactly in any order and grouping.
The arrays grow (zero-padded) when a longer window arrives; they never truncate.

Quantiles come from the histograms: each order statistic is placed uniformly inside its bin and
numpy's default (linear) interpolation is applied between the two that `np.quantile` would use.
An order statistic and its estimate lie in the same closed bin, so every quantile is within one
bin width, `(hi - lo) / bins`, of `np.quantile` on the same values, provided it lies in
[lo, hi]; one that falls among the underflow (overflow) values is reported as `lo` (`hi`).

`Bins` makes the histograms exact: the bin width is a power of two and the edges lie on its
grid, so `floor(x / width)` is exact (in float32; float64 for widths over 1, where float32 would
lose subnormals) and counts equal `np.histogram(x, bins.edges)` bin for bin (the last bin
closed), plus underflow (< lo) and overflow (> hi, and NaN) counts.

Traces are walked in blocks of a few hundred thousand values (`chunks`): every temporary stays
in cache, and numpy's large fresh allocations (page faults, 3-5x slower here) are avoided.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reporter.errors import ConfigError, ModelError

__all__ = ["Bins", "QUANTILES", "TimestepStats", "chunks", "quantiles_from_histogram", "unit_trace"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_CHUNK_VALUES = 1 << 18  # values per chunk: temporaries stay in cache and off the page-fault path
_CHUNK_CELLS = 1 << 16  # (timestep, unit, bin) counters per block: uint16 keys, table in L2


@dataclass(frozen=True)
class Bins:
    """Fixed histogram bins on [lo, hi] whose width is a power of two, so binning is exact."""

    lo: float
    hi: float
    count: int

    def __post_init__(self) -> None:
        width = (self.hi - self.lo) / self.count if self.count > 0 else 0.0
        if not (width > 0 and math.frexp(width)[0] == 0.5 and (self.lo / width).is_integer()):
            raise ConfigError(
                f"histogram of {self.count} bins on [{self.lo}, {self.hi}]: "
                "bin width must be a power of two with lo on its grid"
            )

    @property
    def width(self) -> float:
        """The width of one bin, a power of two."""
        return (self.hi - self.lo) / self.count

    @property
    def exact_in_float32(self) -> bool:
        """Whether float32 bins exactly: scaling float32 values down would lose subnormals, and
        float32 holds no clip edge (lo·scale − 1, hi·scale) or cell index beyond 2²⁴. `index` and
        the compiled pass (`fused_pass`) both bin in float32 only then."""
        scale = self.count / (self.hi - self.lo)
        return scale >= 1 and max(abs(self.lo * scale - 1), abs(self.hi * scale), self.count + 2) <= 2**24

    @property
    def edges(self) -> np.ndarray:
        """The `count + 1` bin edges (exact: they lie on a power-of-two grid)."""
        return self.lo + self.width * np.arange(self.count + 1)

    @property
    def centres(self) -> np.ndarray:
        """The `count` bin centres, where charts and distances place each bin's mass."""
        return self.lo + self.width * (np.arange(self.count) + 0.5)

    def index(self, x: np.ndarray, dtype=np.intp, extent: tuple[float, float] | None = None) -> np.ndarray:
        """Bin every float32 value: 0 underflow, 1..count the bins (last one closed), count+1 overflow.

        `extent`, the (min, max) of `x` if the caller knows it, spares a scan for out-of-range values.
        """
        scale = self.count / (self.hi - self.lo)  # a power of two: x * scale and floor are exact
        work = np.float32 if self.exact_in_float32 else np.float64
        with np.errstate(over="ignore", invalid="ignore"):
            y = np.multiply(x, work(scale), dtype=work)
            np.floor(y, out=y)
        low, high = extent if extent is not None else (x.min(initial=self.lo), x.max(initial=self.lo))
        if not high < self.hi:  # hi itself belongs to the last bin, which is closed
            np.subtract(y, x == self.hi, out=y)
        if not (low >= self.lo and high <= self.hi):  # values beyond the range, or NaN
            if np.isnan(low) or np.isnan(high):
                np.nan_to_num(y, copy=False, nan=self.hi * scale)
            np.clip(y, self.lo * scale - 1, self.hi * scale, out=y)
        return np.subtract(y, work(self.lo * scale - 1), out=np.empty(y.shape, dtype), casting="unsafe")

    def to_array(self) -> np.ndarray:
        """(lo, hi, count) as an array, for a state dict."""
        return np.array([self.lo, self.hi, self.count], dtype=np.float64)

    @classmethod
    def from_array(cls, values: np.ndarray) -> Bins:
        """Read bins written by `to_array`."""
        lo, hi, count = (float(v) for v in values)
        return cls(lo, hi, int(count))


def unit_trace(trace: np.ndarray) -> np.ndarray:
    """View a `[batch, time, directions, hidden]` trace as contiguous float32 `[batch, time, unit]`."""
    if np.ndim(trace) != 4:
        raise ModelError(f"expected a gate trace [batch, time, directions, hidden], got shape {np.shape(trace)}")
    x = np.ascontiguousarray(trace, dtype=np.float32)
    return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])


def chunks(batch: int, steps: int, units: int, cells: int) -> Iterator[tuple[slice, slice]]:
    """Split a trace into (windows, timesteps) blocks small enough to stay in cache.

    Blocks span timesteps so that a block's joint (timestep, unit, bin) histogram stays small.
    """
    windows = max(1, min(batch, _CHUNK_VALUES // max(units, 1)))
    width = max(1, min(_CHUNK_VALUES // (windows * max(units, 1)), _CHUNK_CELLS // max(units * cells, 1)))
    for b0 in range(0, batch, windows):
        for t0 in range(0, steps, width):
            yield slice(b0, b0 + windows), slice(t0, min(t0 + width, steps))


def _empty(steps: int, cells: int) -> dict[str, np.ndarray]:
    """A per-timestep state of no values (the identity of `_merged`)."""
    return {"count": np.zeros(steps, np.int64), "total": np.zeros(steps), "hist": np.zeros((steps, cells), np.int64)}


def _padded(values: np.ndarray, steps: int) -> np.ndarray:
    """Zero-pad per-timestep arrays to `steps` rows (windows may be longer in a later file)."""
    if len(values) == steps:
        return values  # the usual case, and np.pad costs more than the sum it precedes
    return np.pad(values, [(0, steps - len(values))] + [(0, 0)] * (values.ndim - 1))


def _merged(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add two per-timestep states, padding the shorter one."""
    steps = max(len(a["count"]), len(b["count"]))
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf sums are NaN, silently
        return {key: _padded(a[key], steps) + _padded(b[key], steps) for key in ("count", "total", "hist")}


def quantiles_from_histogram(hist: np.ndarray, bins: Bins, qs=QUANTILES) -> np.ndarray:
    """Estimate `np.quantile` (linear) per row of `[rows, count + 2]` counts, within one bin width."""
    hist = np.asarray(hist, dtype=np.int64)
    total = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    out = np.full((len(hist), len(qs)), np.nan)
    has = total > 0
    for k, q in enumerate(qs):
        h = q * (total[has] - 1)
        j0 = np.floor(h)
        v0 = _order_statistic(hist[has], cum[has], j0, bins)
        v1 = _order_statistic(hist[has], cum[has], np.minimum(j0 + 1, total[has] - 1), bins)
        out[has, k] = v0 + (h - j0) * (v1 - v0)
    return out


def _order_statistic(hist: np.ndarray, cum: np.ndarray, j: np.ndarray, bins: Bins) -> np.ndarray:
    """Place the j-th smallest value (0-based) uniformly inside its bin; lo/hi in the outer counts."""
    cell = (cum <= j[:, None]).sum(axis=1)
    rows = np.arange(len(j))
    before = np.where(cell > 0, cum[rows, np.maximum(cell - 1, 0)], 0)
    inside = (j - before + 0.5) / np.maximum(hist[rows, cell], 1)
    value = bins.lo + bins.width * (cell - 1 + inside)
    return np.clip(value, bins.lo, bins.hi)


class TimestepStats:
    """Per-timestep count, mean and quantiles of one gate over windows and units, mergeable."""

    def __init__(self, bins: Bins, state: dict[str, np.ndarray] | None = None):
        self.bins = bins
        self._state = state if state is not None else _empty(0, bins.count + 2)

    def fold(self, part: dict[str, np.ndarray]) -> None:
        """Fold in a per-timestep state computed elsewhere from one batch (same bins)."""
        self._state = _merged(self._state, part)

    def merge(self, other: TimestepStats) -> TimestepStats:
        """Return the statistics of both accumulators' windows together."""
        if other.bins != self.bins:
            raise ConfigError(f"cannot merge timestep statistics binned {self.bins} and {other.bins}")
        return TimestepStats(self.bins, _merged(self._state, other._state))

    def state(self) -> dict[str, np.ndarray]:
        """The state as plain numpy arrays, for shipping between processes."""
        return {"bins": self.bins.to_array(), **{k: v.copy() for k, v in self._state.items()}}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> TimestepStats:
        """Rebuild an accumulator from `state()`."""
        return cls(Bins.from_array(state["bins"]), {k: np.array(state[k]) for k in ("count", "total", "hist")})

    def result(self) -> dict[str, np.ndarray]:
        """Per timestep: count, mean and the `QUANTILES` (NaN where no value was seen)."""
        count = self._state["count"]
        mean = np.divide(self._state["total"], count, out=np.full(len(count), np.nan), where=count > 0)
        quantiles = quantiles_from_histogram(self._state["hist"], self.bins)
        return {
            "t": np.arange(len(count)),
            "count": count.copy(),
            "mean": mean,
            **{f"p{round(q * 100):02d}": quantiles[:, k] for k, q in enumerate(QUANTILES)},
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per timestep: t, count, mean, p05, p25, p50, p75, p95."""
        return pd.DataFrame(self.result())

"""Per-unit gate moments: the mergeable accumulator at the heart of the statistics.

In the torchmetrics manner: state is declared and fixed-size (per unit: count, Chan's mean and
M2, extrema, saturation counts and a fixed-bin histogram), `gate_update` turns one batch into a
fresh state in one pass, `merge_moments` combines two states exactly by each field's rule, and
`result`/`to_frame` turn state into numbers without changing it. Memory never grows with the
number of windows; `state()`/`from_state()` are plain dicts of numpy arrays, so replay can ship
states between processes.

One pass per batch feeds a gate's per-unit and per-timestep statistics (`gate_update`, a compiled
kernel in `fused_pass` that also yields the anomaly features and the peaks units are ranked by).

Value families (sigmoid, tanh, linear), their histogram ranges and saturation thresholds come
from `reporter.layers`; each histogram has underflow/overflow counts. NaN propagates to mean,
std, min and max, and counts as overflow in histograms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reporter.errors import ConfigError, ModelError
from reporter.layers import FAMILY_RANGES, SATURATION, Layer, gate_family
from reporter.replay.fused_pass import gate_pass
from reporter.replay.timestep_stats import Bins

__all__ = ["GateMoments", "StatsConfig", "check_shape", "gate_update", "memory_horizon", "merge_moments"]


MAX_BINS = 2**16  # per unit and gate: more is memory, not resolution anyone reads (and `fused_pass` counts in float32)


@dataclass(frozen=True)
class StatsConfig:
    """Histogram resolution (a power of two, for exact bins) and saturation thresholds per family."""

    bins: int = 64
    saturation: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(SATURATION))

    def __post_init__(self) -> None:
        if not (isinstance(self.bins, int) and 2 <= self.bins <= MAX_BINS and self.bins & (self.bins - 1) == 0):
            raise ConfigError(
                f"histogram bins must be a power of two from 2 to {MAX_BINS} (2, 4, ..., 64, ...) so binning "
                f"is exact, got {self.bins!r}"
            )
        unknown = set(self.saturation) - set(FAMILY_RANGES)
        if unknown:
            raise ConfigError(
                f"saturation thresholds for unknown value families {sorted(unknown)}; known: {sorted(FAMILY_RANGES)}"
            )

    def family_bins(self, family: str) -> Bins:
        """The fixed bins of a value family (the same for every run, so histograms merge)."""
        return Bins(*FAMILY_RANGES[family], self.bins)

    def thresholds(self, family: str) -> tuple[float, float]:
        """(low, high): values below low / above high count towards frac_low / frac_high."""
        low, high = self.saturation.get(family, SATURATION[family])
        return float(low), float(high)


def _empty_moments(units: int, cells: int) -> dict[str, np.ndarray]:
    """The per-unit state of no values: the identity of `merge_moments`."""
    return {
        "count": np.zeros(units, np.int64),
        "mean": np.zeros(units),
        "m2": np.zeros(units),
        "min": np.full(units, np.inf),
        "max": np.full(units, -np.inf),
        "n_low": np.zeros(units, np.int64),
        "n_high": np.zeros(units, np.int64),
        "hist": np.zeros((units, cells), np.int64),
    }


def merge_moments(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Combine two per-unit states: counts add, mean/M2 by Chan et al., extrema by min/max."""
    count = a["count"] + b["count"]
    share = np.divide(b["count"], count, out=np.zeros(len(count)), where=count > 0)
    with np.errstate(invalid="ignore", over="ignore"):
        delta = b["mean"] - a["mean"]
        mean = a["mean"] + delta * share
        m2 = a["m2"] + b["m2"] + delta * delta * a["count"] * share
    return {
        "count": count,
        "mean": mean,
        "m2": m2,
        "min": np.minimum(a["min"], b["min"]),
        "max": np.maximum(a["max"], b["max"]),
        "n_low": a["n_low"] + b["n_low"],
        "n_high": a["n_high"] + b["n_high"],
        "hist": a["hist"] + b["hist"],
    }


def gate_update(trace: np.ndarray, bins: Bins, low: float, high: float) -> tuple[dict, dict]:
    """Turn one batch `[batch, time, directions, hidden]` into fresh per-unit and per-timestep states
    (`fused_pass.gate_pass`: one compiled pass over the values)."""
    result = gate_pass(trace, bins, low, high)
    return result.moments, result.steps


class GateMoments:
    """Per (direction, unit) count, mean, std, extrema, saturation and histogram of one gate."""

    def __init__(self, directions: int, hidden: int, bins: Bins, low: float, high: float, state: dict | None = None):
        self.shape = (int(directions), int(hidden))
        self.bins, self.low, self.high = bins, float(low), float(high)
        self._state = state if state is not None else _empty_moments(self.shape[0] * self.shape[1], bins.count + 2)

    @classmethod
    def for_gate(cls, layer: Layer, gate: str, config: StatsConfig | None = None) -> GateMoments:
        """An empty accumulator binned and thresholded for the gate's value family."""
        config, family = config or StatsConfig(), gate_family(layer, gate)
        return cls(layer.directions, layer.hidden_size, config.family_bins(family), *config.thresholds(family))

    def fold(self, part: dict[str, np.ndarray]) -> None:
        """Fold in a per-unit state computed elsewhere from one batch (same bins and thresholds)."""
        self._state = merge_moments(self._state, part)

    def merge(self, other: GateMoments) -> GateMoments:
        """Return the statistics of both accumulators' windows together."""
        if (other.shape, other.bins, other.low, other.high) != (self.shape, self.bins, self.low, self.high):
            raise ConfigError(
                f"cannot merge gate moments of shape {self.shape}, {self.bins}, thresholds "
                f"({self.low}, {self.high}) with shape {other.shape}, {other.bins}, "
                f"({other.low}, {other.high})"
            )
        return GateMoments(*self.shape, self.bins, self.low, self.high, merge_moments(self._state, other._state))

    def state(self) -> dict[str, np.ndarray]:
        """The state as plain numpy arrays, for shipping between processes."""
        return {
            "shape": np.array(self.shape),
            "bins": self.bins.to_array(),
            "thresholds": np.array([self.low, self.high]),
            **{k: v.copy() for k, v in self._state.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> GateMoments:
        """Rebuild an accumulator from `state()`."""
        directions, hidden = (int(v) for v in state["shape"])
        low, high = (float(v) for v in state["thresholds"])
        fields = {k: np.array(state[k]) for k in _empty_moments(0, 0)}
        return cls(directions, hidden, Bins.from_array(state["bins"]), low, high, fields)

    def result(self) -> dict[str, np.ndarray]:
        """Per (direction, unit) statistics; NaN where the accumulator has seen nothing."""
        s, seen = self._state, self._state["count"] > 0
        unseen = np.full(len(seen), np.nan)
        out = {
            "count": s["count"],
            "mean": np.where(seen, s["mean"], np.nan),
            "std": np.sqrt(np.divide(s["m2"], s["count"], out=unseen.copy(), where=seen)),
            "min": np.where(seen, s["min"], np.nan),
            "max": np.where(seen, s["max"], np.nan),
            "frac_low": np.divide(s["n_low"], s["count"], out=unseen.copy(), where=seen),
            "frac_high": np.divide(s["n_high"], s["count"], out=unseen.copy(), where=seen),
            "hist_under": s["hist"][:, 0],
            "hist_over": s["hist"][:, -1],
        }
        out = {k: v.reshape(self.shape).copy() for k, v in out.items()}
        return {**out, "hist": s["hist"][:, 1:-1].reshape(*self.shape, -1).copy(), "edges": self.bins.edges}

    def to_frame(self) -> pd.DataFrame:
        """One row per (direction, unit), with the histogram as a list of counts and its range."""
        r, (directions, hidden) = self.result(), self.shape
        frame = {"direction": np.repeat(np.arange(directions), hidden), "unit": np.tile(np.arange(hidden), directions)}
        frame.update({k: r[k].ravel() for k in ("count", "mean", "std", "min", "max", "frac_low", "frac_high")})
        frame["histogram"] = r["hist"].reshape(directions * hidden, -1).tolist()
        frame.update(
            hist_lo=self.bins.lo,
            hist_hi=self.bins.hi,
            hist_under=r["hist_under"].ravel(),
            hist_over=r["hist_over"].ravel(),
        )
        return pd.DataFrame(frame)


def check_shape(trace: np.ndarray, shape: tuple[int, int], what: str) -> None:
    """Refuse a trace whose (directions, hidden) does not match the layer's."""
    if np.ndim(trace) != 4 or tuple(np.shape(trace)[2:]) != shape:
        raise ModelError(f"{what}: expected a trace [batch, time, {shape[0]}, {shape[1]}], got shape {np.shape(trace)}")


def memory_horizon(mean_gate):
    """Turn a mean keep gate m (LSTM f, GRU z) into decay time τ = -1/ln m and half-life ln 0.5/ln m.

    Both are in steps: m = 1 never forgets (inf), m = 0 forgets at once (0); outside [0, 1], NaN.
    """
    m = np.asarray(mean_gate, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = -np.log(np.where((m >= 0) & (m <= 1), m, np.nan))
        tau = np.where(rate == 0, np.inf, 1 / rate)
    return tau[()], (tau * np.log(2))[()]

"""Gate statistics: mergeable accumulators over replayed gate traces, and the run's two frames.

In the torchmetrics manner: state is declared and fixed-size (per unit: count, Chan's mean and
M2, extrema, saturation counts and a fixed-bin histogram; per timestep: `reporter.timestep_stats`),
`update` only folds a batch in, `merge` combines two states exactly by each field's rule, and
`result`/`to_frame` turn state into numbers without changing it. Memory never grows with the
number of windows; `state()`/`from_state()` are plain dicts of numpy arrays, so replay can ship
states between processes.

One pass per batch feeds a gate's per-unit and per-timestep statistics (`gate_update`): the trace
is walked in cache-sized blocks, each block binned once and counted once into a joint
(timestep, unit) histogram whose two margins are the two histograms.

Value-range families come from the layer's `activations`: sigmoid-like gates on [0, 1],
tanh-like on [-1, 1], anything else (the LSTM cell state) "linear" on [-4, 4], each histogram
with underflow/overflow counts. Saturation (Karpathy, Johnson & Fei-Fei 2015, "Visualizing and
Understanding Recurrent Networks"): a sigmoid gate is left-saturated below 0.1 and
right-saturated above 0.9; for tanh-like values frac_low/frac_high are the fractions below -0.9
and above 0.9 (|x| > 0.9 is their sum); for linear ones, the fractions outside [-4, 4].
NaN propagates to mean, std, min and max, and counts as overflow in histograms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from reporter.errors import ConfigError, ModelError
from reporter.timestep_stats import QUANTILES, Bins, TimestepStats, chunks, unit_trace

if TYPE_CHECKING:
    from reporter.expose import Layer

__all__ = [
    "Bins",
    "FAMILY_RANGES",
    "GATE_STATS_COLUMNS",
    "GateMoments",
    "LayerStats",
    "RunStats",
    "SATURATION",
    "StatsConfig",
    "StatsFrames",
    "TIMESTEP_STATS_COLUMNS",
    "TimestepStats",
    "gate_family",
    "gate_update",
    "horizon_frame",
    "memory_horizon",
    "merge_moments",
    "value_family",
    "gate_order",
]

FAMILY_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "linear": (-4.0, 4.0)}
SATURATION = {"sigmoid": (0.1, 0.9), "tanh": (-0.9, 0.9), "linear": (-4.0, 4.0)}
_SIGMOID_LIKE = {"sigmoid", "hardsigmoid"}
_TANH_LIKE = {"tanh", "softsign", "scaledtanh"}
_DEFAULT_ACTIVATIONS = {
    "LSTM": {"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid", "c": "linear", "h": "tanh"},
    "GRU": {"z": "sigmoid", "r": "sigmoid", "n": "tanh", "h": "tanh"},
    "RNN": {"h": "tanh"},
}
_HORIZON_GATES = {"LSTM": "f", "GRU": "z"}  # the gate that keeps the previous state, per kind
GATE_STATS_COLUMNS = (
    "layer", "kind", "direction", "gate", "unit", "count", "mean", "std", "min", "max", "frac_low",
    "frac_high", "histogram", "hist_lo", "hist_hi", "hist_under", "hist_over", "tau", "half_life",
)
TIMESTEP_STATS_COLUMNS = ("layer", "gate", "t", "count", "mean", *(f"p{round(q * 100):02d}" for q in QUANTILES))
_INT_COLUMNS = {"direction", "unit", "count", "hist_under", "hist_over", "t"}


@dataclass(frozen=True)
class StatsConfig:
    """Histogram resolution (a power of two, for exact bins) and saturation thresholds per family."""

    bins: int = 64
    saturation: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(SATURATION))

    def __post_init__(self) -> None:
        if not (isinstance(self.bins, int) and self.bins >= 2 and self.bins & (self.bins - 1) == 0):
            raise ConfigError(f"histogram bins must be a power of two (2, 4, ..., 64, ...) so binning is exact, "
                              f"got {self.bins!r}")
        unknown = set(self.saturation) - set(FAMILY_RANGES)
        if unknown:
            raise ConfigError(f"saturation thresholds for unknown value families {sorted(unknown)}; "
                              f"known: {sorted(FAMILY_RANGES)}")

    def family_bins(self, family: str) -> Bins:
        """The fixed bins of a value family (the same for every run, so histograms merge)."""
        return Bins(*FAMILY_RANGES[family], self.bins)

    def thresholds(self, family: str) -> tuple[float, float]:
        """(low, high): values below low / above high count towards frac_low / frac_high."""
        low, high = self.saturation.get(family, SATURATION[family])
        return float(low), float(high)


def value_family(activation: str) -> str:
    """Name the value range an activation's outputs fall in: "sigmoid", "tanh" or "linear"."""
    name = activation.lower()
    return "sigmoid" if name in _SIGMOID_LIKE else "tanh" if name in _TANH_LIKE else "linear"


def gate_family(layer: Layer, gate: str) -> str:
    """The value family of one gate of a layer, from its manifest (or the op's default activations)."""
    activation = layer.activations.get(gate) or _DEFAULT_ACTIVATIONS.get(layer.kind, {}).get(gate, "linear")
    return value_family(activation)


def _float32_threshold(value: float, below: bool) -> np.float32:
    """The float32 t with (x < t) == (x < value) when `below`, (x > t) == (x > value) otherwise."""
    t = np.float32(value)
    if below and float(t) < value:
        return np.nextafter(t, np.float32(np.inf))
    if not below and float(t) > value:
        return np.nextafter(t, np.float32(-np.inf))
    return t


def _empty_moments(units: int, cells: int) -> dict[str, np.ndarray]:
    """The per-unit state of no values: the identity of `merge_moments`."""
    return {"count": np.zeros(units, np.int64), "mean": np.zeros(units), "m2": np.zeros(units),
            "min": np.full(units, np.inf), "max": np.full(units, -np.inf), "n_low": np.zeros(units, np.int64),
            "n_high": np.zeros(units, np.int64), "hist": np.zeros((units, cells), np.int64)}


def merge_moments(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Combine two per-unit states: counts add, mean/M2 by Chan et al., extrema by min/max."""
    count = a["count"] + b["count"]
    share = np.divide(b["count"], count, out=np.zeros(len(count)), where=count > 0)
    with np.errstate(invalid="ignore", over="ignore"):
        delta = b["mean"] - a["mean"]
        mean = a["mean"] + delta * share
        m2 = a["m2"] + b["m2"] + delta * delta * a["count"] * share
    return {"count": count, "mean": mean, "m2": m2, "min": np.minimum(a["min"], b["min"]),
            "max": np.maximum(a["max"], b["max"]), "n_low": a["n_low"] + b["n_low"],
            "n_high": a["n_high"] + b["n_high"], "hist": a["hist"] + b["hist"]}


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
    part = {"count": np.full(units, len(x64), np.int64), "mean": mean, "m2": m2, "min": smallest, "max": largest,
            "n_low": _count_true(flat < low, steps), "n_high": _count_true(flat > high, steps),
            "hist": joint.sum(axis=0)}
    return part, step_total, joint.sum(axis=1)


def gate_update(trace: np.ndarray, bins: Bins, low: float, high: float) -> tuple[dict, dict]:
    """Turn one batch `[batch, time, directions, hidden]` into fresh per-unit and per-timestep states."""
    x = unit_trace(trace)
    batch, steps, units = x.shape
    cells = bins.count + 2
    moments = _empty_moments(units, cells)
    per_step = {"count": np.full(steps, batch * units, np.int64), "total": np.zeros(steps),
                "hist": np.zeros((steps, cells), np.int64)}
    low32, high32 = _float32_threshold(low, below=True), _float32_threshold(high, below=False)
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN in a trace propagate, silently
        for bs, ts in chunks(batch, steps, units, cells):
            part, step_total, step_hist = _block(x[bs, ts], bins, low32, high32)
            moments = merge_moments(moments, part)
            per_step["total"][ts] += step_total
            per_step["hist"][ts] += step_hist
    return moments, per_step


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

    def update(self, trace: np.ndarray) -> None:
        """Fold one batch `[batch, time, directions, hidden]` in."""
        _check_shape(trace, self.shape, "gate moments")
        self.fold(gate_update(trace, self.bins, self.low, self.high)[0])

    def fold(self, part: dict[str, np.ndarray]) -> None:
        """Fold in a per-unit state computed elsewhere from one batch (same bins and thresholds)."""
        self._state = merge_moments(self._state, part)

    def merge(self, other: GateMoments) -> GateMoments:
        """Return the statistics of both accumulators' windows together."""
        if (other.shape, other.bins, other.low, other.high) != (self.shape, self.bins, self.low, self.high):
            raise ConfigError(f"cannot merge gate moments of shape {self.shape}, {self.bins}, thresholds "
                              f"({self.low}, {self.high}) with shape {other.shape}, {other.bins}, "
                              f"({other.low}, {other.high})")
        return GateMoments(*self.shape, self.bins, self.low, self.high, merge_moments(self._state, other._state))

    def state(self) -> dict[str, np.ndarray]:
        """The state as plain numpy arrays, for shipping between processes."""
        return {"shape": np.array(self.shape), "bins": self.bins.to_array(),
                "thresholds": np.array([self.low, self.high]), **{k: v.copy() for k, v in self._state.items()}}

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
        out = {"count": s["count"], "mean": np.where(seen, s["mean"], np.nan),
               "std": np.sqrt(np.divide(s["m2"], s["count"], out=unseen.copy(), where=seen)),
               "min": np.where(seen, s["min"], np.nan), "max": np.where(seen, s["max"], np.nan),
               "frac_low": np.divide(s["n_low"], s["count"], out=unseen.copy(), where=seen),
               "frac_high": np.divide(s["n_high"], s["count"], out=unseen.copy(), where=seen),
               "hist_under": s["hist"][:, 0], "hist_over": s["hist"][:, -1]}
        out = {k: v.reshape(self.shape).copy() for k, v in out.items()}
        return {**out, "hist": s["hist"][:, 1:-1].reshape(*self.shape, -1).copy(), "edges": self.bins.edges}

    def to_frame(self) -> pd.DataFrame:
        """One row per (direction, unit), with the histogram as a list of counts and its range."""
        r, (directions, hidden) = self.result(), self.shape
        frame = {"direction": np.repeat(np.arange(directions), hidden), "unit": np.tile(np.arange(hidden), directions)}
        frame.update({k: r[k].ravel() for k in ("count", "mean", "std", "min", "max", "frac_low", "frac_high")})
        frame["histogram"] = r["hist"].reshape(directions * hidden, -1).tolist()
        frame.update(hist_lo=self.bins.lo, hist_hi=self.bins.hi, hist_under=r["hist_under"].ravel(),
                     hist_over=r["hist_over"].ravel())
        return pd.DataFrame(frame)


def _check_shape(trace: np.ndarray, shape: tuple[int, int], what: str) -> None:
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


def horizon_frame(result: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per (direction, unit): mean keep gate, τ and half-life, from `GateMoments.result()`."""
    directions, hidden = result["mean"].shape
    tau, half_life = memory_horizon(result["mean"].ravel())
    return pd.DataFrame({"direction": np.repeat(np.arange(directions), hidden),
                         "unit": np.tile(np.arange(hidden), directions), "mean": result["mean"].ravel(),
                         "tau": np.asarray(tau), "half_life": np.asarray(half_life)})


_GATE_ORDER = {"LSTM": "ifgoch", "GRU": "zrnh", "RNN": "h"}


def gate_order(layer: Layer) -> list[str]:
    """The layer's gates in the op's order (i f g o c h, z r n h), whatever the manifest's order."""
    order = _GATE_ORDER.get(layer.kind, "")
    return sorted(layer.outputs, key=lambda g: (order.find(g) if g in order else len(order), g))


def _fresh_pair(layer: Layer, gate: str, config: StatsConfig | None) -> tuple[GateMoments, TimestepStats]:
    """Empty accumulators for one gate, both binned for its value family."""
    moments = GateMoments.for_gate(layer, gate, config)
    return moments, TimestepStats(moments.bins)


class LayerStats:
    """Every accumulator of one exposed layer: per gate, unit moments and timestep trajectories."""

    def __init__(self, layer: Layer, config: StatsConfig | None = None, gates: dict | None = None):
        self.layer = layer
        self.gates = gates if gates is not None else {g: _fresh_pair(layer, g, config) for g in gate_order(layer)}

    def update(self, gate: str, trace: np.ndarray) -> None:
        """Fold one batch of one gate `[batch, time, directions, hidden]` into both its accumulators."""
        moments, steps = self._pair(gate)
        _check_shape(trace, moments.shape, f"layer {self.layer.name!r} gate {gate!r}")
        part, per_step = gate_update(trace, moments.bins, moments.low, moments.high)
        moments.fold(part)
        steps.fold(per_step)

    def _pair(self, gate: str) -> tuple[GateMoments, TimestepStats]:
        """A gate's accumulators, refusing gates the layer does not expose."""
        if gate not in self.gates:
            raise ModelError(f"layer {self.layer.name!r} has no gate {gate!r}; it has {', '.join(self.gates)}")
        return self.gates[gate]

    def merge(self, other: LayerStats) -> LayerStats:
        """Return the statistics of both accumulators' windows together."""
        if other.layer.name != self.layer.name or list(other.gates) != list(self.gates):
            raise ModelError(f"cannot merge statistics of layer {self.layer.name!r} with layer {other.layer.name!r}")
        merged = {g: (m.merge(other.gates[g][0]), s.merge(other.gates[g][1])) for g, (m, s) in self.gates.items()}
        return LayerStats(self.layer, gates=merged)

    def state(self) -> dict[str, dict[str, dict[str, np.ndarray]]]:
        """Per gate, both accumulators' states as plain numpy arrays."""
        return {g: {"moments": m.state(), "timesteps": s.state()} for g, (m, s) in self.gates.items()}

    @classmethod
    def from_state(cls, layer: Layer, state: dict) -> LayerStats:
        """Rebuild a layer's accumulators from `state()`."""
        gates = {g: (GateMoments.from_state(state[g]["moments"]), TimestepStats.from_state(state[g]["timesteps"]))
                 for g in gate_order(layer)}
        return cls(layer, gates=gates)

    def gate_frame(self) -> pd.DataFrame:
        """gate_stats rows of this layer, ordered by direction, gate (op order), unit."""
        frames = []
        for rank, (gate, (moments, _)) in enumerate(self.gates.items()):
            frame = moments.to_frame().assign(gate=gate, rank=rank, tau=np.nan, half_life=np.nan)
            if gate == _HORIZON_GATES.get(self.layer.kind):
                tau, half_life = memory_horizon(frame["mean"].to_numpy())
                frame = frame.assign(tau=tau, half_life=half_life)
            frames.append(frame)
        if not frames:
            return _no_rows(GATE_STATS_COLUMNS)
        frame = pd.concat(frames, ignore_index=True)
        frame = frame.sort_values(["direction", "rank", "unit"], kind="stable", ignore_index=True)
        return _typed(frame.assign(layer=self.layer.name, kind=self.layer.kind), GATE_STATS_COLUMNS)

    def timestep_frame(self) -> pd.DataFrame:
        """timestep_stats rows of this layer, ordered by gate (op order), t."""
        frames = [s.to_frame().assign(gate=g) for g, (_, s) in self.gates.items()]
        if not frames:
            return _no_rows(TIMESTEP_STATS_COLUMNS)
        return _typed(pd.concat(frames, ignore_index=True).assign(layer=self.layer.name), TIMESTEP_STATS_COLUMNS)


def _typed(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Select `columns` in order with fixed dtypes, so a parquet written from it is byte-identical."""
    def dtype(name: str):
        if name in ("layer", "kind", "gate"):
            return str
        return object if name == "histogram" else np.int64 if name in _INT_COLUMNS else np.float64
    return frame.loc[:, list(columns)].astype({name: dtype(name) for name in columns}).reset_index(drop=True)


def _no_rows(columns: tuple[str, ...]) -> pd.DataFrame:
    """An empty table with the contract's columns and dtypes."""
    return _typed(pd.DataFrame(columns=list(columns)), columns)


class StatsFrames(NamedTuple):
    """The run directory's two statistics tables."""

    gate_stats: pd.DataFrame
    timestep_stats: pd.DataFrame


class RunStats:
    """Accumulators for every layer of a run; what replay feeds and the run directory stores."""

    def __init__(self, layers: list[Layer], config: StatsConfig | None = None, stats: dict | None = None):
        self.layers = {layer.name: layer for layer in layers}
        self.stats = stats if stats is not None else {layer.name: LayerStats(layer, config) for layer in layers}

    def update(self, layer_name: str, gate: str, trace: np.ndarray) -> None:
        """Fold one batch of one layer's gate in."""
        if layer_name not in self.stats:
            raise ModelError(f"no layer {layer_name!r} in the manifest; layers: {', '.join(self.stats)}")
        self.stats[layer_name].update(gate, trace)

    def merge(self, other: RunStats) -> RunStats:
        """Return the statistics of both runs' windows together (same layers)."""
        if list(other.stats) != list(self.stats):
            raise ModelError(f"cannot merge statistics of layers {list(self.stats)} with {list(other.stats)}")
        return RunStats(list(self.layers.values()), stats={n: s.merge(other.stats[n]) for n, s in self.stats.items()})

    def state(self) -> dict[str, dict]:
        """Per layer, per gate, both accumulators' states as plain numpy arrays."""
        return {name: stats.state() for name, stats in self.stats.items()}

    @classmethod
    def from_state(cls, layers: list[Layer], state: dict) -> RunStats:
        """Rebuild a run's accumulators from `state()` and the layer manifest."""
        return cls(layers, stats={layer.name: LayerStats.from_state(layer, state[layer.name]) for layer in layers})

    def to_frames(self) -> StatsFrames:
        """gate_stats and timestep_stats, rows in manifest order, columns and dtypes fixed."""
        layers = list(self.stats.values())
        gate_stats = [s.gate_frame() for s in layers] or [_no_rows(GATE_STATS_COLUMNS)]
        steps = [s.timestep_frame() for s in layers] or [_no_rows(TIMESTEP_STATS_COLUMNS)]
        return StatsFrames(pd.concat(gate_stats, ignore_index=True), pd.concat(steps, ignore_index=True))

"""A run's statistics: every layer's gate accumulators, and the run directory's two tables.

`LayerStats` keeps, per gate of a layer, the per-unit moments (`gate_moments`) and the per-timestep
trajectories (`timestep_stats`), both fed by one `gate_update` pass per batch; `RunStats` holds
every layer's. Both merge exactly (shards in any order and grouping equal one pass) and turn into
`gate_stats` and `timestep_stats`, with fixed columns and dtypes so that parquet files written from
them are byte-identical.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from reporter.errors import ModelError
from reporter.layers import KEEP_GATE, Layer, gate_order
from reporter.replay.fused_pass import GatePass, gate_pass
from reporter.replay.gate_moments import GateMoments, StatsConfig, check_shape, gate_update, memory_horizon
from reporter.replay.timestep_stats import QUANTILES, Bins, TimestepStats

__all__ = [
    "GATE_STATS_COLUMNS",
    "TIMESTEP_STATS_COLUMNS",
    "GateHistogram",
    "LayerStats",
    "RunStats",
    "StatsFrames",
    "gate_histogram",
]

# The run directory's two statistics tables, column by column (ARCHITECTURE.md, "Run directory").
GATE_STATS_COLUMNS = tuple(
    "layer kind direction gate unit count mean std min max frac_low frac_high histogram hist_lo hist_hi hist_under "
    "hist_over tau half_life".split()
)
TIMESTEP_STATS_COLUMNS = ("layer", "gate", "t", "count", "mean", *(f"p{round(q * 100):02d}" for q in QUANTILES))
_INT_COLUMNS = {"direction", "unit", "count", "hist_under", "hist_over", "t"}


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
        self.fold(gate, self.part(gate, trace))

    def part(self, gate: str, trace: np.ndarray, extras: bool = False) -> GatePass | tuple[dict, dict]:
        """One batch of one gate as fresh per-unit and per-timestep states (the costly pass; nothing
        accumulated yet). With `extras`, the same pass also yields the batch's anomaly features
        and, for h, each window's peaks (`fused_pass.GatePass`)."""
        moments, _ = self._pair(gate)
        check_shape(trace, moments.shape, f"layer {self.layer.name!r} gate {gate!r}")
        if extras:
            return gate_pass(trace, moments.bins, moments.low, moments.high, features=True, peaks=gate == "h")
        return gate_update(trace, moments.bins, moments.low, moments.high)

    def fold(self, gate: str, part: tuple[dict, dict]) -> None:
        """Fold states made by `part` into the gate's two accumulators."""
        moments, steps = self._pair(gate)
        moments.fold(part[0])
        steps.fold(part[1])

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
        gates = {
            g: (GateMoments.from_state(state[g]["moments"]), TimestepStats.from_state(state[g]["timesteps"]))
            for g in gate_order(layer)
        }
        return cls(layer, gates=gates)

    def gate_frame(self) -> pd.DataFrame:
        """gate_stats rows of this layer, ordered by direction, gate (op order), unit."""
        frames = []
        for rank, (gate, (moments, _)) in enumerate(self.gates.items()):
            frame = moments.to_frame().assign(gate=gate, rank=rank, tau=np.nan, half_life=np.nan)
            if gate == KEEP_GATE.get(self.layer.kind):
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


class GateHistogram(NamedTuple):
    """A layer × gate's histogram summed over units, read back from `gate_stats` rows."""

    centres: np.ndarray  # of the fixed bins
    counts: np.ndarray  # float64, per bin
    under: float  # values below the range
    over: float  # values above it (and NaN)


def gate_histogram(rows: pd.DataFrame) -> GateHistogram:
    """Sum the per-unit histograms of one layer × gate's `gate_stats` rows."""
    counts = np.sum(np.stack(rows["histogram"].to_numpy()), axis=0).astype(np.float64)
    bins = Bins(float(rows["hist_lo"].iloc[0]), float(rows["hist_hi"].iloc[0]), len(counts))
    return GateHistogram(bins.centres, counts, float(rows["hist_under"].sum()), float(rows["hist_over"].sum()))


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
        self._layer(layer_name).update(gate, trace)

    def _layer(self, layer_name: str) -> LayerStats:
        if layer_name not in self.stats:
            raise ModelError(f"no layer {layer_name!r} in the manifest; layers: {', '.join(self.stats)}")
        return self.stats[layer_name]

    def parts(self, gates: dict[str, dict[str, np.ndarray]], extras: bool = False) -> dict[tuple[str, str], tuple]:
        """One batch of every layer's gates ({layer: {gate: trace}}) as fresh states, accumulating
        nothing (with `extras`, each a `GatePass` holding features and peaks too)."""
        return {
            (name, gate): self._layer(name).part(gate, trace, extras)
            for name, by_gate in gates.items()
            for gate, trace in by_gate.items()
        }

    def fold_parts(self, parts: dict[tuple[str, str], tuple[dict, dict]]) -> None:
        """Fold in the states `parts` made (any RunStats of the same layers may have made them)."""
        for (name, gate), part in parts.items():
            self._layer(name).fold(gate, part)

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

"""Gather a series' runs into what its page shows: each checkpoint's figures along the key.

A series is one model's runs in training order (or across a swept setting): `reporter.series`
resolved which run is which checkpoint, `reporter.pipeline` replayed them. Here, per checkpoint:

    gates        per layer × gate: mean, saturated fractions, and the shift from the previous
                 checkpoint (Wasserstein-1 of the value distributions, in gate-value units)
    memory       per layer: the keep gate's median half-life (ln 0.5 / ln mean gate), the measured
                 impulse half-life of its hidden state, and the gradient's half-life through time
    strips       per layer × gate: the share of values in each histogram bin (TensorBoard's
                 histogram over steps, one gate at a time)
    frames       one fixed window's unit × step values (keep gate and h) at every checkpoint
    impulse      each checkpoint's impulse response and its half-life, contribution ratio and
                 oscillation (`replay.impulse`)
    updates      per weight block, ‖W_k − W_k−1‖ / ‖W_k−1‖ and the share of weights that moved by
                 more than MOVED × the block's RMS (a monitor's "update frequency")
    anomaly      the share of windows flagged, as each checkpoint scores its own windows

Nothing is drawn here (`series_charts` draws it); nothing is replayed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reporter.compare.diff import gate_distance, weighted_mean
from reporter.layers import KEEP_GATE, Layer, gate_order
from reporter.names import slug, unique
from reporter.replay.stats import gate_histogram
from reporter.report.gather import RunView
from reporter.runstore import Run
from reporter.series import SeriesConfig, format_value

__all__ = ["MOVED", "SeriesView", "gather_series", "series_view"]

MOVED = 1e-3  # a weight "moved" when |Δw| exceeds this share of its block's RMS
FRAME_VALUES = 120_000  # unit × step values per layer in the stepped heatmap, over all checkpoints
FRAME_GATES = ("f", "z", "h")  # what the stepped heatmap shows: the keep gate and the hidden state


@dataclass(frozen=True)
class SeriesView:
    """One series as its page shows it. Frames are long tables with `k` (checkpoint position)."""

    config: SeriesConfig
    slug: str
    points: list[dict]  # per checkpoint: k, value, version, run page slug
    gates: pd.DataFrame  # k, value, layer, gate, mean, frac_low, frac_high, w1_prev
    memory: pd.DataFrame  # k, value, layer, gate_half_life, measured_half_life, gradient_half_life
    strips: pd.DataFrame  # k, value, layer, gate, bin, share
    frames: pd.DataFrame  # k, value, layer, gate, row, v (one list per unit row)
    frame_window: int | None  # the window the frames show
    impulse: pd.DataFrame  # k, value, target, lag, normalised
    sweep: pd.DataFrame  # k, value, target, half_life, contribution, oscillation
    updates: pd.DataFrame  # k, value, layer, direction, gate, matrix, relative, moved
    anomaly: pd.DataFrame  # k, value, flagged
    curves: pd.DataFrame | None  # training log (metric, epoch, step, value), when there is one
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def page(self) -> str:
        return f"series/{self.slug}.html"

    @functools.cached_property
    def checkpoints(self) -> list[dict]:
        """The series table: per checkpoint, each layer's half-lives, the largest shift and the anomaly rate."""
        rows = []
        for point in self.points:
            gates = self.gates[self.gates["k"] == point["k"]].dropna(subset=["w1_prev"])
            top = gates.loc[gates["w1_prev"].idxmax()] if len(gates) else None
            anomaly = self.anomaly[self.anomaly["k"] == point["k"]]["flagged"]
            rows.append(
                {
                    **point,
                    "memory": self.memory[self.memory["k"] == point["k"]].to_dict("records"),
                    "shift": None
                    if top is None
                    else {"layer": top["layer"], "gate": top["gate"], "w1": top["w1_prev"]},
                    "flagged": float(anomaly.iloc[0]) if len(anomaly) else float("nan"),
                }
            )
        return rows


def _gates(run: Run) -> list[dict]:
    rows = []
    for (layer, gate), block in run.gate_stats.groupby(["layer", "gate"], sort=False):
        rows.append(
            {"layer": layer, "gate": gate, **{c: weighted_mean(block, c) for c in ("mean", "frac_low", "frac_high")}}
        )
    return rows


def _memory(view: RunView) -> list[dict]:
    """Per layer: the keep gate's median half-life, and the impulse's and the gradient's as the run
    page gathered them (mean over perturbations and directions)."""
    run = view.run
    impulse = pd.DataFrame(view.impulse, columns=["target", "half_life"])
    measured = impulse.groupby("target")["half_life"].mean()
    gradient = pd.DataFrame(list(view.gradients), columns=["layer", "half_life"]).groupby("layer")["half_life"].mean()
    rows = []
    for layer in run.layers:
        keep = KEEP_GATE.get(layer.kind)
        stats = run.gate_stats[(run.gate_stats["layer"] == layer.name) & (run.gate_stats["gate"] == keep)]
        rows.append(
            {
                "layer": layer.name,
                "gate_half_life": float(stats["half_life"].median()) if len(stats) else float("nan"),
                "measured_half_life": float(measured.get(f"{layer.name}/h", float("nan"))),
                "gradient_half_life": float(gradient.get(layer.name, float("nan"))),
            }
        )
    return rows


def _strips(run: Run) -> list[dict]:
    rows = []
    for (layer, gate), block in run.gate_stats.groupby(["layer", "gate"], sort=False):
        centres, counts, under, over = gate_histogram(block)
        total = counts.sum() + under + over
        if total:
            for centre, count in zip(centres, counts):
                rows.append({"layer": layer, "gate": gate, "bin": float(centre), "share": float(count / total)})
    return rows


def _impulse_target(run: Run) -> str | None:
    """The curve a sweep compares: the model's first output over time, else the last layer's h."""
    targets = list(dict.fromkeys(run.impulse["target"])) if not run.impulse.empty else []
    outputs = [target for target in targets if target.startswith("output:")]
    states = [target for target in targets if target.endswith("/h")]
    return (outputs or states[-1:] or [None])[0]


def _impulse(view: RunView, target: str | None) -> tuple[pd.DataFrame, dict]:
    """The chosen target's normalised response by lag (mean over perturbations) and its summary
    from the run page's impulse table."""
    if target is None:
        return pd.DataFrame(), {}
    run = view.run
    rows = run.impulse[(run.impulse["target"] == target) & (run.impulse["direction"] == "forward")]
    curve = rows.groupby("lag", as_index=False)["normalised"].mean().assign(target=target)
    summary = pd.DataFrame(view.impulse)
    summary = summary[(summary["target"] == target) & (summary["direction"] == "forward")]
    return curve, {
        "target": target,
        **{column: float(summary[column].mean()) for column in ("half_life", "contribution", "oscillation")},
    }


def _updates(before: Run, after: Run) -> list[dict]:
    """Per weight block both runs kept whole: relative update and share of weights moved."""
    rows = []
    for name, old in before.weight_blocks.items():
        new = after.weight_blocks.get(name)
        if new is None or new.shape != old.shape or not old.size:
            continue
        layer, direction, gate, matrix = name.rsplit("/", 3)
        old64, delta = old.astype(np.float64), new.astype(np.float64) - old.astype(np.float64)
        norm, rms = float(np.linalg.norm(old64)), float(np.sqrt(np.mean(old64**2)))
        rows.append(
            {
                "layer": layer,
                "direction": int(direction),
                "gate": gate,
                "matrix": matrix,
                "relative": float(np.linalg.norm(delta) / norm) if norm else float("nan"),
                "moved": float(np.mean(np.abs(delta) > MOVED * rms)) if rms else float("nan"),
            }
        )
    return rows


def _fixed_window(runs: list[Run]) -> int | None:
    """A window every run traced, preferring the fixed ones (evenly spaced, the same in every run)."""
    shared = None
    for run in runs:
        windows = run.traces.get("window", np.empty(0, np.int64))
        reasons = run.traces.get("reason", np.full(len(windows), "fixed"))
        fixed = {int(w) for w, r in zip(windows, reasons) if r == "fixed"}
        shared = fixed if shared is None else shared & fixed
    return min(shared) if shared else None


def _frames(runs: list[Run], layers: list[Layer], window: int | None) -> list[dict]:
    """The fixed window's keep gate and h per unit row, per checkpoint; units and steps averaged in
    pairs while a layer's values over all checkpoints exceed FRAME_VALUES (the page stays small)."""
    if window is None:
        return []
    rows = []
    for layer in layers:
        gates = [gate for gate in FRAME_GATES if gate in gate_order(layer)]
        for k, run in enumerate(runs):
            position = int(np.flatnonzero(run.traces["window"] == window)[0])
            for gate in gates:
                trace = run.traces.get(f"{layer.name}/{gate}")
                if trace is None:
                    continue
                values = trace[position].astype(np.float64).reshape(trace.shape[1], -1).T  # [units, steps]
                while values.size * len(runs) * len(gates) > FRAME_VALUES and min(values.shape) > 1:
                    values = _halved(values)
                for row, line in enumerate(np.round(values, 3)):
                    rows.append({"k": k, "layer": layer.name, "gate": gate, "row": row, "v": line.tolist()})
    return rows


def _halved(values: np.ndarray) -> np.ndarray:
    """Average neighbouring units and steps in pairs (a last odd one kept as it is)."""
    for axis in (0, 1):
        if values.shape[axis] > 1:
            even = values.shape[axis] // 2 * 2
            head = np.take(values, range(even), axis=axis)
            pairs = head.reshape(*head.shape[:axis], even // 2, 2, *head.shape[axis + 1 :]).mean(axis=axis + 1)
            values = np.concatenate([pairs, np.take(values, range(even, values.shape[axis]), axis=axis)], axis=axis)
    return values


def _frame(rows: list[dict], columns: list[str], points: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    values = {point["k"]: point["value"] for point in points}
    return frame.assign(value=frame["k"].map(values).astype(np.float64)) if len(frame) else frame.assign(value=[])


def series_view(
    config: SeriesConfig, views: list[RunView], name: str, curves: pd.DataFrame | None = None
) -> SeriesView:
    """The series `config` over its runs as the site gathered them (`gather.RunView`, in the series' order)."""
    runs = [view.run for view in views]
    points = [
        {"k": k, "value": value, "label": f"{config.key}={format_value(value)}", "version": version, "slug": view.slug}
        for k, (value, version, view) in enumerate(zip(config.values, config.versions, views))
    ]
    gates, memory, strips, impulse, sweep, updates, anomaly = [], [], [], [], [], [], []
    target = _impulse_target(runs[0])
    for k, (run, view) in enumerate(zip(runs, views)):
        previous = runs[k - 1] if k else None
        for row in _gates(run):
            w1 = float("nan")
            if previous is not None:
                a = previous.gate_stats[
                    (previous.gate_stats.layer == row["layer"]) & (previous.gate_stats.gate == row["gate"])
                ]
                b = run.gate_stats[(run.gate_stats.layer == row["layer"]) & (run.gate_stats.gate == row["gate"])]
                w1 = gate_distance(a, b)[0] if len(a) and len(b) else float("nan")
            gates.append({"k": k, **row, "w1_prev": w1})
        memory += [{"k": k, **row} for row in _memory(view)]
        strips += [{"k": k, **row} for row in _strips(run)]
        curve, summary = _impulse(view, target)
        impulse += [{"k": k, **row} for row in curve.to_dict("records")]
        sweep += [{"k": k, **summary}] if summary else []
        updates += [{"k": k, **row} for row in _updates(previous, run)] if previous is not None else []
        scored = len(run.window_scores)
        anomaly.append({"k": k, "flagged": view.flagged / scored if scored else float("nan")})
    window = _fixed_window(runs)
    notes = []
    if len(runs) > 1 and not updates:
        notes.append(
            "weight updates: the runs keep no whole weight blocks (a model over 2M weights, or no fused layer)"
        )
    if window is None:
        notes.append("no window was traced by every checkpoint: the stepped heatmap is left out")
    return SeriesView(
        config=config,
        slug=name,
        points=points,
        gates=_frame(gates, ["k", "layer", "gate", "mean", "frac_low", "frac_high", "w1_prev"], points),
        memory=_frame(memory, ["k", "layer", "gate_half_life", "measured_half_life", "gradient_half_life"], points),
        strips=_frame(strips, ["k", "layer", "gate", "bin", "share"], points),
        frames=_frame(_frames(runs, runs[0].layers, window), ["k", "layer", "gate", "row", "v"], points),
        frame_window=window,
        impulse=_frame(impulse, ["k", "lag", "normalised", "target"], points),
        sweep=_frame(sweep, ["k", "target", "half_life", "contribution", "oscillation"], points),
        updates=_frame(updates, ["k", "layer", "direction", "gate", "matrix", "relative", "moved"], points),
        anomaly=_frame(anomaly, ["k", "flagged"], points),
        curves=curves,
        notes=tuple(notes),
    )


def gather_series(series: list[tuple[SeriesConfig, pd.DataFrame | None]], views: list[RunView]) -> list[SeriesView]:
    """Every series of the site over the gathered run views, each with its training log; a series
    whose runs are not all in the site is an error of the build's making."""
    by_version = {(view.meta["model"], view.meta["version"]): view for view in views}
    names = unique([(slug(config.name), config.name) for config, _ in series])
    gathered = []
    for (config, curves), name in zip(series, names):
        chosen = [by_version[(config.model, version)] for version in config.versions]
        gathered.append(series_view(config, chosen, name, curves))
    return gathered

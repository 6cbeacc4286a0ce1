"""Gather everything the pages show, from the runs, before any page is rendered.

In mkdocs' manner, all data is gathered first so every page sees the same runs; pages then only
render (`reporter.report.pages`). Gathered here, and nowhere else: page names, which windows are
flagged (one definition, `replay.anomaly.flagged`), the share of saturated units, each unit's
flags, where each sampled window strays from the typical one, the top windows, impulse
half-lives, and every diff against a configured baseline with its verdicts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reporter.compare.diff import RunDiff, Verdict, check, diff_runs
from reporter.layers import KEEP_GATE, Layer, direction_names, gate_family, gate_order
from reporter.names import slug, unique
from reporter.replay.anomaly import explain_window, flag_threshold, flagged, typical_from_timestep_stats
from reporter.replay.gradient_summary import EXPLODING, VANISH_LAG, VANISHING, gradient_summary
from reporter.replay.impulse import impulse_summary
from reporter.report.cell_view import cell_data, similar_data
from reporter.report.numbers import number
from reporter.report.unit_habits import unit_habits
from reporter.report.weight_charts import weight_warnings
from reporter.runstore import Run
from reporter.vocab import token_text

__all__ = ["DiffView", "RunView", "WindowView", "diff_view", "gather_site", "unit_table"]

TOP_WINDOWS = 20  # rows of the run page's most-anomalous table
DEAD_STD = 0.01  # a unit whose hidden state moves less than this is dead
ALWAYS_SATURATED = 0.95  # share of steps beyond 0.1/0.9 that makes a gate always saturated
MOSTLY_SATURATED = 0.5  # share that counts a unit towards the index's "units with a saturated gate"
DEFAULT_ON = 0.5  # h above this is "on", for runs made before replay recorded its threshold


@dataclass(frozen=True)
class DiffView:
    """A diff as the diff page shows it: the comparison, its verdicts, and where the page lives."""

    diff: RunDiff
    verdicts: list[Verdict]
    page: str | None = None  # site path, for a diff inside a site

    @property
    def breached(self) -> list[str]:
        """The thresholds the candidate breached."""
        return [verdict.key for verdict in self.verdicts if not verdict.passed]


@dataclass(frozen=True)
class WindowView:
    """One sampled window: its score, its input, its traces and where it strays from typical."""

    window: int
    position: int  # in the run's sampled traces
    reason: str  # fixed | random | anomalous
    anomaly_score: float
    rank: int
    flagged: bool
    x: np.ndarray  # the window's input, [T, F] or token ids [T]
    traces: dict[str, dict[str, np.ndarray]]  # layer -> gate -> [T, D, H], gates in the op's order; ran layers only
    explained: pd.DataFrame  # layer × gate × step: value, typical value, deviation
    text: list[str] | None = None  # a token window's tokens as text, when the run has a vocabulary
    cells: dict | None = None  # its cell view's data (`cell_view.cell_data`), for token windows with text


@dataclass(frozen=True)
class RunView:
    """One run as the pages show it: the run, its headline numbers, its windows and tables."""

    run: Run
    slug: str
    baseline: str | None
    diff: DiffView | None
    threshold: float  # anomaly scores above it are flagged
    flagged: int  # windows flagged anomalous
    saturated_share: float  # share of units with a sigmoid gate saturated over half the time
    windows: list[WindowView]
    unit_tables: dict[str, list[dict]]  # layer name -> one row per (direction, unit)
    top: list[dict]  # the most anomalous windows
    impulse: list[dict]  # impulse half-lives per state and output
    similar: dict | None = None  # token runs: every sampled window's text and binarised h (`cell_view`)
    weight_rows: tuple[dict, ...] = ()  # per layer × direction × gate block: norms and the recurrent spectrum
    weight_warnings: tuple[str, ...] = ()  # recurrent blocks whose spectral radius warns
    gradients: tuple[dict, ...] = ()  # per layer × direction: gradient half-life beside the impulse's, verdict

    @property
    def gradient_warnings(self) -> list[dict]:
        """Layers whose gradient vanishes or explodes through time."""
        return [row for row in self.gradients if row["verdict"] != "steady"]

    @property
    def meta(self) -> dict:
        return self.run.meta

    @property
    def layers(self) -> list[Layer]:
        return self.run.layers

    @property
    def units(self) -> int:
        return sum(layer.hidden_size * layer.directions for layer in self.layers)

    @functools.cached_property
    def idle(self) -> set[str]:
        """Layers that ran on no window: each sits in an `If` branch that no window took."""
        counts = self.run.gate_stats.groupby("layer")["count"].sum()
        return {layer.name for layer in self.layers if counts.get(layer.name, 0) == 0}

    @property
    def diff_page(self) -> str | None:
        return self.diff.page if self.diff else None

    @property
    def sampled(self) -> list[int]:
        return [view.window for view in self.windows]

    def reason(self, window: int) -> str:
        return next(view.reason for view in self.windows if view.window == window)

    @staticmethod
    def gates(layer: Layer) -> list[str]:
        """The layer's gates in the operator's order."""
        return gate_order(layer)

    @staticmethod
    def layer_page(layer: Layer, window: int) -> str:
        return f"{slug(layer.name)}-w{window}.html"


def diff_view(diff: RunDiff, thresholds: dict[str, float], page: str | None = None) -> DiffView:
    """A diff with its verdicts against `thresholds`."""
    return DiffView(diff, check(diff, thresholds), page)


def unit_table(run: Run, layer: Layer) -> list[dict]:
    """Per (direction, unit): gate means, saturation, half-life, flags a reader should look at, and
    what the unit tracks (`unit_habits`)."""
    stats = run.gate_stats[run.gate_stats["layer"] == layer.name]
    steps = int(run.meta.get("seq_len", 0))
    keep = KEEP_GATE.get(layer.kind)
    habits = unit_habits(run, layer)
    gradient = _unit_gradients(run, layer)
    rows = []
    for (direction, unit), group in stats.groupby(["direction", "unit"], sort=True):
        by_gate = group.set_index("gate")
        half_life = float(by_gate.loc[keep, "half_life"]) if keep in by_gate.index else float("nan")
        rows.append(
            {
                "direction": int(direction),
                "unit": int(unit),
                "half_life": half_life,
                "gradient_half_life": gradient.get((int(direction), int(unit)), (float("nan"),))[0],
                "flags": _unit_flags(layer, by_gate, half_life, steps)
                + _gradient_flags(gradient.get((int(direction), int(unit)))),
                **habits.get((int(direction), int(unit)), {"habits": [], "on": [], "off": []}),
                "gates": {
                    gate: {
                        column: float(by_gate.loc[gate, column]) for column in ("mean", "std", "frac_low", "frac_high")
                    }
                    for gate in gate_order(layer)
                    if gate in by_gate.index
                },
            }
        )
    return rows


def _unit_gradients(run: Run, layer: Layer) -> dict[tuple[int, int], tuple[float, str]]:
    """(direction index, unit) -> (the lag at which the unit's influence on the final state halves,
    its verdict)."""
    rows = run.unit_gradients
    if rows.empty:
        return {}
    rows = rows[rows["layer"] == layer.name]
    index = {name: d for d, name in enumerate(direction_names(layer))}
    return {
        (index[d], int(u)): (float(h), str(v))
        for d, u, h, v in zip(rows["direction"], rows["unit"], rows["half_life"], rows["verdict"])
    }


def _gradient_flags(gradient: tuple[float, str] | None) -> list[str]:
    if gradient is None or gradient[1] not in ("vanishing", "exploding"):
        return []
    if gradient[1] == "vanishing":
        return [f"vanishing gradient: {VANISH_LAG} steps back, its influence on the final state is below {VANISHING:g}"]
    return [f"exploding gradient: its influence on the final state grows above {EXPLODING:g} going back"]


def _unit_flags(layer: Layer, by_gate: pd.DataFrame, half_life: float, steps: int) -> list[str]:
    """Why a unit deserves a look: dead, a gate always saturated, or memory longer than the window."""
    flags = []
    if "h" in by_gate.index and by_gate.loc["h", "std"] < DEAD_STD:
        flags.append(f"dead: its hidden state hardly changes (std < {DEAD_STD:g})")
    for gate in by_gate.index:
        saturated = by_gate.loc[gate, "frac_low"] + by_gate.loc[gate, "frac_high"]
        if gate_family(layer, gate) == "sigmoid" and saturated > ALWAYS_SATURATED:
            flags.append(f"always saturated: gate {gate} is beyond 0.1/0.9 on over {ALWAYS_SATURATED:.0%} of steps")
    if steps and half_life > steps:
        flags.append(f"integrator: memory half-life {number(half_life, '%.0f')} steps, longer than the window")
    return flags


def _saturated_share(run: Run, units: int) -> float:
    """Share of units with a sigmoid gate saturated (< low or > high) more than half the time."""
    stats = run.gate_stats
    by_name = {layer.name: layer for layer in run.layers}
    sigmoid = [
        layer in by_name and gate_family(by_name[layer], gate) == "sigmoid"
        for layer, gate in zip(stats["layer"], stats["gate"])
    ]
    rows = stats[sigmoid]
    if rows.empty or not units:
        return 0.0
    saturated = (
        (rows["frac_low"] + rows["frac_high"] > MOSTLY_SATURATED)
        .groupby([rows["layer"], rows["direction"], rows["unit"]])
        .any()
    )
    return float(saturated.sum() / units)


def _windows(run: Run, flags: np.ndarray) -> list[WindowView]:
    """Every sampled window of a run, in the order replay sampled them, with where it strays from
    typical: from the run's explanations, or computed here for a run made before replay explained
    every sampled window."""
    scores = run.window_scores.reset_index(drop=True)
    row_of = {int(w): k for k, w in enumerate(scores["window"])}
    sampled = [int(w) for w in run.traces.get("window", [])]
    stored = run.explanations if "window" in run.explanations.columns else pd.DataFrame({"window": []})
    typical = typical_from_timestep_stats(run.timestep_stats) if set(sampled) - set(stored["window"]) else None
    views = []
    for position, window in enumerate(sampled):
        traces = {
            layer.name: {
                gate: run.traces[f"{layer.name}/{gate}"][position].astype(np.float32) for gate in gate_order(layer)
            }
            for layer in run.layers
            if f"{layer.name}/{gate_order(layer)[0]}" in run.traces  # not a layer that did not run (an If branch)
        }
        rows = stored[stored["window"] == window]
        explained = rows.drop(columns="window").reset_index(drop=True) if len(rows) else explain_window(traces, typical)
        row = row_of[window]
        text = _text(run, run.traces["x"][position])
        views.append(
            WindowView(
                window,
                position,
                str(run.traces["reason"][position]),
                float(scores["anomaly_score"].iloc[row]),
                int(scores["rank"].iloc[row]),
                bool(flags[row]),
                run.traces["x"][position],
                traces,
                explained,
                text,
                cell_data(traces, run.layers, text) if text is not None else None,
            )
        )
    return views


def _text(run: Run, x: np.ndarray) -> list[str] | None:
    """A token window's tokens as the text they print (`reporter.vocab`), if the run has a vocabulary."""
    if run.vocab is None or x.dtype.kind not in "iu" or x.ndim != 1:
        return None
    return token_text(x, run.vocab)


def _top(run: Run, sampled: set[int]) -> list[dict]:
    """The most anomalous windows, with a page where the window was sampled."""
    scores = run.window_scores.nsmallest(TOP_WINDOWS, "rank")
    return [
        {"window": int(w), "rank": int(r), "score": float(s), "page": f"w{int(w)}.html" if int(w) in sampled else None}
        for w, r, s in zip(scores["window"], scores["rank"], scores["anomaly_score"])
    ]


def _run_view(run: Run, name: str, baseline: str | None, diff: DiffView | None, window_pages: bool) -> RunView:
    scores = run.window_scores["anomaly_score"].to_numpy()
    flags = flagged(scores)
    windows = _windows(run, flags) if window_pages else []
    units = sum(layer.hidden_size * layer.directions for layer in run.layers)
    impulse = impulse_summary(run.impulse) if not run.impulse.empty else pd.DataFrame()
    return RunView(
        run,
        name,
        baseline,
        diff,
        flag_threshold(scores) if scores.size else float("nan"),
        int(flags.sum()),
        _saturated_share(run, units),
        windows,
        {layer.name: unit_table(run, layer) for layer in run.layers},
        _top(run, {view.window for view in windows}),
        impulse.to_dict("records"),
        _similar(run, windows),
        _weight_rows(run.weights),
        tuple(weight_warnings(run.weights)) if not run.weights.empty else (),
        _gradient_rows(run, impulse),
    )


def _gradient_rows(run: Run, impulse: pd.DataFrame) -> tuple[dict, ...]:
    """Per layer × direction: how fast the gradient through time halves, beside how fast an input
    impulse fades from the same state (forward half-lives; NaN where either is not measured)."""
    if run.gradient_flow.empty:
        return ()
    measured = impulse.groupby(["target", "direction"])["half_life"].mean() if len(impulse) else pd.Series()
    return tuple(
        {**row, "impulse_half_life": float(measured.get((f"{row['layer']}/h", row["direction"]), float("nan")))}
        for row in gradient_summary(run.gradient_flow).to_dict("records")
    )


def _weight_rows(weights: pd.DataFrame) -> tuple[dict, ...]:
    """The run page's weights table: per layer, direction and gate block, ‖W‖, ‖R‖, σ_max(R), ρ(R)."""
    if weights.empty:
        return ()
    rows = []
    for (layer, direction, gate), block in weights.groupby(["layer", "direction", "gate"], sort=False):
        by_matrix = block.set_index("matrix")
        recurrent = by_matrix.loc["recurrent"] if "recurrent" in by_matrix.index else None
        rows.append(
            {
                "layer": layer,
                "direction": int(direction),
                "gate": gate,
                "input": float(by_matrix.loc["input", "frobenius"]) if "input" in by_matrix.index else float("nan"),
                "recurrent": float(recurrent["frobenius"]) if recurrent is not None else float("nan"),
                "sigma_max": float(recurrent["sigma_max"]) if recurrent is not None else float("nan"),
                "spectral_radius": float(recurrent["spectral_radius"]) if recurrent is not None else float("nan"),
            }
        )
    return tuple(rows)


def _similar(run: Run, windows: list[WindowView]) -> dict | None:
    """What "find similar" searches: the sampled token windows with their binarised h."""
    if not windows or any(view.text is None for view in windows):
        return None
    on = float((run.meta.get("unit_tracks") or {}).get("on", DEFAULT_ON))
    return similar_data(run.traces, run.layers, run.vocab, [view.reason for view in windows], on)


def _baselines(runs: list[tuple[Run, str | None]]) -> dict[str, Run]:
    """For each run with a baseline, the baseline's run (same model, version = baseline)."""
    by_name = {(run.meta["model"], run.meta["version"]): run for run, _ in runs}
    return {
        run.name: by_name[(run.meta["model"], baseline)]
        for run, baseline in runs
        if baseline is not None and (run.meta["model"], baseline) in by_name
    }


def _diff_pages(runs: list[tuple[Run, str | None]], baselines: dict[str, Run]) -> dict[str, str]:
    """Site paths of the diff pages, for the runs whose baseline is in the site."""
    compared = [(run, baseline) for run, baseline in runs if run.name in baselines]
    names = unique(
        [
            (
                f"{slug(run.meta['model'])}-{slug(baseline)}-vs-{slug(run.meta['version'])}",
                f"{run.meta['model']}\0{baseline}\0{run.meta['version']}",
            )
            for run, baseline in compared
        ]
    )
    return {run.name: f"diffs/{name}.html" for (run, _), name in zip(compared, names)}


def gather_site(
    runs: list[tuple[Run, str | None]], thresholds: dict[str, float], checkpoints: set[str] = frozenset()
) -> list[RunView]:
    """Every run of the site (each with its baseline version, or None) as its pages show it. The
    runs named in `checkpoints` (a series' checkpoints: the series page shows them together) get a
    run page but no page per sampled window."""
    baselines = _baselines(runs)
    pages = _diff_pages(runs, baselines)
    names = unique(
        [
            (slug(f"{run.meta['model']}-{run.meta['version']}"), f"{run.meta['model']}\0{run.meta['version']}")
            for run, _ in runs
        ]
    )
    views = []
    for (run, baseline), name in zip(runs, names):
        diff = None
        if run.name in baselines:
            diff = diff_view(diff_runs(baselines[run.name], run), thresholds, pages[run.name])
        views.append(_run_view(run, name, baseline, diff, run.name not in checkpoints))
    return views

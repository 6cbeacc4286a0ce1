"""Pure functions from a `RunDiff` to Altair charts: what changed between two runs.

Same conventions as `charts`: a title, axis titles with units, a one-sentence caption (all in
`CAPTIONS`), data aggregated in pandas and inline, Okabe-Ito colours.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from reporter.compare.diff import RunDiff
from reporter.layers import GATE_NAMES, gate_label
from reporter.report.charts import DIGITS, OKABE_ITO, Figure, figure, tips

__all__ = [
    "CAPTIONS",
    "anomaly_shift_chart",
    "diff_figures",
    "horizon_shift_chart",
    "impulse_shift_chart",
    "saturation_shift_chart",
    "shift_chart",
]

CAPTIONS = {
    "shift": "The work needed to turn A's distribution of a gate's values into B's, in gate-value units: 0 is "
    "unchanged; the cell state, being unbounded, moves furthest for the same change.",
    "saturation-shift": "Bars right of 0: B's gate spends more of its steps saturated than A's; left: less.",
    "horizon-shift": "Each dot is a unit of A and the unit of B it correlates with most (Hungarian matching); above "
    "the dashed diagonal, B's unit remembers longer.",
    "horizon-median": "Per layer, the median over units of ln 0.5 / ln(mean keep gate), in each run.",
    "impulse-shift": "How one input impulse fades in each state and output: where B's line stays up longer, B "
    "remembers that input longer.",
    "anomaly-shift": "Share of each run's windows at each anomaly score: a B curve shifted right or with a heavier "
    "tail means B finds more of its windows unusual.",
}
_WIDTH = 520


def _runs(diff: RunDiff) -> alt.Scale:
    return alt.Scale(domain=[f"A: {diff.a.name}", f"B: {diff.b.name}"], range=[OKABE_ITO[0], OKABE_ITO[5]])


def _labels(diff: RunDiff) -> dict[str, str]:
    """Column suffix → run label: "_a" → "A: model v1"."""
    return {"a": f"A: {diff.a.name}", "b": f"B: {diff.b.name}"}


def shift_chart(diff: RunDiff) -> Figure | None:
    """Wasserstein-1 distance per layer × gate."""
    if diff.gates.empty:
        return None
    data = diff.gates[["layer", "gate", "wasserstein", "ks"]].round(DIGITS)
    data = data.assign(gate=data["gate"].map(gate_label))
    chart = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("wasserstein:Q", title="Wasserstein-1 distance (gate-value units)"),
            y=alt.Y("gate:N", title=None, sort=[gate_label(g) for g in GATE_NAMES]),
            yOffset="layer:N",
            color=alt.Color("layer:N", title="layer", scale=alt.Scale(range=OKABE_ITO)),
            tooltip=tips("layer", "gate", ("wasserstein", ".4f"), ("ks", ".3f", "KS")),
        )
    )
    title = "How far each gate's values moved"
    return figure("shift", chart.properties(width=_WIDTH, height=alt.Step(12), title=title), CAPTIONS)


def saturation_shift_chart(diff: RunDiff) -> Figure | None:
    """Change in the left- and right-saturated fractions per layer × gate."""
    if diff.gates.empty:
        return None
    sides = {"d_frac_low": "left-saturated (closed)", "d_frac_high": "right-saturated (open)"}
    data = diff.gates.melt(id_vars=["layer", "gate"], value_vars=list(sides), var_name="side", value_name="change")
    data["side"] = data["side"].map(sides)
    data["row"] = data["layer"] + " · " + data["gate"].map(gate_label)
    data = data[["row", "side", "change"]].round(DIGITS)
    chart = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("change:Q", title="change in the fraction of steps saturated (B − A)", axis=alt.Axis(format="+%")),
            y=alt.Y("row:N", title=None, sort=list(dict.fromkeys(data["row"]))),
            yOffset="side:N",
            color=alt.Color("side:N", title=None, scale=alt.Scale(range=[OKABE_ITO[0], OKABE_ITO[1]])),
            tooltip=tips("row", "side", ("change", "+.2%")),
        )
    )
    title = "Saturation change per gate"
    return figure("saturation-shift", chart.properties(width=_WIDTH, height=alt.Step(8), title=title), CAPTIONS)


def _matched_horizon_chart(diff: RunDiff, data: pd.DataFrame) -> Figure:
    """Matched units' half-lives, A on x and B on y, log scales, with the diagonal."""
    low = float(min(data["half_life_a"].min(), data["half_life_b"].min()))
    high = float(max(data["half_life_a"].max(), data["half_life_b"].max()))
    scale = alt.Scale(type="log", domain=[low, high])
    points = (
        alt.Chart(data)
        .mark_circle(size=30, opacity=0.75)
        .encode(
            x=alt.X("half_life_a:Q", title=f"half-life in A: {diff.a.name} (steps, log)", scale=scale),
            y=alt.Y("half_life_b:Q", title=f"half-life in B: {diff.b.name} (steps, log)", scale=scale),
            color=alt.Color("layer:N", title="layer", scale=alt.Scale(range=OKABE_ITO)),
            tooltip=tips(
                "layer", "unit_a", "unit_b", ("correlation", ".2f"), ("half_life_a", ".2f"), ("half_life_b", ".2f")
            ),
        )
    )
    diagonal = alt.Chart(pd.DataFrame({"x": [low, high], "y": [low, high]}))
    diagonal = diagonal.mark_line(color="gray", strokeDash=[4, 3]).encode(x="x:Q", y="y:Q")
    chart = alt.layer(diagonal, points).properties(width=360, height=360, title="Memory half-life of matched units")
    return figure("horizon-shift", chart, CAPTIONS)


def horizon_shift_chart(diff: RunDiff) -> Figure | None:
    """Matched units' memory half-life, A against B (or per-layer medians when units are not matched)."""
    units = diff.units
    if not units.empty and {"half_life_a", "half_life_b"} <= set(units.columns):
        data = units[["layer", "unit_a", "unit_b", "correlation", "half_life_a", "half_life_b"]]
        finite = np.isfinite(data["half_life_a"]) & np.isfinite(data["half_life_b"])
        data = data[finite & (data["half_life_a"] > 0) & (data["half_life_b"] > 0)].round(DIGITS)
        if not data.empty:
            return _matched_horizon_chart(diff, data)
    if diff.horizon.empty:
        return None
    runs = {f"half_life_{side}": label for side, label in _labels(diff).items()}
    data = diff.horizon.melt(id_vars=["layer"], value_vars=list(runs), var_name="run", value_name="half_life")
    data["run"] = data["run"].map(runs)
    chart = (
        alt.Chart(data.round(DIGITS))
        .mark_bar()
        .encode(
            x=alt.X("half_life:Q", title="median memory half-life (steps)"),
            y=alt.Y("layer:N", title="layer"),
            yOffset="run:N",
            color=alt.Color("run:N", title=None, scale=_runs(diff)),
            tooltip=tips("layer", "run", ("half_life", ".2f")),
        )
    )
    chart = chart.properties(width=_WIDTH, height=alt.Step(14), title="Median memory half-life per layer")
    return Figure("horizon-shift", CAPTIONS["horizon-median"], chart)


def impulse_shift_chart(diff: RunDiff) -> Figure | None:
    """Measured impulse responses of both runs, overlaid."""
    frames = []
    for label, run in zip(_labels(diff).values(), (diff.a, diff.b)):
        if run.impulse.empty:
            return None
        mean = run.impulse.groupby(["target", "direction", "lag"], sort=False)["normalised"].mean().reset_index()
        frames.append(mean.assign(run=label))
    data = pd.concat(frames, ignore_index=True).round(DIGITS)
    chart = (
        alt.Chart(data)
        .mark_line()
        .encode(
            x=alt.X("lag:Q", title="steps after the impulse"),
            y=alt.Y("normalised:Q", title="response ÷ its peak"),
            color=alt.Color("run:N", title=None, scale=_runs(diff)),
            detail="direction:N",
            tooltip=tips("run", "target", "direction", "lag", ("normalised", ".3f")),
        )
    )
    chart = chart.properties(width=170, height=120).facet(facet=alt.Facet("target:N", title=None), columns=3)
    return figure("impulse-shift", chart.properties(title="Impulse responses, A and B"), CAPTIONS)


def anomaly_shift_chart(diff: RunDiff) -> Figure:
    """Both runs' anomaly score distributions, as shares of each run's windows (the runs may have
    replayed different numbers of windows), over the same bins."""
    runs = zip(_labels(diff).values(), (diff.a, diff.b))
    scores = {label: run.window_scores["anomaly_score"].to_numpy(np.float64) for label, run in runs}
    finite = np.concatenate([values[np.isfinite(values)] for values in scores.values()])
    edges = np.histogram_bin_edges(finite, bins=40) if finite.size else np.linspace(0, 1, 41)
    frames = [
        pd.DataFrame(
            {
                "run": label,
                "anomaly_score": np.round(edges[:-1], DIGITS),
                "share": np.round(np.histogram(values, bins=edges)[0] / max(len(values), 1), DIGITS),
            }
        )
        for label, values in scores.items()
    ]
    chart = (
        alt.Chart(pd.concat(frames, ignore_index=True))
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("anomaly_score:Q", title="anomaly score (each run against its own windows)"),
            y=alt.Y("share:Q", title="share of the run's windows", axis=alt.Axis(format="%")),
            color=alt.Color("run:N", title=None, scale=_runs(diff)),
            tooltip=tips("run", ("anomaly_score", ".3f", "score from"), ("share", ".1%", "share of windows")),
        )
    )
    title = "Anomaly scores, A and B"
    return figure("anomaly-shift", chart.properties(width=_WIDTH, height=180, title=title), CAPTIONS)


def diff_figures(diff: RunDiff) -> list[Figure]:
    """Every diff chart that applies to these two runs, in page order."""
    made = [
        shift_chart(diff),
        saturation_shift_chart(diff),
        horizon_shift_chart(diff),
        impulse_shift_chart(diff),
        anomaly_shift_chart(diff),
    ]
    return [made_figure for made_figure in made if made_figure is not None]

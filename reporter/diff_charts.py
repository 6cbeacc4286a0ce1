"""Pure functions from a `RunDiff` to Altair charts: what changed between two runs.

Same conventions as `charts`: a title, axis titles with units, a one-sentence caption, data
aggregated in pandas and inline, Okabe-Ito colours.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from reporter.charts import GATE_NAMES, OKABE_ITO, Figure
from reporter.diff import RunDiff

__all__ = ["anomaly_shift_chart", "diff_figures", "horizon_shift_chart", "impulse_shift_chart", "saturation_shift_chart",
           "shift_chart"]

_DIGITS = 4
_WIDTH = 520


def _runs(diff: RunDiff) -> alt.Scale:
    return alt.Scale(domain=[f"A: {diff.a.name}", f"B: {diff.b.name}"], range=[OKABE_ITO[0], OKABE_ITO[5]])


def shift_chart(diff: RunDiff) -> Figure | None:
    """Wasserstein-1 distance per layer × gate."""
    if diff.gates.empty:
        return None
    data = diff.gates[["layer", "gate", "wasserstein", "ks"]].round(_DIGITS)
    data = data.assign(gate=data["gate"].map(lambda g: GATE_NAMES.get(g, g)))
    chart = alt.Chart(data).mark_bar().encode(
        x=alt.X("wasserstein:Q", title="Wasserstein-1 distance (gate-value units)"),
        y=alt.Y("gate:N", title=None, sort=[GATE_NAMES.get(g, g) for g in GATE_NAMES]),
        yOffset="layer:N",
        color=alt.Color("layer:N", title="layer", scale=alt.Scale(range=OKABE_ITO)),
        tooltip=["layer", "gate", alt.Tooltip("wasserstein:Q", format=".4f"), alt.Tooltip("ks:Q", title="KS", format=".3f")],
    ).properties(width=_WIDTH, height=alt.Step(12), title="How far each gate's values moved")
    return Figure("shift", "The work needed to turn A's distribution of a gate's values into B's, in gate-value "
                  "units: 0 is unchanged; the cell state, being unbounded, moves furthest for the same change.", chart)


def saturation_shift_chart(diff: RunDiff) -> Figure | None:
    """Change in the left- and right-saturated fractions per layer × gate."""
    if diff.gates.empty:
        return None
    data = diff.gates.melt(id_vars=["layer", "gate"], value_vars=["d_frac_low", "d_frac_high"], var_name="side",
                           value_name="change")
    data["side"] = data["side"].map({"d_frac_low": "left-saturated (closed)", "d_frac_high": "right-saturated (open)"})
    data["row"] = data["layer"] + " · " + data["gate"].map(lambda g: GATE_NAMES.get(g, g))
    data = data[["row", "side", "change"]].round(_DIGITS)
    chart = alt.Chart(data).mark_bar().encode(
        x=alt.X("change:Q", title="change in the fraction of steps saturated (B − A)", axis=alt.Axis(format="+%")),
        y=alt.Y("row:N", title=None, sort=list(dict.fromkeys(data["row"]))),
        yOffset="side:N",
        color=alt.Color("side:N", title=None, scale=alt.Scale(range=[OKABE_ITO[0], OKABE_ITO[1]])),
        tooltip=["row", "side", alt.Tooltip("change:Q", format="+.2%")],
    ).properties(width=_WIDTH, height=alt.Step(8), title="Saturation change per gate")
    return Figure("saturation-shift", "Bars right of 0: B's gate spends more of its steps saturated than A's; "
                  "left: less.", chart)


def horizon_shift_chart(diff: RunDiff) -> Figure | None:
    """Matched units' memory half-life, A against B (or per-layer medians when units are not matched)."""
    units = diff.units
    if not units.empty and {"half_life_a", "half_life_b"} <= set(units.columns):
        data = units[["layer", "unit_a", "unit_b", "correlation", "half_life_a", "half_life_b"]]
        data = data[np.isfinite(data["half_life_a"]) & np.isfinite(data["half_life_b"])
                    & (data["half_life_a"] > 0) & (data["half_life_b"] > 0)].round(_DIGITS)
        if not data.empty:
            low = float(min(data["half_life_a"].min(), data["half_life_b"].min()))
            high = float(max(data["half_life_a"].max(), data["half_life_b"].max()))
            scale = alt.Scale(type="log", domain=[low, high])
            points = alt.Chart(data).mark_circle(size=30, opacity=0.75).encode(
                x=alt.X("half_life_a:Q", title=f"half-life in A: {diff.a.name} (steps, log)", scale=scale),
                y=alt.Y("half_life_b:Q", title=f"half-life in B: {diff.b.name} (steps, log)", scale=scale),
                color=alt.Color("layer:N", title="layer", scale=alt.Scale(range=OKABE_ITO)),
                tooltip=["layer", "unit_a", "unit_b", alt.Tooltip("correlation:Q", format=".2f"),
                         alt.Tooltip("half_life_a:Q", format=".2f"), alt.Tooltip("half_life_b:Q", format=".2f")])
            diagonal = alt.Chart(pd.DataFrame({"x": [low, high], "y": [low, high]})).mark_line(
                color="gray", strokeDash=[4, 3]).encode(x="x:Q", y="y:Q")
            chart = alt.layer(diagonal, points).properties(width=360, height=360,
                                                           title="Memory half-life of matched units")
            return Figure("horizon-shift", "Each dot is a unit of A and the unit of B it correlates with most "
                          "(Hungarian matching); above the dashed diagonal, B's unit remembers longer.", chart)
    if diff.horizon.empty:
        return None
    data = diff.horizon.melt(id_vars=["layer"], value_vars=["half_life_a", "half_life_b"], var_name="run",
                             value_name="half_life")
    data["run"] = data["run"].map({"half_life_a": f"A: {diff.a.name}", "half_life_b": f"B: {diff.b.name}"})
    chart = alt.Chart(data.round(_DIGITS)).mark_bar().encode(
        x=alt.X("half_life:Q", title="median memory half-life (steps)"), y=alt.Y("layer:N", title="layer"),
        yOffset="run:N", color=alt.Color("run:N", title=None, scale=_runs(diff)),
        tooltip=["layer", "run", alt.Tooltip("half_life:Q", format=".2f")],
    ).properties(width=_WIDTH, height=alt.Step(14), title="Median memory half-life per layer")
    return Figure("horizon-shift", "Per layer, the median over units of ln 0.5 / ln(mean keep gate), in each run.",
                  chart)


def impulse_shift_chart(diff: RunDiff) -> Figure | None:
    """Measured impulse responses of both runs, overlaid."""
    frames = []
    for label, run in ((f"A: {diff.a.name}", diff.a), (f"B: {diff.b.name}", diff.b)):
        if run.impulse.empty:
            return None
        mean = run.impulse.groupby(["target", "direction", "lag"], sort=False)["normalised"].mean().reset_index()
        frames.append(mean.assign(run=label))
    data = pd.concat(frames, ignore_index=True).round(_DIGITS)
    chart = alt.Chart(data).mark_line().encode(
        x=alt.X("lag:Q", title="steps after the impulse"), y=alt.Y("normalised:Q", title="response ÷ its peak"),
        color=alt.Color("run:N", title=None, scale=_runs(diff)), detail="direction:N",
        tooltip=["run", "target", "direction", "lag", alt.Tooltip("normalised:Q", format=".3f")],
    ).properties(width=170, height=120).facet(facet=alt.Facet("target:N", title=None), columns=3).properties(
        title="Impulse responses, A and B")
    return Figure("impulse-shift", "How one input impulse fades in each state and output: where B's line stays up "
                  "longer, B remembers that input longer.", chart)


def anomaly_shift_chart(diff: RunDiff) -> Figure:
    """Both runs' anomaly score distributions, as shares of each run's windows (the runs may have
    replayed different numbers of windows), over the same bins."""
    scores = {f"A: {diff.a.name}": diff.a.window_scores["anomaly_score"].to_numpy(np.float64),
              f"B: {diff.b.name}": diff.b.window_scores["anomaly_score"].to_numpy(np.float64)}
    finite = np.concatenate([values[np.isfinite(values)] for values in scores.values()])
    edges = np.histogram_bin_edges(finite, bins=40) if finite.size else np.linspace(0, 1, 41)
    frames = [pd.DataFrame({"run": label, "anomaly_score": np.round(edges[:-1], _DIGITS),
                            "share": np.round(np.histogram(values, bins=edges)[0] / max(len(values), 1), _DIGITS)})
              for label, values in scores.items()]
    chart = alt.Chart(pd.concat(frames, ignore_index=True)).mark_line(interpolate="step-after").encode(
        x=alt.X("anomaly_score:Q", title="anomaly score (each run against its own windows)"),
        y=alt.Y("share:Q", title="share of the run's windows", axis=alt.Axis(format="%")),
        color=alt.Color("run:N", title=None, scale=_runs(diff)),
        tooltip=["run", alt.Tooltip("anomaly_score:Q", title="score from", format=".3f"),
                 alt.Tooltip("share:Q", title="share of windows", format=".1%")],
    ).properties(width=_WIDTH, height=180, title="Anomaly scores, A and B")
    return Figure("anomaly-shift", "Share of each run's windows at each anomaly score: a B curve shifted right or "
                  "with a heavier tail means B finds more of its windows unusual.", chart)


def diff_figures(diff: RunDiff) -> list[Figure]:
    """Every diff chart that applies to these two runs, in page order."""
    made = [shift_chart(diff), saturation_shift_chart(diff), horizon_shift_chart(diff), impulse_shift_chart(diff),
            anomaly_shift_chart(diff)]
    return [figure for figure in made if figure is not None]

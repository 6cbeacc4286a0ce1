"""Charts of a series (`series_view`): every checkpoint's figures along the key, one picture each.

The x axis is the series' key (epoch, or the swept setting) wherever a figure is one number per
checkpoint; the stepped heatmap has a slider (and the page a play button) to walk the checkpoints.
Pure functions from gathered frames to Altair figures, each with a title, labelled axes and a
caption.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from reporter.layers import gate_label
from reporter.report.charts import DIGITS, OKABE_ITO, WIDTH, Figure, figure, significant, tips
from reporter.report.series_view import MOVED, SeriesView

__all__ = ["CAPTIONS", "CHECKPOINT_PARAM", "series_figures"]

CHECKPOINT_PARAM = "checkpoint"  # the stepped heatmap's slider; the page's play button moves it
CAPTIONS = {
    "series_saturation": "Share of every layer's gate values beyond the saturation thresholds (solid: above 0.9, "
    "dashed: below 0.1) at each checkpoint: a gate that learns to switch moves up both lines.",
    "series_shift": "How far each gate's value distribution moved since the previous checkpoint (Wasserstein-1, "
    "in gate-value units): large early, near zero once training has settled.",
    "series_memory": "Half-lives of each layer at each checkpoint, in steps: memory read from the mean keep gate, "
    "measured by an input impulse, and how far back the gradient reaches before halving.",
    "series_strips": "Each column is one checkpoint, each row a value bin: darker cells hold more of that gate's "
    "values (every window, step and unit), so a band drifting upward is a gate opening over training.",
    "series_frames": "One fixed window's keep gate and hidden state at the checkpoint the slider picks (press play "
    "to step through them): units are rows, steps columns.",
    "series_impulse": "Response to a unit input impulse, ÷ its peak, at each checkpoint (darker: later or larger "
    "setting): a curve further right remembers longer.",
    "series_updates": "Relative difference of each weight block from the previous checkpoint, ‖ΔW‖ ÷ ‖W‖ (log "
    "scale; solid: recurrent R, dashed: input W): over epochs, the learning rate as the weights felt it; across a "
    "sweep, how far apart neighbouring settings trained.",
    "series_moved": f"Share of each block's weights that moved by more than {MOVED:g} × the block's RMS since the "
    "previous checkpoint (solid: recurrent, dashed: input): near 1 while all weights still learn.",
    "series_anomaly": "Share of its own windows each checkpoint flags as anomalous (median + 3 robust std of its "
    "scores).",
    "series_curves": "The training log's metrics by optimisation step; grey rules mark the steps where the "
    "checkpoints of this series were saved.",
}


def _key_axis(view: SeriesView) -> alt.X:
    return alt.X("value:Q", title=view.key, axis=alt.Axis(values=[p["value"] for p in view.points], format="~g"))


def _colour(field: str, title: str, domain: list[str]) -> alt.Color:
    return alt.Color(f"{field}:N", title=title, scale=alt.Scale(domain=domain, range=OKABE_ITO))


def _key_lines(view: SeriesView, data: pd.DataFrame, y: alt.Y, colour: str, dash: tuple | None, tooltip: list):
    """One line per `colour` value (dashed by `dash` = (field, title, order)) over the series' key,
    a dot at each checkpoint (drawn apart from the lines, so the legend shows the dashes)."""
    base = alt.Chart(data).encode(
        x=_key_axis(view),
        y=y,
        color=_colour(colour, colour, list(dict.fromkeys(data[colour]))),
        tooltip=tips(*tooltip, ("value", "~g", view.key)),
    )
    line = base.mark_line()
    if dash:
        field, title, order = dash
        line = line.encode(strokeDash=alt.StrokeDash(f"{field}:N", title=title, sort=order))
    return alt.layer(line, base.mark_circle(size=28, opacity=1))


def saturation_chart(view: SeriesView) -> Figure | None:
    data = view.gates.dropna(subset=["frac_low", "frac_high"])
    if data.empty:
        return None
    data = data.assign(gate=data["gate"].map(gate_label))
    long = data.melt(["value", "layer", "gate"], ["frac_low", "frac_high"], var_name="side", value_name="share")
    long["side"] = long["side"].map({"frac_low": "below 0.1", "frac_high": "above 0.9"})
    y = alt.Y("share:Q", title="share of values saturated")
    dash = ("side", "side", ["above 0.9", "below 0.1"])
    line = _key_lines(view, long.round(DIGITS), y, "gate", dash, ["layer", "gate", "side", ("share", ".3f")])
    chart = line.properties(width=260, height=160).facet(column=alt.Column("layer:N", title=None))
    return figure("series_saturation", chart.properties(title="Saturation over the series"), CAPTIONS)


def shift_chart(view: SeriesView) -> Figure | None:
    data = view.gates.dropna(subset=["w1_prev"])
    if data.empty:
        return None
    data = data.assign(gate=data["gate"].map(gate_label))[["value", "layer", "gate", "w1_prev"]]
    y = alt.Y("w1_prev:Q", title="Wasserstein-1 from the previous checkpoint")
    line = _key_lines(view, data.round(6), y, "gate", None, ["layer", "gate", ("w1_prev", ".4f", "W1")])
    chart = line.properties(width=260, height=160).facet(column=alt.Column("layer:N", title=None))
    return figure("series_shift", chart.properties(title="Distribution shift between checkpoints"), CAPTIONS)


def memory_chart(view: SeriesView) -> Figure | None:
    names = {
        "gate_half_life": "from the keep gate",
        "measured_half_life": "measured (impulse)",
        "gradient_half_life": "gradient through time",
    }
    long = view.memory.melt(["value", "layer"], list(names), "how", "steps").dropna()
    if long.empty:
        return None
    long["how"] = long["how"].map(names)
    y = alt.Y("steps:Q", title="half-life (steps)")
    dash = ("how", "half-life", list(names.values()))
    chart = _key_lines(view, long.round(DIGITS), y, "layer", dash, ["layer", "how", ("steps", ".2f", "half-life")])
    return figure("series_memory", chart.properties(width=WIDTH, height=200, title="Memory over the series"), CAPTIONS)


def strips_chart(view: SeriesView) -> Figure | None:
    """TensorBoard's histogram over steps, as heat: checkpoint × value bin per layer × gate."""
    if view.strips.empty:
        return None
    data = view.strips[view.strips["share"] > 0]
    width = data.groupby(["layer", "gate"])["bin"].transform(lambda bins: np.diff(np.unique(bins)).min())
    panels = data["layer"] + " · " + data["gate"].map(gate_label)
    data = data.assign(panel=panels, lo=data["bin"] - width / 2, hi=data["bin"] + width / 2)
    data = data[["value", "panel", "lo", "hi", "share"]].round(DIGITS)
    chart = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X("value:O", title=view.key, axis=alt.Axis(labelAngle=0, format="~g")),
            y=alt.Y("lo:Q", title="gate value"),
            y2="hi:Q",
            color=alt.Color("share:Q", title="share of values", scale=alt.Scale(type="sqrt", scheme="greys")),
            tooltip=tips("panel", ("value", "~g", view.key), ("lo", ".3f", "bin from"), ("share", ".4f")),
        )
        .properties(width=max(96, 14 * len(view.points)), height=110)
        .facet(facet=alt.Facet("panel:N", title=None, sort=list(dict.fromkeys(data["panel"]))), columns=4)
        .resolve_scale(y="independent")
    )
    return figure("series_strips", chart.properties(title="Each gate's values over the series"), CAPTIONS)


def _labels(view: SeriesView) -> dict[int, str]:
    return {point["k"]: point["label"] for point in view.points}


def frames_chart(view: SeriesView) -> Figure | None:
    """The fixed window's unit × step heatmaps, one checkpoint at a time, picked by a slider."""
    if view.frames.empty:
        return None
    last = len(view.points) - 1
    pick = alt.param(
        name=CHECKPOINT_PARAM,
        value=last,
        bind=alt.binding_range(min=0, max=last, step=1, name=f"checkpoint (0 … {last}) "),
    )
    data = view.frames.assign(label=view.frames["k"].map(_labels(view)))[["k", "label", "layer", "gate", "row", "v"]]
    panels = []
    for (layer, gate), _ in data.groupby(["layer", "gate"], sort=False):
        cells = alt.Chart().transform_filter((alt.datum.layer == layer) & (alt.datum.gate == gate))
        cells = cells.transform_filter(f"datum.k == {CHECKPOINT_PARAM}").transform_flatten(["v"])
        cells = cells.transform_window(step="row_number()", groupby=["k", "row"]).transform_calculate(
            t="datum.step - 1"
        )
        sigmoid = gate != "h"
        scale = (
            alt.Scale(scheme="viridis", domain=[0, 1]) if sigmoid else alt.Scale(scheme="blueorange", domain=[-1, 1])
        )
        panel = cells.mark_rect().encode(
            x=alt.X("t:O", title="step (pairs averaged in large layers)", axis=alt.Axis(labelOverlap=True)),
            y=alt.Y("row:O", title="unit", axis=alt.Axis(labelOverlap=True)),
            color=alt.Color("v:Q", title=gate_label(gate), scale=scale),
            tooltip=["label:N", "row:O", "t:Q", *tips(("v", ".3f"))],
        )
        panels.append(panel.properties(width=WIDTH, height=150, title=f"{layer} · {gate_label(gate)}"))
    chart = alt.vconcat(*panels, data=data).add_params(pick).resolve_scale(color="independent")
    title = f"Window {view.frame_window} at one checkpoint"
    return figure("series_frames", chart.properties(title=title), CAPTIONS)


def impulse_chart(view: SeriesView) -> Figure | None:
    if view.impulse.empty:
        return None
    data = view.impulse.assign(label=view.impulse["k"].map(_labels(view)))[["k", "label", "lag", "normalised"]]
    labels = list(_labels(view).values())
    chart = (
        alt.Chart(data.round(DIGITS))
        .mark_line()
        .encode(
            x=alt.X("lag:Q", title="steps after the impulse"),
            y=alt.Y("normalised:Q", title="response ÷ its peak"),
            color=alt.Color("label:O", title=view.key, sort=labels, scale=alt.Scale(scheme="viridis", reverse=True)),
            tooltip=tips("label", "lag", ("normalised", ".3f")),
        )
        .properties(width=WIDTH, height=240)
    )
    title = f"Impulse response of {view.impulse['target'].iloc[0]} at each checkpoint"
    return figure("series_impulse", chart.properties(title=title), CAPTIONS)


def _update_chart(view: SeriesView, column: str, key: str, title: str, axis: str, log: bool) -> Figure | None:
    data = view.updates.dropna(subset=[column])
    if data.empty or (log and not (data[column] > 0).any()):
        return None
    data = data[data[column] > 0] if log else data
    data = data.assign(gate=data["gate"].map(gate_label), block=data["layer"] + " · d" + data["direction"].astype(str))
    data = significant(data[["value", "block", "gate", "matrix", column]], [column])
    y = alt.Y(f"{column}:Q", title=axis, scale=alt.Scale(type="log") if log else alt.Undefined)
    dash = ("matrix", "weights", ["recurrent", "input"])
    line = _key_lines(view, data, y, "gate", dash, ["block", "gate", "matrix", (column, ".4g")])
    chart = line.properties(width=260, height=160).facet(column=alt.Column("block:N", title=None))
    return figure(key, chart.properties(title=title), CAPTIONS)


def anomaly_chart(view: SeriesView) -> Figure | None:
    data = view.anomaly.dropna()
    if data.empty:
        return None
    chart = (
        alt.Chart(data.round(DIGITS))
        .mark_line(point=True)
        .encode(
            x=_key_axis(view),
            y=alt.Y("flagged:Q", title="share of windows flagged", axis=alt.Axis(format="%")),
            tooltip=tips(("value", "~g", view.key), ("flagged", ".1%")),
        )
        .properties(width=WIDTH, height=140, title="Anomaly rate over the series")
    )
    return figure("series_anomaly", chart, CAPTIONS)


def curves_chart(view: SeriesView) -> Figure | None:
    """Loss curves by step, with the checkpoints' steps marked (epoch series: the last step logged
    in each checkpoint's epoch)."""
    curves = view.curves
    if curves is None or curves.empty:
        return None
    data = curves[curves["step"] >= 0][["metric", "epoch", "step", "value"]]
    log = bool((data["value"] > 0).all())  # losses span decades; a metric at or below 0 cannot go on a log axis
    lines = (
        alt.Chart(significant(data, ["value"]))
        .mark_line(point=alt.OverlayMarkDef(size=10))
        .encode(
            x=alt.X("step:Q", title="optimisation step"),
            y=alt.Y(
                "value:Q",
                title="metric value" + (" (log scale)" if log else ""),
                scale=alt.Scale(type="log") if log else alt.Undefined,
            ),
            color=_colour("metric", "metric", list(dict.fromkeys(data["metric"]))),
            tooltip=tips("metric", "epoch", "step", ("value", ".4g")),
        )
    )
    layers = [lines]
    if view.key == "epoch":
        last = data.groupby("epoch")["step"].max()
        marks = pd.DataFrame(
            [{"step": int(last[int(p["value"])]), "label": p["label"]} for p in view.points if p["value"] in last.index]
        )
        if not marks.empty:
            layers.insert(0, alt.Chart(marks).mark_rule(color="#999").encode(x="step:Q", tooltip=["label:N"]))
    chart = alt.layer(*layers).properties(width=WIDTH, height=220, title="Training curves")
    return figure("series_curves", chart, CAPTIONS)


def series_figures(view: SeriesView) -> dict[str, list[Figure]]:
    """The series page's figures by section (a section with nothing to draw is empty)."""
    sections = {
        "curves": [curves_chart(view)],
        "gates": [saturation_chart(view), shift_chart(view), strips_chart(view)],
        "memory": [memory_chart(view), impulse_chart(view)],
        "frames": [frames_chart(view)],
        "weights": [
            _update_chart(view, "relative", "series_updates", "Weight updates between checkpoints", "‖ΔW‖ ÷ ‖W‖", True),
            _update_chart(view, "moved", "series_moved", "Share of weights that moved", "share moved", False),
        ],
        "anomaly": [anomaly_chart(view)],
    }
    return {name: [chart for chart in charts if chart is not None] for name, charts in sections.items()}

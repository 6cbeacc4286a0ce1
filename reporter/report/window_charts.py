"""Pure functions from one sampled window to its charts: its input, where it strays from the typical
window, and unit × step heatmaps of a layer's gates.

Same conventions as `charts`. Heatmaps carry one array per unit, expanded in the browser with
flatten + window: a fifth of the size of row-per-cell JSON.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from reporter.layers import FAMILY_RANGES, Layer, gate_family, gate_label
from reporter.report.charts import DIGITS, OKABE_ITO, WIDTH, Figure, figure, tips
from reporter.vocab import shown

__all__ = ["CAPTIONS", "deviation_chart", "heatmap_chart", "input_chart", "typical_chart"]

CAPTIONS = {
    "input-tokens": "The token id fed at each step.",
    "input": "The window as the model saw it, one line per input feature.",
    "deviation": "RMS over units of (value − typical value) ÷ typical spread at each step: about 1 is ordinary, "
    "bright cells are the layers, gates and steps that made the window unusual.",
    "typical": "Each gate's mean over units at every step, for this window and for the typical window (mean over all "
    "windows): where the lines part is where the window behaved differently.",
    "heatmaps": "One row per unit, one column per step; sigmoid gates from closed (dark) to open (yellow), tanh values "
    "and the cell state from negative (blue) to positive (orange).",
}
_STEP = alt.X("t:Q", title="step in window")
MAX_INPUT_LINES = 16  # wider inputs are drawn as their mean and RMS per step


def _ticks(count: int, most: int = 16) -> list[int]:
    """Round positions for at most `most` labels over 0..count-1 (every label of 100 steps would overlap)."""
    every = next(step for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 10**9) if count / step <= most)
    return list(range(0, count, every))


def _step_axis(count: int) -> alt.Axis:
    """An ordinal axis labelled at round intervals."""
    return alt.Axis(values=_ticks(count), labelAngle=0)


def input_chart(x: np.ndarray, text: list[str] | None = None) -> Figure:
    """The window's input: one line per feature (mean and RMS for wide inputs), or the token ids
    (with each token's text in the tooltip when the run has a vocabulary)."""
    if x.ndim == 1:
        data = pd.DataFrame({"t": np.arange(len(x)), "token": x.astype(np.int64)})
        tooltip = ["t", "token"]
        if text is not None:
            data["text"] = [shown(token) for token in text]
            tooltip.append(alt.Tooltip("text:N", title="text"))
        chart = (
            alt.Chart(data)
            .mark_tick(thickness=2)
            .encode(x=_STEP, y=alt.Y("token:Q", title="token id"), tooltip=tooltip)
        )
        caption = CAPTIONS["input-tokens"] + (" Hover a tick for the token's text." if text is not None else "")
        return Figure("input", caption, chart.properties(width=WIDTH, height=160, title="Input tokens"))
    x = x.reshape(len(x), -1).astype(np.float64)  # a streaming model's chunks: [calls, values per call]
    names = [f"feature {k}" for k in range(x.shape[1])]
    if x.shape[1] > MAX_INPUT_LINES:  # wide chunks (audio samples): their level and energy per step
        x, names = np.stack([x.mean(axis=1), np.sqrt((x**2).mean(axis=1))], axis=1), ["mean", "RMS"]
    steps, features = x.shape
    data = pd.DataFrame(
        {
            "t": np.repeat(np.arange(steps), features),
            "feature": np.tile(names, steps),
            "value": np.round(x.reshape(-1), DIGITS),
        }
    )
    encoding = {
        "x": _STEP,
        "y": alt.Y("value:Q", title="input value (as stored)"),
        "color": alt.Color("feature:N", title="input", scale=alt.Scale(range=OKABE_ITO)),
        "tooltip": tips("feature", "t", ("value", ".3f")),
    }
    chart = alt.Chart(data).mark_line().encode(**encoding)
    return figure("input", chart.properties(width=WIDTH, height=180, title="Input series"), CAPTIONS)


def deviation_chart(explained: pd.DataFrame) -> Figure:
    """Layer/gate × step: how far the window strays from the typical window."""
    data = explained.assign(row=explained["layer"] + " · " + explained["gate"])[["row", "t", "deviation"]]
    data = data.round(3)
    chart = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X("t:O", title="step in window", axis=_step_axis(int(data["t"].max()) + 1)),
            y=alt.Y("row:N", title="layer · gate", sort=list(dict.fromkeys(data["row"]))),
            color=alt.Color("deviation:Q", title="deviation", scale=alt.Scale(scheme="viridis", domainMin=0)),
            tooltip=tips("row", "t", ("deviation", ".2f")),
        )
    )
    title = "Where this window departs from the typical one"
    return figure("deviation", chart.properties(width=WIDTH, height=alt.Step(14), title=title), CAPTIONS)


def typical_chart(explained: pd.DataFrame) -> Figure:
    """Per layer × gate, the window's unit-mean beside the typical per-step mean."""
    data = explained.melt(
        id_vars=["layer", "gate", "t"], value_vars=["value", "typical"], var_name="series", value_name="mean"
    )
    data = data.assign(panel=data["layer"] + " · " + data["gate"].map(gate_label))
    data = data[["panel", "series", "t", "mean"]].round(DIGITS)
    data["series"] = data["series"].map({"value": "this window", "typical": "typical window"})
    chart = (
        alt.Chart(data)
        .mark_line()
        .encode(
            x=_STEP,
            y=alt.Y("mean:Q", title="mean over units"),
            color=alt.Color("series:N", title=None, scale=alt.Scale(range=[OKABE_ITO[5], OKABE_ITO[0]])),
            strokeDash=alt.StrokeDash("series:N", title=None),
            tooltip=tips("panel", "series", "t", ("mean", ".3f")),
        )
    )
    panels = alt.Facet("panel:N", title=None, sort=list(dict.fromkeys(data["panel"])))
    chart = chart.properties(width=180, height=110).facet(facet=panels, columns=3).resolve_scale(y="independent")
    return figure("typical", chart.properties(title="This window beside the typical one"), CAPTIONS)


def _unit_arrays(trace: np.ndarray, gate: str) -> pd.DataFrame:
    """[T, D, H] → one row per (direction, unit) with its values along the window (rounded) as an
    array; `row` orders them (forward units, then backward), `dir` and `unit` name them as the
    unit table does."""
    steps, directions, hidden = trace.shape
    values = np.round(trace.reshape(steps, -1).astype(np.float64).T, 3)
    return pd.DataFrame(
        {
            "gate": gate,
            "row": np.arange(values.shape[0]),
            "dir": np.repeat(np.arange(directions), hidden),
            "unit": np.tile(np.arange(hidden), directions),
            "v": [row.tolist() for row in values],
        }
    )


def _unit_axis(units: int, hidden: int) -> alt.Axis:
    """The unit axis; bidirectional rows are labelled "f3" (forward unit 3) and "b3" (backward unit 3)."""
    if units == hidden:
        return _step_axis(units)
    ticks = [tick for tick in _ticks(hidden, 8) if tick == 0 or hidden - tick >= 4]  # f30 would sit on b0
    values = [d * hidden + tick for d in range(units // hidden) for tick in ticks]
    label = f"datum.value < {hidden} ? 'f' + datum.value : 'b' + (datum.value - {hidden})"
    return alt.Axis(values=values, labelAngle=0, labelExpr=label)


def _value_scale(family: str) -> alt.Scale:
    """Sigmoid gates on viridis over [0, 1], tanh values diverging over [-1, 1], the cell state centred on 0."""
    low, high = FAMILY_RANGES[family]
    if family == "sigmoid":
        return alt.Scale(scheme="viridis", domain=[low, high])
    if family == "tanh":
        return alt.Scale(scheme="blueorange", domain=[low, high])
    return alt.Scale(scheme="blueorange", domainMid=0)  # unbounded: centre the diverging scale on 0


def heatmap_chart(layer: Layer, window_trace: dict[str, np.ndarray]) -> Figure:
    """Unit × step heatmaps of every gate of one layer for one window, sharing one copy of the data."""
    data = pd.concat([_unit_arrays(trace, gate) for gate, trace in window_trace.items()], ignore_index=True)
    units, hidden = int(data["row"].max()) + 1, int(data["unit"].max()) + 1
    steps = len(data["v"].iloc[0])
    height = int(min(320, max(90, 2.5 * units)))
    unit_title = "unit" if units == hidden else "unit (f: forward, b: backward)"
    panels = []
    for gate in window_trace:
        cells = alt.Chart().transform_filter(alt.datum.gate == gate).transform_flatten(["v"])
        cells = cells.transform_window(step="row_number()", groupby=["row"]).transform_calculate(t="datum.step - 1")
        panel = cells.mark_rect().encode(
            x=alt.X("t:O", title="step in window", axis=_step_axis(steps)),
            y=alt.Y("row:O", title=unit_title, axis=_unit_axis(units, hidden)),
            color=alt.Color("v:Q", title=gate, scale=_value_scale(gate_family(layer, gate))),
            tooltip=[
                alt.Tooltip("dir:O", title="dir"),
                alt.Tooltip("unit:O", title="unit"),
                "t:Q",
                *tips(("v", ".3f")),
            ],
        )
        panels.append(panel.properties(width=WIDTH, height=height, title=gate_label(gate)))
    chart = alt.vconcat(*panels, data=data).resolve_scale(color="independent")
    return figure("heatmaps", chart.properties(title=f"{layer.name}: every unit at every step"), CAPTIONS)

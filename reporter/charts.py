"""Pure functions from run data (pandas) to Altair charts: no files, no Jinja.

Every chart has a title, axis titles with units, and a one-sentence caption (`Figure.caption`)
saying how to read it. Data is aggregated here, in pandas, to what the picture needs, and kept
inline in the spec (pages opened from file:// cannot fetch separate data files). Heatmaps carry
one array per unit, expanded in the browser with flatten + window: a fifth of row-per-cell JSON.
Colours: Okabe-Ito for categories, viridis and blue-orange for values (colour-blind safe).
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

from reporter.expose import Layer
from reporter.stats import FAMILY_RANGES, gate_family

__all__ = ["Figure", "GATE_NAMES", "anomaly_chart", "deviation_chart", "distribution_chart", "heatmap_chart",
           "horizon_chart", "impulse_chart", "input_chart", "saturation_chart", "trajectory_chart", "typical_chart"]

# Row counts are checked by the page-size budget, not silently cut: lift Altair's 5,000-row guard on purpose.
alt.data_transformers.enable("default", max_rows=None)

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
GATE_NAMES = {"i": "input gate i", "f": "forget gate f", "g": "cell candidate g", "o": "output gate o",
              "c": "cell state c", "h": "hidden state h", "z": "update gate z", "r": "reset gate r",
              "n": "candidate n"}
_DIGITS = 4  # decimals kept in chart data: below what a colour or a pixel can show
_WIDTH = 560


@dataclass(frozen=True)
class Figure:
    """A chart with the sentence that tells a reader how to read it."""

    key: str
    caption: str
    chart: alt.TopLevelMixin

    def spec(self) -> dict:
        """The Vega-Lite spec, data inline."""
        return self.chart.to_dict()


def _layer_colour(layers: list[str]) -> alt.Color:
    return alt.Color("layer:N", title="layer", scale=alt.Scale(domain=layers, range=OKABE_ITO))


def _gate_label(frame: pd.DataFrame) -> pd.Series:
    return frame["gate"].map(lambda gate: GATE_NAMES.get(gate, gate))


def _gate_sort(gates) -> list[str]:
    """Gate labels in the operators' order (i f g o c h, z r n h) for facet panels."""
    order = list(GATE_NAMES)
    unique = sorted(set(gates), key=lambda gate: (order.index(gate) if gate in order else len(order), gate))
    return [GATE_NAMES.get(gate, gate) for gate in unique]


def saturation_chart(gate_stats: pd.DataFrame, layers: list[Layer], thresholds: tuple[float, float]) -> Figure | None:
    """Karpathy et al. 2015: per unit, how often each sigmoid gate is closed vs open."""
    sigmoid = {(layer.name, gate) for layer in layers for gate in layer.outputs if gate_family(layer, gate) == "sigmoid"}
    rows = gate_stats[[(layer, gate) in sigmoid for layer, gate in zip(gate_stats["layer"], gate_stats["gate"])]]
    if rows.empty:
        return None
    data = rows[["layer", "gate", "direction", "unit", "frac_low", "frac_high", "mean"]].round(_DIGITS)
    data = data.assign(gate=_gate_label(rows))
    low, high = thresholds
    chart = alt.Chart(data).mark_circle(size=28, opacity=0.75).encode(
        x=alt.X("frac_low:Q", title=f"fraction of steps left-saturated (< {low:g})", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("frac_high:Q", title=f"fraction of steps right-saturated (> {high:g})", scale=alt.Scale(domain=[0, 1])),
        color=_layer_colour([layer.name for layer in layers]),
        tooltip=["layer", "gate", "direction", "unit", alt.Tooltip("frac_low:Q", format=".3f"),
                 alt.Tooltip("frac_high:Q", format=".3f"), alt.Tooltip("mean:Q", format=".3f")],
    ).properties(width=220, height=220).facet(column=alt.Column("gate:N", title=None, sort=_gate_sort(rows["gate"]))).properties(
        title="Gate saturation per unit")
    return Figure("saturation", "Each dot is one unit: far right, the gate is nearly always closed; at the top, nearly "
                  "always open; near the diagonal it switches like a binary gate; near the origin it never saturates.",
                  chart)


def distribution_chart(gate_stats: pd.DataFrame) -> Figure:
    """Each layer × gate's value histogram, summed over units."""
    rows = []
    for (layer, gate), group in gate_stats.groupby(["layer", "gate"], sort=False):
        counts = np.sum(np.stack(group["histogram"].to_numpy()), axis=0).astype(np.float64)
        lo, hi = float(group["hist_lo"].iloc[0]), float(group["hist_hi"].iloc[0])
        centres = lo + (np.arange(len(counts)) + 0.5) * (hi - lo) / len(counts)
        share = counts / counts.sum() if counts.sum() else counts
        rows.append(pd.DataFrame({"layer": layer, "gate": GATE_NAMES.get(gate, gate), "value": centres.round(_DIGITS),
                                  "share": share.round(6)}))
    data = pd.concat(rows, ignore_index=True)
    layers = list(dict.fromkeys(data["layer"]))
    chart = alt.Chart(data).mark_line(interpolate="step").encode(
        x=alt.X("value:Q", title="gate value"),
        y=alt.Y("share:Q", title="share of values", axis=alt.Axis(format="%")),
        color=_layer_colour(layers),
        tooltip=["layer", "gate", alt.Tooltip("value:Q", format=".3f"), alt.Tooltip("share:Q", format=".2%")],
    ).properties(width=200, height=140).facet(facet=alt.Facet("gate:N", title=None, sort=_gate_sort(gate_stats["gate"])),
                                              columns=3).resolve_scale(
        x="independent", y="independent").properties(title="Distribution of gate values")
    return Figure("distribution", "How each gate's values spread over every window, step and unit: mass piled at 0 or "
                  "1 means saturation, a narrow peak a gate that hardly reacts to its input.", chart)


def horizon_chart(gate_stats: pd.DataFrame) -> Figure | None:
    """Per unit half-life of memory from the mean keep gate (LSTM f, GRU z)."""
    rows = gate_stats[np.isfinite(gate_stats["half_life"].astype(float)) & (gate_stats["half_life"] > 0)]
    if rows.empty:
        return None
    data = rows[["layer", "direction", "unit", "mean", "half_life"]].round(_DIGITS)
    layers = list(dict.fromkeys(data["layer"]))
    chart = alt.Chart(data).mark_tick(thickness=2, size=18, opacity=0.7).encode(
        x=alt.X("half_life:Q", title="memory half-life (steps, log scale)", scale=alt.Scale(type="log")),
        y=alt.Y("layer:N", title="layer", sort=layers),
        color=_layer_colour(layers),
        tooltip=["layer", "direction", "unit", alt.Tooltip("half_life:Q", format=".2f"),
                 alt.Tooltip("mean:Q", title="mean keep gate", format=".3f")],
    ).properties(width=_WIDTH, height=alt.Step(28), title="Memory horizon per unit")
    return Figure("horizon", "Each tick is one unit: ln 0.5 / ln(mean keep gate), the steps its state would take to "
                  "halve if the gate sat at its mean; ticks far right are integrators that hold information long.",
                  chart)


def impulse_chart(impulse: pd.DataFrame) -> Figure | None:
    """Measured response to an input impulse, normalised to its peak, averaged over perturbations."""
    if impulse.empty:
        return None
    data = (impulse.groupby(["target", "kind", "direction", "lag"], sort=False)["normalised"].mean()
            .reset_index().round(_DIGITS))
    chart = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X("lag:Q", title="steps after the impulse"),
        y=alt.Y("normalised:Q", title="response ÷ its peak"),
        color=alt.Color("target:N", title="state or output", scale=alt.Scale(range=OKABE_ITO)),
        strokeDash=alt.StrokeDash("direction:N", title="direction"),
        tooltip=["target", "kind", "direction", "lag", alt.Tooltip("normalised:Q", format=".3f")],
    ).properties(width=_WIDTH, height=240, title="Impulse response: how long one input stays visible")
    return Figure("impulse", "A unit impulse is added to one input feature and the difference it makes is followed: "
                  "the step where a line falls below 0.5 is the measured memory half-life of that state or output.",
                  chart)


def trajectory_chart(timestep_stats: pd.DataFrame) -> Figure:
    """Per gate, mean and interquartile band over windows and units, along the window."""
    data = timestep_stats[["layer", "gate", "t", "mean", "p25", "p75"]].round(_DIGITS)
    data = data.assign(gate=_gate_label(timestep_stats))
    layers = list(dict.fromkeys(data["layer"]))
    base = alt.Chart().encode(x=alt.X("t:Q", title="step in window"), color=_layer_colour(layers))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("p25:Q", title="gate value"), y2="p75:Q")
    line = base.mark_line().encode(y="mean:Q", tooltip=["layer", "gate", "t", alt.Tooltip("mean:Q", format=".3f"),
                                                        alt.Tooltip("p25:Q", format=".3f"),
                                                        alt.Tooltip("p75:Q", format=".3f")])
    chart = alt.layer(band, line, data=data).properties(width=200, height=130).facet(
        facet=alt.Facet("gate:N", title=None, sort=_gate_sort(timestep_stats["gate"])), columns=3).resolve_scale(y="independent").properties(
        title="Gates along the window")
    return Figure("trajectory", "Mean (line) and middle half (band) of each gate at every step, over all windows and "
                  "units: a slope at the start is warm-up from the zero initial state, later slopes are drift.", chart)


def anomaly_chart(window_scores: pd.DataFrame, threshold: float) -> Figure:
    """Distribution of anomaly scores, with the flagging threshold."""
    data = window_scores[["anomaly_score"]].round(_DIGITS)
    bars = alt.Chart(data).mark_bar(color=OKABE_ITO[0]).encode(
        x=alt.X("anomaly_score:Q", bin=alt.Bin(maxbins=50), title="anomaly score (higher = more unusual gates)"),
        y=alt.Y("count():Q", title="windows", scale=alt.Scale(type="symlog")),
        tooltip=[alt.Tooltip("count():Q", title="windows")],
    )
    rule = alt.Chart(pd.DataFrame({"threshold": [round(threshold, _DIGITS)]})).mark_rule(
        color=OKABE_ITO[5], strokeDash=[4, 3]).encode(x="threshold:Q", tooltip=[alt.Tooltip("threshold:Q", format=".3f")])
    chart = alt.layer(bars, rule).properties(width=_WIDTH, height=200, title="Anomaly scores of all windows")
    return Figure("anomaly", "How unusual each window's gate behaviour is against the reference windows (symlog "
                  "count axis); windows right of the dashed line (median + 3 robust std) are flagged.", chart)


def _ticks(count: int, most: int = 16) -> list[int]:
    """Round positions for at most `most` labels over 0..count-1 (every label of 100 steps would overlap)."""
    every = next(step for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 10**9) if count / step <= most)
    return list(range(0, count, every))


def _step_axis(count: int) -> alt.Axis:
    """An ordinal axis labelled at round intervals."""
    return alt.Axis(values=_ticks(count), labelAngle=0)


def _unit_arrays(trace: np.ndarray, gate: str) -> pd.DataFrame:
    """[T, D, H] → one row per (direction, unit) with its values along the window (rounded) as an
    array; `row` orders them (forward units, then backward), `dir` and `unit` name them as the
    unit table does."""
    steps, directions, hidden = trace.shape
    values = np.round(trace.reshape(steps, -1).astype(np.float64).T, 3)
    return pd.DataFrame({"gate": gate, "row": np.arange(values.shape[0]),
                         "dir": np.repeat(np.arange(directions), hidden), "unit": np.tile(np.arange(hidden), directions),
                         "v": [row.tolist() for row in values]})


def heatmap_chart(layer: Layer, window_trace: dict[str, np.ndarray]) -> Figure:
    """Unit × step heatmaps of every gate of one layer for one window, sharing one copy of the data."""
    data = pd.concat([_unit_arrays(trace, gate) for gate, trace in window_trace.items()], ignore_index=True)
    units = int(data["row"].max()) + 1
    hidden = int(data["unit"].max()) + 1
    steps = len(data["v"].iloc[0])
    unit_axis = _step_axis(units)
    if units > hidden:  # bidirectional: label rows "f3" (forward unit 3) and "b3" (backward unit 3)
        ticks = [tick for tick in _ticks(hidden, 8) if tick == 0 or hidden - tick >= 4]  # f30 would sit on b0
        unit_axis = alt.Axis(values=[d * hidden + tick for d in range(units // hidden) for tick in ticks], labelAngle=0,
                             labelExpr=f"datum.value < {hidden} ? 'f' + datum.value : 'b' + (datum.value - {hidden})")
    height = int(min(320, max(90, 2.5 * units)))
    panels = []
    for gate in window_trace:
        family = gate_family(layer, gate)
        low, high = FAMILY_RANGES[family]
        if family == "sigmoid":
            scale = alt.Scale(scheme="viridis", domain=[low, high])
        elif family == "tanh":
            scale = alt.Scale(scheme="blueorange", domain=[low, high])
        else:  # unbounded (the cell state): centre the diverging scale on 0
            scale = alt.Scale(scheme="blueorange", domainMid=0)
        panels.append(alt.Chart().transform_filter(alt.datum.gate == gate).transform_flatten(["v"]).transform_window(
            step="row_number()", groupby=["row"]).transform_calculate(t="datum.step - 1").mark_rect().encode(
            x=alt.X("t:O", title="step in window", axis=_step_axis(steps)),
            y=alt.Y("row:O", title="unit" if units == hidden else "unit (f: forward, b: backward)", axis=unit_axis),
            color=alt.Color("v:Q", title=gate, scale=scale),
            tooltip=[alt.Tooltip("dir:O", title="dir"), alt.Tooltip("unit:O", title="unit"), "t:Q",
                     alt.Tooltip("v:Q", format=".3f")],
        ).properties(width=_WIDTH, height=height, title=GATE_NAMES.get(gate, gate)))
    chart = alt.vconcat(*panels, data=data).resolve_scale(color="independent").properties(
        title=f"{layer.name}: every unit at every step")
    return Figure("heatmaps", "One row per unit, one column per step; sigmoid gates from closed (dark) to open "
                  "(yellow), tanh values and the cell state from negative (blue) to positive (orange).", chart)


def input_chart(x: np.ndarray) -> Figure:
    """The window's input: one line per feature, or the token ids."""
    if x.ndim == 1:
        data = pd.DataFrame({"t": np.arange(len(x)), "token": x.astype(np.int64)})
        chart = alt.Chart(data).mark_tick(thickness=2).encode(
            x=alt.X("t:Q", title="step in window"), y=alt.Y("token:Q", title="token id"),
            tooltip=["t", "token"]).properties(width=_WIDTH, height=160, title="Input tokens")
        return Figure("input", "The token id fed at each step.", chart)
    data = pd.DataFrame({"t": np.repeat(np.arange(x.shape[0]), x.shape[1]),
                         "feature": np.tile([f"feature {k}" for k in range(x.shape[1])], x.shape[0]),
                         "value": np.round(x.reshape(-1).astype(np.float64), _DIGITS)})
    chart = alt.Chart(data).mark_line().encode(
        x=alt.X("t:Q", title="step in window"), y=alt.Y("value:Q", title="input value (as stored)"),
        color=alt.Color("feature:N", title="input", scale=alt.Scale(range=OKABE_ITO)),
        tooltip=["feature", "t", alt.Tooltip("value:Q", format=".3f")]).properties(
        width=_WIDTH, height=180, title="Input series")
    return Figure("input", "The window as the model saw it, one line per input feature.", chart)


def deviation_chart(explained: pd.DataFrame) -> Figure:
    """Layer/gate × step: how far the window strays from the typical window."""
    data = explained.assign(row=explained["layer"] + " · " + explained["gate"])[["row", "t", "deviation"]]
    data = data.round(3)
    chart = alt.Chart(data).mark_rect().encode(
        x=alt.X("t:O", title="step in window", axis=_step_axis(int(data["t"].max()) + 1)),
        y=alt.Y("row:N", title="layer · gate", sort=list(dict.fromkeys(data["row"]))),
        color=alt.Color("deviation:Q", title="deviation", scale=alt.Scale(scheme="viridis", domainMin=0)),
        tooltip=["row", "t", alt.Tooltip("deviation:Q", format=".2f")],
    ).properties(width=_WIDTH, height=alt.Step(14), title="Where this window departs from the typical one")
    return Figure("deviation", "RMS over units of (value − typical value) ÷ typical spread at each step: about 1 is "
                  "ordinary, bright cells are the layers, gates and steps that made the window unusual.", chart)


def typical_chart(explained: pd.DataFrame) -> Figure:
    """Per layer × gate, the window's unit-mean beside the typical per-step mean."""
    data = explained.melt(id_vars=["layer", "gate", "t"], value_vars=["value", "typical"], var_name="series",
                          value_name="mean")
    data = data.assign(panel=data["layer"] + " · " + data["gate"].map(lambda g: GATE_NAMES.get(g, g)))
    data = data[["panel", "series", "t", "mean"]].round(_DIGITS)
    data["series"] = data["series"].map({"value": "this window", "typical": "typical window"})
    chart = alt.Chart(data).mark_line().encode(
        x=alt.X("t:Q", title="step in window"), y=alt.Y("mean:Q", title="mean over units"),
        color=alt.Color("series:N", title=None, scale=alt.Scale(range=[OKABE_ITO[5], OKABE_ITO[0]])),
        strokeDash=alt.StrokeDash("series:N", title=None),
        tooltip=["panel", "series", "t", alt.Tooltip("mean:Q", format=".3f")],
    ).properties(width=180, height=110).facet(facet=alt.Facet("panel:N", title=None, sort=list(dict.fromkeys(
        data["panel"]))), columns=3).resolve_scale(y="independent").properties(title="This window beside the typical one")
    return Figure("typical", "Each gate's mean over units at every step, for this window and for the typical window "
                  "(mean over all windows): where the lines part is where the window behaved differently.", chart)

"""Pure functions from a run's tables (pandas) to the run page's Altair charts: no files, no Jinja.

Every chart has a title, axis titles with units, and a one-sentence caption (`Figure.caption`,
all of them in `CAPTIONS`) saying how to read it. Data is aggregated here, in pandas, to what the
picture needs, and kept inline in the spec (pages opened from file:// cannot fetch separate data
files). Colours: Okabe-Ito for categories, viridis and blue-orange for values (colour-blind safe).
The charts of one window live in `window_charts`, those of a diff in `diff_charts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

from reporter.layers import Layer, gate_family, gate_label, sorted_gates
from reporter.replay.stats import gate_histogram

__all__ = [
    "CAPTIONS",
    "DIGITS",
    "OKABE_ITO",
    "WIDTH",
    "Figure",
    "anomaly_chart",
    "distribution_chart",
    "gradient_chart",
    "figure",
    "horizon_chart",
    "impulse_chart",
    "saliency_chart",
    "saturation_chart",
    "significant",
    "tips",
    "trajectory_chart",
]

# Row counts are checked by the page-size budget, not silently cut: lift Altair's 5,000-row guard on purpose.
alt.data_transformers.enable("default", max_rows=None)

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
DIGITS = 4  # decimals kept in chart data: below what a colour or a pixel can show
WIDTH = 560
CAPTIONS = {
    "saturation": "Each dot is one unit: far right, the gate is nearly always closed; at the top, nearly always "
    "open; near the diagonal it switches like a binary gate; near the origin it never saturates.",
    "distribution": "How each gate's values spread over every window, step and unit: mass piled at 0 or 1 means "
    "saturation, a narrow peak a gate that hardly reacts to its input.",
    "horizon": "Each tick is one unit: ln 0.5 / ln(mean keep gate), the steps its state would take to halve if the "
    "gate sat at its mean; ticks far right are integrators that hold information long.",
    "impulse": "A unit impulse is added to one input feature and the difference it makes is followed: the step "
    "where a line falls below 0.5 is the measured memory half-life of that state or output.",
    "gradient": "How much the layer's final hidden state still depends on its state (solid) and input (dashed) "
    "L steps earlier: ‖∂h_T/∂h_T−L‖ ÷ √units, exact from the gates and weights, mean and 10–90% band over sampled "
    "windows (log scale). A fall below 0.5 is the gradient's half-life; training cannot reach further back than "
    "where the line vanishes.",
    "saliency": "How much the model's last output depends on its input L steps earlier, ‖∂y_T/∂x_T−L‖ over every "
    "output component and input feature, by torch autograd on the sampled windows (mean and 10–90% band, log "
    "scale): the steps the model's answer actually reads.",
    "trajectory": "Mean (line) and middle half (band) of each gate at every step, over all windows and units: a "
    "slope at the start is warm-up from the zero initial state, later slopes are drift.",
    "anomaly": "How unusual each window's gate behaviour is against the reference windows (symlog count axis); "
    "windows right of the dashed line (median + 3 robust std) are flagged.",
}


@dataclass(frozen=True)
class Figure:
    """A chart with the sentence that tells a reader how to read it."""

    key: str
    caption: str
    chart: alt.TopLevelMixin

    def spec(self) -> dict:
        """The Vega-Lite spec, data inline."""
        return self.chart.to_dict()


def figure(key: str, chart: alt.TopLevelMixin, captions: dict[str, str] = CAPTIONS) -> Figure:
    """A chart with its caption from `captions`."""
    return Figure(key, captions[key], chart)


def significant(frame: pd.DataFrame, columns: list[str], digits: int = 4) -> pd.DataFrame:
    """Numbers kept to `digits` significant digits (not decimals): a log axis spans decades, and
    a value rounded to 0 would leave it (and warn)."""
    out = frame.copy()
    for column in columns:
        values = out[column].to_numpy(np.float64)
        finite = np.isfinite(values) & (values != 0)
        scale = np.zeros_like(values)
        scale[finite] = np.floor(np.log10(np.abs(values[finite])))
        out[column] = np.where(finite, np.round(values / 10**scale, digits - 1) * 10**scale, values)
    return out


def tips(*fields) -> list:
    """Tooltip fields: a column as it is, or (quantitative column, number format[, title])."""
    out = []
    for field in fields:
        if isinstance(field, str):
            out.append(field)
        else:
            column, number_format, *title = field
            out.append(alt.Tooltip(f"{column}:Q", format=number_format, **({"title": title[0]} if title else {})))
    return out


def _layer_colour(layers: list[str]) -> alt.Color:
    return alt.Color("layer:N", title="layer", scale=alt.Scale(domain=layers, range=OKABE_ITO))


def _gate_label(frame: pd.DataFrame) -> pd.Series:
    return frame["gate"].map(gate_label)


def _gate_sort(gates) -> list[str]:
    """Gate labels in the operators' order (i f g o c h, z r n h) for facet panels."""
    return [gate_label(gate) for gate in sorted_gates(gates)]


def _gate_panels(gates) -> alt.Facet:
    """One panel per gate, three to a row, in the operators' order."""
    return alt.Facet("gate:N", title=None, sort=_gate_sort(gates))


def saturation_chart(gate_stats: pd.DataFrame, layers: list[Layer], thresholds: tuple[float, float]) -> Figure | None:
    """Karpathy et al. 2015: per unit, how often each sigmoid gate is closed vs open."""
    sigmoid = {(layer.name, g) for layer in layers for g in layer.outputs if gate_family(layer, g) == "sigmoid"}
    rows = gate_stats[[(layer, gate) in sigmoid for layer, gate in zip(gate_stats["layer"], gate_stats["gate"])]]
    if rows.empty:
        return None
    data = rows[["layer", "gate", "direction", "unit", "frac_low", "frac_high", "mean"]].round(DIGITS)
    data = data.assign(gate=_gate_label(rows))
    low, high = thresholds
    share = alt.Scale(domain=[0, 1])
    encoding = {
        "x": alt.X("frac_low:Q", title=f"fraction of steps left-saturated (< {low:g})", scale=share),
        "y": alt.Y("frac_high:Q", title=f"fraction of steps right-saturated (> {high:g})", scale=share),
        "color": _layer_colour([layer.name for layer in layers]),
        "tooltip": tips(
            "layer", "gate", "direction", "unit", ("frac_low", ".3f"), ("frac_high", ".3f"), ("mean", ".3f")
        ),
    }
    chart = alt.Chart(data).mark_circle(size=28, opacity=0.75).encode(**encoding).properties(width=220, height=220)
    column = alt.Column("gate:N", title=None, sort=_gate_sort(rows["gate"]))
    return figure("saturation", chart.facet(column=column).properties(title="Gate saturation per unit"))


def distribution_chart(gate_stats: pd.DataFrame) -> Figure:
    """Each layer × gate's value histogram, summed over units."""
    rows = []
    for (layer, gate), group in gate_stats.groupby(["layer", "gate"], sort=False):
        centres, counts, _, _ = gate_histogram(group)
        share = counts / counts.sum() if counts.sum() else counts
        values = {"value": centres.round(DIGITS), "share": share.round(6)}
        rows.append(pd.DataFrame({"layer": layer, "gate": gate_label(gate), **values}))
    data = pd.concat(rows, ignore_index=True)
    encoding = {
        "x": alt.X("value:Q", title="gate value"),
        "y": alt.Y("share:Q", title="share of values", axis=alt.Axis(format="%")),
        "color": _layer_colour(list(dict.fromkeys(data["layer"]))),
        "tooltip": tips("layer", "gate", ("value", ".3f"), ("share", ".2%")),
    }
    chart = alt.Chart(data).mark_line(interpolate="step").encode(**encoding).properties(width=200, height=140)
    chart = chart.facet(facet=_gate_panels(gate_stats["gate"]), columns=3).resolve_scale(
        x="independent", y="independent"
    )
    return figure("distribution", chart.properties(title="Distribution of gate values"))


def horizon_chart(gate_stats: pd.DataFrame) -> Figure | None:
    """Per unit half-life of memory from the mean keep gate (LSTM f, GRU z)."""
    rows = gate_stats[np.isfinite(gate_stats["half_life"].astype(float)) & (gate_stats["half_life"] > 0)]
    if rows.empty:
        return None
    data = significant(rows[["layer", "direction", "unit", "mean", "half_life"]].round({"mean": DIGITS}), ["half_life"])
    layers = list(dict.fromkeys(data["layer"]))
    encoding = {
        "x": alt.X("half_life:Q", title="memory half-life (steps, log scale)", scale=alt.Scale(type="log")),
        "y": alt.Y("layer:N", title="layer", sort=layers),
        "color": _layer_colour(layers),
        "tooltip": tips("layer", "direction", "unit", ("half_life", ".2f"), ("mean", ".3f", "mean keep gate")),
    }
    chart = alt.Chart(data).mark_tick(thickness=2, size=18, opacity=0.7).encode(**encoding)
    return figure("horizon", chart.properties(width=WIDTH, height=alt.Step(28), title="Memory horizon per unit"))


def impulse_chart(impulse: pd.DataFrame) -> Figure | None:
    """Measured response to an input impulse, normalised to its peak, averaged over perturbations."""
    if impulse.empty:
        return None
    curves = impulse.groupby(["target", "kind", "direction", "lag"], sort=False)["normalised"].mean()
    data = curves.reset_index().round(DIGITS)
    encoding = {
        "x": alt.X("lag:Q", title="steps after the impulse"),
        "y": alt.Y("normalised:Q", title="response ÷ its peak"),
        "color": alt.Color("target:N", title="state or output", scale=alt.Scale(range=OKABE_ITO)),
        "strokeDash": alt.StrokeDash("direction:N", title="direction"),
        "tooltip": tips("target", "kind", "direction", "lag", ("normalised", ".3f")),
    }
    chart = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=12)).encode(**encoding)
    title = "Impulse response: how long one input stays visible"
    return figure("impulse", chart.properties(width=WIDTH, height=240, title=title))


def gradient_chart(flow: pd.DataFrame) -> Figure | None:
    """Gradient flow through time (`replay.gradient_flow`): norm by lag per layer, state and input."""
    rows = flow[(flow["norm"] > 0) & np.isfinite(flow["norm"])] if not flow.empty else flow
    if rows.empty:
        return None
    data = rows.assign(curve=rows["layer"] + " · " + rows["direction"])
    data = data[["curve", "target", "lag", "norm", "low", "high"]]
    data = significant(
        data.assign(low=data["low"].clip(lower=1e-12), high=data["high"].clip(lower=1e-12)), ["norm", "low", "high"]
    )
    curves = list(dict.fromkeys(data["curve"]))
    colour = alt.Color("curve:N", title="layer · direction", scale=alt.Scale(domain=curves, range=OKABE_ITO))
    axis = "‖∂h_T / ∂(state or input) L steps before‖ ÷ √units"
    y = alt.Y("norm:Q", title=axis, scale=alt.Scale(type="log"))
    base = alt.Chart().encode(x=alt.X("lag:Q", title="steps before the last (L)"), color=colour)
    band = base.transform_filter(alt.datum.target == "state").mark_area(opacity=0.15)
    band = band.encode(y=alt.Y("low:Q", title=axis, scale=alt.Scale(type="log")), y2="high:Q")
    line = base.mark_line().encode(
        y=y,
        strokeDash=alt.StrokeDash("target:N", title="with respect to", sort=["state", "input"]),
        tooltip=tips("curve", "target", "lag", ("norm", ".3g"), ("low", ".3g", "10%"), ("high", ".3g", "90%")),
    )
    half = alt.Chart(pd.DataFrame({"y": [0.5]})).mark_rule(strokeDash=[4, 3], color="#888")
    half = half.encode(y=alt.Y("y:Q", scale=alt.Scale(type="log")))
    chart = alt.layer(band, line, data=data) + half
    title = "Gradient flow through time"
    return figure("gradient", chart.properties(width=WIDTH, height=240, title=title))


def saliency_chart(frame: pd.DataFrame) -> Figure | None:
    """‖∂y_T/∂x_t‖ by lag (`model.output_gradient`)."""
    rows = frame[frame["norm"] > 0] if not frame.empty else frame
    if rows.empty:
        return None
    data = rows.assign(low=rows["low"].clip(lower=1e-12), high=rows["high"].clip(lower=1e-12))
    data = significant(data[["output", "lag", "norm", "low", "high"]], ["norm", "low", "high"])
    log = alt.Scale(type="log")
    base = alt.Chart(data).encode(x=alt.X("lag:Q", title="steps before the last (L)"))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("low:Q", title="‖∂y_T / ∂x_T−L‖", scale=log), y2="high:Q")
    line = base.mark_line().encode(
        y=alt.Y("norm:Q", scale=log), tooltip=tips("output", "lag", ("norm", ".3g"), ("low", ".3g"), ("high", ".3g"))
    )
    title = f"What the last output reads: input gradient of {data['output'].iloc[0]}"
    return figure("saliency", (band + line).properties(width=WIDTH, height=200, title=title))


def trajectory_chart(timestep_stats: pd.DataFrame) -> Figure:
    """Per gate, mean and interquartile band over windows and units, along the window."""
    data = timestep_stats[["layer", "gate", "t", "mean", "p25", "p75"]].round(DIGITS)
    data = data.assign(gate=_gate_label(timestep_stats))
    base = alt.Chart().encode(
        x=alt.X("t:Q", title="step in window"), color=_layer_colour(list(dict.fromkeys(data["layer"])))
    )
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("p25:Q", title="gate value"), y2="p75:Q")
    line = base.mark_line().encode(
        y="mean:Q", tooltip=tips("layer", "gate", "t", *((q, ".3f") for q in ("mean", "p25", "p75")))
    )
    chart = alt.layer(band, line, data=data).properties(width=200, height=130)
    chart = chart.facet(facet=_gate_panels(timestep_stats["gate"]), columns=3).resolve_scale(y="independent")
    return figure("trajectory", chart.properties(title="Gates along the window"))


def anomaly_chart(window_scores: pd.DataFrame, threshold: float) -> Figure:
    """Distribution of anomaly scores, with the flagging threshold."""
    data = window_scores[["anomaly_score"]].round(DIGITS)
    bars = (
        alt.Chart(data)
        .mark_bar(color=OKABE_ITO[0])
        .encode(
            x=alt.X("anomaly_score:Q", bin=alt.Bin(maxbins=50), title="anomaly score (higher = more unusual gates)"),
            y=alt.Y("count():Q", title="windows", scale=alt.Scale(type="symlog")),
            tooltip=[alt.Tooltip("count():Q", title="windows")],
        )
    )
    line = pd.DataFrame({"threshold": [round(threshold, DIGITS)]})
    rule = alt.Chart(line).mark_rule(color=OKABE_ITO[5], strokeDash=[4, 3])
    rule = rule.encode(x="threshold:Q", tooltip=tips(("threshold", ".3f")))
    title = "Anomaly scores of all windows"
    return figure("anomaly", alt.layer(bars, rule).properties(width=WIDTH, height=200, title=title))

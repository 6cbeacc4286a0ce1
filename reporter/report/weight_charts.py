"""Charts of a run's weights (`model.weights`): the recurrent blocks' spectra, and heatmaps.

Pure functions from the run's `weights` table and binned `weight_maps` to Altair figures, each
with a title, labelled axes and a caption saying how to read it.
"""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd

from reporter.layers import gate_label, sorted_gates
from reporter.names import slug
from reporter.report.charts import DIGITS, OKABE_ITO, WIDTH, Figure, figure, significant, tips

__all__ = ["CAPTIONS", "EXPLODING", "FORGETTING", "spectra_chart", "weight_heatmaps", "weight_warnings"]

EXPLODING = 1.5  # a recurrent block's spectral radius above this can blow a state up step after step
FORGETTING = 0.3  # below this a block wipes what it carries within a few steps
CAPTIONS = {
    "spectra": "Each bar is one recurrent weight block (units × units): its spectral radius, the growth per step of "
    f"a state it keeps feeding back. Above 1 (dashed) it can amplify; above {EXPLODING:g} it warns of exploding "
    f"states and gradients, below {FORGETTING:g} of fast forgetting; the gates decide how much of it acts.",
    "singular": "The singular values of each recurrent block, largest first: a steep fall means the block acts in "
    "a few directions only; values above 1 are directions it amplifies.",
    "weights": "Every weight block of the layer, averaged into at most 32 × 32 cells: rows are units, columns "
    "inputs (W) or units (R). Strong rows are units the gate listens to; a stripe of columns, an input all "
    "units use.",
}


def _block(row) -> str:
    return f"{row.layer} · d{row.direction} · {row.gate}"


def spectra_chart(weights: pd.DataFrame) -> Figure | None:
    """Spectral radius of every recurrent block, one bar each, with the line at 1."""
    rows = weights[weights["matrix"] == "recurrent"]
    if rows.empty:
        return None
    data = rows.assign(block=[_block(r) for r in rows.itertuples()])[["block", "layer", "gate", "spectral_radius"]]
    bars = (
        alt.Chart(data.round(DIGITS))
        .mark_bar()
        .encode(
            y=alt.Y("block:N", title="layer · direction · gate block", sort=None),
            x=alt.X("spectral_radius:Q", title="spectral radius (max |eigenvalue|)"),
            color=alt.Color("gate:N", title="gate", scale=alt.Scale(range=OKABE_ITO)),
            tooltip=tips("layer", "gate", ("spectral_radius", ".3f", "spectral radius")),
        )
    )
    one = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(strokeDash=[4, 3]).encode(x="x:Q")
    chart = (bars + one).properties(width=WIDTH, height=max(80, 16 * len(data)), title="Spectral radius per block")
    return figure("spectra", chart, CAPTIONS)


def singular_chart(weights: pd.DataFrame) -> Figure | None:
    """Every recurrent block's singular values against their rank."""
    rows = weights[weights["matrix"] == "recurrent"]
    if rows.empty:
        return None
    data = pd.DataFrame(
        [
            {"block": _block(r), "gate": r.gate, "rank": k + 1, "sigma": float(value)}
            for r in rows.itertuples()
            for k, value in enumerate(np.asarray(r.singular_values))
        ]
    )
    chart = (
        alt.Chart(significant(data[data["sigma"] > 0], ["sigma"]))  # a log axis: digits, not decimals
        .mark_line()
        .encode(
            x=alt.X("rank:Q", title="singular value rank"),
            y=alt.Y("sigma:Q", title="singular value", scale=alt.Scale(type="log")),
            color=alt.Color("block:N", title="block"),
            tooltip=tips("block", "rank", ("sigma", ".3f", "singular value")),
        )
    )
    return figure("singular", chart.properties(width=WIDTH, height=220, title="Singular values per block"), CAPTIONS)


def weight_heatmaps(layer: str, maps: dict[str, np.ndarray]) -> Figure | None:
    """One layer's binned weight blocks as heatmaps, W and R of each gate. Rows carry a panel
    number, not its title (the facet header looks the title up): a third of the bytes a page holds."""
    mine = [key.rsplit("/", 3) for key in maps if key.rsplit("/", 3)[0] == layer]
    if not mine:
        return None
    order = sorted_gates(gate for _, _, gate, _ in mine)
    mine.sort(key=lambda parts: (int(parts[1]), order.index(parts[2]), parts[3]))  # direction, gate, W before R
    frames, titles = [], []
    for panel, (_, direction, gate, kind) in enumerate(mine):
        matrix = maps[f"{layer}/{direction}/{gate}/{kind}"]
        titles.append(f"d{direction} {gate_label(gate)} · {'W (inputs)' if kind == 'input' else 'R (units)'}")
        values = np.round(matrix.astype(np.float64), 3)
        frames.append(pd.DataFrame({"p": panel, "r": np.arange(len(matrix)), "v": list(values)}))
    data = pd.concat(frames, ignore_index=True)
    limit = float(max(np.abs(v).max() for v in data["v"])) or 1.0
    header = alt.Header(labelExpr=f"{json.dumps(titles)}[datum.value]", title=None)
    cells = alt.Chart(data).transform_flatten(["v"], as_=["w"])  # one row of cells per unit row: compact
    cells = cells.transform_window(k="row_number()", groupby=["p", "r"]).transform_calculate(c="datum.k - 1")
    chart = (
        cells.mark_rect()
        .encode(
            x=alt.X("c:O", title="input or unit (binned)", axis=None),
            y=alt.Y("r:O", title="unit (binned)", axis=None),
            color=alt.Color("w:Q", title="weight", scale=alt.Scale(scheme="blueorange", domain=[-limit, limit])),
            tooltip=[
                alt.Tooltip("r:O", title="row"),
                alt.Tooltip("c:O", title="column"),
                *tips(("w", ".3f", "mean weight")),
            ],
        )
        .properties(width=150, height=150)
        .facet(facet=alt.Facet("p:O", header=header), columns=4)
        .resolve_scale(x="independent", y="independent")  # W blocks and R blocks differ in width
        .properties(title=f"{layer}: weights by gate block")
    )
    return Figure(f"weights-{slug(layer)}", CAPTIONS["weights"], chart)


def weight_warnings(weights: pd.DataFrame) -> list[str]:
    """One line per recurrent block whose spectral radius warns of exploding or of fast forgetting."""
    lines = []
    for row in weights[weights["matrix"] == "recurrent"].itertuples():
        if row.spectral_radius > EXPLODING:
            lines.append(f"{_block(row)}: spectral radius {row.spectral_radius:.2f} > {EXPLODING:g}, may explode")
        elif row.spectral_radius < FORGETTING:
            lines.append(f"{_block(row)}: spectral radius {row.spectral_radius:.2f} < {FORGETTING:g}, forgets fast")
    return lines

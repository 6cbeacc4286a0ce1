"""The data a token window's cell view and its "find similar" search run on, in the page.

The cell view (Karpathy, Johnson & Fei-Fei 2015) colours each token of the text by one unit's
value; the page lets a reader pick the layer, the gate and the unit. "Find similar" (LSTMVis's
match, Strobelt et al.) takes a span the reader selects, finds the units whose h is on over all
of it, and ranks the spans of every sampled window where the same units are on. Both run in the
browser from what is gathered here, so the site needs no server:

- `cells`: this window's every gate of every layer as int8 (value / scale × 127, base64), with
  each gate's scale and value family, so colours stay within a few hundred KB a page;
- `similar`: per sampled window, its tokens and, per layer, whether each unit's h is on (> the
  run's on threshold) at each step, as bits (base64, a row of ⌈units / 8⌉ bytes per step).
"""

from __future__ import annotations

import base64

import numpy as np

from reporter.layers import Layer, gate_family, gate_order
from reporter.vocab import token_text

__all__ = ["cell_data", "similar_data"]

TRACKED = "h"


def _int8(values: np.ndarray) -> tuple[str, float]:
    """Values [T, U] as base64 int8 and the scale that maps ±127 back to them."""
    finite = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.abs(finite).max()) or 1.0
    codes = np.round(finite / scale * 127).astype(np.int8)
    return base64.b64encode(codes.tobytes()).decode("ascii"), scale


def cell_data(traces: dict[str, dict[str, np.ndarray]], layers: list[Layer], text: list[str]) -> dict:
    """One window's cell view: its tokens, and per layer that ran every gate as int8 [T, units]."""
    out = {"tokens": text, "layers": []}
    for layer in layers:
        if layer.name not in traces:
            continue  # did not run on this window (an If branch)
        gates = {}
        for gate in gate_order(layer):
            trace = traces[layer.name][gate]
            codes, scale = _int8(trace.reshape(trace.shape[0], -1))
            gates[gate] = {"q": codes, "scale": scale, "family": gate_family(layer, gate)}
        out["layers"].append(
            {
                "name": layer.name,
                "hidden": layer.hidden_size,
                "units": layer.hidden_size * layer.directions,
                "gates": gates,
            }
        )
    return out


def similar_data(
    run_traces: dict[str, np.ndarray], layers: list[Layer], vocab: list[str], reasons: list[str], on: float
) -> dict:
    """Every sampled window's tokens and, per layer, its h binarised at `on` as packed bits."""
    windows = []
    for position, window in enumerate(run_traces["window"]):
        bits = {}
        for layer in layers:
            key = f"{layer.name}/{TRACKED}"
            if TRACKED not in layer.outputs or key not in run_traces:
                continue
            h = run_traces[key][position].astype(np.float32)
            above = (h.reshape(h.shape[0], -1) > on).astype(np.uint8)
            bits[layer.name] = base64.b64encode(np.packbits(above, axis=1, bitorder="little").tobytes()).decode("ascii")
        windows.append(
            {
                "window": int(window),
                "reason": reasons[position],
                "page": f"w{int(window)}.html",
                "tokens": token_text(run_traces["x"][position], vocab),
                "bits": bits,
            }
        )
    return {"on": on, "windows": windows}

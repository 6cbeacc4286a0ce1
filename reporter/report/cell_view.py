"""The data a token window's cell view and its "find similar" search run on, in the page.

The cell view (Karpathy, Johnson & Fei-Fei 2015) colours each token of the text by one unit's
value; the page lets a reader pick the layer, the gate and the unit. "Find similar" (LSTMVis's
match, Strobelt et al.) takes a span the reader selects, finds the units whose h is on over all
of it, and ranks the spans of every sampled window where the same units are on. Both run in the
browser from what is gathered here, so the site needs no server:

- `cells`: this window's every gate of every layer as int8 (value / scale × 127, base64), with
  each gate's scale and value family: at most `CELL_BYTES` values a page (h of every layer first,
  then c, then the other gates, the rest named as left out);
- `similar`: per sampled window, its tokens and, per layer, whether each unit's h is on (> the
  run's on threshold) at each step, as bits (base64, a row of ⌈units / 8⌉ bytes per step); one
  script per run (`SIMILAR_SCRIPT`), which every window page of the run loads.
"""

from __future__ import annotations

import base64

import numpy as np

from reporter.layers import Layer, gate_family, gate_order
from reporter.vocab import token_text

__all__ = ["CELL_BYTES", "SIMILAR_SCRIPT", "cell_data", "similar_data"]

TRACKED = "h"
CELL_BYTES = 512 * 1024  # int8 values a window page carries at most; wider layers keep h and c first
SIMILAR_SCRIPT = "similar.js"  # the run's sampled windows for "find similar", shared by its window pages


def _int8(values: np.ndarray) -> tuple[str, float]:
    """Values [T, U] as base64 int8 and the scale that maps ±127 back to them."""
    finite = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.abs(finite).max()) or 1.0
    codes = np.round(finite / scale * 127).astype(np.int8)
    return base64.b64encode(codes.tobytes()).decode("ascii"), scale


def _priority(gate: str) -> int:
    """Which gates a page keeps first when not all fit: h, then c, then the rest in op order."""
    return {TRACKED: 0, "c": 1}.get(gate, 2)


def cell_data(traces: dict[str, dict[str, np.ndarray]], layers: list[Layer], text: list[str]) -> dict:
    """One window's cell view: its tokens, and per layer that ran every gate as int8 [T, units]."""
    out = {"tokens": text, "layers": [], "left_out": []}
    ran = [layer for layer in layers if layer.name in traces]  # not a layer in an If branch not taken
    wanted = sorted(((layer, gate) for layer in ran for gate in gate_order(layer)), key=lambda pair: _priority(pair[1]))
    kept, spent = set(), 0
    for layer, gate in wanted:
        size = traces[layer.name][gate].size
        if spent + size <= CELL_BYTES or (gate == TRACKED and not spent):
            kept.add((layer.name, gate))
            spent += size
        else:
            out["left_out"].append(f"{layer.name} {gate}")
    for layer in ran:
        gates = {}
        for gate in gate_order(layer):
            if (layer.name, gate) not in kept:
                continue
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

"""Exact gradient flow through time: how much the final state of a layer still depends on earlier steps.

Gate means suggest a memory (`stats.memory_horizon`) and impulses measure one (`replay.impulse`);
what training sees is the Jacobian of the final state that backpropagation through time carries
back. Per fused LSTM/GRU layer, window, direction and lag L (T steps, "final" the direction's last
step, so step 0 for a reverse pass, and lags count in the direction's own order):

    state   ‖∂h_T/∂h_{T−L}‖_F   h_{T−L} moved with c_{T−L} held (an LSTM's cell state is its own
                                variable and carries gradient too): torch autograd's d h_T / d h_t
    input   ‖∂h_T/∂x_{T−L}‖_F   x: what the layer's W multiplies at that step

Both come from the backward recursion G_T = [I_H, 0] over the state s = (h, c) (LSTM) or s = h
(GRU), G_{t−1} = G_t · ∂s_t/∂s_{t−1}, built from the gate traces at step t (LSTM i f g o c h, GRU
z r n h) and the node's R blocks; ∂h_T/∂x_t = G_t · ∂s_t/∂x_t from its W blocks. No replay: a
GRU with linear_before_reset=1 (what torch exports) recomputes R_n·h_{t−1} + Rb_n from the trace.
Sums run in float64, batched over windows; the traces themselves are float32.

The state before the first step enters only the input Jacobian at the longest lag. It is read
when the node's initial_h/initial_c are initializers or Constant nodes, taken as zero when absent
or built from zeros (torch exports ConstantOfShape(0) → Slice); otherwise that one row is left
out. sequence_lens is ignored: every window is taken to run its full length.

A layer yields no rows unless it is a fused top-level LSTM/GRU node with W, R (and B) as
initializers, default activations (sigmoid, tanh[, tanh]), no clip, no input_forget and no
non-zero peepholes: a number for any other would be wrong. Cost per window is O(T·G·H³) for G gate
blocks (4 LSTM, 3 GRU), one [H, G·H] × [G·H, H] product per step: 3.5 s for 8 windows of an LSTM
with H = 128, T = 100 on one CPU core, so only the first `max_windows` windows (default 8, None: all)
are used.
"""

from __future__ import annotations

import numpy as np
import onnx
import pandas as pd
from onnx import helper, numpy_helper

from reporter.errors import ModelError
from reporter.layers import Layer
from reporter.model.recurrent_spec import RecurrentSpec, read_spec
from reporter.replay.gradient_summary import (
    EXPLODING,
    GRADIENT_COLUMNS,
    SUMMARY_COLUMNS,
    UNIT_GRADIENT_COLUMNS,
    VANISH_LAG,
    VANISHING,
    gradient_summary,
    half_life,
    typed_frame,
    verdict,
)

__all__ = [
    "EXPLODING",
    "GRADIENT_COLUMNS",
    "SUMMARY_COLUMNS",
    "UNIT_GRADIENT_COLUMNS",
    "VANISHING",
    "VANISH_LAG",
    "gradient_flow",
    "gradient_summary",
]

_DEFAULTS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh")}
_BLOCKS = {"LSTM": 4, "GRU": 3}  # gate blocks stacked in W, R and each half of B
_GATES = {"LSTM": "ifgoch", "GRU": "zrnh"}
# Ops whose output values are all taken from their first input's values: zeros stay zeros.
_VALUE_COPYING = {"Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Slice", "Expand", "Transpose", "Tile",
                  "Gather", "Flatten"}  # fmt: skip


class _Graph:
    """Initializers and producers of a graph, to read a node's constant inputs."""

    def __init__(self, graph: onnx.GraphProto):
        self.initializers = {init.name: init for init in graph.initializer}
        self.producers = {out: node for node in graph.node for out in node.output}

    def value(self, name: str) -> np.ndarray | None:
        """The tensor's value when it is an initializer or a Constant node's output."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is None or node.op_type != "Constant" or len(node.attribute) != 1:
            return None
        value = helper.get_attribute_value(node.attribute[0])
        return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else None

    def is_zero(self, name: str, depth: int = 0) -> bool:
        """Whether the tensor is all zeros, following ops that only copy values (16 levels at most)."""
        value = self.value(name)
        if value is not None:
            return value.dtype != object and not np.any(value)
        node = self.producers.get(name)
        if node is None or depth > 16:
            return False
        if node.op_type == "ConstantOfShape":
            fill = [helper.get_attribute_value(a) for a in node.attribute if a.name == "value"]
            return not fill or not np.any(numpy_helper.to_array(fill[0]))
        if node.op_type == "Concat":
            return all(self.is_zero(part, depth + 1) for part in node.input)
        return node.op_type in _VALUE_COPYING and self.is_zero(node.input[0], depth + 1)


def _spec(model: onnx.ModelProto, layer: Layer, graph: _Graph) -> RecurrentSpec | None:
    """The layer's node read as a spec, when its gradients can be computed exactly (see module docstring)."""
    if layer.cell != "fused" or layer.kind not in _DEFAULTS or layer.branch:
        return None
    nodes = [n for n in model.graph.node if n.name == layer.node and n.op_type == layer.kind]
    if not layer.node or len(nodes) != 1:  # an exposed model's node is gone; an unnamed one is ambiguous
        return None
    node = nodes[0]
    try:
        spec = read_spec(node, lambda name: list(graph.initializers[name].dims) if name in graph.initializers else None)
    except ModelError:
        return None
    peepholes = "P" in spec.inputs and not graph.is_zero(spec.inputs["P"])
    defaults = all(tuple(a.name for a in acts) == _DEFAULTS[spec.kind] for acts in spec.activations)
    plain = spec.clip is None and not spec.input_forget and not peepholes and defaults
    weights = [spec.inputs[slot] for slot in ("W", "R", "B") if slot in spec.inputs]
    return spec if plain and all(name in graph.initializers for name in weights) else None


def _initial(graph: _Graph, spec: RecurrentSpec, slot: str, windows: int, total: int) -> np.ndarray | None:
    """The state before the first step, [D, windows, H] float64; None when it cannot be read."""
    shape = (spec.directions, windows, spec.hidden_size)
    name = spec.inputs.get(slot)
    if name is None or graph.is_zero(name):
        return np.zeros(shape)
    value = graph.value(name)
    if value is None or value.ndim != 3:
        return None
    value = value.transpose(1, 0, 2) if spec.layout else value  # layout 1: [B, D, H]
    if value.shape[1] != total or value.shape[0] != spec.directions or value.shape[2] != spec.hidden_size:
        return None
    return value[:, :windows].astype(np.float64)


def _previous(trace: np.ndarray, first: np.ndarray | None) -> np.ndarray:
    """[N, T, H] → the value one step earlier; NaN before step 0 when the initial state is unknown."""
    first = np.full(trace[:, 0].shape, np.nan) if first is None else first
    return np.concatenate([first[:, None], trace[:, :-1]], axis=1)


def _column_norms(g: np.ndarray) -> np.ndarray:
    """[N, H, K] Jacobians → [N, K] norms of each column."""
    return np.sqrt(np.einsum("nhk,nhk->nk", g, g))


def _lstm(gates: dict, w, r, c0):
    """Per-window norms ([N, T] state, [N, T] input, [N, T, H] unit columns) of an LSTM direction."""
    i, f, g, o, c = (gates[k] for k in "ifgoc")
    n, steps, hidden = c.shape
    tanh_c, c_prev = np.tanh(c), _previous(c, c0)
    gh, gc = np.broadcast_to(np.eye(hidden), (n, hidden, hidden)).copy(), np.zeros((n, hidden, hidden))
    state, inputs, units = np.empty((n, steps)), np.empty((n, steps)), np.empty((n, steps, hidden))
    for lag in range(steps):
        t = steps - 1 - lag
        units[:, lag] = _column_norms(gh)
        total_c = gc + gh * (o[:, t] * (1.0 - tanh_c[:, t] ** 2))[:, None]  # ∂h_T/∂c_t, through h_t too
        blocks = (  # ∂h_T/∂ pre-activations, in the ONNX stacking i, o, f, c
            total_c * (g[:, t] * i[:, t] * (1.0 - i[:, t]))[:, None],
            gh * (tanh_c[:, t] * o[:, t] * (1.0 - o[:, t]))[:, None],
            total_c * (c_prev[:, t] * f[:, t] * (1.0 - f[:, t]))[:, None],
            total_c * (i[:, t] * (1.0 - g[:, t] ** 2))[:, None],
        )
        pre = np.concatenate(blocks, axis=2)
        inputs[:, lag] = np.linalg.norm(pre @ w, axis=(1, 2))
        gh, gc = pre @ r, total_c * f[:, t][:, None]
    state[:] = np.sqrt((units**2).sum(axis=2))
    return state, inputs, units


def _gru(gates: dict, w, r, rb, h0, linear_before_reset: bool):
    """Per-window norms ([N, T] state, [N, T] input, [N, T, H] unit columns) of a GRU direction."""
    z, rr, nn, h = (gates[k] for k in "zrnh")
    n, steps, hidden = h.shape
    h_prev = _previous(h, h0)
    r_z, r_r, r_n = (r[k * hidden : (k + 1) * hidden] for k in range(3))
    recurrent_n = h_prev @ r_n.T + rb[2 * hidden :]  # R_n·h_{t−1} + Rb_n, linear_before_reset=1
    gh = np.broadcast_to(np.eye(hidden), (n, hidden, hidden)).copy()
    state, inputs, units = np.empty((n, steps)), np.empty((n, steps)), np.empty((n, steps, hidden))
    for lag in range(steps):
        t = steps - 1 - lag
        units[:, lag] = _column_norms(gh)
        d_z = gh * ((h_prev[:, t] - nn[:, t]) * z[:, t] * (1.0 - z[:, t]))[:, None]
        d_n = gh * ((1.0 - z[:, t]) * (1.0 - nn[:, t] ** 2))[:, None]
        d_reset = rr[:, t] * (1.0 - rr[:, t])
        if linear_before_reset:
            d_r = d_n * (recurrent_n[:, t] * d_reset)[:, None]
            through = np.concatenate([d_r, d_n * rr[:, t][:, None]], axis=2) @ np.concatenate([r_r, r_n])
        else:
            d_gated = d_n @ r_n  # ∂h_T/∂(r ⊙ h_{t−1})
            d_r = d_gated * (h_prev[:, t] * d_reset)[:, None]
            through = d_r @ r_r + d_gated * rr[:, t][:, None]
        inputs[:, lag] = np.linalg.norm(np.concatenate([d_z, d_r, d_n], axis=2) @ w, axis=(1, 2))
        gh = gh * z[:, t][:, None] + d_z @ r_z + through
    state[:] = np.sqrt((units**2).sum(axis=2))
    return state, inputs, units


def _layer_norms(
    model: onnx.ModelProto, layer: Layer, gates: dict[str, np.ndarray], max_windows: int | None = 8
) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per direction: (name, state [N, T], input [N, T], unit columns [N, T, H]) unscaled norms; [] if unsupported."""
    graph = _Graph(model.graph)
    spec = _spec(model, layer, graph)
    if spec is None or not set(_GATES[spec.kind]) <= gates.keys():
        return []
    total, hidden, blocks = gates["h"].shape[0], spec.hidden_size, _BLOCKS[spec.kind]
    traces = {k: gates[k][:max_windows].astype(np.float64) for k in _GATES[spec.kind]}  # [N, T, D, H]
    windows, steps = traces["h"].shape[:2]
    w, r = (numpy_helper.to_array(graph.initializers[spec.inputs[k]]).astype(np.float64) for k in ("W", "R"))
    b = graph.value(spec.inputs["B"]) if "B" in spec.inputs else np.zeros((spec.directions, 2 * blocks * hidden))
    shapes = (traces["h"].shape[2:], w.shape[:2], r.shape, b.shape)
    dirs, rows = spec.directions, blocks * hidden
    expected = ((dirs, hidden), (dirs, rows), (dirs, rows, hidden), (dirs, 2 * rows))
    if not windows or not steps or shapes != expected:
        return []
    h0, c0 = (_initial(graph, spec, slot, windows, total) for slot in ("initial_h", "initial_c"))
    out = []
    for d, reverse in enumerate(spec.reverse):
        own = {k: v[:, :: -1 if reverse else 1, d] for k, v in traces.items()}  # in the direction's own order
        if spec.kind == "LSTM":
            norms = _lstm(own, w[d], r[d], None if c0 is None else c0[d])
        else:
            rb = b[d, blocks * hidden :].astype(np.float64)
            norms = _gru(own, w[d], r[d], rb, None if h0 is None else h0[d], spec.linear_before_reset)
        out.append(("reverse" if reverse else "forward", *norms))
    return out


def gradient_flow(
    model: onnx.ModelProto, layers: list[Layer], gates: dict[str, dict[str, np.ndarray]], max_windows: int | None = 8
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """GRADIENT_COLUMNS and UNIT_GRADIENT_COLUMNS frames of every supported layer.

    `model` holds the fused nodes (before exposure); `gates`: layer name -> gate -> float32
    [windows, T, directions, H], as `Replayer.gates(outputs)` returns; the first `max_windows`
    windows are used (None: all). Norms are divided by √H, so the state norm at lag 0 is 1.
    """
    rows, unit_rows = [], []
    for layer in layers:
        if layer.name not in gates:
            continue
        for direction, state, inputs, units in _layer_norms(model, layer, gates[layer.name], max_windows):
            scale = np.sqrt(layer.hidden_size)
            for target, norms in (("state", state), ("input", inputs)):
                for lag in range(norms.shape[1]):
                    values = norms[:, lag] / scale
                    if np.all(np.isfinite(values)):  # the initial state's row, when it is unknown
                        low, high = np.percentile(values, [10, 90])
                        rows.append((layer.name, direction, target, lag, values.mean(), low, high))
            curves = units.mean(axis=0)  # [T, H]
            lags = np.arange(curves.shape[0])
            unit_rows += [
                (layer.name, direction, k, half_life(lags, curves[:, k]), verdict(lags, curves[:, k]))
                for k in range(curves.shape[1])
            ]
    return typed_frame(rows, GRADIENT_COLUMNS), typed_frame(unit_rows, UNIT_GRADIENT_COLUMNS)

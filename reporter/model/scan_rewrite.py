"""Rewrite one ONNX LSTM/GRU/RNN node as an equivalent Scan that also emits every gate.

Why a Scan and not the fused op plus a recomputation: the input projection X·W is done once for
all steps and directions (one big MatMul), the loop body does only h·R, the nonlinearities and the
state update, and the gates fall out as scan outputs. That keeps the exposed model close to the
fused kernel's speed while every gate is exact (see `gate-report bench`).

Layout of the rewrite, for D directions, G gate blocks and hidden size H:
    X ─▶ time-major [T,B,I] ─▶ per direction (reversed per sequence for the reverse pass)
      ─▶ [D,T,B,I] · Wᵀ + bias ─▶ [T,D,B,G·H] ─▶ Scan(state [D,B,H], body) ─▶ gates [T,D,B,K·H]
      ─▶ reverse pass put back in input time ─▶ Y, Y_h, Y_c (the node's own outputs, same names)
                                               └▶ one [B,T,D,H] output per gate
Equations and attribute semantics follow the ONNX operator spec; where the spec leaves a choice
(clip after the peephole term, activation alpha/beta consumed by the activations that take them),
onnxruntime's reading is used.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from reporter.layers import GATES
from reporter.model.graph_builder import GraphBuilder, activate_per_direction, reverse_time
from reporter.model.recurrent_spec import GATE_BLOCKS, RecurrentSpec

__all__ = ["build_scan_rewrite"]


class _Body:
    """The Scan body under construction: one step of all directions at once."""

    def __init__(self, spec: RecurrentSpec, b: GraphBuilder):
        self.spec, self.b = spec, b
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []

    def shape(self, last: int, directions: int | None = None) -> list:
        """A per-step shape: [batch, last] with one direction, else [directions, batch, last].

        onnxruntime's Scan needs ranked shapes on the body's outputs even when the outer graph
        carries none, so they are declared here with a symbolic batch.
        """
        if self.spec.directions == 1:
            return ["batch", last]
        return [directions or self.spec.directions, "batch", last]

    def add_input(self, hint: str, last: int, elem_type=TensorProto.FLOAT, directions: int | None = None) -> str:
        name = self.b.fresh(hint)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, self.shape(last, directions)))
        return name

    def add_output(self, name: str) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, self.shape(self.spec.hidden_size)))

    def gate(self, pre: str, which: int) -> str:
        """Clip (when set) and activate a gate pre-activation with activation `which` (f, g, h)."""
        b = self.b
        if self.spec.clip is not None:
            pre = b.op("Clip", pre, b.const(-self.spec.clip), b.const(self.spec.clip))
        return activate_per_direction(b, pre, [acts[which] for acts in self.spec.activations])


def _block(b: GraphBuilder, x: str, k: int, hidden: int) -> str:
    """Slice gate block k (of size hidden) from the last axis."""
    return b.slice(x, k * hidden, (k + 1) * hidden, -1)


def _recurrent_sum(b: GraphBuilder, spec: RecurrentSpec, xw: str, h_prev: str, rt: str) -> str:
    """xw + h·Rᵀ; one Gemm (which adds in place) when a single direction makes it 2-D."""
    if spec.directions == 1:
        return b.op("Gemm", h_prev, rt, xw)
    return b.op("Add", xw, b.op("MatMul", h_prev, rt))


def _gates_from_loop(spec: RecurrentSpec) -> tuple[str, ...]:
    """Gates the Scan emits per step; LSTM's h is cheaper to derive from o and c afterwards."""
    return GATES[spec.kind][:-1] if spec.kind == "LSTM" else GATES[spec.kind]


def _lstm_step(body: _Body, w: dict, h_prev: str, c_prev: str, xws: list[str]) -> tuple[list[str], str, str]:
    """One LSTM step; returns (gates i f g o c, new h, new c)."""
    b, s, hs = body.b, body.spec, body.spec.hidden_size
    if len(xws) == 4:
        pre_i, pre_o, pre_f, pre_c = (b.op("Gemm", h_prev, w[f"RT{k}"], xws[k]) for k in range(4))
        return _lstm_gates(body, w, c_prev, pre_i, pre_o, pre_f, pre_c)
    pre = _recurrent_sum(b, s, xws[0], h_prev, w["RT"])
    if "P" not in s.inputs and not s.input_forget:
        # Common case: i, o, f are one contiguous block under one activation (clip included).
        iof = body.gate(b.slice(pre, 0, 3 * hs, -1), 0)
        i, o, f = (_block(b, iof, k, hs) for k in range(3))
        g = body.gate(_block(b, pre, 3, hs), 1)
        c = b.op("Add", b.op("Mul", f, c_prev), b.op("Mul", i, g))
        h = b.op("Mul", o, activate_per_direction(b, c, [acts[2] for acts in s.activations]))
        return [i, f, g, o, c], h, c
    return _lstm_gates(body, w, c_prev, *(_block(b, pre, k, hs) for k in range(4)))


def _lstm_gates(
    body: _Body, w: dict, c_prev: str, pre_i: str, pre_o: str, pre_f: str, pre_c: str
) -> tuple[list[str], str, str]:
    """Gates and new state from the four pre-activations (peepholes, input_forget honoured)."""
    b, s = body.b, body.spec
    if "P" in s.inputs:
        pre_i = b.op("Add", pre_i, b.op("Mul", w["Pi"], c_prev))
        pre_f = b.op("Add", pre_f, b.op("Mul", w["Pf"], c_prev))
    i = body.gate(pre_i, 0)
    f = b.op("Sub", b.const(1.0), i) if s.input_forget else body.gate(pre_f, 0)
    g = body.gate(pre_c, 1)
    c = b.op("Add", b.op("Mul", f, c_prev), b.op("Mul", i, g))
    if "P" in s.inputs:
        pre_o = b.op("Add", pre_o, b.op("Mul", w["Po"], c))
    o = body.gate(pre_o, 0)
    h = b.op("Mul", o, activate_per_direction(b, c, [acts[2] for acts in s.activations]))
    return [i, f, g, o, c], h, c


def _gru_step(body: _Body, w: dict, h_prev: str, xws: list[str]) -> tuple[list[str], str]:
    """One GRU step; returns (gates z r n h, new h)."""
    b, s, hs = body.b, body.spec, body.spec.hidden_size
    if len(xws) == 3:  # `_blockwise`: each block's h·Rᵀ lands on its own X·Wᵀ, no slices
        z, r = (body.gate(b.op("Gemm", h_prev, w[f"RT{k}"], xws[k]), 0) for k in range(2))
        if not s.linear_before_reset:
            pre_n = b.op("Gemm", b.op("Mul", r, h_prev), w["RT2"], xws[2])
        else:
            recurrent_n = b.op("Gemm", h_prev, w["RT2"], w["Rbh"]) if "Rbh" in w else b.op("MatMul", h_prev, w["RT2"])
            pre_n = b.op("Add", xws[2], b.op("Mul", r, recurrent_n))
        return _gru_update(body, z, r, pre_n, h_prev)
    xw = xws[0]
    if s.linear_before_reset:
        hr = b.op("MatMul", h_prev, w["RT"])
        pre_z = b.op("Add", _block(b, xw, 0, hs), _block(b, hr, 0, hs))
        pre_r = b.op("Add", _block(b, xw, 1, hs), _block(b, hr, 1, hs))
    else:
        hr = b.op("MatMul", h_prev, w["RzrT"])
        pre_z = b.op("Add", _block(b, xw, 0, hs), _block(b, hr, 0, hs))
        pre_r = b.op("Add", _block(b, xw, 1, hs), _block(b, hr, 1, hs))
    z, r = body.gate(pre_z, 0), body.gate(pre_r, 0)
    if s.linear_before_reset:
        recurrent_n = _block(b, hr, 2, hs)
        if "Rbh" in w:
            recurrent_n = b.op("Add", recurrent_n, w["Rbh"])
        pre_n = b.op("Add", _block(b, xw, 2, hs), b.op("Mul", r, recurrent_n))
    else:
        pre_n = b.op("Add", _block(b, xw, 2, hs), b.op("MatMul", b.op("Mul", r, h_prev), w["RhT"]))
    return _gru_update(body, z, r, pre_n, h_prev)


def _gru_update(body: _Body, z: str, r: str, pre_n: str, h_prev: str) -> tuple[list[str], str]:
    """The candidate n and the new h from z, r and n's pre-activation."""
    b = body.b
    n = body.gate(pre_n, 1)
    h = b.op("Add", n, b.op("Mul", z, b.op("Sub", h_prev, n)))  # (1 - z) n + z h_prev
    return [z, r, n, h], h


def _rnn_step(body: _Body, w: dict, h_prev: str, xw: str) -> tuple[list[str], str]:
    """One simple-RNN step; returns (gates h, new h)."""
    h = body.gate(_recurrent_sum(body.b, body.spec, xw, h_prev, w["RT"]), 0)
    return [h], h


def _weights(b: GraphBuilder, spec: RecurrentSpec) -> tuple[dict, str | None]:
    """Prepare transposed recurrence weights, peepholes and the bias added to X·W."""
    hs, blocks, kind = spec.hidden_size, GATE_BLOCKS[spec.kind], spec.kind
    w = {"RT": b.transpose(spec.inputs["R"], [0, 2, 1])}  # [D, H, G·H]
    if kind == "GRU" and not spec.linear_before_reset and not _blockwise(spec):
        w["RzrT"] = b.slice(w["RT"], 0, 2 * hs, 2)
        w["RhT"] = b.slice(w["RT"], 2 * hs, 3 * hs, 2)
    if "P" in spec.inputs:
        p = spec.inputs["P"]  # [D, 3H] in order i, o, f
        for k, gate in enumerate(("Pi", "Po", "Pf")):
            w[gate] = b.unsqueeze(b.slice(p, k * hs, (k + 1) * hs, 1), 1)  # [D, 1, H]
    if "B" not in spec.inputs:
        return _single_direction_2d(b, spec, w), None
    bias = spec.inputs["B"]
    wb, rb = b.slice(bias, 0, blocks * hs, 1), b.slice(bias, blocks * hs, 2 * blocks * hs, 1)
    if kind == "GRU" and spec.linear_before_reset:
        # Rb_h sits inside r ⊙ (h·R_h + Rb_h): it stays in the body.
        w["Rbh"] = b.unsqueeze(b.slice(rb, 2 * hs, 3 * hs, 1), 1)
        rb = b.op("Mul", rb, b.const([1.0] * (2 * hs) + [0.0] * hs))
    return _single_direction_2d(b, spec, w), b.op("Add", wb, rb)  # [D, G·H]


def _single_direction_2d(b: GraphBuilder, spec: RecurrentSpec, w: dict) -> dict:
    """With one direction the body works on 2-D [B, H] tensors: drop the direction axis."""
    if spec.directions != 1:
        return w
    return {key: b.squeeze(value, 0) for key, value in w.items()}


def _blockwise(spec: RecurrentSpec) -> bool:
    """One GEMM per gate block, in the loop and before it, for a single-direction LSTM or GRU.

    Each block's pre-activation then lands in its own tensor: the loop does no per-step split
    copies, which measured ~10% of a single-threaded exposed LSTM, and onnxruntime fuses a Gemm
    with the activation right after it (without clip: the LSTM's four, the GRU's z and r, and n's
    when linear_before_reset is 0). The exposed GRU ran 12% faster on one thread, 20% on two.
    """
    return spec.kind in ("LSTM", "GRU") and spec.directions == 1


def _projected_inputs(
    b: GraphBuilder, spec: RecurrentSpec, x_tbi: str, lens: str | None, bias: str | None
) -> list[str]:
    """X·Wᵀ + bias for every step at once: [T, B, G·H] ([T, D, B, G·H] for two directions),
    or one [T, B, H] per gate block when `_blockwise`.

    A 2-D Gemm per direction (and block): it adds the bias inside the GEMM, where a broadcast 4-D
    MatMul over the direction axis plus an Add measured several times slower.
    """
    if _blockwise(spec):
        return _projected_blocks(b, spec, reverse_time(b, x_tbi, 0, lens) if spec.reverse[0] else x_tbi, bias)
    rows = b.op("Concat", b.ints(-1), b.slice(b.op("Shape", x_tbi), 2, 3, 0), axis=0)  # [-1, I]
    out_shape = b.op("Concat", b.slice(b.op("Shape", x_tbi), 0, 2, 0), b.ints(-1), axis=0)  # [T, B, -1]
    per_dir = []
    for d, rev in enumerate(spec.reverse):
        x = reverse_time(b, x_tbi, 0, lens) if rev else x_tbi
        w_d = b.op("Gather", spec.inputs["W"], b.const(d, np.int64), axis=0)  # [G·H, I]
        bias_d = [b.op("Gather", bias, b.const(d, np.int64), axis=0)] if bias is not None else []
        # Gemm on [T·B, I] adds the bias inside the GEMM: no extra pass over [T, B, G·H].
        xw = b.op("Gemm", b.op("Reshape", x, rows), w_d, *bias_d, transB=1)
        per_dir.append(b.op("Reshape", xw, out_shape))
    if spec.directions == 1:
        return per_dir
    return [b.op("Concat", *[b.unsqueeze(xw, 1) for xw in per_dir], axis=1)]


def _projected_blocks(b: GraphBuilder, spec: RecurrentSpec, x_tbi: str, bias: str | None) -> list[str]:
    """X·W_kᵀ + b_k for each gate block k of a single pass (x already in its time order): [T, B, H] each."""
    hs = spec.hidden_size
    rows = b.op("Concat", b.ints(-1), b.slice(b.op("Shape", x_tbi), 2, 3, 0), axis=0)
    out_shape = b.op("Concat", b.slice(b.op("Shape", x_tbi), 0, 2, 0), b.ints(-1), axis=0)
    x = b.op("Reshape", x_tbi, rows)
    w = b.squeeze(spec.inputs["W"], 0)
    bias = b.squeeze(bias, 0) if bias is not None else None
    blocks = []
    for k in range(GATE_BLOCKS[spec.kind]):
        bias_k = [b.slice(bias, k * hs, (k + 1) * hs, 0)] if bias is not None else []
        xw = b.op("Gemm", x, b.slice(w, k * hs, (k + 1) * hs, 0), *bias_k, transB=1)
        blocks.append(b.op("Reshape", xw, out_shape))
    return blocks


def _initial_state(b: GraphBuilder, spec: RecurrentSpec, slot: str, x_tbi: str) -> str:
    """The initial h or c as [D, B, H]: given (in the node's layout) or zeros."""
    if slot in spec.inputs:
        state = spec.inputs[slot]
        return b.transpose(state, [1, 0, 2]) if spec.layout == 1 else state
    batch = b.slice(b.op("Shape", x_tbi), 1, 2, 0)
    shape = b.op("Concat", b.ints(spec.directions), batch, b.ints(spec.hidden_size), axis=0)
    return b.op("ConstantOfShape", shape, value=numpy_helper.from_array(np.zeros(1, np.float32)))


def _step_mask(b: GraphBuilder, x_tbi: str, lens: str) -> str:
    """Bool [T, 1, B, 1]: is step t inside sequence b's length?"""
    steps = b.op(
        "Range", b.const(0, np.int64), b.squeeze(b.slice(b.op("Shape", x_tbi), 0, 1, 0), 0), b.const(1, np.int64)
    )
    valid = b.op("Less", b.unsqueeze(steps, 1), b.unsqueeze(lens, 0))  # [T, B]
    return b.unsqueeze(valid, 1, 3)


def _build_body(spec: RecurrentSpec, b: GraphBuilder, w: dict, masked: bool) -> onnx.GraphProto:
    """The Scan body: states (h[, c]) and one step of X·W in; new states and every gate out."""
    body = _Body(spec, b)
    hs = spec.hidden_size
    h_prev = body.add_input("h_prev", hs)
    c_prev = body.add_input("c_prev", hs) if spec.kind == "LSTM" else None
    if _blockwise(spec):
        xws = [body.add_input(f"xw{k}_t", hs) for k in range(GATE_BLOCKS[spec.kind])]
    else:
        xws = [body.add_input("xw_t", GATE_BLOCKS[spec.kind] * hs)]
    xw = xws[0]
    valid = body.add_input("valid_t", 1, TensorProto.BOOL, directions=1) if masked else None
    if spec.kind == "LSTM":
        gates, h, c = _lstm_step(body, w, h_prev, c_prev, xws)
    elif spec.kind == "GRU":
        (gates, h), c = _gru_step(body, w, h_prev, xws), None
    else:
        (gates, h), c = _rnn_step(body, w, h_prev, xw), None
    if valid is not None:
        # Past a sequence's end the state holds (the gates are zeroed after the loop).
        h = b.op("Where", valid, h, h_prev)
        c = b.op("Where", valid, c, c_prev) if c is not None else None
    states = [h] + ([c] if c is not None else [])
    # A body output may appear only once: where a state is also a gate, compute it twice
    # (a second elementwise op measured ~10x cheaper than an Identity copy in ORT's Scan).
    seen = set()
    for name in states + gates:
        body.add_output(b.recompute(name) if name in seen else name)
        seen.add(name)
    return helper.make_graph(b.nodes, b.fresh("scan_body"), body.inputs, body.outputs)


def _to_input_time(b: GraphBuilder, spec: RecurrentSpec, per_step: str, lens: str | None) -> str:
    """Put the reverse pass of a [T, D, B, H] scan output back in input time order."""
    if not any(spec.reverse):
        return per_step
    if spec.directions == 1:
        if lens is None:
            return reverse_time(b, per_step, 0, None)
        return b.unsqueeze(reverse_time(b, b.squeeze(per_step, 1), 0, lens), 1)
    backward = b.squeeze(b.slice(per_step, 1, 2, 1), 1)
    backward = b.unsqueeze(reverse_time(b, backward, 0, lens), 1)
    return b.op("Concat", b.slice(per_step, 0, 1, 1), backward, axis=1)


def build_scan_rewrite(
    spec: RecurrentSpec, taken: set[str], prefix: str, gate_outputs: dict[str, str]
) -> list[onnx.NodeProto]:
    """Nodes that replace the recurrent node: same output names, plus one output per gate.

    `gate_outputs` maps each gate to the graph output name to write it to ([B, T, D, H]).
    """
    b = GraphBuilder(taken, prefix)
    x = spec.inputs["X"]
    x_tbi = b.transpose(x, [1, 0, 2]) if spec.layout == 1 else x
    lens = b.op("Cast", spec.inputs["sequence_lens"], to=TensorProto.INT64) if "sequence_lens" in spec.inputs else None
    w, bias = _weights(b, spec)
    xws = _projected_inputs(b, spec, x_tbi, lens, bias)
    if _blockwise(spec):
        hs = spec.hidden_size
        w.update({f"RT{k}": b.slice(w["RT"], k * hs, (k + 1) * hs, 1) for k in range(GATE_BLOCKS[spec.kind])})
    states = [_initial_state(b, spec, "initial_h", x_tbi)]
    if spec.kind == "LSTM":
        states.append(_initial_state(b, spec, "initial_c", x_tbi))
    valid = _step_mask(b, x_tbi, lens) if lens else None  # [T, 1, B, 1]
    scan_inputs = xws + ([valid if spec.directions == 2 else b.squeeze(valid, 1)] if valid else [])
    body = _build_body(spec, GraphBuilder(taken, f"{prefix}/body"), w, masked=valid is not None)
    finals = [b.fresh("h_last")] + ([b.fresh("c_last")] if spec.kind == "LSTM" else [])
    gates = _gates_from_loop(spec)
    per_step = [b.fresh(f"{gate}_per_step") for gate in gates]
    if spec.directions == 1:  # the body is 2-D: drop the direction axis going in, restore it after
        states = [b.squeeze(t, 0) for t in states]
        finals_2d, per_step_2d = [b.fresh("state_bh") for _ in finals], per_step
    else:
        finals_2d, per_step_2d = finals, per_step
    b.nodes.append(
        helper.make_node(
            "Scan",
            states + scan_inputs,
            finals_2d + per_step_2d,
            name=b.fresh("scan"),
            body=body,
            num_scan_inputs=len(scan_inputs),
        )
    )
    traces = dict(zip(gates, per_step))
    if spec.directions == 1:
        for small, full in zip(finals_2d, finals):
            b.op("Unsqueeze", small, b.ints(0), out=full)
        traces = {gate: b.unsqueeze(t, 1) for gate, t in traces.items()}
    if lens is not None:
        # onnxruntime's reading: a sequence of length 0 has final states 0, not its initial state.
        nonempty = b.unsqueeze(b.op("Greater", lens, b.const(0, np.int64)), 0, 2)  # [1, B, 1]
        finals = [b.op("Where", nonempty, final, b.const(0.0)) for final in finals]
    if "h" not in traces:  # LSTM: h = o ⊙ h(c), vectorised over all steps after the loop
        traces["h"] = b.op(
            "Mul", traces["o"], activate_per_direction(b, traces["c"], [a[2] for a in spec.activations], axis=1)
        )
    for gate in GATES[spec.kind]:
        trace = traces[gate]
        trace = _to_input_time(b, spec, trace, lens)
        if valid is not None:
            trace = b.op("Where", valid, trace, b.const(0.0))  # 0 past each sequence's end, as in Y
        if gate == "h":
            _emit_node_outputs(b, spec, trace, finals)
        b.op("Transpose", trace, perm=[2, 0, 1, 3], out=gate_outputs[gate])  # [B, T, D, H]
    return b.nodes


def _emit_node_outputs(b: GraphBuilder, spec: RecurrentSpec, y_tdbh: str, finals: list[str]) -> None:
    """Write Y, Y_h and Y_c under the node's own names, in the node's layout."""
    outputs = spec.outputs
    if "Y" in outputs:
        if spec.layout == 1:
            b.op("Transpose", y_tdbh, perm=[2, 0, 1, 3], out=outputs["Y"])
        else:
            b.op("Identity", y_tdbh, out=outputs["Y"])
    for slot, final in zip(("Y_h", "Y_c"), finals):
        if slot in outputs:
            if spec.layout == 1:
                b.op("Transpose", final, perm=[1, 0, 2], out=outputs[slot])
            else:
                b.op("Identity", final, out=outputs[slot])

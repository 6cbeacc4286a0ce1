"""Rewrite one ONNX LSTM/GRU/RNN node as an equivalent Scan that also emits every gate.

Why a Scan and not the fused op plus a recomputation: the input projection X·W is done once for
all steps (one GEMM per gate block), the loop body does only h·R, the nonlinearities and the
state update, and the gates fall out as scan outputs. That keeps the exposed model close to the
fused kernel's speed while every gate is exact (see `gate-report bench`).

Layout of the rewrite, for G gate blocks and hidden size H, each direction its own pass:
    X ─▶ time-major [T,B,I] ─▶ (reversed per sequence for a reverse pass)
      ─▶ X·W_kᵀ + b_k, one [T,B,H] per block k ─▶ Scan(state [B,H], body: one Gemm per block)
      ─▶ gates [T,B,H] each ─▶ put back in input time ─▶ two directions joined: [T,D,B,H]
      ─▶ Y, Y_h, Y_c (the node's own outputs, same names)
      └▶ one [B,T,D,H] output per gate
Equations and attribute semantics follow the ONNX operator spec; where the spec leaves a choice
(clip after the peephole term, activation alpha/beta consumed by the activations that take them),
onnxruntime's reading is used.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from reporter.layers import GATES
from reporter.model.graph_builder import GraphBuilder, activate, reverse_time
from reporter.model.recurrent_spec import GATE_BLOCKS, RecurrentSpec

__all__ = ["build_scan_rewrite"]


class _Body:
    """The Scan body under construction: one step of one direction, on 2-D [batch, ·] tensors."""

    def __init__(self, spec: RecurrentSpec, b: GraphBuilder):
        self.spec, self.b = spec, b
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []

    @staticmethod
    def shape(last: int) -> list:
        """A per-step shape, [batch, last]: onnxruntime's Scan needs ranked shapes on the body's
        outputs even when the outer graph carries none, so they are declared with a symbolic batch."""
        return ["batch", last]

    def add_input(self, hint: str, last: int, elem_type=TensorProto.FLOAT) -> str:
        name = self.b.fresh(hint)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, self.shape(last)))
        return name

    def add_output(self, name: str) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, self.shape(self.spec.hidden_size)))

    def gate(self, pre: str, which: int) -> str:
        """Clip (when set) and activate a gate pre-activation with activation `which` (f, g, h)."""
        b = self.b
        if self.spec.clip is not None:
            pre = b.op("Clip", pre, b.const(-self.spec.clip), b.const(self.spec.clip))
        return activate(b, pre, self.spec.activations[0][which])


def _lstm_step(body: _Body, w: dict, h_prev: str, c_prev: str, xws: list[str]) -> tuple[list[str], str, str]:
    """One LSTM step; returns (gates i f g o c h, new h, new c). Each block's h·R_kᵀ adds onto its
    own X·W_kᵀ inside one Gemm: no per-step slices, and onnxruntime fuses the Gemm with the
    activation after it (when there is no clip)."""
    b, s = body.b, body.spec
    pre_i, pre_o, pre_f, pre_c = (b.op("Gemm", h_prev, w[f"RT{k}"], xws[k]) for k in range(4))
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
    h = b.op("Mul", o, activate(b, c, s.activations[0][2]))
    return [i, f, g, o, c, h], h, c


def _gru_step(body: _Body, w: dict, h_prev: str, xws: list[str]) -> tuple[list[str], str]:
    """One GRU step; returns (gates z r n h, new h). One Gemm per block, as `_lstm_step`."""
    b, s = body.b, body.spec
    z, r = (body.gate(b.op("Gemm", h_prev, w[f"RT{k}"], xws[k]), 0) for k in range(2))
    if not s.linear_before_reset:
        pre_n = b.op("Gemm", b.op("Mul", r, h_prev), w["RT2"], xws[2])
    else:
        recurrent_n = b.op("Gemm", h_prev, w["RT2"], w["Rbh"]) if "Rbh" in w else b.op("MatMul", h_prev, w["RT2"])
        pre_n = b.op("Add", xws[2], b.op("Mul", r, recurrent_n))
    n = body.gate(pre_n, 1)
    h = b.op("Add", n, b.op("Mul", z, b.op("Sub", h_prev, n)))  # (1 - z) n + z h_prev
    return [z, r, n, h], h


def _rnn_step(body: _Body, w: dict, h_prev: str, xws: list[str]) -> tuple[list[str], str]:
    """One simple-RNN step; returns (gates h, new h)."""
    h = body.gate(body.b.op("Gemm", h_prev, w["RT0"], xws[0]), 0)
    return [h], h


def _weights(b: GraphBuilder, spec: RecurrentSpec) -> tuple[dict, str | None]:
    """One direction's transposed recurrence weight per gate block (RTk: [H, H]), peepholes ([H]),
    GRU's Rb_h, and the bias added to X·W ([G·H]), the direction axis dropped."""
    hs, blocks, kind = spec.hidden_size, GATE_BLOCKS[spec.kind], spec.kind
    rt = b.squeeze(b.transpose(spec.inputs["R"], [0, 2, 1]), 0)  # [H, G·H]
    w = {f"RT{k}": b.slice(rt, k * hs, (k + 1) * hs, 1) for k in range(blocks)}
    if "P" in spec.inputs:
        p = b.squeeze(spec.inputs["P"], 0)  # [3H] in order i, o, f
        w.update({gate: b.slice(p, k * hs, (k + 1) * hs, 0) for k, gate in enumerate(("Pi", "Po", "Pf"))})
    if "B" not in spec.inputs:
        return w, None
    bias = b.squeeze(spec.inputs["B"], 0)
    wb, rb = b.slice(bias, 0, blocks * hs, 0), b.slice(bias, blocks * hs, 2 * blocks * hs, 0)
    if kind == "GRU" and spec.linear_before_reset:
        # Rb_h sits inside r ⊙ (h·R_h + Rb_h): it stays in the body.
        w["Rbh"] = b.slice(rb, 2 * hs, 3 * hs, 0)
        rb = b.op("Mul", rb, b.const([1.0] * (2 * hs) + [0.0] * hs))
    return w, b.op("Add", wb, rb)


def _projected_blocks(b: GraphBuilder, spec: RecurrentSpec, x_tbi: str, bias: str | None) -> list[str]:
    """X·W_kᵀ + b_k for every step at once, one [T, B, H] per gate block k (x in the pass's time
    order), each one 2-D Gemm on [T·B, I].

    The bias rides inside the GEMM's own sum, as one more column: x gains a column of ones and
    W_k the bias as its last column. Given as Gemm's C instead, the bias is first broadcast into
    the whole [T·B, H] result and the product then added onto it: two more passes over an output
    too large for the cache. The four blocks of a 128-unit layer over 256 windows × 100 steps
    took 32 ms that way and 24 ms this way, on one thread, the column of ones included; the
    sums agree to rounding (bit for bit there, where the K + 1 products fit one of the GEMM's
    blocks). A broadcast MatMul plus an Add measured several times slower than either.
    """
    hs = spec.hidden_size
    rows = b.op("Concat", b.ints(-1), b.slice(b.op("Shape", x_tbi), 2, 3, 0), axis=0)
    out_shape = b.op("Concat", b.slice(b.op("Shape", x_tbi), 0, 2, 0), b.ints(-1), axis=0)
    x = b.op("Reshape", x_tbi, rows)
    w = b.squeeze(spec.inputs["W"], 0)
    if bias is not None:
        x = b.op("Pad", x, b.ints(0, 0, 0, 1), b.const(1.0))
        w = b.op("Concat", w, b.unsqueeze(bias, 1), axis=1)
    blocks = []
    for k in range(GATE_BLOCKS[spec.kind]):
        xw = b.op("Gemm", x, b.slice(w, k * hs, (k + 1) * hs, 0), transB=1)
        blocks.append(b.op("Reshape", xw, out_shape))
    return blocks


def _initial_state(b: GraphBuilder, spec: RecurrentSpec, slot: str, x_tbi: str) -> str:
    """One direction's initial h or c as [B, H]: given (in the node's layout) or zeros."""
    if slot in spec.inputs:
        return b.squeeze(spec.inputs[slot], 1 if spec.layout == 1 else 0)
    batch = b.slice(b.op("Shape", x_tbi), 1, 2, 0)
    shape = b.op("Concat", batch, b.ints(spec.hidden_size), axis=0)
    return b.op("ConstantOfShape", shape, value=numpy_helper.from_array(np.zeros(1, np.float32)))


def _step_mask(b: GraphBuilder, x_tbi: str, lens: str) -> str:
    """Bool [T, B, 1]: is step t inside sequence b's length?"""
    steps = b.op(
        "Range", b.const(0, np.int64), b.squeeze(b.slice(b.op("Shape", x_tbi), 0, 1, 0), 0), b.const(1, np.int64)
    )
    valid = b.op("Less", b.unsqueeze(steps, 1), b.unsqueeze(lens, 0))  # [T, B]
    return b.unsqueeze(valid, 2)


def _build_body(spec: RecurrentSpec, b: GraphBuilder, w: dict, masked: bool) -> onnx.GraphProto:
    """The Scan body: states (h[, c]) and one step of each block's X·W in; new states and every gate out."""
    body = _Body(spec, b)
    hs = spec.hidden_size
    h_prev = body.add_input("h_prev", hs)
    c_prev = body.add_input("c_prev", hs) if spec.kind == "LSTM" else None
    xws = [body.add_input(f"xw{k}_t", hs) for k in range(GATE_BLOCKS[spec.kind])]
    valid = body.add_input("valid_t", 1, TensorProto.BOOL) if masked else None
    if spec.kind == "LSTM":
        gates, h, c = _lstm_step(body, w, h_prev, c_prev, xws)
    elif spec.kind == "GRU":
        (gates, h), c = _gru_step(body, w, h_prev, xws), None
    else:
        (gates, h), c = _rnn_step(body, w, h_prev, xws), None
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
    valid = _step_mask(b, x_tbi, lens) if lens is not None else None  # [T, B, 1]
    passes = [_scan_pass(b, _one_direction(b, spec, d), x_tbi, lens, valid) for d in range(spec.directions)]
    if len(passes) == 1:
        ((traces, finals),) = passes
    else:  # one copy of each trace joins the directions (a Scan over both measured slower: `_one_direction`)
        traces = {gate: b.op("Concat", *(p[0][gate] for p in passes), axis=1) for gate in passes[0][0]}
        finals = [b.op("Concat", *states, axis=0) for states in zip(*(p[1] for p in passes))]
    if lens is not None:
        # onnxruntime's reading: a sequence of length 0 has final states 0, not its initial state.
        nonempty = b.unsqueeze(b.op("Greater", lens, b.const(0, np.int64)), 0, 2)  # [1, B, 1]
        finals = [b.op("Where", nonempty, final, b.const(0.0)) for final in finals]
    in_sequence = b.unsqueeze(valid, 1) if valid is not None else None  # [T, 1, B, 1]
    for gate in GATES[spec.kind]:
        trace = traces[gate]
        if in_sequence is not None:
            trace = b.op("Where", in_sequence, trace, b.const(0.0))  # 0 past each sequence's end, as in Y
        if gate == "h":
            _emit_node_outputs(b, spec, trace, finals)
        b.op("Transpose", trace, perm=[2, 0, 1, 3], out=gate_outputs[gate])  # [B, T, D, H]
    return b.nodes


def _one_direction(b: GraphBuilder, spec: RecurrentSpec, d: int) -> RecurrentSpec:
    """Direction d of the node as a one-direction node: its weights, initial states, activations.

    Each direction gets its own Scan. One Scan over both needs a batched MatMul and a slice of
    every gate block at every step; two passes of one-direction bodies took 0.82–0.84× its time
    for the LSTM, 0.81–0.84× for the GRU and 0.86–0.93× for the RNN on one thread (2 layers × 128
    units, 256 × 100, two runs), the join after the loop included. The values agree with the old
    body's to rounding, not bit for bit: a Gemm adds its C term in its own order (at batch 1, and
    above 128 units).
    """
    if spec.directions == 1:
        return spec
    inputs = dict(spec.inputs)
    for slot in ("W", "R", "B", "P"):
        if slot in inputs:
            inputs[slot] = b.slice(inputs[slot], d, d + 1, 0)
    for slot in ("initial_h", "initial_c"):  # [D, B, H], or [B, D, H] in layout 1
        if slot in inputs:
            inputs[slot] = b.slice(inputs[slot], d, d + 1, 1 if spec.layout == 1 else 0)
    return replace(
        spec, directions=1, reverse=(spec.reverse[d],), activations=(spec.activations[d],), inputs=inputs, outputs={}
    )


def _scan_pass(
    b: GraphBuilder, spec: RecurrentSpec, x_tbi: str, lens: str | None, valid: str | None
) -> tuple[dict[str, str], list[str]]:
    """One direction's Scan: its gate traces [T, 1, B, H] in input time order and its final states
    [1, B, H], before any masking by length (`valid` [T, B, 1] only holds each sequence's state
    past its end)."""
    w, bias = _weights(b, spec)
    x = reverse_time(b, x_tbi, 0, lens) if spec.reverse[0] else x_tbi
    states = [_initial_state(b, spec, "initial_h", x_tbi)]
    if spec.kind == "LSTM":
        states.append(_initial_state(b, spec, "initial_c", x_tbi))
    scan_inputs = _projected_blocks(b, spec, x, bias) + ([valid] if valid is not None else [])
    body = _build_body(spec, GraphBuilder(b.taken, f"{b.prefix}/body"), w, masked=valid is not None)
    finals = [b.fresh("h_last")] + ([b.fresh("c_last")] if spec.kind == "LSTM" else [])
    gates = GATES[spec.kind]
    per_step = [b.fresh(f"{gate}_per_step") for gate in gates]
    b.nodes.append(
        helper.make_node(
            "Scan",
            states + scan_inputs,
            finals + per_step,
            name=b.fresh("scan"),
            body=body,
            num_scan_inputs=len(scan_inputs),
        )
    )
    traces = {}
    for gate, trace in zip(gates, per_step):
        if spec.reverse[0]:  # the reverse pass back in input time order
            trace = reverse_time(b, trace, 0, lens)
        traces[gate] = b.unsqueeze(trace, 1)
    return traces, [b.unsqueeze(final, 0) for final in finals]


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

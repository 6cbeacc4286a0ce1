"""Graph shapes a review of exposure found wanting, each held to the cell equations or to a clear
refusal: sibling loop bodies that reuse tensor names, a decoder loop with a fused node and a
sigmoid head, an initial state that is an activation's output, a backward unrolled cell with
packed gates, a `1 − z` whose 1 lives outside the body or is a `value_float`, calls that take
different `If` branches, and a cell in an `If` inside a `Loop`."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from reporter.errors import ModelError
from reporter.model.expose import expose_gates
from reporter.replay.calls import run_calls
from reporter.replay.feeds import Feeds

B, T, I, H = 2, 5, 3, 4
ATOL = 1e-5


def _value(name, dims=None, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def _init(name, array, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(array, dtype), name)


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _gru_step(p: str, x: str, h: str, w: str, u: str, one: str = "one") -> tuple[list, str]:
    """A GRU step as torch writes it (reset after): gates packed by one MatMul each, then split."""
    nodes = [
        helper.make_node("MatMul", [x, w], [f"{p}xw"]),
        helper.make_node("MatMul", [h, u], [f"{p}hu"]),
        helper.make_node("Split", [f"{p}xw"], [f"{p}xr", f"{p}xz", f"{p}xn"], axis=1, num_outputs=3),
        helper.make_node("Split", [f"{p}hu"], [f"{p}hr", f"{p}hz", f"{p}hn"], axis=1, num_outputs=3),
        helper.make_node("Add", [f"{p}xr", f"{p}hr"], [f"{p}ar"]),
        helper.make_node("Sigmoid", [f"{p}ar"], [f"{p}r"], name=f"{p}sig_r"),
        helper.make_node("Add", [f"{p}xz", f"{p}hz"], [f"{p}az"]),
        helper.make_node("Sigmoid", [f"{p}az"], [f"{p}z"], name=f"{p}sig_z"),
        helper.make_node("Mul", [f"{p}r", f"{p}hn"], [f"{p}rhn"]),
        helper.make_node("Add", [f"{p}xn", f"{p}rhn"], [f"{p}an"]),
        helper.make_node("Tanh", [f"{p}an"], [f"{p}n"], name=f"{p}tanh_n"),
        helper.make_node("Mul", [f"{p}z", h], [f"{p}zh"]),
        helper.make_node("Sub", [one, f"{p}z"], [f"{p}omz"]),
        helper.make_node("Mul", [f"{p}omz", f"{p}n"], [f"{p}zn"]),
        helper.make_node("Add", [f"{p}zh", f"{p}zn"], [f"{p}h"], name=f"{p}add_h"),
    ]
    return nodes, f"{p}h"


def _gru_reference(x: np.ndarray, w: np.ndarray, u: np.ndarray, h: np.ndarray) -> dict[str, np.ndarray]:
    """x [B, T, I] from state h: z, r, n, h each [B, T, hidden], in x's time order."""
    hidden, out = u.shape[0], {gate: [] for gate in "zrnh"}
    for t in range(x.shape[1]):
        xw, hu = x[:, t] @ w, h @ u
        r = 1 / (1 + np.exp(-(xw[:, :hidden] + hu[:, :hidden])))
        z = 1 / (1 + np.exp(-(xw[:, hidden : 2 * hidden] + hu[:, hidden : 2 * hidden])))
        n = np.tanh(xw[:, 2 * hidden :] + r * hu[:, 2 * hidden :])
        h = z * h + (1 - z) * n
        for gate, value in zip("zrnh", (z, r, n, h)):
            out[gate].append(value)
    return {gate: np.stack(values, 1) for gate, values in out.items()}


def _assert_gru(layer, outputs, want, shape) -> None:
    for gate, name in layer.outputs.items():
        assert outputs[name].shape == shape, (layer.name, gate, outputs[name].shape)
        error = np.abs(outputs[name][:, :, 0] - want[gate]).max()
        assert error <= ATOL, f"{layer.name} gate {gate}: {error:.2e}"


def _loop_body(hidden: int, w: str, u: str, one_outside: bool = False, one_as_value_float: bool = False):
    """A Loop body: x_t = x[:, t], one GRU step on the carried h. Tensor names are the same in every body."""
    step, h_new = _gru_step("s_", "x_t", "h_in", w, u)
    nodes = [helper.make_node("Gather", ["x", "t"], ["x_t"], axis=1), *step]
    nodes += [
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Identity", [h_new], ["h_scan"]),
    ]
    inits = []
    if one_as_value_float:
        nodes.insert(0, helper.make_node("Constant", [], ["one"], value_float=1.0))
    elif not one_outside:
        inits.append(_init("one", 1.0))
    inputs = [
        _value("t", [], TensorProto.INT64),
        _value("cond_in", [], TensorProto.BOOL),
        _value("h_in", [None, hidden]),
    ]
    outputs = [
        _value("cond_out", [], TensorProto.BOOL),
        _value(h_new, [None, hidden]),
        _value("h_scan", [None, hidden]),
    ]
    return helper.make_graph(nodes, "body", inputs, outputs, inits)


def test_sibling_loop_bodies_that_reuse_tensor_names_keep_their_own_shapes():
    rng = np.random.default_rng(0)
    weights = {h: (rng.standard_normal((I, 3 * h)), rng.standard_normal((h, 3 * h))) for h in (4, 6)}
    loops = [
        helper.make_node(
            "Loop",
            ["T", "", f"h0_{h}"],
            [f"last_{h}", f"ys_{h}"],
            name=f"loop{h}",
            body=_loop_body(h, f"W{h}", f"U{h}"),
        )
        for h in (4, 6)
    ]
    inits = [_init("T", T, np.int64), _init("one", 1.0)]
    inits += [_init(f"{m}{h}", weights[h][k]) for h in (4, 6) for k, m in enumerate("WU")]
    inputs = [_value("x", [None, T, I]), *(_value(f"h0_{h}", [None, h]) for h in (4, 6))]
    model = _model(loops, inputs, [_value(f"last_{h}", [None, h]) for h in (4, 6)], inits)
    exposed, layers = expose_gates(model)
    assert [(layer.name, layer.hidden_size) for layer in layers] == [("gru_cell.l0", 4), ("gru_cell.l1", 6)]
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    feeds = {"x": x, **{f"h0_{h}": np.zeros((B, h), np.float32) for h in (4, 6)}}
    outputs = _run(exposed, feeds)
    for layer, h in zip(layers, (4, 6)):
        _assert_gru(layer, outputs, _gru_reference(x, *weights[h], np.zeros((B, h))), (B, T, 1, h))


@pytest.mark.parametrize("where", ["outside the body", "a value_float Constant"])
def test_the_one_of_one_minus_z_may_live_outside_the_body_or_be_a_value_float(where):
    rng = np.random.default_rng(1)
    w, u = rng.standard_normal((I, 3 * H)), rng.standard_normal((H, 3 * H))
    body = _loop_body(
        H, "W", "U", one_outside=where == "outside the body", one_as_value_float=where != "outside the body"
    )
    loop = helper.make_node("Loop", ["T", "", "h0"], ["last", "ys"], name="loop", body=body)
    inits = [_init("T", T, np.int64), _init("W", w), _init("U", u)]
    inits += [_init("one", 1.0)] if where == "outside the body" else []
    model = _model([loop], [_value("x", [None, T, I]), _value("h0", [None, H])], [_value("last", [None, H])], inits)
    exposed, layers = expose_gates(model)
    assert [(layer.kind, layer.cell) for layer in layers] == [("GRU", "decomposed")]
    x, h0 = rng.standard_normal((B, T, I)).astype(np.float32), np.zeros((B, H), np.float32)
    _assert_gru(layers[0], _run(exposed, {"x": x, "h0": h0}), _gru_reference(x, w, u, h0), (B, T, 1, H))


def test_a_fused_node_in_a_loop_body_brings_no_generic_layer_for_the_sigmoid_head_beside_it():
    """A decoder loop: a fused GRU step, then a sigmoid stop-token head that carries no state."""
    rng = np.random.default_rng(2)
    w, r = rng.standard_normal((1, 3 * H, I)), rng.standard_normal((1, 3 * H, H))
    nodes = [
        helper.make_node("Gather", ["x", "t"], ["x_t"], axis=0),
        helper.make_node("Unsqueeze", ["x_t", "zero"], ["x_t1"]),
        helper.make_node("Unsqueeze", ["h_in", "zero"], ["h_in1"]),
        helper.make_node("GRU", ["x_t1", "W", "R", "", "", "h_in1"], ["y", "h_new1"], name="gru", hidden_size=H),
        helper.make_node("Squeeze", ["h_new1", "zero"], ["h_out"]),
        helper.make_node("MatMul", ["h_out", "P"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["stop"], name="stop_prob"),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    body = helper.make_graph(
        nodes,
        "body",
        [_value("t", [], TensorProto.INT64), _value("cond_in", [], TensorProto.BOOL), _value("h_in", [None, H])],
        [_value("cond_out", [], TensorProto.BOOL), _value("h_out", [None, H]), _value("stop", [None, 1])],
        [_init("zero", [0], np.int64)],
    )
    loop = helper.make_node("Loop", ["T", "", "h0"], ["last", "stops"], name="decoder", body=body)
    inits = [_init("W", w), _init("R", r), _init("P", rng.standard_normal((H, 1))), _init("T", T, np.int64)]
    model = _model([loop], [_value("x", [T, None, I]), _value("h0", [None, H])], [_value("last", [None, H])], inits)
    _, layers = expose_gates(model)
    assert [(layer.kind, layer.cell) for layer in layers] == [("GRU", "fused")]


def _unrolled_gru(order: list[int], h0: str, extra_nodes=(), extra_inputs=(), extra_inits=()):
    """A GRU unrolled in the main graph; step k reads x[:, order[k]]."""
    nodes, h = list(extra_nodes), h0
    for k, t in enumerate(order):
        nodes.append(helper.make_node("Gather", ["x", f"t{t}"], [f"x{t}"], axis=1))
        step, h = _gru_step(f"s{k}_", f"x{t}", h, "W", "U")
        nodes += step
    nodes.append(helper.make_node("Identity", [h], ["h_last"]))
    inits = [_init("one", 1.0), *extra_inits, *(_init(f"t{t}", t, np.int64) for t in range(T))]
    return nodes, inits, [_value("x", [None, T, I]), *extra_inputs]


def test_an_initial_state_that_is_an_activations_output_keeps_step_zero():
    """A decoder whose h0 = tanh(encoder · P): step 0's h and n are both tanh outputs; the reset
    gate tells them apart."""
    rng = np.random.default_rng(3)
    w, u, p = rng.standard_normal((I, 3 * H)), rng.standard_normal((H, 3 * H)), rng.standard_normal((6, H))
    start = [helper.make_node("MatMul", ["enc", "P"], ["pre_h0"]), helper.make_node("Tanh", ["pre_h0"], ["h0"])]
    nodes, inits, inputs = _unrolled_gru(list(range(T)), "h0", start, [_value("enc", [None, 6])])
    model = _model(nodes, inputs, [_value("h_last", [None, H])], [*inits, _init("W", w), _init("U", u), _init("P", p)])
    exposed, layers = expose_gates(model)
    x, enc = rng.standard_normal((B, T, I)).astype(np.float32), rng.standard_normal((B, 6)).astype(np.float32)
    assert [(layer.kind, layer.direction, layer.note) for layer in layers] == [("GRU", "forward", "")]
    want = _gru_reference(x, w, u, np.tanh(enc @ p))
    _assert_gru(layers[0], _run(exposed, {"x": x, "enc": enc}), want, (B, T, 1, H))


def test_a_backward_unrolled_cell_with_packed_gates_is_a_reverse_layer_in_input_time():
    rng = np.random.default_rng(4)
    w, u = rng.standard_normal((I, 3 * H)), rng.standard_normal((H, 3 * H))
    nodes, inits, inputs = _unrolled_gru(list(reversed(range(T))), "h0", extra_inputs=[_value("h0", [None, H])])
    model = _model(nodes, inputs, [_value("h_last", [None, H])], [*inits, _init("W", w), _init("U", u)])
    exposed, layers = expose_gates(model)
    assert [(layer.direction, layer.note) for layer in layers] == [("reverse", "")]
    x, h0 = rng.standard_normal((B, T, I)).astype(np.float32), np.zeros((B, H), np.float32)
    ran = _gru_reference(x[:, ::-1], w, u, h0)  # in the order the cell ran
    want = {gate: values[:, ::-1] for gate, values in ran.items()}  # in input time
    _assert_gru(layers[0], _run(exposed, {"x": x, "h0": h0}), want, (B, T, 1, H))


def test_calls_that_take_different_if_branches_count_the_layer_as_not_run_for_the_batch():
    """A batch-of-one model whose If depends on the data: replay calls it once per window."""
    rng = np.random.default_rng(5)
    w, r = rng.standard_normal((1, 3 * 3, I)), rng.standard_normal((1, 3 * 3, 3))
    gru = helper.make_node("GRU", ["x", "W", "R"], ["y"], name="gru", hidden_size=3, layout=1)
    then = helper.make_graph([gru], "then", [], [_value("y")])
    zeros = numpy_helper.from_array(np.zeros((1, T, 1, 3), np.float32))
    other = helper.make_graph([helper.make_node("Constant", [], ["y0"], value=zeros)], "else", [], [_value("y0")])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["out"], name="by_sign", then_branch=then, else_branch=other),
    ]
    model = _model(nodes, [_value("x", [1, T, I])], [_value("out")], [_init("W", w), _init("R", r), _init("zero", 0.0)])
    exposed, layers = expose_gates(model)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    gates = {name for layer in layers for name in layer.outputs.values()}

    def call(feed):
        return dict(zip(names, session.run(None, feed)))

    feeds = Feeds(primary="x", inputs={}, batch_of_one=True)
    positive = np.abs(rng.standard_normal((2, T, I))).astype(np.float32)
    outputs = run_calls(call, feeds, positive, np.arange(2), gates)
    assert all(outputs[name].shape == (2, T, 1, 3) for name in gates)  # both windows took the GRU branch
    mixed = np.stack([positive[0], -positive[1]])
    outputs = run_calls(call, feeds, mixed, np.arange(2), gates)
    assert all(outputs[name].shape == (0, 0, 1, 3) for name in gates)
    assert outputs["out"].shape == (2, T, 1, 3)  # the model's own output is joined as before


def test_a_cell_in_an_if_inside_a_loop_is_refused_with_the_reason_not_exposed_to_crash():
    """Iterations that take different branches would give the loop's scan output different shapes."""
    rng = np.random.default_rng(6)
    step, h_new = _gru_step("s_", "x_t", "h_in", "W", "U")
    then = helper.make_graph(step, "then", [], [_value(h_new, [None, H])], [_init("one", 1.0)])
    other = helper.make_graph(
        [helper.make_node("Identity", ["h_in"], ["kept"])], "else", [], [_value("kept", [None, H])]
    )
    nodes = [
        helper.make_node("Gather", ["x", "t"], ["x_t"], axis=1),
        helper.make_node("Less", ["t", "three"], ["update"]),
        helper.make_node("If", ["update"], ["h_out"], name="maybe", then_branch=then, else_branch=other),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Identity", ["h_out"], ["h_scan"]),
    ]
    body = helper.make_graph(
        nodes,
        "body",
        [_value("t", [], TensorProto.INT64), _value("cond_in", [], TensorProto.BOOL), _value("h_in", [None, H])],
        [_value("cond_out", [], TensorProto.BOOL), _value("h_out", [None, H]), _value("h_scan", [None, H])],
        [_init("three", 3, np.int64)],
    )
    loop = helper.make_node("Loop", ["T", "", "h0"], ["last", "ys"], name="loop", body=body)
    inits = [
        _init("W", rng.standard_normal((I, 3 * H))),
        _init("U", rng.standard_normal((H, 3 * H))),
        _init("T", T, np.int64),
    ]
    model = _model([loop], [_value("x", [None, T, I]), _value("h0", [None, H])], [_value("last", [None, H])], inits)
    with pytest.raises(ModelError, match="not exposed: it sits in an If inside Loop 'loop' body"):
        expose_gates(model)

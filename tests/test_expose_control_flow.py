"""Gates inside control flow: fused nodes in `If` branches and `Loop` bodies, and a loop body that
matches no known cell. Every gate is held to the ONNX spec's equations (`tests.rnn_reference`),
and the model's own outputs to the unexposed model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from reporter.model.expose import expose_gates
from tests import rnn_reference

OPSET, T, B, I, H = 17, 6, 3, 2, 4
ATOL = 1e-5
RNG = np.random.default_rng(7)
WEIGHTS = {
    kind: (
        RNG.standard_normal((1, blocks * H, I)).astype(np.float32),
        RNG.standard_normal((1, blocks * H, H)).astype(np.float32),
        RNG.standard_normal((1, 2 * blocks * H)).astype(np.float32),
    )
    for kind, blocks in (("LSTM", 4), ("GRU", 3))
}


def _value(name, dims=None, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def _recurrent(kind: str, x: str, out: str, prefix: str, extra=()) -> tuple[list, list]:
    """A fused node reading X `[T, B, I]`, its Y written to `out`; (nodes, initializers)."""
    w, r, bias = (numpy_helper.from_array(a, f"{prefix}_{n}") for a, n in zip(WEIGHTS[kind], "WRB"))
    node = helper.make_node(
        kind, [x, w.name, r.name, bias.name, *extra], [out], name=f"{prefix}_{kind.lower()}", hidden_size=H
    )
    return [node], [w, r, bias]


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _if_model():
    """then: an LSTM over X; else: a GRU over X; each branch's Y is the If's output."""
    lstm, lstm_inits = _recurrent("LSTM", "X", "then_y", "a")
    gru, gru_inits = _recurrent("GRU", "X", "else_y", "b")
    then = helper.make_graph(lstm, "then", [], [_value("then_y")], lstm_inits)
    other = helper.make_graph(gru, "else", [], [_value("else_y")], gru_inits)
    node = helper.make_node("If", ["flag"], ["Y"], name="by_rate", then_branch=then, else_branch=other)
    return _model([node], [_value("flag", [], TensorProto.BOOL), _value("X", ["T", "B", I])], [_value("Y")])


@pytest.mark.parametrize("flag, ran, idle", [(True, "LSTM", "GRU"), (False, "GRU", "LSTM")])
def test_fused_nodes_in_both_branches_of_an_if_each_taken(flag, ran, idle):
    model = _if_model()
    exposed, layers = expose_gates(model)
    assert [(layer.kind, layer.branch) for layer in layers] == [
        ("LSTM", "If 'by_rate' then_branch"),
        ("GRU", "If 'by_rate' else_branch"),
    ]
    x = RNG.standard_normal((T, B, I)).astype(np.float32)
    feeds = {"flag": np.array(flag), "X": x}
    got, plain = _run(exposed, feeds), _run(model, feeds)
    np.testing.assert_allclose(got["Y"], plain["Y"], rtol=0, atol=ATOL)
    taken = next(layer for layer in layers if layer.kind == ran)
    want = rnn_reference.run(ran, x, *WEIGHTS[ran], linear_before_reset=0).gates
    for gate, name in taken.outputs.items():
        assert got[name].shape == (B, T, 1, H)
        assert np.abs(got[name] - want[gate]).max() <= ATOL, (ran, gate)
    other = next(layer for layer in layers if layer.kind == idle)
    assert all(got[name].shape == (0, 0, 1, H) for name in other.outputs.values())  # did not run


def _loop_model():
    """A Loop over time: each iteration feeds one step [1, B, I] to an LSTM whose state is carried."""
    lstm, inits = _recurrent("LSTM", "x_t", "y_t", "s", extra=("", "h_in", "c_in"))
    lstm[0].output.extend(["h_out", "c_out"])
    body_nodes = [
        helper.make_node("Gather", ["X", "iteration"], ["x_row"], axis=0),
        helper.make_node("Unsqueeze", ["x_row", "zero"], ["x_t"]),
        *lstm,
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Squeeze", ["y_t", "one"], ["y_step"]),
    ]
    body = helper.make_graph(
        body_nodes,
        "body",
        [
            _value("iteration", [], TensorProto.INT64),
            _value("cond_in", [], TensorProto.BOOL),
            _value("h_in"),
            _value("c_in"),
        ],
        [_value("cond_out", [], TensorProto.BOOL), _value("h_out"), _value("c_out"), _value("y_step")],
        [
            *inits,
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ],
    )
    outer = [
        helper.make_node("Shape", ["X"], ["shape"]),
        helper.make_node("Gather", ["shape", "first"], ["steps"]),
        helper.make_node("Loop", ["steps", "", "h0", "c0"], ["h_last", "c_last", "Y"], name="over_time", body=body),
    ]
    zeros = np.zeros((1, B, H), np.float32)
    return _model(
        outer,
        [_value("X", ["T", B, I])],
        [_value("Y"), _value("h_last")],
        [
            numpy_helper.from_array(zeros, "h0"),
            numpy_helper.from_array(zeros, "c0"),
            numpy_helper.from_array(np.array([0], np.int64), "first"),
        ],
    )


def test_a_fused_node_in_a_loop_body_gives_one_trace_along_the_loops_steps():
    model = _loop_model()
    exposed, layers = expose_gates(model)
    assert [(layer.kind, layer.branch, layer.cell) for layer in layers] == [("LSTM", "Loop 'over_time' body", "fused")]
    x = RNG.standard_normal((T, B, I)).astype(np.float32)
    got, plain = _run(exposed, {"X": x}), _run(model, {"X": x})
    for name in ("Y", "h_last"):
        np.testing.assert_allclose(got[name], plain[name], rtol=0, atol=ATOL)
    want = rnn_reference.run("LSTM", x, *WEIGHTS["LSTM"]).gates  # the whole sequence in one node
    for gate, name in layers[0].outputs.items():
        assert got[name].shape == (B, T, 1, H)
        assert np.abs(got[name] - want[gate]).max() <= ATOL, gate


def mystery_body(x: str, batch, u: np.ndarray, v: np.ndarray) -> onnx.GraphProto:
    """A Loop body over x [time, batch, features] whose state update is no known cell:
    s' = σ(x·U + s·V) · tanh(s) + x·U, its steps scanned out as `s_step`."""
    hidden = v.shape[0]
    nodes = [
        helper.make_node("Gather", [x, "iteration"], ["x_t"], axis=0),
        helper.make_node("MatMul", ["x_t", "U"], ["xu"]),
        helper.make_node("MatMul", ["s_in", "V"], ["sv"]),
        helper.make_node("Add", ["xu", "sv"], ["pre"]),
        helper.make_node("Sigmoid", ["pre"], ["squash"], name="squash"),
        helper.make_node("Tanh", ["s_in"], ["bent"], name="bend"),
        helper.make_node("Mul", ["squash", "bent"], ["mixed"]),
        helper.make_node("Add", ["mixed", "xu"], ["s_out"]),
        helper.make_node("Identity", ["s_out"], ["s_step"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    state = [batch, hidden]
    return helper.make_graph(
        nodes,
        "body",
        [_value("iteration", [], TensorProto.INT64), _value("cond_in", [], TensorProto.BOOL), _value("s_in", state)],
        [_value("cond_out", [], TensorProto.BOOL), _value("s_out", state), _value("s_step", state)],
        [numpy_helper.from_array(u, "U"), numpy_helper.from_array(v, "V")],
    )


def _generic_model():
    """The mystery body in a Loop over X [T, B, I]."""
    u = RNG.standard_normal((I, H)).astype(np.float32)
    v = RNG.standard_normal((H, H)).astype(np.float32)
    outer = [
        helper.make_node("Loop", ["steps", "", "s0"], ["s_last", "S"], name="mystery", body=mystery_body("X", B, u, v))
    ]
    inits = [
        numpy_helper.from_array(np.zeros((B, H), np.float32), "s0"),
        numpy_helper.from_array(np.array(T, np.int64), "steps"),
    ]
    return _model(outer, [_value("X", [T, B, I])], [_value("S")], inits), u, v


def test_a_recurrent_body_matching_no_known_cell_is_a_generic_layer_of_its_nodes():
    model, u, v = _generic_model()
    exposed, layers = expose_gates(model)
    assert len(layers) == 1
    layer = layers[0]
    assert (layer.kind, layer.cell, layer.hidden_size, sorted(layer.outputs)) == (
        "generic",
        "generic",
        H,
        ["bend", "squash"],
    )
    assert layer.activations == {"squash": "Sigmoid", "bend": "Tanh"} and "no known cell" in layer.note
    x = RNG.standard_normal((T, B, I)).astype(np.float32)
    got = _run(exposed, {"X": x})
    s, squash, bend = np.zeros((B, H)), [], []
    for t in range(T):
        squash.append(1 / (1 + np.exp(-(x[t] @ u + s @ v))))
        bend.append(np.tanh(s))
        s = squash[-1] * bend[-1] + x[t] @ u
    np.testing.assert_allclose(got["S"][-1], s, rtol=0, atol=ATOL)
    for gate, want in (("squash", squash), ("bend", bend)):
        expected = np.stack(want, 1)[:, :, None, :]
        assert got[layer.outputs[gate]].shape == (B, T, 1, H)
        assert np.abs(got[layer.outputs[gate]] - expected).max() <= ATOL, gate


@pytest.mark.parametrize("build", [_if_model, _loop_model, lambda: _generic_model()[0]], ids=["if", "loop", "generic"])
def test_exposing_twice_is_a_no_op_and_the_input_model_is_untouched(build):
    model = build()
    before = model.SerializeToString()
    exposed, layers = expose_gates(model)
    assert model.SerializeToString() == before
    again, layers_again = expose_gates(exposed)
    assert again.SerializeToString() == exposed.SerializeToString() and layers_again == layers


def _reverse_scan_gru():
    """A GRU cell written with elementary ops as the body of a Scan that reads X from its last step."""
    weights = {name: RNG.standard_normal(shape).astype(np.float32) for name, shape in _GRU_SHAPES.items()}
    nodes = [
        helper.make_node("MatMul", ["x_t", "Wz"], ["xz"]),
        helper.make_node("MatMul", ["h_in", "Uz"], ["hz"]),
        helper.make_node("Add", ["xz", "hz"], ["z_pre"]),
        helper.make_node("Sigmoid", ["z_pre"], ["z"]),
        helper.make_node("MatMul", ["x_t", "Wr"], ["xr"]),
        helper.make_node("MatMul", ["h_in", "Ur"], ["hr"]),
        helper.make_node("Add", ["xr", "hr"], ["r_pre"]),
        helper.make_node("Sigmoid", ["r_pre"], ["r"]),
        helper.make_node("Mul", ["r", "h_in"], ["reset"]),
        helper.make_node("MatMul", ["reset", "Un"], ["hn"]),
        helper.make_node("MatMul", ["x_t", "Wn"], ["xn"]),
        helper.make_node("Add", ["xn", "hn"], ["n_pre"]),
        helper.make_node("Tanh", ["n_pre"], ["n"]),
        helper.make_node("Mul", ["z", "h_in"], ["kept"]),
        helper.make_node("Sub", ["one", "z"], ["z_left"]),
        helper.make_node("Mul", ["z_left", "n"], ["written"]),
        helper.make_node("Add", ["kept", "written"], ["h_out"]),
        helper.make_node("Identity", ["h_out"], ["y_t"]),
    ]
    body = helper.make_graph(
        nodes,
        "body",
        [_value("h_in", [B, H]), _value("x_t", [B, I])],
        [_value("h_out", [B, H]), _value("y_t", [B, H])],
        [
            *(numpy_helper.from_array(value, name) for name, value in weights.items()),
            numpy_helper.from_array(np.array(1, np.float32), "one"),
        ],
    )
    scan = helper.make_node(
        "Scan", ["h0", "X"], ["h_last", "Y"], name="backwards", body=body, num_scan_inputs=1, scan_input_directions=[1]
    )
    inits = [numpy_helper.from_array(np.zeros((B, H), np.float32), "h0")]
    return _model([scan], [_value("X", [T, B, I])], [_value("Y"), _value("h_last")], inits), weights


_GRU_SHAPES = {"Wz": (I, H), "Uz": (H, H), "Wr": (I, H), "Ur": (H, H), "Wn": (I, H), "Un": (H, H)}


def test_a_cell_in_a_reverse_scan_body_is_a_reverse_layer_in_input_time():
    model, w = _reverse_scan_gru()
    exposed, layers = expose_gates(model)
    assert [(layer.kind, layer.cell, layer.direction, layer.branch) for layer in layers] == [
        ("GRU", "decomposed", "reverse", "Scan 'backwards' body")
    ]
    x = RNG.standard_normal((T, B, I)).astype(np.float32)
    got, plain = _run(exposed, {"X": x}), _run(model, {"X": x})
    for name in ("Y", "h_last"):
        np.testing.assert_allclose(got[name], plain[name], rtol=0, atol=ATOL)
    h, want = np.zeros((B, H)), {gate: [None] * T for gate in "zrnh"}
    for t in reversed(range(T)):  # the Scan's order
        z = 1 / (1 + np.exp(-(x[t] @ w["Wz"] + h @ w["Uz"])))
        r = 1 / (1 + np.exp(-(x[t] @ w["Wr"] + h @ w["Ur"])))
        n = np.tanh(x[t] @ w["Wn"] + (r * h) @ w["Un"])
        h = z * h + (1 - z) * n
        for gate, value in zip("zrnh", (z, r, n, h)):
            want[gate][t] = value  # stored at the input step it read
    for gate, name in layers[0].outputs.items():
        assert got[name].shape == (B, T, 1, H)
        assert np.abs(got[name][:, :, 0] - np.stack(want[gate], 1)).max() <= ATOL, gate


def test_fused_nodes_in_nested_ifs_say_their_whole_path_and_run_only_when_both_branches_are_taken():
    inner = _if_model().graph.node[0]  # If 'by_rate': LSTM then, GRU else
    inner.name = "inner"
    outer_then = helper.make_graph([inner], "outer_then", [], [_value("Y")])
    outer_else = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["X_out"])], "outer_else", [], [_value("X_out")]
    )
    node = helper.make_node("If", ["outer_flag"], ["out"], name="outer", then_branch=outer_then, else_branch=outer_else)
    inputs = [
        _value("outer_flag", [], TensorProto.BOOL),
        _value("flag", [], TensorProto.BOOL),
        _value("X", ["T", "B", I]),
    ]
    model = _model([node], inputs, [_value("out")])
    exposed, layers = expose_gates(model)
    assert [layer.branch for layer in layers] == [
        "If 'outer' then_branch › If 'inner' then_branch",
        "If 'outer' then_branch › If 'inner' else_branch",
    ]
    x = RNG.standard_normal((T, B, I)).astype(np.float32)
    lstm, gru = layers
    for outer_flag, flag, ran in [(True, True, lstm), (True, False, gru), (False, True, None)]:
        feeds = {"outer_flag": np.array(outer_flag), "flag": np.array(flag), "X": x}
        got, plain = _run(exposed, feeds), _run(model, feeds)
        np.testing.assert_allclose(got["out"], plain["out"], rtol=0, atol=ATOL)
        for layer in layers:
            shapes = {got[name].shape for name in layer.outputs.values()}
            assert shapes == ({(B, T, 1, H)} if layer is ran else {(0, 0, 1, H)}), (outer_flag, flag, layer.kind)
        if ran is not None:
            want = rnn_reference.run(ran.kind, x, *WEIGHTS[ran.kind]).gates
            for gate, name in ran.outputs.items():
                assert np.abs(got[name] - want[gate]).max() <= ATOL, (ran.kind, gate)


def test_inlined_torch_names_read_as_module_paths_and_alternatives_in_branches_keep_them_apart():
    """As in a VAD model shipped with its functions inlined: each branch holds "…__Inline_0__/decoder/rnn/LSTM"."""
    model = _if_model()
    then, other = (a.g for a in model.graph.node[0].attribute)
    then.node[0].name = "If_0_then_branch__Inline_0__/decoder/rnn/LSTM"
    other.node[0].name = "If_0_else_branch__Inline_0__/decoder/rnn/GRU"
    _, layers = expose_gates(model)
    assert [layer.name for layer in layers] == ["decoder.rnn.l0", "decoder.rnn.l0@else"]

"""Gradient flow through time (`replay.gradient_flow`) against torch autograd on the same weights.

The oracle runs each layer direction as an explicit cell loop in torch float64, keeps every h_t and
x_t as tensors, and asks autograd for d h_T / d h_t and d h_T / d x_t, one output unit at a time.
Torch models use torch's own weights and gate order (LSTM i f g o, GRU r z n); the hand-built
nodes (linear_before_reset=0, layout 1, initial states) use the ONNX equations. The gates the code
under test reads come from the repo's export and exposure, run in onnxruntime (float32).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from reporter.layers import Layer
from reporter.model.export import export_module
from reporter.model.expose import expose_gates
from reporter.replay.gradient_flow import (
    GRADIENT_COLUMNS,
    SUMMARY_COLUMNS,
    UNIT_GRADIENT_COLUMNS,
    _layer_norms,
    gradient_flow,
    gradient_summary,
)
from reporter.replay.gradient_summary import verdict

FEATURES, HIDDEN, STEPS, WINDOWS = 3, 5, 7, 4
TOLERANCE = 1e-5  # relative to max(1, |value|)
OPSET = 20


def _assert_close(got, want) -> float:
    """|got − want| ≤ TOLERANCE · max(1, |want|) everywhere; return the largest such relative error."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    error = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert np.all(np.isfinite(got)) and error.max() <= TOLERANCE, error.max()
    return float(error.max())


# The oracle: torch autograd through an explicit cell loop


@dataclass
class Norms:
    """Per window and lag: Frobenius norms of d h_T/d h_{T−L} and d h_T/d x_{T−L}, and the unit columns."""

    state: np.ndarray  # [N, T]
    input: np.ndarray  # [N, T]
    units: np.ndarray  # [N, T, H]


def _autograd(step, xs: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[Norms, torch.Tensor]:
    """Run `step(x, h, c) -> (h, c)` over xs [N, T, I] (the direction's order); the norms by lag and the hs."""
    steps = xs.shape[1]
    inputs = [xs[:, t].clone().requires_grad_(True) for t in range(steps)]
    h, c, hs = h0, c0, []
    for x in inputs:
        h, c = step(x, h, c)
        hs.append(h)
    n, hidden = h.shape
    jac_h = torch.zeros(n, steps, hidden, hidden, dtype=torch.float64)
    jac_x = torch.zeros(n, steps, hidden, xs.shape[2], dtype=torch.float64)
    for k in range(hidden):  # row k of every Jacobian; windows are independent, so their sum separates
        grads = torch.autograd.grad(hs[-1][:, k].sum(), hs + inputs, retain_graph=True)
        for t in range(steps):
            jac_h[:, t, k], jac_x[:, t, k] = grads[t], grads[steps + t]
    jac_h, jac_x = jac_h.flip(1).numpy(), jac_x.flip(1).numpy()  # index = lag
    norms = Norms(np.linalg.norm(jac_h, axis=(2, 3)), np.linalg.norm(jac_x, axis=(2, 3)), np.linalg.norm(jac_h, axis=2))
    return norms, torch.stack(hs, dim=1).detach()


def _torch_step(kind: str, p: dict[str, torch.Tensor]):
    """torch's cell equations on torch's weights (LSTM gates i f g o, GRU r z n)."""

    def step(x, h, c):
        gi, gh = x @ p["weight_ih"].T + p["bias_ih"], h @ p["weight_hh"].T + p["bias_hh"]
        if kind == "LSTM":
            i, f, g, o = (gi + gh).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        (ir, iz, i_n), (hr, hz, h_n) = gi.chunk(3, dim=-1), gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h, c

    return step


def _torch_oracle(module: torch.nn.RNNBase, x: np.ndarray) -> tuple[list[list[Norms]], torch.Tensor]:
    """Per layer, per direction (forward, reverse) the autograd norms; and the last layer's output."""
    inputs, n = torch.from_numpy(x).double(), x.shape[0]
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    layers = []
    for layer in range(module.num_layers):
        per_direction, outputs = [], []
        for reverse in (False, True)[: 2 if module.bidirectional else 1]:
            suffix = f"_l{layer}" + ("_reverse" if reverse else "")
            p = {name: getattr(module, name + suffix).detach().double() for name in names}
            zeros = torch.zeros(n, module.hidden_size, dtype=torch.float64)
            norms, hs = _autograd(_torch_step(module.mode, p), inputs.flip(1) if reverse else inputs, zeros, zeros)
            per_direction.append(norms)
            outputs.append(hs.flip(1) if reverse else hs)
        layers.append(per_direction)
        inputs = torch.cat(outputs, dim=2)
    return layers, inputs


def _gates(exposed: onnx.ModelProto, layers: list[Layer], feeds: dict[str, np.ndarray]) -> dict:
    """Every layer's gates {layer: {gate: [N, T, D, H]}} from onnxruntime."""
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    return {layer.name: {gate: outputs[name] for gate, name in layer.outputs.items()} for layer in layers}


def _oracle_half_life(curve: np.ndarray) -> float:
    """Lags until a curve (1 at lag 0) falls to ≤ 0.5, linear between the two lags around it."""
    for lag in range(1, len(curve)):
        if curve[lag] <= 0.5:
            return lag - 1 + (curve[lag - 1] - 0.5) / (curve[lag - 1] - curve[lag])
    return float("nan")


# Torch models through the repo's export and exposure


@dataclass
class TorchCase:
    """One torch model, exported, exposed and replayed, with its autograd oracle."""

    model: onnx.ModelProto
    layers: list[Layer]
    gates: dict
    oracle: list[list[Norms]]


TORCH_CASES = [("LSTM", 2, True), ("LSTM", 1, False), ("GRU", 1, True), ("GRU", 2, False)]


@pytest.fixture(scope="module", params=TORCH_CASES, ids=lambda c: f"{c[0]}-{c[1]}layer-{'bi' if c[2] else 'uni'}")
def torch_case(request) -> TorchCase:
    kind, num_layers, bidirectional = request.param
    torch.manual_seed(3)
    module = getattr(torch.nn, kind)(FEATURES, HIDDEN, num_layers, batch_first=True, bidirectional=bidirectional)
    with torch.no_grad():  # larger than torch's init, so gates leave their linear range
        for parameter in module.parameters():
            parameter.mul_(2.0)
    x = np.random.default_rng(5).standard_normal((WINDOWS, STEPS, FEATURES)).astype(np.float32)
    model = export_module(module.eval(), x[:2]).model
    exposed, layers = expose_gates(model)
    oracle, last = _torch_oracle(module, x.astype(np.float64))
    with torch.no_grad():  # the oracle's loop is torch's module
        want = copy.deepcopy(module).double()(torch.from_numpy(x).double())[0]
    np.testing.assert_allclose(last.numpy(), want.numpy(), atol=1e-12)
    return TorchCase(model, layers, _gates(exposed, layers, {"x": x}), oracle)


def test_per_window_norms_equal_autograd(torch_case):
    errors = []
    assert len(torch_case.layers) == len(torch_case.oracle)
    for layer, oracle in zip(torch_case.layers, torch_case.oracle):
        got = _layer_norms(torch_case.model, layer, torch_case.gates[layer.name], max_windows=None)
        assert [name for name, *_ in got] == ["forward", "reverse"][: len(oracle)]
        for (_, state, inputs, units), want in zip(got, oracle):
            errors += [_assert_close(state, want.state), _assert_close(inputs, want.input)]
            errors.append(_assert_close(units, want.units))
    print(f"max relative error vs autograd: {max(errors):.2e}")


def test_frame_holds_scaled_means_and_percentiles(torch_case):
    flow, _ = gradient_flow(torch_case.model, torch_case.layers, torch_case.gates, max_windows=None)
    scale = np.sqrt(HIDDEN)
    for layer, oracle in zip(torch_case.layers, torch_case.oracle):
        for direction, want in zip(("forward", "reverse"), oracle):
            for target, norms in (("state", want.state), ("input", want.input)):
                rows = flow[(flow.layer == layer.name) & (flow.direction == direction) & (flow.target == target)]
                assert rows["lag"].tolist() == list(range(STEPS))
                _assert_close(rows["norm"], norms.mean(axis=0) / scale)
                _assert_close(rows["low"], np.percentile(norms / scale, 10, axis=0))
                _assert_close(rows["high"], np.percentile(norms / scale, 90, axis=0))
    state_lag0 = flow[(flow.target == "state") & (flow.lag == 0)]["norm"]
    assert len(state_lag0) == sum(len(o) for o in torch_case.oracle) and (state_lag0 == 1.0).all()


def test_unit_half_lives_equal_autograd(torch_case):
    _, units = gradient_flow(torch_case.model, torch_case.layers, torch_case.gates, max_windows=None)
    finite = 0
    for layer, oracle in zip(torch_case.layers, torch_case.oracle):
        for direction, want in zip(("forward", "reverse"), oracle):
            rows = units[(units.layer == layer.name) & (units.direction == direction)]
            assert rows["unit"].tolist() == list(range(HIDDEN))
            curves = want.units.mean(axis=0)  # [T, H]
            expected = np.array([_oracle_half_life(curves[:, k]) for k in range(HIDDEN)])
            got = rows["half_life"].to_numpy()
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
            _assert_close(got[~np.isnan(got)], expected[~np.isnan(expected)])
            finite += int((~np.isnan(expected)).sum())
            lags = np.arange(curves.shape[0])
            assert rows["verdict"].tolist() == [verdict(lags, curves[:, k]) for k in range(HIDDEN)]
    assert finite > 0  # some units' influence halves within the window, so the interpolation is tested


def test_max_windows_takes_the_first_windows(torch_case):
    flow, _ = gradient_flow(torch_case.model, torch_case.layers, torch_case.gates, max_windows=2)
    layer, want = torch_case.layers[0], torch_case.oracle[0][0]
    rows = flow[(flow.layer == layer.name) & (flow.direction == "forward") & (flow.target == "input")]
    _assert_close(rows["norm"], want.input[:2].mean(axis=0) / np.sqrt(HIDDEN))
    assert not np.allclose(rows["norm"], want.input.mean(axis=0) / np.sqrt(HIDDEN), rtol=1e-3)


def test_frames_have_exact_columns_and_types(torch_case):
    flow, units = gradient_flow(torch_case.model, torch_case.layers, torch_case.gates)
    assert tuple(flow.columns) == GRADIENT_COLUMNS and tuple(units.columns) == UNIT_GRADIENT_COLUMNS
    assert flow["lag"].dtype == np.int64 and units["unit"].dtype == np.int64
    assert all(flow[c].dtype == np.float64 for c in ("norm", "low", "high")) and units["half_life"].dtype == np.float64
    directions = sum(len(o) for o in torch_case.oracle)
    assert len(flow) == directions * 2 * STEPS and len(units) == directions * HIDDEN


# Hand-built ONNX nodes: linear_before_reset=0, layout 1, reverse, initial states


def _onnx_step(kind: str, w, r, wb, rb, linear_before_reset: bool):
    """The ONNX operator's equations (blocks LSTM i o f c, GRU z r h) on one direction's weights."""
    blocks = 4 if kind == "LSTM" else 3
    ws, rs, wbs, rbs = (t.chunk(blocks, dim=0) for t in (w, r, wb, rb))

    def pre(k, x, h):
        return x @ ws[k].T + h @ rs[k].T + wbs[k] + rbs[k]

    def step(x, h, c):
        if kind == "LSTM":
            i, o, f = (torch.sigmoid(pre(k, x, h)) for k in range(3))
            g = torch.tanh(pre(3, x, h))
            c = f * c + i * g
            return o * torch.tanh(c), c
        z, reset = torch.sigmoid(pre(0, x, h)), torch.sigmoid(pre(1, x, h))
        if linear_before_reset:
            n = torch.tanh(x @ ws[2].T + wbs[2] + reset * (h @ rs[2].T + rbs[2]))
        else:
            n = torch.tanh(x @ ws[2].T + wbs[2] + (reset * h) @ rs[2].T + rbs[2])
        return (1 - z) * n + z * h, c

    return step


@dataclass
class NodeCase:
    """One hand-built recurrent node."""

    kind: str
    direction: str = "forward"
    layout: int = 0
    linear_before_reset: int = 0
    bias: bool = True
    initial_batch: int | None = None  # initial_h (and initial_c) as initializers of this batch; None: absent
    fed_initial_c: bool = False  # initial_c as a graph input: the first step's input Jacobian is unknown

    @property
    def directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1


NODE_CASES = {
    "gru-lbr0-reverse-initial-per-window": NodeCase("GRU", "reverse", initial_batch=WINDOWS),
    "gru-lbr1-bidirectional-layout1-initial": NodeCase("GRU", "bidirectional", 1, 1, initial_batch=WINDOWS),
    "gru-lbr0-bidirectional-no-bias": NodeCase("GRU", "bidirectional", bias=False),
    "lstm-layout1-initial-no-bias": NodeCase("LSTM", layout=1, bias=False, initial_batch=WINDOWS),
    "lstm-reverse-fed-initial-c": NodeCase("LSTM", "reverse", fed_initial_c=True),
}


def _node_model(case: NodeCase) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The one-node model, its feeds, and every input's value (for the oracle)."""
    rng = np.random.default_rng(11)
    d, blocks = case.directions, 4 if case.kind == "LSTM" else 3
    values = {
        "W": rng.standard_normal((d, blocks * HIDDEN, FEATURES)) * 0.8,
        "R": rng.standard_normal((d, blocks * HIDDEN, HIDDEN)) * 0.8,
        "B": rng.standard_normal((d, 2 * blocks * HIDDEN)) * 0.5 if case.bias else np.zeros((d, 2 * blocks * HIDDEN)),
        "initial_h": np.zeros((d, WINDOWS, HIDDEN)),
        "initial_c": np.zeros((d, WINDOWS, HIDDEN)),
    }
    x = rng.standard_normal((WINDOWS, STEPS, FEATURES))
    initializers, fed = ["W", "R"] + (["B"] if case.bias else []), {}
    if case.initial_batch:
        for slot in ("initial_h", "initial_c")[: 2 if case.kind == "LSTM" else 1]:
            values[slot] = np.broadcast_to(rng.standard_normal((d, case.initial_batch, HIDDEN)), (d, WINDOWS, HIDDEN))
            initializers.append(slot)
    if case.fed_initial_c:
        values["initial_c"] = rng.standard_normal((d, WINDOWS, HIDDEN))
        fed["initial_c"] = values["initial_c"]

    def stored(slot: str) -> np.ndarray:
        value = (
            values[slot][:, : case.initial_batch] if slot.startswith("initial") and slot not in fed else values[slot]
        )
        return value.transpose(1, 0, 2) if slot.startswith("initial") and case.layout else value

    slots = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c"]
    node_inputs = [s if s == "X" or s in initializers or s in fed else "" for s in slots]
    while node_inputs[-1] == "":
        node_inputs.pop()
    attrs = {"direction": case.direction, "hidden_size": HIDDEN, "layout": case.layout}
    if case.kind == "GRU":
        attrs["linear_before_reset"] = case.linear_before_reset
    node = helper.make_node(case.kind, node_inputs, ["Y"], name="rnn_node", **attrs)
    x_feed = (x if case.layout else x.transpose(1, 0, 2)).astype(np.float32)
    feeds = {"X": x_feed} | {k: stored(k).astype(np.float32) for k in fed}
    graph_inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in feeds.items()]
    y_shape = [WINDOWS, STEPS, d, HIDDEN] if case.layout else [STEPS, d, WINDOWS, HIDDEN]
    graph = helper.make_graph(
        [node],
        "one_recurrent_node",
        graph_inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(stored(k).astype(np.float32), k) for k in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    values = {k: v.astype(np.float32).astype(np.float64) for k, v in values.items()}  # what the model holds
    return model, feeds, values | {"X": x.astype(np.float32).astype(np.float64)}


def _node_oracle(case: NodeCase, values: dict[str, np.ndarray]) -> list[Norms]:
    """Per direction, the autograd norms of the node's ONNX equations."""
    blocks, out = 4 if case.kind == "LSTM" else 3, []
    x = torch.from_numpy(values["X"])
    for d, reverse in enumerate((False, True) if case.directions == 2 else (case.direction == "reverse",)):
        w, r, b = (torch.from_numpy(values[k][d]) for k in ("W", "R", "B"))
        step = _onnx_step(case.kind, w, r, b[: blocks * HIDDEN], b[blocks * HIDDEN :], case.linear_before_reset)
        h0, c0 = (torch.from_numpy(np.ascontiguousarray(values[k][d])) for k in ("initial_h", "initial_c"))
        out.append(_autograd(step, x.flip(1) if reverse else x, h0, c0)[0])
    return out


@pytest.mark.parametrize("name", NODE_CASES)
def test_hand_built_nodes_equal_autograd(name):
    case = NODE_CASES[name]
    model, feeds, values = _node_model(case)
    exposed, layers = expose_gates(model)
    gates = _gates(exposed, layers, feeds)
    oracle = _node_oracle(case, values)
    got = _layer_norms(model, layers[0], gates[layers[0].name], max_windows=None)
    names = ["forward", "reverse"] if case.directions == 2 else [case.direction]
    assert [n for n, *_ in got] == names
    for (_, state, inputs, units), want in zip(got, oracle):
        _assert_close(state, want.state)
        _assert_close(units, want.units)
        if case.fed_initial_c:  # only the first step's input Jacobian needs the state before it
            assert np.isnan(inputs[:, -1]).all()
            _assert_close(inputs[:, :-1], want.input[:, :-1])
        else:
            _assert_close(inputs, want.input)
    flow, _ = gradient_flow(model, layers, gates, max_windows=None)
    lags = flow[flow.target == "input"].groupby("direction")["lag"].max()
    assert (lags == STEPS - (2 if case.fed_initial_c else 1)).all()
    assert (flow[flow.target == "state"].groupby("direction")["lag"].max() == STEPS - 1).all()


def test_per_window_initial_state_follows_max_windows():
    case = NODE_CASES["gru-lbr0-reverse-initial-per-window"]
    model, feeds, values = _node_model(case)
    exposed, layers = expose_gates(model)
    gates = _gates(exposed, layers, feeds)
    want = _node_oracle(case, values)[0]
    (_, _, inputs, _), *_ = _layer_norms(model, layers[0], gates[layers[0].name], max_windows=2)
    _assert_close(inputs, want.input[:2])


# Layers whose gradients cannot be read exactly give no rows


def _plain_lstm(**change) -> tuple[onnx.ModelProto, list[Layer], dict]:
    """A tiny forward LSTM node (H=3, I=2), with `change` applied: attributes, peepholes, fed weights."""
    rng = np.random.default_rng(0)
    hidden, features = 3, 2
    weights = {"W": rng.standard_normal((1, 4 * hidden, features)), "R": rng.standard_normal((1, 4 * hidden, hidden))}
    peepholes = change.pop("P", None)
    fed_w = change.pop("fed_w", False)
    cell = change.pop("cell", "fused")
    inputs = ["X", "W", "R"] + (["", "", "", "", "P"] if peepholes is not None else [])
    if peepholes is not None:
        weights["P"] = np.full((1, 3 * hidden), peepholes)
    node = helper.make_node("LSTM", inputs, ["Y"], name="rnn", hidden_size=hidden, **change)
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 2, features])]
    if fed_w:
        graph_inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [1, 4 * hidden, features]))
    initializers = [
        numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items() if not fed_w or k != "W"
    ]
    output = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 1, 2, hidden])
    graph = helper.make_graph([node], "g", graph_inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    layer = Layer("lstm", "LSTM", 1, hidden, {g: g for g in "ifgoch"}, node="rnn", cell=cell)
    gates = {"lstm": {g: rng.uniform(0.1, 0.9, (2, 4, 1, hidden)).astype(np.float32) for g in "ifgoch"}}
    return model, [layer], gates


UNSUPPORTED = {
    "clip": {"clip": 1.0},
    "input_forget": {"input_forget": 1},
    "activations": {"activations": ["Sigmoid", "Relu", "Tanh"]},
    "peepholes": {"P": 0.3},
    "weights fed as inputs": {"fed_w": True},
    "decomposed cell": {"cell": "decomposed"},
}


@pytest.mark.parametrize("change", UNSUPPORTED.values(), ids=list(UNSUPPORTED))
def test_unsupported_layers_give_no_rows(change):
    flow, units = gradient_flow(*_plain_lstm(**dict(change)))
    assert flow.empty and units.empty
    assert tuple(flow.columns) == GRADIENT_COLUMNS and tuple(units.columns) == UNIT_GRADIENT_COLUMNS
    assert flow["lag"].dtype == np.int64 and flow["norm"].dtype == np.float64 and units["unit"].dtype == np.int64


@pytest.mark.parametrize(
    "change", [{}, {"P": 0.0}, {"activations": ["sigmoid", "tanh", "tanh"]}], ids=["plain", "zero P", "spelled"]
)
def test_the_same_node_without_the_obstacle_gives_rows(change):
    flow, units = gradient_flow(*_plain_lstm(**dict(change)))
    assert len(flow) == 2 * 4 and len(units) == 3


# gradient_summary on known curves


def _flow(curves: dict[str, np.ndarray]) -> pd.DataFrame:
    """A flow frame of the given "state" curves (one layer each, lags descending), then huge "input" rows."""
    rows = [(name, "forward", "state", lag, v, v, v) for name, curve in curves.items() for lag, v in enumerate(curve)]
    rows = sorted(rows, key=lambda row: -row[3])
    rows += [(name, "forward", "input", lag, 1e6, 1e6, 1e6) for name, curve in curves.items() for lag in range(12)]
    return pd.DataFrame(rows, columns=list(GRADIENT_COLUMNS))


def test_summary_reads_half_life_peak_final_and_verdict():
    lags = np.arange(12.0)
    curves = {
        "decay": 0.5 ** (lags / 3),
        "linear": np.clip(1.0 - 0.2 * lags, 0.01, None),
        "growing": 1.5**lags,
        "collapsing": 0.1**lags,
        "short collapse": 0.1 ** np.arange(5.0),
        "late drop": np.r_[np.ones(11) * 0.9, 1e-9],
        "flat": np.r_[1.0, np.full(11, 0.9)],
    }
    curves["late drop"][0] = 1.0
    summary = gradient_summary(_flow(curves)).set_index("layer")
    assert tuple(gradient_summary(_flow(curves)).columns) == SUMMARY_COLUMNS
    assert set(summary.index) == set(curves) and len(summary) == len(curves)
    assert summary.loc["decay", "half_life"] == pytest.approx(3.0)
    assert summary.loc["linear", "half_life"] == pytest.approx(2.5)
    assert summary.loc["collapsing", "half_life"] == pytest.approx(0.5 / 0.9)
    assert summary.loc["late drop", "half_life"] == pytest.approx(10 + 0.4 / (0.9 - 1e-9))
    assert np.isnan(summary.loc["growing", "half_life"]) and np.isnan(summary.loc["flat", "half_life"])
    assert summary.loc["decay", "final"] == pytest.approx(0.5 ** (11 / 3))
    assert summary.loc["decay", "peak"] == pytest.approx(0.5 ** (1 / 3))
    assert summary.loc["growing", "peak"] == pytest.approx(1.5**11)
    assert summary["verdict"].to_dict() == {
        "decay": "steady",
        "linear": "steady",
        "growing": "exploding",
        "collapsing": "vanishing",
        "short collapse": "vanishing",
        "late drop": "steady",
        "flat": "steady",
    }


def test_summary_of_no_rows_is_an_empty_frame_with_its_columns():
    summary = gradient_summary(pd.DataFrame({c: pd.Series(dtype=object) for c in GRADIENT_COLUMNS}))
    assert summary.empty and tuple(summary.columns) == SUMMARY_COLUMNS


def test_summary_of_a_real_flow_follows_its_state_curves(torch_case):
    flow, _ = gradient_flow(torch_case.model, torch_case.layers, torch_case.gates, max_windows=None)
    summary = gradient_summary(flow)
    expected = [
        (layer.name, d)
        for layer, o in zip(torch_case.layers, torch_case.oracle)
        for d in ("forward", "reverse")[: len(o)]
    ]
    assert list(zip(summary.layer, summary.direction)) == expected
    curves = [want.state.mean(axis=0) / np.sqrt(HIDDEN) for oracle in torch_case.oracle for want in oracle]
    halves = np.array([_oracle_half_life(curve) for curve in curves])
    np.testing.assert_array_equal(np.isnan(summary["half_life"]), np.isnan(halves))
    _assert_close(summary["half_life"].fillna(0.0), np.nan_to_num(halves))
    _assert_close(summary["final"], [curve[-1] for curve in curves])

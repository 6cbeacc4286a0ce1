"""Cells built from elementary ops: the values of their exposed gates, not only that they were found.

No fused LSTM/GRU/RNN node is left in these models: tf2onnx writes four Keras layers as a `Loop`
whose body is MatMul/Split/Sigmoid/Tanh/Mul/Add, and one unrolled (`tests/fixtures/keras`); a torch
loop over `nn.LSTMCell`, `nn.GRUCell`, a hand-written LSTM cell (sliced, or split by `chunk`) or a
hand-written GRU whose sigmoid multiplies the candidate (so the exposed z is 1 − that sigmoid) is
unrolled into T copies of the cell's ops by both exporters; the dynamo exporter decomposes `nn.RNN`.
The recogniser (`reporter.model.cell_patterns`) names gates by the role each tensor plays in the
state update, so a gate it mislabels (i for f, z for r) is still a tensor of the right shape: only
its values tell.
Every gate here is held to the cell's equations computed in the test from the framework's weights
(Keras's in numpy, torch's through the ONNX operator's reading, `tests.rnn_reference`), and the
model's own outputs to the unexposed model and to the framework itself.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from reporter.layers import GATES
from reporter.model.expose import expose_gates
from tests import rnn_reference
from tests.conftest import ROOT

ATOL = 1e-5
FUSED = {"LSTM", "GRU", "RNN"}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _fused_nodes(graph: onnx.GraphProto) -> list[str]:
    """The fused recurrent nodes of a graph and of every subgraph in it."""
    found = []
    for node in graph.node:
        if node.op_type in FUSED:
            found.append(node.name)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                found += _fused_nodes(sub)
    return found


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _gate_errors(layer, outputs: dict[str, np.ndarray], want: dict[str, np.ndarray], shape) -> dict[str, float]:
    """Max abs error of each exposed gate (`[batch, time, 1, hidden]` float32) against `want`."""
    assert set(layer.outputs) == set(want) == set(GATES[layer.kind]), layer.name
    errors = {}
    for gate, expected in want.items():
        got = outputs[layer.outputs[gate]]
        assert got.dtype == np.float32 and got.shape == shape, (layer.name, gate, got.dtype, got.shape)
        errors[gate] = float(np.abs(got - expected).max())
    return errors


def _assert_gates(layer, outputs, want, shape) -> None:
    errors = _gate_errors(layer, outputs, want, shape)
    wrong = {gate: f"{error:.2e}" for gate, error in errors.items() if not error <= ATOL}
    assert not wrong, f"{layer.name}: gates off the cell equations (max abs error) {wrong}"


def _unroll(step, x: np.ndarray, hidden: int) -> dict[str, np.ndarray]:
    """Run `step(x_t, h, c) -> {gate: [batch, hidden]}` from zero state over x `[batch, time, features]`;
    every gate as `[batch, time, 1, hidden]`."""
    h = c = np.zeros((x.shape[0], hidden))
    steps = []
    for t in range(x.shape[1]):
        gates = step(x[:, t], h, c)
        h, c = gates["h"], gates.get("c")
        steps.append(gates)
    return {gate: np.stack([s[gate] for s in steps], axis=1)[:, :, None, :] for gate in steps[0]}


# Keras through tf2onnx: the committed fixtures, and Keras's equations (x @ kernel, h @ recurrent_kernel)

FIXTURES = ROOT / "tests" / "fixtures" / "keras"
# fixture -> (kind, Keras layer name, whether tf2onnx wrote it as a Loop)
KERAS = {
    "keras_gru_reset_before": ("GRU", "gru", True),
    "keras_gru_reset_after": ("GRU", "gru", True),
    "keras_lstm_loop": ("LSTM", "lstm", True),
    "keras_simple_rnn": ("RNN", "rnn", True),
    "keras_lstm_unrolled": ("LSTM", "lstm", False),
}


def keras_step(kind: str, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray):
    """One step of the Keras cell (gates stacked LSTM i f c o, GRU z r h); a GRU's bias of shape
    (2, 3H) is reset_after's (input bias, recurrent bias), of shape (3H,) reset_before's."""
    H = recurrent.shape[0]

    def lstm(x, h, c):
        i, f, g, o = np.split(x @ kernel + h @ recurrent + bias, 4, axis=1)
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        c = f * c + i * g
        return {"i": i, "f": f, "g": g, "o": o, "c": c, "h": o * np.tanh(c)}

    def gru_reset_after(x, h, c):
        xz, xr, xh = np.split(x @ kernel + bias[0], 3, axis=1)
        hz, hr, hh = np.split(h @ recurrent + bias[1], 3, axis=1)
        z, r = _sigmoid(xz + hz), _sigmoid(xr + hr)
        n = np.tanh(xh + r * hh)
        return {"z": z, "r": r, "n": n, "h": z * h + (1 - z) * n}

    def gru_reset_before(x, h, c):
        xz, xr, xh = np.split(x @ kernel + bias, 3, axis=1)
        z, r = _sigmoid(xz + h @ recurrent[:, :H]), _sigmoid(xr + h @ recurrent[:, H : 2 * H])
        n = np.tanh(xh + (r * h) @ recurrent[:, 2 * H :])
        return {"z": z, "r": r, "n": n, "h": z * h + (1 - z) * n}

    def simple_rnn(x, h, c):
        return {"h": np.tanh(x @ kernel + h @ recurrent + bias)}

    if kind == "GRU":
        return gru_reset_after if bias.ndim == 2 else gru_reset_before
    return {"LSTM": lstm, "RNN": simple_rnn}[kind]


def keras_reference(data, kind: str, layer: str) -> dict[str, np.ndarray]:
    kernel, recurrent, bias = (data[f"{layer}/{w}"].astype(np.float64) for w in ("kernel", "recurrent_kernel", "bias"))
    return _unroll(keras_step(kind, kernel, recurrent, bias), data["series"].astype(np.float64), recurrent.shape[0])


@dataclass
class KerasCase:
    data: dict[str, np.ndarray]
    model: onnx.ModelProto
    exposed: onnx.ModelProto
    layers: list
    outputs: dict[str, np.ndarray]  # the exposed model's, on the fixture's windows
    unexposed: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def keras():
    cache: dict[str, KerasCase] = {}

    def get(name: str) -> KerasCase:
        if name not in cache:
            with np.load(FIXTURES / f"{name}.npz") as npz:
                data = {key: npz[key] for key in npz.files}
            model = onnx.load(FIXTURES / f"{name}.onnx")
            exposed, layers = expose_gates(model)
            feeds = {"series": data["series"]}
            cache[name] = KerasCase(data, model, exposed, layers, _run(exposed, feeds), _run(model, feeds))
        return cache[name]

    return get


KERAS_PARAMS = [pytest.param(name, *spec, id=name) for name, spec in KERAS.items()]


@pytest.mark.parametrize("name, kind, layer_name, in_loop", KERAS_PARAMS)
def test_a_keras_cell_is_one_decomposed_layer_named_after_the_keras_layer(name, kind, layer_name, in_loop, keras):
    case = keras(name)
    assert not _fused_nodes(case.model.graph), "tf2onnx fused the cell: this fixture no longer tests decomposition"
    loops = [node.name for node in case.model.graph.node if node.op_type == "Loop"]
    assert len(loops) == (1 if in_loop else 0)
    assert len(case.layers) == 1
    layer = case.layers[0]
    hidden = case.data[f"{layer_name}/recurrent_kernel"].shape[0]
    assert (layer.name, layer.kind, layer.cell, layer.directions, layer.hidden_size) == (
        layer_name,
        kind,
        "decomposed",
        1,
        hidden,
    )
    assert layer.branch == (f"Loop {loops[0]!r} body" if in_loop else "")


@pytest.mark.parametrize("name, kind, layer_name, in_loop", KERAS_PARAMS)
def test_every_keras_gate_equals_the_keras_cell_equations(name, kind, layer_name, in_loop, keras):
    case = keras(name)
    want = keras_reference(case.data, kind, layer_name)
    batch, steps, _ = case.data["series"].shape
    _assert_gates(case.layers[0], case.outputs, want, (batch, steps, 1, want["h"].shape[-1]))


@pytest.mark.parametrize("name, kind, layer_name, in_loop", KERAS_PARAMS)
def test_keras_outputs_stay_keras_and_the_unexposed_models(name, kind, layer_name, in_loop, keras):
    case = keras(name)
    assert [o.name for o in case.model.graph.output] == ["head"] == [o.name for o in case.exposed.graph.output][:1]
    np.testing.assert_allclose(case.outputs["head"], case.unexposed["head"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(case.outputs["head"], case.data["keras_output"], rtol=0, atol=ATOL)


# torch modules unrolled over time, through both exporters

FEATURES, HIDDEN, STEPS = 3, 4, 5  # the Python loop over time unrolls at export: STEPS is fixed
EXAMPLE_BATCH, BATCH = 2, 3  # the run's batch differs from the export's example: the axis must stay dynamic
EXPORTERS = ("legacy", "dynamo")


class LSTMCellLoop(torch.nn.Module):
    """A loop over `nn.LSTMCell` from zero state; the stacked h through a Linear head."""

    def __init__(self):
        super().__init__()
        self.cell = torch.nn.LSTMCell(FEATURES, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], HIDDEN)
        hs = []
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
            hs.append(h)
        return self.head(torch.stack(hs, dim=1))


class GRUCellLoop(torch.nn.Module):
    """A loop over `nn.GRUCell` from zero state; the stacked h through a Linear head."""

    def __init__(self):
        super().__init__()
        self.cell = torch.nn.GRUCell(FEATURES, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], HIDDEN)
        hs = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            hs.append(h)
        return self.head(torch.stack(hs, dim=1))


class HandWrittenLSTM(torch.nn.Module):
    """An LSTM cell as tutorials write it: one Linear on cat([h, x_t]), sliced into i, f, g, o."""

    def __init__(self):
        super().__init__()
        self.gates = torch.nn.Linear(HIDDEN + FEATURES, 4 * HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, 2)

    def split(self, packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(packed[:, k * HIDDEN : (k + 1) * HIDDEN] for k in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], HIDDEN)
        hs = []
        for t in range(x.shape[1]):
            i, f, g, o = self.split(self.gates(torch.cat([h, x[:, t]], dim=1)))
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = f * c + i * g
            h = o * torch.tanh(c)
            hs.append(h)
        return self.head(torch.stack(hs, dim=1))


class ChunkedHandWrittenLSTM(HandWrittenLSTM):
    """The same cell, its gates split by `chunk`: the legacy exporter computes the slices' bounds
    from the tensor's shape at run time, so shape inference knows no width in the cell."""

    def split(self, packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return packed.chunk(4, dim=1)


class HandWrittenGRU(torch.nn.Module):
    """A GRU cell in the other convention, h' = (1 − u)·h + u·n (Wikipedia's): its sigmoid u
    multiplies the candidate, so the exposed z, the gate on the carried state, must be 1 − u."""

    def __init__(self):
        super().__init__()
        self.x_gates = torch.nn.Linear(FEATURES, 3 * HIDDEN)
        self.h_gates = torch.nn.Linear(HIDDEN, 3 * HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], HIDDEN)
        hs = []
        for t in range(x.shape[1]):
            xs, rs = self.x_gates(x[:, t]), self.h_gates(h)
            xu, xr, xn = (xs[:, k * HIDDEN : (k + 1) * HIDDEN] for k in range(3))
            hu, hr, hn = (rs[:, k * HIDDEN : (k + 1) * HIDDEN] for k in range(3))
            u, r = torch.sigmoid(xu + hu), torch.sigmoid(xr + hr)
            n = torch.tanh(xn + r * hn)
            h = (1 - u) * h + u * n
            hs.append(h)
        return self.head(torch.stack(hs, dim=1))


class TwoLayerRNN(torch.nn.Module):
    """`nn.RNN(3, 4, num_layers=2, batch_first=True)`: the dynamo exporter decomposes it."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.RNN(FEATURES, HIDDEN, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def _onnx_blocks(array: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """A torch weight or bias with its gate blocks (rows) put in the ONNX operator's order."""
    blocks = np.split(array.astype(np.float64), len(order))
    return np.concatenate([blocks[k] for k in order])


# torch's gate order -> ONNX's: LSTM i f g o -> i o f c; GRU r z n -> z r h
TORCH_TO_ONNX = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}


def torch_cell_reference(kind: str, x: np.ndarray, w_ih, w_hh, b_ih, b_hh) -> dict[str, np.ndarray]:
    """A torch cell's gates, `[batch, time, 1, hidden]`, from its weights through the ONNX operator's
    equations (torch's GRU resets after the recurrent projection: linear_before_reset=1)."""
    order = TORCH_TO_ONNX[kind]
    W, R = (_onnx_blocks(w, order)[None] for w in (w_ih, w_hh))
    B = np.concatenate([_onnx_blocks(b_ih, order), _onnx_blocks(b_hh, order)])[None]
    X = x.astype(np.float64).transpose(1, 0, 2)  # [time, batch, features]
    return rnn_reference.run(kind, X, W, R, B, linear_before_reset=int(kind == "GRU")).gates


def _numpy(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [t.detach().double().numpy() for t in tensors]


def _cell_loop_reference(kind: str):
    def reference(module, x):
        cell = module.cell
        return [torch_cell_reference(kind, x, *_numpy(cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh))]

    return reference


def _hand_written_reference(module: HandWrittenLSTM, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """cat([h, x]) @ weight.T: the first HIDDEN columns read h, the rest x; its one bias is b_ih."""
    weight, bias = _numpy(module.gates.weight, module.gates.bias)
    return [torch_cell_reference("LSTM", x, weight[:, HIDDEN:], weight[:, :HIDDEN], bias, np.zeros_like(bias))]


def _hand_written_gru_reference(module: HandWrittenGRU, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    w_x, b_x, w_h, b_h = _numpy(module.x_gates.weight, module.x_gates.bias, module.h_gates.weight, module.h_gates.bias)

    def step(x_t, h, c):
        xu, xr, xn = np.split(x_t @ w_x.T + b_x, 3, axis=1)
        hu, hr, hn = np.split(h @ w_h.T + b_h, 3, axis=1)
        u, r = _sigmoid(xu + hu), _sigmoid(xr + hr)
        n = np.tanh(xn + r * hn)
        return {"z": 1 - u, "r": r, "n": n, "h": (1 - u) * h + u * n}

    return [_unroll(step, x.astype(np.float64), HIDDEN)]


def _rnn_step(w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray):
    return lambda x, h, c: {"h": np.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)}


def _rnn_layers_reference(module: TwoLayerRNN, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Each layer's h, tanh(x W_ih^T + b_ih + h W_hh^T + b_hh), the next layer reading it."""
    layers, inputs = [], x.astype(np.float64)
    for k in range(module.rnn.num_layers):
        weights = _numpy(*(getattr(module.rnn, f"{w}_l{k}") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
        layers.append(_unroll(_rnn_step(*weights), inputs, HIDDEN))
        inputs = layers[-1]["h"][:, :, 0]
    return layers


@dataclass(frozen=True)
class TorchSpec:
    """A torch module to export: its build, kind, expected layer names and its reference gates."""

    build: type[torch.nn.Module]
    kind: str
    names: tuple[str, ...]
    reference: Callable  # (module, x [batch, time, features]) -> one {gate: [B, T, 1, H]} per layer


TORCH = {
    "lstm_cell_loop": TorchSpec(LSTMCellLoop, "LSTM", ("cell.l0",), _cell_loop_reference("LSTM")),
    "gru_cell_loop": TorchSpec(GRUCellLoop, "GRU", ("cell.l0",), _cell_loop_reference("GRU")),
    "hand_written_lstm": TorchSpec(HandWrittenLSTM, "LSTM", ("lstm_cell.l0",), _hand_written_reference),
    "hand_written_lstm_chunk": TorchSpec(ChunkedHandWrittenLSTM, "LSTM", ("lstm_cell.l0",), _hand_written_reference),
    "hand_written_gru": TorchSpec(HandWrittenGRU, "GRU", ("gru_cell.l0",), _hand_written_gru_reference),
    "nn_rnn_2_layers": TorchSpec(TwoLayerRNN, "RNN", ("rnn.l0", "rnn.l1"), _rnn_layers_reference),
}
TORCH_PARAMS = [
    pytest.param(name, exporter, id=f"{name}-{exporter}")
    for name in TORCH
    for exporter in EXPORTERS
    if not (name == "nn_rnn_2_layers" and exporter == "legacy")  # the legacy exporter writes fused RNN nodes
]


def export(module: torch.nn.Module, x: torch.Tensor, exporter: str) -> onnx.ModelProto:
    """Export with a dynamic batch axis (the time axis is unrolled), input named "x"."""
    if exporter == "legacy":
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning
            )
            torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
        return onnx.load_from_string(buffer.getvalue())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch")
        return torch.onnx.export(
            module, (x,), dynamo=True, verbose=False, input_names=["x"], dynamic_shapes=({0: batch},)
        ).model_proto


@dataclass
class TorchCase:
    module: torch.nn.Module
    model: onnx.ModelProto
    exposed: onnx.ModelProto
    layers: list
    x: np.ndarray  # the run's input, [BATCH, STEPS, FEATURES]
    outputs: dict[str, np.ndarray]  # the exposed model's


@pytest.fixture(scope="module")
def exported():
    cache: dict[tuple[str, str], TorchCase] = {}

    def get(name: str, exporter: str) -> TorchCase:
        if (name, exporter) not in cache:
            torch.manual_seed(0)
            module = TORCH[name].build().eval()
            example = torch.randn(EXAMPLE_BATCH, STEPS, FEATURES)
            model = export(module, example, exporter)
            exposed, layers = expose_gates(model)
            x = np.random.default_rng(1).standard_normal((BATCH, STEPS, FEATURES)).astype(np.float32)
            cache[name, exporter] = TorchCase(module, model, exposed, layers, x, _run(exposed, {"x": x}))
        return cache[name, exporter]

    return get


@pytest.mark.parametrize("name, exporter", TORCH_PARAMS)
def test_an_unrolled_torch_cell_is_one_decomposed_layer_per_recurrent_layer(name, exporter, exported):
    spec, case = TORCH[name], exported(name, exporter)
    assert not _fused_nodes(case.model.graph), f"{exporter} wrote a fused node: this case no longer tests decomposition"
    assert [(layer.name, layer.kind, layer.cell) for layer in case.layers] == [
        (layer_name, spec.kind, "decomposed") for layer_name in spec.names
    ]
    for layer in case.layers:
        assert (layer.directions, layer.hidden_size, layer.branch) == (1, HIDDEN, "")


@pytest.mark.parametrize("name, exporter", TORCH_PARAMS)
def test_every_unrolled_torch_gate_equals_the_cell_equations(name, exporter, exported):
    spec, case = TORCH[name], exported(name, exporter)
    want = spec.reference(case.module, case.x)
    assert len(case.layers) == len(want)
    for layer, expected in zip(case.layers, want):
        _assert_gates(layer, case.outputs, expected, (BATCH, STEPS, 1, HIDDEN))


@pytest.mark.parametrize("name, exporter", TORCH_PARAMS)
def test_unrolled_torch_outputs_stay_torch_and_the_unexposed_models(name, exporter, exported):
    case = exported(name, exporter)
    names = [o.name for o in case.model.graph.output]
    assert [o.name for o in case.exposed.graph.output][: len(names)] == names
    unexposed = _run(case.model, {"x": case.x})
    with torch.no_grad():
        from_torch = case.module(torch.from_numpy(case.x)).numpy()
    np.testing.assert_allclose(case.outputs[names[0]], unexposed[names[0]], rtol=0, atol=ATOL)
    np.testing.assert_allclose(case.outputs[names[0]], from_torch, rtol=0, atol=ATOL)


def _packed_loop_model(rng: np.random.Generator):
    """A Loop body whose i, f and o are one Sigmoid over a packed [B, 3H] tensor, split afterwards."""
    from onnx import TensorProto, helper, numpy_helper

    features, hidden, batch = 3, HIDDEN, BATCH
    weights = {
        "W": rng.standard_normal((features, 4 * hidden)).astype(np.float32),
        "U": rng.standard_normal((hidden, 4 * hidden)).astype(np.float32),
    }

    def value(name, dims=None, elem=TensorProto.FLOAT):
        return helper.make_tensor_value_info(name, elem, dims)

    nodes = [
        helper.make_node("Gather", ["X", "iteration"], ["x_t"], axis=0),
        helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
        helper.make_node("MatMul", ["h_in", "U"], ["hu"]),
        helper.make_node("Add", ["xw", "hu"], ["packed"]),
        helper.make_node("Split", ["packed", "sizes"], ["sigmoid_part", "g_pre"], axis=1),
        helper.make_node("Sigmoid", ["sigmoid_part"], ["gates"]),
        helper.make_node("Split", ["gates"], ["i", "f", "o"], axis=1, num_outputs=3),
        helper.make_node("Tanh", ["g_pre"], ["g"]),
        helper.make_node("Mul", ["f", "c_in"], ["kept"]),
        helper.make_node("Mul", ["i", "g"], ["written"]),
        helper.make_node("Add", ["kept", "written"], ["c_out"]),
        helper.make_node("Tanh", ["c_out"], ["c_act"]),
        helper.make_node("Mul", ["o", "c_act"], ["h_out"]),
        helper.make_node("Identity", ["h_out"], ["h_step"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inits.append(numpy_helper.from_array(np.array([3 * hidden, hidden], np.int64), "sizes"))
    state = [batch, hidden]
    body = helper.make_graph(
        nodes,
        "body",
        [
            value("iteration", [], TensorProto.INT64),
            value("cond_in", [], TensorProto.BOOL),
            value("h_in", state),
            value("c_in", state),
        ],
        [value("cond_out", [], TensorProto.BOOL), value("h_out", state), value("c_out", state), value("h_step", state)],
        inits,
    )
    loop = helper.make_node("Loop", ["steps", "", "h0", "c0"], ["h_last", "c_last", "H"], name="packed", body=body)
    zeros = numpy_helper.from_array(np.zeros(state, np.float32), "h0")
    outer = [zeros, numpy_helper.from_array(np.zeros(state, np.float32), "c0")]
    outer.append(numpy_helper.from_array(np.array(STEPS, np.int64), "steps"))
    graph = helper.make_graph([loop], "g", [value("X", [STEPS, batch, features])], [value("H")], outer)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), weights


def test_gates_packed_in_one_sigmoid_and_split_afterwards_are_told_apart_by_their_roles():
    rng = np.random.default_rng(11)
    model, weights = _packed_loop_model(rng)
    exposed, layers = expose_gates(model)
    assert [(layer.kind, layer.cell, layer.hidden_size) for layer in layers] == [("LSTM", "decomposed", HIDDEN)]
    x = rng.standard_normal((STEPS, BATCH, 3)).astype(np.float32)
    got = _run(exposed, {"X": x})
    h, c, want = np.zeros((BATCH, HIDDEN)), np.zeros((BATCH, HIDDEN)), {gate: [] for gate in GATES["LSTM"]}
    for t in range(STEPS):
        packed = x[t] @ weights["W"] + h @ weights["U"]
        i, f, o = np.split(_sigmoid(packed[:, : 3 * HIDDEN]), 3, axis=1)
        g = np.tanh(packed[:, 3 * HIDDEN :])
        c = f * c + i * g
        h = o * np.tanh(c)
        for gate, value in zip(GATES["LSTM"], (i, f, g, o, c, h)):
            want[gate].append(value)
    np.testing.assert_allclose(got["H"], np.stack(want["h"]), rtol=0, atol=ATOL)
    for gate, name in layers[0].outputs.items():
        np.testing.assert_allclose(got[name][:, :, 0], np.stack(want[gate], 1), rtol=0, atol=ATOL, err_msg=gate)


def test_a_keras_bidirectional_layer_has_its_backward_loop_in_input_time():
    """tf2onnx writes Bidirectional as two Loops; the backward one reads the input through a
    ReverseSequence. Its gates must come out at the input step each one read, as a reverse layer."""
    data = dict(np.load(FIXTURES / "keras_bidirectional_gru.npz"))
    model = onnx.load(FIXTURES / "keras_bidirectional_gru.onnx")
    exposed, layers = expose_gates(model)
    assert [(layer.name, layer.kind, layer.cell, layer.direction) for layer in layers] == [
        ("bi.forward_gru", "GRU", "decomposed", "forward"),
        ("bi.backward_gru", "GRU", "decomposed", "reverse"),
    ]
    outputs = _run(exposed, {"series": data["series"]})
    x = data["series"].astype(np.float64)
    for layer, reverse in zip(layers, (False, True)):
        prefix = f"bi/{layer.name.split('.')[-1]}"
        weights = (data[f"{prefix}/{w}"].astype(np.float64) for w in ("kernel", "recurrent_kernel", "bias"))
        step = keras_step("GRU", *weights)
        want = _unroll(step, x[:, ::-1] if reverse else x, HIDDEN_KERAS)
        want = {gate: values[:, ::-1] if reverse else values for gate, values in want.items()}  # input time
        _assert_gates(layer, outputs, want, (*x.shape[:2], 1, HIDDEN_KERAS))
    np.testing.assert_allclose(outputs["head"], data["keras_output"], rtol=0, atol=ATOL)


HIDDEN_KERAS = 4

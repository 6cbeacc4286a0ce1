"""‖∂y_T/∂x_t‖ by torch autograd against two oracles: the exact recursion through the gates
(`replay.gradient_flow`, when the output is the layer's own hidden state) and torch's full
Jacobian of each window; inputs it cannot differentiate give an empty table."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from reporter.model.export import export_module
from reporter.model.expose import expose_gates
from reporter.model.output_gradient import MAX_COMPONENTS, OUTPUT_GRADIENT_COLUMNS, output_gradient
from reporter.replay.gradient_flow import gradient_flow

WINDOWS, STEPS, FEATURES, HIDDEN = 5, 9, 3, 6


class HiddenSequence(torch.nn.Module):
    """An LSTM whose output is its hidden state: y_T = h_T."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]


class LastStepHead(torch.nn.Module):
    """A GRU and a linear head on its last step: an output without a time axis."""

    def __init__(self, outputs: int = 2):
        super().__init__()
        self.rnn = torch.nn.GRU(FEATURES, HIDDEN, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, outputs)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _windows(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((WINDOWS, STEPS, FEATURES)).astype(np.float32)


def test_it_equals_the_exact_recursion_through_the_gates_when_y_is_the_hidden_state():
    torch.manual_seed(1)
    module, x = HiddenSequence().eval(), _windows()
    model = export_module(module, x[:2]).model
    exposed, layers = expose_gates(model)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    gates = {layer.name: {gate: outputs[name] for gate, name in layer.outputs.items()} for layer in layers}
    flow, _ = gradient_flow(model, layers, gates, max_windows=None)
    exact = flow[flow.target == "input"].sort_values("lag")["norm"].to_numpy() * np.sqrt(HIDDEN)
    got = output_gradient(module, x, "y")
    assert tuple(got.columns) == OUTPUT_GRADIENT_COLUMNS and got["lag"].tolist() == list(range(STEPS))
    np.testing.assert_allclose(got["norm"], exact, rtol=1e-5)  # the gates are float32, autograd float64


def test_each_window_is_torchs_full_jacobian_of_the_last_output():
    torch.manual_seed(2)
    module, x = LastStepHead().eval(), _windows(1)
    got = output_gradient(module, x, "y")
    double = LastStepHead().double()
    double.load_state_dict(module.state_dict())
    norms = []
    for window in torch.from_numpy(x).double():
        jacobian = torch.autograd.functional.jacobian(lambda w: double(w[None])[0], window)  # [K, T, F]
        norms.append(jacobian.pow(2).sum(dim=(0, 2)).sqrt().flip(0).numpy())
    norms = np.array(norms)
    np.testing.assert_allclose(got["norm"], norms.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(got["low"], np.percentile(norms, 10, axis=0), rtol=1e-10)
    np.testing.assert_allclose(got["high"], np.percentile(norms, 90, axis=0), rtol=1e-10)
    assert got["lag"].iloc[0] == 0 and got["norm"].iloc[0] > got["norm"].iloc[-1]  # the last input matters most here


def test_only_the_first_components_are_differentiated():
    torch.manual_seed(3)
    wide, x = LastStepHead(MAX_COMPONENTS + 4).eval(), _windows(2)
    narrow = LastStepHead(MAX_COMPONENTS).eval()
    narrow.rnn.load_state_dict(wide.rnn.state_dict())
    with torch.no_grad():
        narrow.head.weight.copy_(wide.head.weight[:MAX_COMPONENTS])
        narrow.head.bias.copy_(wide.head.bias[:MAX_COMPONENTS])
    np.testing.assert_allclose(output_gradient(wide, x, "y")["norm"], output_gradient(narrow, x, "y")["norm"])


@pytest.mark.parametrize(
    "windows", [np.zeros((2, 4), np.float32), np.zeros((2, 4, 1), np.int64), np.zeros((0, 4, 3), np.float32)]
)
def test_what_cannot_be_differentiated_gives_an_empty_table(windows):
    frame = output_gradient(HiddenSequence(), windows, "y")
    assert frame.empty and tuple(frame.columns) == OUTPUT_GRADIENT_COLUMNS
    assert output_gradient(None, _windows(), "y").empty  # an ONNX checkpoint: no module

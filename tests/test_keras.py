"""A Keras model converted by tf2onnx (`tests/fixtures/keras/make_fixtures.py`, run once by hand):
its layers are named after the Keras layers, its outputs stay Keras's, and every gate equals the
Keras cell equations computed here from the Keras weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from reporter import expose_gates
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "keras"
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def keras_lstm(x: np.ndarray, kernel, recurrent, bias) -> dict[str, np.ndarray]:
    """Keras LSTM (gates stacked i f c o), every gate per step: {gate: [B, T, H]}."""
    batch, steps, _ = x.shape
    hidden = recurrent.shape[0]
    h, c = np.zeros((batch, hidden)), np.zeros((batch, hidden))
    out = {gate: [] for gate in "ifgoch"}
    for t in range(steps):
        i, f, g, o = np.split(x[:, t] @ kernel + h @ recurrent + bias, 4, axis=1)
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        c = f * c + i * g
        h = o * np.tanh(c)
        for gate, value in zip("ifgoch", (i, f, g, o, c, h)):
            out[gate].append(value)
    return {gate: np.stack(values, axis=1) for gate, values in out.items()}


def keras_gru(x: np.ndarray, kernel, recurrent, bias) -> dict[str, np.ndarray]:
    """Keras GRU with reset_after (its default; gates stacked z r h, input and recurrent biases apart)."""
    batch, steps, _ = x.shape
    hidden = recurrent.shape[0]
    h = np.zeros((batch, hidden))
    out = {gate: [] for gate in "zrnh"}
    for t in range(steps):
        xz, xr, xn = np.split(x[:, t] @ kernel + bias[0], 3, axis=1)
        hz, hr, hn = np.split(h @ recurrent + bias[1], 3, axis=1)
        z, r = _sigmoid(xz + hz), _sigmoid(xr + hr)
        n = np.tanh(xn + r * hn)
        h = z * h + (1 - z) * n
        for gate, value in zip("zrnh", (z, r, n, h)):
            out[gate].append(value)
    return {gate: np.stack(values, axis=1) for gate, values in out.items()}


@pytest.fixture(scope="module")
def trader():
    data = np.load(FIXTURES / "trader.npz")
    model = onnx.load(FIXTURES / "trader.onnx")
    exposed, layers = expose_gates(model)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"series": data["series"]})))
    return data, model, layers, outputs


def test_layers_are_named_after_the_keras_layers(trader):
    _, _, layers, _ = trader
    assert [(layer.name, layer.kind, layer.node) for layer in layers] == [
        ("encoder_lstm", "LSTM", "LSTM__41"),
        ("decoder_gru", "GRU", "GRU__60"),
    ]


def test_outputs_stay_keras_outputs(trader):
    data, model, _, outputs = trader
    np.testing.assert_allclose(outputs[model.graph.output[0].name], data["keras_output"], **TOL)


def test_every_gate_equals_the_keras_cell_equations(trader):
    data, _, layers, outputs = trader
    weights = {name: data[name].astype(np.float64) for name in data.files}
    lstm = keras_lstm(
        data["series"].astype(np.float64),
        *(weights[f"encoder_lstm/{w}"] for w in ("kernel", "recurrent_kernel", "bias")),
    )
    gru = keras_gru(lstm["h"], *(weights[f"decoder_gru/{w}"] for w in ("kernel", "recurrent_kernel", "bias")))
    for layer, expected in zip(layers, (lstm, gru)):
        assert set(layer.outputs) == set(expected)
        for gate, values in expected.items():
            got = outputs[layer.outputs[gate]]  # [B, T, directions, H]
            np.testing.assert_allclose(got[:, :, 0], values, **TOL, err_msg=f"{layer.name} {gate}")

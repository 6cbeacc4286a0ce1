"""Torch modules whose forward takes several tensors, or one dict of tensors (as forecasting
libraries' models do): exported from the same named arrays of a windows .npz, replayed with each
array fed to its input, every gate equal to the LSTM equations computed here from the weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from reporter.cli import main
from reporter.runstore import Run

HIDDEN, T, N = 5, 9, 14


class TwoInputs(torch.nn.Module):
    """forward(series, covariates): the LSTM reads both, concatenated per step."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(3 + 2, HIDDEN, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, 1)

    def forward(self, series, covariates):
        return self.head(self.rnn(torch.cat([series, covariates], dim=2))[0])


class DictInput(torch.nn.Module):
    """forward(batch): a dict of tensors, as pytorch-forecasting's models take them."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(3 + 2, HIDDEN, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, 1)

    def forward(self, batch: dict):
        x = torch.cat([batch["encoder_cont"], batch["known_reals"]], dim=2)
        return self.head(self.rnn(x)[0]) * batch["scale"][:, None, :]


def two_inputs() -> TwoInputs:
    torch.manual_seed(0)
    return TwoInputs()


def dict_input() -> DictInput:
    torch.manual_seed(0)
    return DictInput()


def _lstm_gates(rnn: torch.nn.LSTM, x: np.ndarray) -> dict[str, np.ndarray]:
    """torch's LSTM equations (gates stacked i f g o), every gate per step: {gate: [B, T, H]}."""
    w_ih, w_hh = rnn.weight_ih_l0.detach().double().numpy(), rnn.weight_hh_l0.detach().double().numpy()
    bias = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().double().numpy()
    h = np.zeros((len(x), HIDDEN))
    c = np.zeros_like(h)
    out = {gate: [] for gate in "ifgoch"}
    for t in range(x.shape[1]):
        i, f, g, o = np.split(x[:, t] @ w_ih.T + h @ w_hh.T + bias, 4, axis=1)
        i, f, g, o = (1 / (1 + np.exp(-i))), (1 / (1 + np.exp(-f))), np.tanh(g), (1 / (1 + np.exp(-o)))
        c = f * c + i * g
        h = o * np.tanh(c)
        for gate, value in zip("ifgoch", (i, f, g, o, c, h)):
            out[gate].append(value)
    return {gate: np.stack(values, axis=1) for gate, values in out.items()}


@pytest.mark.parametrize(
    ("factory", "arrays", "inputs"),
    [
        ("two_inputs", {"series": 3, "covariates": 2}, ("series", "covariates")),
        ("dict_input", {"encoder_cont": 3, "known_reals": 2, "scale": None}, ("encoder_cont", "known_reals")),
    ],
)
def test_a_forward_of_several_tensors_replays_from_named_arrays(tmp_path, capsys, factory, arrays, inputs):
    rng = np.random.default_rng(5)
    stored = {
        name: (rng.standard_normal((N, T, width)) if width else rng.uniform(0.5, 2, (N, 1))).astype(np.float32)
        for name, width in arrays.items()
    }
    np.savez(tmp_path / "holdout.npz", **stored)
    module = globals()[factory]()
    torch.save(module.state_dict(), tmp_path / "model.pt")
    run_dir = tmp_path / "runs" / factory
    code = main(
        [
            "replay",
            str(tmp_path / "model.pt"),
            "--factory",
            f"tests.test_torch_inputs:{factory}",
            "--windows",
            str(tmp_path / "holdout.npz"),
            "--version",
            "v1",
            "-o",
            str(run_dir),
        ]
    )
    assert code == 0, capsys.readouterr().err
    run = Run.load(run_dir)
    assert run.meta["inputs"]["windows"] == inputs[0]
    assert sorted(run.meta["inputs"]["per_window"]) == sorted(set(arrays) - {inputs[0]})
    assert run.meta["export_parity_max_abs"] < 1e-5
    exported = tmp_path / "exported" / "model.onnx"
    code = main(
        [
            "export",
            str(tmp_path / "model.pt"),
            "--factory",
            f"tests.test_torch_inputs:{factory}",
            "--windows",
            str(tmp_path / "holdout.npz"),
            "-o",
            str(exported),
        ]
    )
    assert code == 0 and (tmp_path / "exported" / "model.layers.json").is_file()
    assert [value.name for value in onnx.load(exported).graph.input] == list(arrays)  # one input per array
    sampled = run.traces["window"]
    x = np.concatenate([stored[name][sampled] for name in inputs], axis=2).astype(np.float64)
    for gate, values in _lstm_gates(module.rnn, x).items():
        np.testing.assert_allclose(run.traces[f"rnn.l0/{gate}"][:, :, 0], values, atol=2e-3, err_msg=gate)  # float16


class OneSeries(torch.nn.Module):
    """forward(series): one unannotated tensor, whatever the other arrays of its windows file."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.GRU(3, HIDDEN, batch_first=True)

    def forward(self, series):
        return self.rnn(series)[0]


def one_series() -> OneSeries:
    torch.manual_seed(0)
    return OneSeries()


def test_one_unannotated_argument_takes_the_windows_whatever_else_the_file_holds(tmp_path, capsys):
    rng = np.random.default_rng(6)
    np.savez(
        tmp_path / "w.npz", labels=rng.integers(0, 2, (N,)), windows=rng.standard_normal((N, T, 3)).astype(np.float32)
    )
    torch.save(one_series().state_dict(), tmp_path / "m.pt")
    args = [
        "replay",
        str(tmp_path / "m.pt"),
        "--factory",
        "tests.test_torch_inputs:one_series",
        "--windows",
        str(tmp_path / "w.npz"),
        "--key",
        "windows",
        "-o",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert Run.load(tmp_path / "run").meta["inputs"] == {"windows": "x", "per_window": [], "constant": {}}

"""Exported models keep fused recurrent nodes, dynamic batch and time axes, and torch's outputs."""

from __future__ import annotations

import copy
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from reporter.errors import ExportError
from reporter.model.export import ExportResult, export_module, output_parity

RECURRENT_OPS = ("LSTM", "GRU", "RNN")


class Tagger(torch.nn.Module):
    """Token ids in, one score per step out: the int64-input case."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 4)
        self.rnn = torch.nn.LSTM(4, 6, batch_first=True)
        self.head = torch.nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(x))[0])


class FixedLength(torch.nn.Module):
    """Turns the time length into a Python int, which tracing bakes into the graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.arange(int(x.shape[1])).view(1, -1, 1)


class Unexportable(torch.nn.Module):
    """Uses an operator neither exporter can translate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(x, x)


def _seeded(make):
    torch.manual_seed(0)
    return make().eval()


def _lstm2() -> torch.nn.LSTM:
    return _seeded(lambda: torch.nn.LSTM(3, 5, num_layers=2, batch_first=True))


def _floats(batch: int, time: int, features: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, time, features)).astype(np.float32)


def _tokens(batch: int, time: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 11, (batch, time))


def _recurrent_ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node if node.op_type in RECURRENT_OPS]


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [dim.dim_param or dim.dim_value for dim in value_info.type.tensor_type.shape.dim]


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _torch_outputs(module: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        y, (h, c) = module(torch.from_numpy(x))
    return [y.numpy(), h.numpy(), c.numpy()]


@pytest.fixture(scope="module")
def lstm2() -> torch.nn.LSTM:
    return _lstm2()


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def exported_lstm2(request, lstm2) -> ExportResult:
    return export_module(lstm2, _floats(2, 5), exporter=request.param)


# Both exporters on a 2-layer LSTM


def test_one_fused_lstm_node_per_layer(exported_lstm2):
    assert _recurrent_ops(exported_lstm2.model) == ["LSTM", "LSTM"]


def test_names_and_parity_are_recorded(exported_lstm2):
    assert exported_lstm2.input_name == "x"
    assert exported_lstm2.output_names == ["y0", "y1", "y2"]
    assert [o.name for o in exported_lstm2.model.graph.output] == ["y0", "y1", "y2"]
    assert 0.0 <= exported_lstm2.parity_max_abs <= 1e-5


def test_batch_and_time_axes_are_dynamic(exported_lstm2, lstm2):
    assert _dims(exported_lstm2.model.graph.input[0]) == ["batch", "time", 3]
    assert _dims(exported_lstm2.model.graph.output[0]) == ["batch", "time", 5]
    x = _floats(3, 9, seed=1)
    for got, want in zip(_run(exported_lstm2.model, x), _torch_outputs(lstm2, x)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_model_is_valid_onnx(exported_lstm2):
    onnx.checker.check_model(exported_lstm2.model)


# Legacy exporter: all three kinds fused


@pytest.mark.parametrize("kind", RECURRENT_OPS)
def test_legacy_fuses_every_recurrent_kind(kind):
    module = _seeded(lambda: getattr(torch.nn, kind)(3, 4, num_layers=2, batch_first=True))
    result = export_module(module, _floats(2, 5))
    assert _recurrent_ops(result.model) == [kind, kind]
    assert result.parity_max_abs <= 1e-5


def test_legacy_example_of_batch_one_still_gives_dynamic_axes(lstm2):
    result = export_module(lstm2, _floats(1, 1))
    x = _floats(4, 6, seed=2)
    np.testing.assert_allclose(_run(result.model, x)[0], _torch_outputs(lstm2, x)[0], atol=1e-5)


def test_single_output_is_named_y():
    result = export_module(_seeded(Tagger), _tokens(2, 5))
    assert result.output_names == ["y"]
    assert [o.name for o in result.model.graph.output] == ["y"]


# Token input


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_int64_token_model_exports(exporter):
    module = _seeded(Tagger)
    result = export_module(module, _tokens(2, 5), exporter=exporter)
    assert result.model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert _recurrent_ops(result.model) == ["LSTM"]
    x = _tokens(3, 8, seed=3)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(result.model, x)[0], want, atol=1e-5)


def test_int32_tokens_and_float64_windows_are_widened():
    assert export_module(_seeded(Tagger), _tokens(2, 5).astype(np.int32)).parity_max_abs <= 1e-5
    assert export_module(_lstm2(), _floats(2, 5).astype(np.float64)).parity_max_abs <= 1e-5


# Parity


def test_parity_is_small_for_the_exported_module(exported_lstm2, lstm2):
    windows = [_floats(2, 5, seed=4), torch.from_numpy(_floats(5, 11, seed=5))]
    assert output_parity(lstm2, exported_lstm2.model, windows) <= 1e-5


def test_parity_detects_a_changed_weight(exported_lstm2, lstm2):
    changed = copy.deepcopy(lstm2)
    with torch.no_grad():
        changed.weight_hh_l1.add_(0.5)
    assert output_parity(changed, exported_lstm2.model, _floats(2, 5)) > 1e-2


def test_parity_windows_are_used(lstm2):
    result = export_module(lstm2, _floats(2, 5), parity_windows=[_floats(3, 4, seed=6), _floats(1, 12, seed=7)])
    assert 0.0 <= result.parity_max_abs <= 1e-5


def test_parity_rejects_outputs_that_do_not_match_in_number(exported_lstm2):
    single = _seeded(lambda: torch.nn.Linear(3, 5))
    expected = r"^Linear: on a \[2, 5, 3\] window, torch gives 1 outputs, the ONNX model 3$"
    with pytest.raises(ExportError, match=expected):
        output_parity(single, exported_lstm2.model, _floats(2, 5))


# Failures and manners


def test_dynamo_refuses_to_fix_the_time_axis_of_an_rnn():
    module = _seeded(lambda: torch.nn.RNN(3, 4, batch_first=True))
    expected = r"^RNN: dynamo exporter fixed the time axis of the input to 5; try exporter='legacy'$"
    with pytest.raises(ExportError, match=expected):
        export_module(module, _floats(2, 5), exporter="dynamo")


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_export_failure_is_one_quiet_line(exporter, capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExportError) as caught:
        export_module(Unexportable(), _floats(2, 5), exporter=exporter)
    message = str(caught.value)
    assert message.startswith(f"Unexportable: {exporter} ONNX export failed: ")
    assert "zeta" in message and "\n" not in message and "\x1b" not in message
    assert capfd.readouterr() == ("", "")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_export_prints_nothing_and_leaves_no_files(exporter, capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export_module(_lstm2(), _floats(2, 5), exporter=exporter)
    assert capfd.readouterr() == ("", "")
    assert os.listdir(tmp_path) == []


def test_model_that_only_runs_at_the_example_length_is_refused(capfd):
    with pytest.raises(ExportError, match=r"^FixedLength: on a \[3, 6, 3\] window, onnxruntime fails: "):
        export_module(FixedLength(), _floats(2, 5))
    assert capfd.readouterr() == ("", "")


def test_unknown_exporter():
    with pytest.raises(ExportError, match="unknown exporter 'jit'"):
        export_module(_lstm2(), _floats(2, 5), exporter="jit")


@pytest.mark.parametrize(
    "example", [np.zeros((2, 5), np.float32), np.zeros((2, 5, 3), np.int64), np.zeros(5, np.float32)]
)
def test_example_of_the_wrong_shape_or_dtype(example):
    with pytest.raises(ExportError, match="^example: expected float"):
        export_module(_lstm2(), example)


def test_module_training_flag_is_restored():
    module = _lstm2().train()
    export_module(module, _floats(2, 5))
    assert module.training


def test_module_that_fails_on_the_example():
    with pytest.raises(ExportError, match=r"^LSTM: on the example, torch fails: RuntimeError: "):
        export_module(_lstm2(), _floats(2, 5, features=4))


def test_opset_is_honoured(lstm2):
    result = export_module(lstm2, _floats(2, 5), opset=17)
    assert [o.version for o in result.model.opset_import if o.domain in ("", "ai.onnx")] == [17]

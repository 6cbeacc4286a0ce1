"""Models with more than one input: a windows .npz holds one array per input (by name), `--feed`
gives an input the same value for every window, and an input fed from nowhere is exit 2 naming it
with both ways to feed it. Gates are held to the ONNX operator equations with the fed values."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from reporter.cli import main
from reporter.model.expose import expose_gates
from reporter.replay.feeds import parse_feeds, plan_feeds
from reporter.replay.runner import Replayer
from reporter.replay.windows import open_windows_source
from reporter.runstore import Run
from tests import rnn_reference

H, F, T, N = 4, 3, 7, 9


def _two_state_model(path) -> dict[str, np.ndarray]:
    """series [B, T, F] scaled by a scalar input `scale`, an LSTM started from per-window states
    h0, c0 [B, H]; output y = the last hidden state [B, H]. Returns the weights."""
    rng = np.random.default_rng(3)
    weights = {"W": rng.normal(0, 0.5, (1, 4 * H, F)), "R": rng.normal(0, 0.5, (1, 4 * H, H)),
               "B": rng.normal(0, 0.1, (1, 8 * H))}  # fmt: off
    weights = {name: value.astype(np.float32) for name, value in weights.items()}
    nodes = [
        helper.make_node("Mul", ["series", "scale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["x_tbf"], perm=[1, 0, 2]),
        helper.make_node("Unsqueeze", ["h0", "zero"], ["h0_1"]),
        helper.make_node("Unsqueeze", ["c0", "zero"], ["c0_1"]),
        helper.make_node(
            "LSTM", ["x_tbf", "W", "R", "B", "", "h0_1", "c0_1"], ["Y", "Y_h", "Y_c"], hidden_size=H, name="encoder"
        ),
        helper.make_node("Squeeze", ["Y_h", "zero"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info("series", TensorProto.FLOAT, ["batch", "time", F]),
        helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["batch", H]),
        helper.make_tensor_value_info("c0", TensorProto.FLOAT, ["batch", H]),
    ]
    initializers = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    initializers.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", H])
    graph = helper.make_graph(nodes, "two_state", inputs, [output], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return weights


@pytest.fixture
def stateful(tmp_path):
    model = tmp_path / "two_state.onnx"
    weights = _two_state_model(model)
    rng = np.random.default_rng(4)
    arrays = {
        "series": rng.standard_normal((N, T, F)),
        "h0": rng.standard_normal((N, H)) * 0.5,
        "c0": rng.standard_normal((N, H)) * 0.5,
    }
    np.savez(tmp_path / "windows.npz", **{name: value.astype(np.float32) for name, value in arrays.items()})
    return model, tmp_path / "windows.npz", weights, arrays


def test_per_window_and_fed_inputs_give_the_operator_equations(stateful):
    model_path, windows_path, weights, arrays = stateful
    exposed, layers = expose_gates(onnx.load(model_path))
    source = open_windows_source(windows_path, key="series")
    feeds = plan_feeds(exposed, source, parse_feeds(["scale=2"]))
    assert feeds.primary == "series" and set(feeds.per_window) == {"h0", "c0"}
    indices = np.array([1, 4, 8])
    outputs = Replayer(exposed, layers, "cpu", workers=1, feeds=feeds).run_batch(source.take(indices), indices)
    expected = rnn_reference.run(
        "LSTM",
        np.swapaxes(2.0 * arrays["series"][indices], 0, 1),
        weights["W"],
        weights["R"],
        weights["B"],
        initial_h=arrays["h0"][indices][None],
        initial_c=arrays["c0"][indices][None],
    )
    for gate, values in expected.gates.items():
        np.testing.assert_allclose(outputs[layers[0].outputs[gate]], values, rtol=1e-5, atol=1e-5, err_msg=gate)


def test_replay_feeds_every_input_from_the_command_line(stateful, tmp_path, capsys):
    model_path, windows_path, _, _ = stateful
    run_dir = tmp_path / "runs" / "stateful"
    args = ["replay", str(model_path), "--windows", str(windows_path), "--version", "v1", "-o", str(run_dir)]
    assert main([*args, "--feed", "scale=2"]) == 0
    run = Run.load(run_dir)
    assert run.meta["inputs"] == {"windows": "series", "per_window": ["c0", "h0"], "constant": {"scale": 2}}
    assert run.layers[0].name == "encoder" and run.traces["x"].shape[1:] == (T, F)
    capsys.readouterr()
    assert main(args) == 2  # scale is fed from nowhere
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "windows.npz: the model's inputs scale float32 [] are not fed" in err
    assert "--feed scale=VALUE" in err and "first axis = windows" in err


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        (["scael=2"], "--feed scael: the model has no input 'scael'; its inputs: series, scale, h0, c0"),
        (["scale=two"], "--feed scale=two: expected a number, a JSON list, zeros, or a .npy file"),
        (["scale"], "--feed scale: expected NAME=VALUE"),
        (["scale=[1, 2]"], "--feed scale: input scale is [], the value fed has shape [2]"),
        (["scale=[[1], [2, 3]]"], "--feed scale=[[1], [2, 3]]: a list must be rectangular"),
        (["scale=2", "series=zeros"], "--feed series: series is the input the windows feed"),
    ],
)
def test_bad_feeds_are_one_line_errors(stateful, tmp_path, capsys, feed, message):
    model_path, windows_path, _, _ = stateful
    args = ["replay", str(model_path), "--windows", str(windows_path), "-o", str(tmp_path / "run")]
    assert main([*args, *(f"--feed={item}" for item in feed)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_a_per_window_array_needs_a_row_per_window(stateful, tmp_path, capsys):
    model_path, windows_path, _, arrays = stateful
    short = tmp_path / "short.npz"
    np.savez(
        short,
        series=arrays["series"].astype(np.float32),
        h0=arrays["h0"][:3].astype(np.float32),
        c0=arrays["c0"].astype(np.float32),
    )
    assert (
        main(["replay", str(model_path), "--windows", str(short), "--feed", "scale=1", "-o", str(tmp_path / "r")]) == 2
    )
    assert "short.npz: array 'h0' has (3,) rows, the windows 9" in capsys.readouterr().err


def test_zeros_take_the_batch_size_on_their_one_open_axis(stateful, tmp_path):
    model_path, windows_path, _, arrays = stateful
    only_series = tmp_path / "series.npz"
    np.savez(only_series, series=arrays["series"].astype(np.float32))
    exposed, layers = expose_gates(onnx.load(model_path))
    source = open_windows_source(only_series, key="series")
    feeds = plan_feeds(exposed, source, parse_feeds(["scale=1", "h0=zeros", "c0=zeros"]))
    batch = feeds.batch(source.take([0, 1, 2]), np.array([0, 1, 2]))
    assert batch["h0"].shape == (3, H) and not batch["h0"].any() and batch["scale"].shape == ()


def test_a_per_window_array_must_fit_its_input(stateful, tmp_path, capsys):
    model_path, _, _, arrays = stateful
    wrong = tmp_path / "wrong.npz"
    np.savez(
        wrong,
        series=arrays["series"].astype(np.float32),
        h0=np.zeros((N, H + 1), np.float32),
        c0=arrays["c0"].astype(np.float32),
    )
    assert (
        main(["replay", str(model_path), "--windows", str(wrong), "--feed", "scale=1", "-o", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "wrong.npz: array 'h0' is [9, 5] for input h0 [batch, 4]" in err, err


def test_bench_says_it_times_models_of_one_input(stateful, tmp_path, capsys):
    model_path, windows_path, _, _ = stateful
    assert main(["bench", str(model_path), "--windows", str(windows_path)]) == 2
    assert "bench times models whose one input is the windows; this one takes series, scale, h0, c0" in (
        capsys.readouterr().err
    )

"""Streaming models, called once per chunk with their state fed back: a voice-activity-style model
taking a rank-2 chunk [batch, samples], a sample rate and a state [2, batch, hidden], returning the
next state. Replayed with the state carried over T chunks, every gate equals the LSTM equations
over the whole stream, with a dynamic batch and with the batch fixed at 1."""

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

H, SAMPLES, CALLS, N = 5, 8, 12, 6


def _vad_model(path, batch) -> dict[str, np.ndarray]:
    """chunk [batch, SAMPLES] × (sr / 16000) → one LSTM step from state [2, batch, H] → stateN, and a
    speech probability [batch, 1]. Returns the weights."""
    rng = np.random.default_rng(11)
    weights = {
        "W": rng.normal(0, 0.4, (1, 4 * H, SAMPLES)),
        "R": rng.normal(0, 0.4, (1, 4 * H, H)),
        "B": rng.normal(0, 0.1, (1, 8 * H)),
        "head": rng.normal(0, 0.5, (H, 1)),
    }
    weights = {name: value.astype(np.float32) for name, value in weights.items()}
    constants = {
        "rate": np.array(16000, np.float32),
        "zero": np.array([0], np.int64),
        "two": np.array([1, 1], np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_f", "rate"], ["gain"]),
        helper.make_node("Mul", ["input", "gain"], ["chunk"]),
        helper.make_node("Unsqueeze", ["chunk", "zero"], ["x"]),  # one step: [1, batch, SAMPLES]
        helper.make_node("Split", ["state", "two"], ["h0", "c0"], axis=0),
        helper.make_node(
            "LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["Y", "Y_h", "Y_c"], hidden_size=H, name="vad_lstm"
        ),
        helper.make_node("Concat", ["Y_h", "Y_c"], ["stateN"], axis=0),
        helper.make_node("Squeeze", ["Y_h", "zero"], ["h"]),
        helper.make_node("MatMul", ["h", "head"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, SAMPLES]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, H]),
    ]
    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 1]),
        helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, batch, H]),
    ]
    initializers = [numpy_helper.from_array(value, name) for name, value in {**weights, **constants}.items()]
    graph = helper.make_graph(nodes, "vad", inputs, outputs, initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return weights


@pytest.fixture(params=["batch", 1], ids=["dynamic batch", "batch fixed at 1"])
def vad(request, tmp_path):
    model = tmp_path / "vad.onnx"
    weights = _vad_model(model, request.param)
    stream = np.random.default_rng(12).standard_normal((N, CALLS, SAMPLES)).astype(np.float32)
    np.savez(tmp_path / "chunks.npz", input=stream)
    return model, tmp_path / "chunks.npz", weights, stream


def _stream_gates(weights, stream) -> dict[str, np.ndarray]:
    """The LSTM over every window's whole stream at once: [N, CALLS, 1, H] per gate."""
    return rnn_reference.run("LSTM", np.swapaxes(stream, 0, 1), weights["W"], weights["R"], weights["B"]).gates


def test_carried_replay_equals_the_cell_equations_over_the_whole_stream(vad):
    model_path, windows_path, weights, stream = vad
    exposed, layers = expose_gates(onnx.load(model_path))
    source = open_windows_source(windows_path, key="input", any_rank=True)
    said = []
    feeds = plan_feeds(exposed, source, parse_feeds(["sr=16000"]), say=said.append)
    assert feeds.carry == {"state": "stateN"} and "state=stateN (detected" in said[0]
    indices = np.arange(N)
    outputs = Replayer(exposed, layers, "cpu", workers=1, feeds=feeds).run_batch(source.take(indices), indices)
    expected = _stream_gates(weights, stream)
    for gate, values in expected.items():
        np.testing.assert_allclose(outputs[layers[0].outputs[gate]], values, rtol=1e-5, atol=1e-5, err_msg=gate)
    probability = 1 / (1 + np.exp(-(expected["h"][:, :, 0] @ weights["head"])))
    np.testing.assert_allclose(outputs["output"], probability, rtol=1e-5, atol=1e-5)  # [N, CALLS, 1]


def test_replay_carries_the_state_from_the_command_line(vad, tmp_path, capsys):
    model_path, windows_path, weights, stream = vad
    run_dir = tmp_path / "runs" / "vad"
    args = ["replay", str(model_path), "--windows", str(windows_path), "--feed", "sr=16000", "-o", str(run_dir)]
    assert main([*args, "--carry", "state=stateN"]) == 0
    run = Run.load(run_dir)
    assert run.meta["inputs"]["carry"] == {"state": "stateN"} and run.meta["seq_len"] == CALLS
    expected = _stream_gates(weights, stream)
    sampled = run.traces["window"]
    for gate, values in expected.items():
        np.testing.assert_allclose(run.traces[f"vad_lstm/{gate}"], values[sampled], atol=2e-3, err_msg=gate)  # float16
    assert set(run.timestep_stats["t"]) == set(range(CALLS))
    capsys.readouterr()
    assert main([*args, "--carry", "state=stateX"]) == 2
    assert (
        "--carry state=stateX: the model has no output 'stateX'; its outputs: output, stateN" in capsys.readouterr().err
    )


def test_an_input_without_a_batch_axis_takes_one_window_per_call(tmp_path):
    """Input [time, features]: windows [N, T, F] have one axis more, so each window is one call."""
    rng = np.random.default_rng(13)
    weights = {
        "W": rng.normal(0, 0.4, (1, 4 * H, 3)),
        "R": rng.normal(0, 0.4, (1, 4 * H, H)),
        "B": rng.normal(0, 0.1, (1, 8 * H)),
    }
    weights = {name: value.astype(np.float32) for name, value in weights.items()}
    nodes = [
        helper.make_node("Unsqueeze", ["frames", "one"], ["x"]),  # [T, 1, F]
        helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, name="single"),
        helper.make_node("Squeeze", ["Y_h", "zero_one"], ["last"]),  # [H]: no batch axis either
    ]
    initializers = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    initializers += [
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([0, 1], np.int64), "zero_one"),
    ]
    graph = helper.make_graph(
        nodes,
        "batchless",
        [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["time", 3])],
        [helper.make_tensor_value_info("last", TensorProto.FLOAT, [H])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    windows = rng.standard_normal((N, 9, 3)).astype(np.float32)
    np.save(tmp_path / "frames.npy", windows)
    exposed, layers = expose_gates(model)
    source = open_windows_source(tmp_path / "frames.npy", any_rank=True)
    feeds = plan_feeds(exposed, source)
    assert feeds.batchless and not feeds.carry
    indices = np.arange(N)
    outputs = Replayer(exposed, layers, "cpu", workers=1, feeds=feeds).run_batch(source.take(indices), indices)
    expected = rnn_reference.run("LSTM", np.swapaxes(windows, 0, 1), weights["W"], weights["R"], weights["B"])
    for gate, values in expected.gates.items():
        np.testing.assert_allclose(outputs[layers[0].outputs[gate]], values, rtol=1e-5, atol=1e-5, err_msg=gate)
    np.testing.assert_allclose(outputs["last"], expected.gates["h"][:, -1, 0], rtol=1e-5, atol=1e-5)

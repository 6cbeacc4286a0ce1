"""A model with a recurrent layer in each branch of an `If`, as a voice-activity model has one per
sample rate, replayed and built end to end: the branch that ran has exact traces and statistics,
the other is reported as not run (no trace, zero count), and the pages say which branch is which."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from reporter.cli import main
from reporter.runstore import Run
from tests import rnn_reference
from tests.test_expose_control_flow import mystery_body

N, T, I, H = 24, 9, 2, 3
RNG = np.random.default_rng(21)
WEIGHTS = {
    kind: [
        RNG.standard_normal((1, blocks * H, I)).astype(np.float32),
        RNG.standard_normal((1, blocks * H, H)).astype(np.float32),
        RNG.standard_normal((1, 2 * blocks * H)).astype(np.float32),
    ]
    for kind, blocks in (("LSTM", 4), ("GRU", 3))
}


def _branch(kind: str, prefix: str) -> onnx.GraphProto:
    """One recurrent node over X [B, T, I] (layout 1), its Y [B, T, 1, H] the branch's output."""
    inits = [numpy_helper.from_array(a, f"{prefix}_{n}") for a, n in zip(WEIGHTS[kind], "WRB")]
    node = helper.make_node(
        kind, ["x", *(i.name for i in inits)], [f"{prefix}_y"], name=f"{prefix}_cell", hidden_size=H, layout=1
    )
    output = helper.make_tensor_value_info(f"{prefix}_y", TensorProto.FLOAT, None)
    return helper.make_graph([node], prefix, [], [output], inits)


@pytest.fixture(scope="module")
def two_rate_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_rate")
    nodes = [
        helper.make_node("Equal", ["sr", "rate_16k"], ["is_16k"]),
        helper.make_node(
            "If",
            ["is_16k"],
            ["y"],
            name="by_rate",
            then_branch=_branch("LSTM", "k16"),
            else_branch=_branch("GRU", "k8"),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "two_rate",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", I]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(16000, np.int64), "rate_16k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, folder / "two_rate.onnx")
    windows = RNG.standard_normal((N, T, I)).astype(np.float32)
    np.savez(folder / "windows.npz", x=windows)
    return folder, windows


def test_the_branch_that_ran_has_exact_traces_and_the_other_none(two_rate_model, tmp_path):
    folder, windows = two_rate_model
    run_dir = tmp_path / "run"
    args = ["replay", str(folder / "two_rate.onnx"), "--windows", str(folder / "windows.npz"), "--feed", "sr=16000"]
    assert main([*args, "-o", str(run_dir)]) == 0
    run = Run.load(run_dir)
    lstm, gru = run.layers
    assert (lstm.kind, lstm.branch, gru.kind, gru.branch) == (
        "LSTM",
        "If 'by_rate' then_branch",
        "GRU",
        "If 'by_rate' else_branch",
    )
    manifest = json.loads((run_dir / "layers.json").read_text())
    assert [entry["branch"] for entry in manifest] == [lstm.branch, gru.branch]
    counts = run.gate_stats.groupby("layer")["count"].sum()
    assert counts[lstm.name] > 0 and counts[gru.name] == 0
    assert not any(key.startswith(f"{gru.name}/") for key in run.traces)
    sampled = run.traces["window"]
    x_tbi = np.swapaxes(windows[sampled], 0, 1)
    want = rnn_reference.run("LSTM", x_tbi, *WEIGHTS["LSTM"]).gates
    for gate in "ifgoch":
        np.testing.assert_allclose(run.traces[f"{lstm.name}/{gate}"], want[gate], atol=2e-3, err_msg=gate)  # float16
    assert np.isfinite(run.window_scores["anomaly_score"]).all()


def test_the_pages_say_which_branch_ran(two_rate_model, tmp_path):
    folder, _ = two_rate_model
    run_dir = tmp_path / "run"
    args = ["replay", str(folder / "two_rate.onnx"), "--windows", str(folder / "windows.npz"), "--feed", "sr=8000"]
    assert main([*args, "-o", str(run_dir)]) == 0
    assert main(["build", "--runs", str(run_dir), "-o", str(tmp_path / "site")]) == 0
    run = Run.load(run_dir)
    lstm, gru = run.layers
    window = int(run.traces["window"][0])
    pages = {path.name: path.read_text() for path in (tmp_path / "site").rglob("*.html")}
    run_page = next(text for name, text in pages.items() if name == "index.html" and "Model card" in text)
    assert "fused in If &#39;by_rate&#39; then_branch; <b>ran on no window</b>" in run_page
    assert "fused in If &#39;by_rate&#39; else_branch</td>" in run_page  # the branch every window took
    layer_pages = {layer.name: pages[f"{layer.name}-w{window}.html"] for layer in run.layers}
    assert "did not run on window" in layer_pages[lstm.name] and "data-chart" not in layer_pages[lstm.name]
    assert "did not run" not in layer_pages[gru.name] and "data-chart" in layer_pages[gru.name]


def _generic_loop_model() -> onnx.ModelProto:
    """X [B, T, I] → a Loop over time whose body is no known cell (`mystery_body`)."""
    u, v = RNG.standard_normal((I, H)).astype(np.float32), RNG.standard_normal((H, H)).astype(np.float32)
    body = mystery_body("x_time_major", "batch", u, v)
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_time_major"], perm=[1, 0, 2]),
        helper.make_node("Shape", ["x_time_major"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["steps"]),
        helper.make_node("Gather", ["x_time_major", "zero"], ["x_first"], axis=0),
        helper.make_node("MatMul", ["x_first", "U0"], ["projected"]),
        helper.make_node("Mul", ["projected", "nothing"], ["s0"]),  # zeros [B, H] for any batch
        helper.make_node("Loop", ["steps", "", "s0"], ["s_last", "states"], name="mystery", body=body),
        helper.make_node("Transpose", ["states"], ["y"], perm=[1, 0, 2]),
    ]
    inits = [
        numpy_helper.from_array(u, "U0"),  # the body holds its own U and V
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(0, np.float32), "nothing"),
    ]
    graph = helper.make_graph(
        nodes,
        "mystery",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_a_generic_layer_replays_and_its_pages_say_what_its_traces_are(tmp_path):
    onnx.save(_generic_loop_model(), tmp_path / "mystery.onnx")
    windows = RNG.standard_normal((N, T, I)).astype(np.float32)
    np.save(tmp_path / "windows.npy", windows)
    run_dir = tmp_path / "run"
    assert (
        main(["replay", str(tmp_path / "mystery.onnx"), "--windows", str(tmp_path / "windows.npy"), "-o", str(run_dir)])
        == 0
    )
    run = Run.load(run_dir)
    (layer,) = run.layers
    assert (layer.kind, layer.cell, sorted(layer.outputs)) == ("generic", "generic", ["bend", "squash"])
    squash = run.gate_stats[(run.gate_stats["gate"] == "squash")]
    assert squash["count"].sum() == N * T * H and squash["min"].min() >= 0 and squash["max"].max() <= 1
    assert main(["build", "--runs", str(run_dir), "-o", str(tmp_path / "site")]) == 0
    run_page = next(p for p in (tmp_path / "site").rglob("index.html") if "Model card" in p.read_text())
    assert "matches no known cell: traces are its 2 sigmoid/tanh outputs, named by node" in run_page.read_text()

"""Replay keeps one-direction gates time-major (`replay.time_major`): what it hands on has the
exposed model's values bit for bit, as `[batch, time, …]` views of the Scan's own output; gates of
two directions stay batch-major; the model it was given is left as it was."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
import torch

from reporter.bench.expose_cost import CellLoop
from reporter.model.expose import expose_gates
from reporter.pipeline.model_source import ModelRecipe, exposed_model
from reporter.replay.fused_pass import _time_major_rows
from reporter.replay.runner import Replayer
from reporter.replay.stats import RunStats
from reporter.replay.time_major import skip_final_transposes
from reporter.replay.windows import open_windows_source
from tests.tiny_models import tiny_mixed


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The exposed one-direction LSTM + bidirectional GRU, and 11 windows of 8 steps."""
    folder = tmp_path_factory.mktemp("mixed")
    checkpoint = folder / "mixed.pt"
    torch.save(tiny_mixed().state_dict(), checkpoint)
    np.save(folder / "w.npy", np.random.default_rng(4).standard_normal((11, 8, 3)).astype(np.float32))
    source = open_windows_source(folder / "w.npy")
    model = exposed_model(ModelRecipe(checkpoint, "tests.tiny_models:tiny_mixed"), source)
    return model, source.take(source.indices())


def _gate_names(model, directions: int) -> set[str]:
    return {name for layer in model.layers if layer.directions == directions for name in layer.outputs.values()}


def test_replay_hands_on_the_exposed_models_values_from_time_major_gates(mixed):
    model, x = mixed
    before = model.exposed.SerializeToString()
    session = ort.InferenceSession(before, providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    got = Replayer(model.exposed, model.layers, workers=1).run_batch(x)
    assert model.exposed.SerializeToString() == before
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    one, two = _gate_names(model, 1), _gate_names(model, 2)
    assert len(one) == 6 and len(two) == 4  # LSTM i f g o c h; GRU z r n h, each [B, T, 2, H]
    for name in one:  # a view of [time, 1, batch, hidden] as the Scan wrote it
        assert not got[name].flags.c_contiguous and got[name].transpose(1, 2, 0, 3).flags.c_contiguous, name
    for name in two:
        assert got[name].flags.c_contiguous, name


def test_each_time_major_gate_is_written_by_the_node_that_computes_it(mixed):
    """No Identity or Unsqueeze between a gate's Scan (h included) and its graph output:
    onnxruntime would copy the whole trace into the output (18 of 166 ms per batch of the
    2 × 128-unit bench model)."""
    model, _ = mixed
    runnable, time_major = skip_final_transposes(model.exposed, model.layers)
    producer = {name: node for node in runnable.graph.node for name in node.output}
    one = _gate_names(model, 1)
    assert time_major == one
    assert {name: producer[name].op_type for name in one} == dict.fromkeys(one, "Scan")
    exposed = {name: node for node in model.exposed.graph.node for name in node.output}
    for name in _gate_names(model, 2):  # two directions: as the exposed model writes them
        assert producer[name] == exposed[name], name


def test_a_scan_output_a_subgraph_reads_keeps_its_name(mixed):
    """A tensor an `If` branch reads by name is not renamed: that gate keeps its Unsqueeze, and
    every value is still the exposed model's."""
    model, x = mixed
    runnable, _ = skip_final_transposes(model.exposed, model.layers)
    producer = {name: node for node in runnable.graph.node for name in node.output}
    gate = next(name for name in sorted(_gate_names(model, 1)) if producer[name].op_type == "Scan")
    edited = onnx.ModelProto()
    edited.CopyFrom(model.exposed)
    exposed_producer = {name: node for node in edited.graph.node for name in node.output}
    source = gate
    while exposed_producer[source].op_type != "Scan":
        source = exposed_producer[source].input[0]
    _read_in_a_branch(edited, source)
    session = ort.InferenceSession(edited.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    kept, _ = skip_final_transposes(edited, model.layers)
    assert {node.output[0]: node.op_type for node in kept.graph.node}[gate] != "Scan"
    got = Replayer(edited, model.layers, workers=1).run_batch(x)
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def _read_in_a_branch(model: onnx.ModelProto, read: str) -> None:
    """Add an `If` whose branches read the tensor `read` by name, and its output `probe`."""
    branch = [
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", [read], [f"{side}_out"])],
            side,
            [],
            [onnx.helper.make_tensor_value_info(f"{side}_out", onnx.TensorProto.FLOAT, None)],
        )
        for side in ("then", "else")
    ]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(True), "always"))
    model.graph.node.append(
        onnx.helper.make_node("If", ["always"], ["probe"], then_branch=branch[0], else_branch=branch[1])
    )
    model.graph.output.append(onnx.helper.make_tensor_value_info("probe", onnx.TensorProto.FLOAT, None))


def test_statistics_of_time_major_gates_equal_those_of_batch_major_copies(mixed):
    """The kernel reads the views in place and the copies after a transpose: the same rows in the
    same order, so every statistic is bit for bit the same."""
    model, x = mixed
    replayer = Replayer(model.exposed, model.layers, workers=1)
    gates = replayer.gates(replayer.run_batch(x))
    stats = RunStats(model.layers)
    views = stats.parts(gates, extras=True)
    copies = stats.parts({k: {g: np.ascontiguousarray(v) for g, v in d.items()} for k, d in gates.items()}, extras=True)
    assert views.keys() == copies.keys() and len(views) == 10
    for key, view in views.items():
        copy = copies[key]
        for name in ("moments", "steps"):
            for field, value in getattr(view, name).items():
                np.testing.assert_array_equal(value, getattr(copy, name)[field], err_msg=f"{key} {name} {field}")
        np.testing.assert_array_equal(view.features, copy.features, err_msg=f"{key} features")
        assert (view.peaks is None) == (copy.peaks is None) == (key[1] != "h")
        for a, b in zip(view.peaks or (), copy.peaks or (), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{key} peaks")


def test_a_gate_a_subgraph_reads_stays_as_the_exposed_model_writes_it(mixed):
    """An `If` branch reading a gate output by name (a model edited after exposure) still reads
    the `[batch, time, …]` gate: that output keeps its Transpose, the others lose theirs."""
    model, x = mixed
    read = sorted(_gate_names(model, 1))[0]
    edited = onnx.ModelProto()
    edited.CopyFrom(model.exposed)
    _read_in_a_branch(edited, read)
    session = ort.InferenceSession(edited.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    got = Replayer(edited, model.layers, workers=1).run_batch(x)
    np.testing.assert_array_equal(got["probe"], want[read])
    for name in _gate_names(model, 1):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert got[name].flags.c_contiguous == (name == read), name


@pytest.fixture(scope="module", params=["LSTM", "GRU"])
def cell_loop(request):
    """A loop over `nn.LSTMCell`/`nn.GRUCell` (input 3, 5 units), exported unrolled over 6 steps:
    one decomposed layer whose gates the exposed model stacks from the step tensors; 7 windows."""
    torch.manual_seed(0)
    module = CellLoop(request.param, 3, 5).eval()
    x = torch.randn(7, 6, 3)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    exposed, layers = expose_gates(onnx.load_from_string(buffer.getvalue()))
    assert [(layer.kind, layer.cell) for layer in layers] == [(request.param, "decomposed")]
    return exposed, layers, x.numpy()


def test_a_decomposed_cells_gates_are_stacked_time_major_with_the_exposed_models_values(cell_loop):
    """Replay's copy joins a decomposed gate's steps along time into `[time, 1, batch, hidden]`
    (one block per step), the Concat writing the output itself; what replay hands on is the
    exposed model's values bit for bit, as views the statistics read in place."""
    exposed, layers, x = cell_loop
    before = exposed.SerializeToString()
    runnable, time_major = skip_final_transposes(exposed, layers)
    gates = set(layers[0].outputs.values())
    assert time_major == gates
    producer = {name: node for node in runnable.graph.node for name in node.output}
    assert {producer[name].op_type for name in gates} == {"Concat"}
    session = ort.InferenceSession(before, providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    got = Replayer(exposed, layers, workers=1).run_batch(x)
    assert exposed.SerializeToString() == before
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    for name in gates:
        assert got[name].shape == (7, 6, 1, 5) and not got[name].flags.c_contiguous, name
        assert np.shares_memory(_time_major_rows(got[name]), got[name]), name


def test_a_stack_whose_steps_are_read_elsewhere_stays_as_the_exposed_model_writes_it(cell_loop):
    """A step of a decomposed gate read by another node too (a model edited after exposure) keeps
    that gate batch-major: its Reshape feeds both."""
    exposed, layers, x = cell_loop
    edited = onnx.ModelProto()
    edited.CopyFrom(exposed)
    gate = sorted(layers[0].outputs.values())[0]
    producer = {name: node for node in edited.graph.node for name in node.output}
    node = producer[gate]
    while node.op_type == "Identity":
        node = producer[node.input[0]]
    step = node.input[2]  # the third step, as [batch, 1, 1, hidden]
    edited.graph.node.append(onnx.helper.make_node("Identity", [step], ["probe"]))
    edited.graph.output.append(onnx.helper.make_tensor_value_info("probe", onnx.TensorProto.FLOAT, None))
    _, time_major = skip_final_transposes(edited, layers)
    assert time_major == set(layers[0].outputs.values()) - {gate}
    got = Replayer(edited, layers, workers=1).run_batch(x)
    np.testing.assert_array_equal(got["probe"], got[gate][:, 2:3])
    assert got[gate].flags.c_contiguous

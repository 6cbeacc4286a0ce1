"""expose_gates as a graph pass: inputs untouched, idempotent, outputs in order, no name clashes."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from reporter.errors import ModelError
from reporter.model.expose import expose_gates
from tests import rnn_reference
from tests.rnn_reference import GATES
from tests.test_expose_spec import OPSET, Case, build, ort_run, reference

TOL = dict(rtol=1e-5, atol=1e-5)

MODELS = {
    "LSTM-bidirectional-peepholes": Case("LSTM", "bidirectional", peepholes=True, initial=True),
    "GRU-layout1-sequence_lens": Case("GRU", "reverse", layout=1, sequence_lens=(5, 1, 3), batch=3),
    "RNN-weights-as-inputs": Case("RNN", "bidirectional", fed=("W", "R", "B")),
    "LSTM-only-Y_h": Case("LSTM", outputs=("Y_h",)),
}


def _layer_fields(layers) -> list[tuple]:
    return [(la.name, la.kind, la.directions, la.hidden_size, dict(la.outputs)) for la in layers]


def _output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def _all_names(graph: onnx.GraphProto) -> list[str]:
    """Every name the top-level graph defines: inputs, initializers and node outputs."""
    names = [i.name for i in graph.input] + [i.name for i in graph.initializer]
    return names + [o for node in graph.node for o in node.output if o]


def stacked() -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """A bidirectional LSTM whose Y, reshaped to [T, B, 2H], feeds a GRU: two layers in sequence."""
    H, I, T, B = 4, 3, 5, 2
    rng = np.random.default_rng(7)
    w = {
        "lstm_W": rng.standard_normal((2, 4 * H, I)),
        "lstm_R": rng.standard_normal((2, 4 * H, H)),
        "lstm_B": rng.standard_normal((2, 8 * H)),
        "gru_W": rng.standard_normal((1, 3 * H, 2 * H)),
        "gru_R": rng.standard_normal((1, 3 * H, H)),
        "gru_B": rng.standard_normal((1, 6 * H)),
    }
    w = {k: (0.5 * v).astype(np.float32) for k, v in w.items()}
    nodes = [
        helper.make_node(
            "LSTM",
            ["X", "lstm_W", "lstm_R", "lstm_B"],
            ["lstm_Y"],
            name="encoder",
            hidden_size=H,
            direction="bidirectional",
        ),
        helper.make_node("Transpose", ["lstm_Y"], ["lstm_Y_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["lstm_Y_t", "flat"], ["gru_X"]),
        helper.make_node(
            "GRU",
            ["gru_X", "gru_W", "gru_R", "gru_B"],
            ["gru_Y", "gru_Y_h"],
            name="decoder",
            hidden_size=H,
            linear_before_reset=1,
        ),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "flat"))
    graph = helper.make_graph(
        nodes,
        "stacked",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["time", "batch", I])],
        [
            helper.make_tensor_value_info("gru_Y_h", TensorProto.FLOAT, [1, "batch", H]),
            helper.make_tensor_value_info("gru_Y", TensorProto.FLOAT, ["time", 1, "batch", H]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    first = rnn_reference.run("LSTM", x, w["lstm_W"], w["lstm_R"], w["lstm_B"], direction="bidirectional")
    gru_x = first.Y.transpose(0, 2, 1, 3).reshape(T, B, 2 * H)
    second = rnn_reference.run("GRU", gru_x, w["gru_W"], w["gru_R"], w["gru_B"], linear_before_reset=1)
    return model, {"X": x}, {"encoder": first.gates, "decoder": second.gates}, dict(T=T, B=B, H=H)


# Inputs untouched, new model out


@pytest.mark.parametrize("model_id", MODELS)
def test_the_model_passed_in_is_not_modified(model_id):
    built = build(MODELS[model_id])
    before = built.model.SerializeToString()
    exposed, _ = expose_gates(built.model)
    assert built.model.SerializeToString() == before
    assert exposed is not built.model


# Idempotency and stability


@pytest.mark.parametrize("model_id", MODELS)
def test_exposing_an_exposed_model_changes_nothing(model_id):
    built = build(MODELS[model_id])
    once, layers_once = expose_gates(built.model)
    twice, layers_twice = expose_gates(once)
    assert _layer_fields(layers_twice) == _layer_fields(layers_once)
    assert _output_names(twice) == _output_names(once)
    assert len(twice.graph.node) == len(once.graph.node)
    got, want = ort_run(twice, built.feeds), ort_run(once, built.feeds)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_the_manifest_travels_with_the_file(tmp_path):
    model = stacked()[0]
    exposed, layers = expose_gates(model)
    path = tmp_path / "exposed.onnx"
    onnx.save(exposed, path)
    again, layers_again = expose_gates(onnx.load(path))
    assert _layer_fields(layers_again) == _layer_fields(layers)
    assert _output_names(again) == _output_names(exposed)


def test_exposing_is_deterministic():
    model = stacked()[0]
    first, layers_first = expose_gates(model)
    second, layers_second = expose_gates(model)
    assert _layer_fields(layers_first) == _layer_fields(layers_second)
    assert first.SerializeToString() == second.SerializeToString()


# Outputs: the model's own first and unchanged, then the gates


def test_original_outputs_keep_their_order_types_and_values():
    """The node's outputs in an unusual order, with an unrelated output between them."""
    built = build(Case("LSTM", "bidirectional"))
    graph = built.model.graph
    graph.node.append(helper.make_node("Neg", ["X"], ["minus_X"]))
    by_name = {o.name: o for o in graph.output}
    unrelated = helper.make_tensor_value_info("minus_X", TensorProto.FLOAT, [5, 2, 3])
    order = [copy.deepcopy(o) for o in (by_name["Y_c"], unrelated, by_name["Y"], by_name["Y_h"])]
    del graph.output[:]
    graph.output.extend(order)
    exposed, layers = expose_gates(built.model)
    assert list(exposed.graph.output)[: len(order)] == order  # names, types and shapes alike
    got, want = ort_run(exposed, built.feeds), ort_run(built.model, built.feeds)
    for output in order:
        np.testing.assert_allclose(got[output.name], want[output.name], rtol=0, atol=1e-5, err_msg=output.name)
    gate_names = [name for layer in layers for name in layer.outputs.values()]
    assert sorted(_output_names(exposed)[len(order) :]) == sorted(gate_names)


def test_gate_outputs_are_declared_float32_of_rank_4():
    model, _, _, dims = stacked()
    exposed, layers = expose_gates(model)
    declared = {o.name: o.type.tensor_type for o in exposed.graph.output}
    for layer in layers:
        for gate, name in layer.outputs.items():
            tensor_type = declared[name]
            assert tensor_type.elem_type == TensorProto.FLOAT, (layer.name, gate)
            shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
            assert len(shape) == 4, (layer.name, gate, shape)
            assert shape[2] in (None, layer.directions) and shape[3] in (None, dims["H"]), (layer.name, gate, shape)


@pytest.mark.parametrize("model_id", MODELS)
def test_manifest_fields(model_id):
    case = MODELS[model_id]
    built = build(case)
    exposed, layers = expose_gates(built.model)
    (layer,) = layers
    assert layer.kind == case.kind and layer.directions == case.directions and layer.hidden_size == 4
    assert set(layer.outputs) == set(GATES[case.kind])
    assert set(layer.outputs.values()) <= set(_output_names(exposed))
    assert len(set(layer.outputs.values())) == len(GATES[case.kind])
    assert isinstance(layer.name, str) and layer.name


@pytest.mark.parametrize("model_id", MODELS)
def test_the_exposed_model_passes_the_full_checker(model_id):
    exposed, _ = expose_gates(build(MODELS[model_id]).model)
    onnx.checker.check_model(exposed, full_check=True)


def test_the_exposed_stacked_model_passes_the_full_checker():
    exposed, _ = expose_gates(stacked()[0])
    onnx.checker.check_model(exposed, full_check=True)


# Names


def test_new_names_never_collide_with_existing_ones():
    """Occupy every name a first exposure introduced, and the obvious gate names: all stay taken."""
    built = build(Case("LSTM", "bidirectional", initial=True), name="rnn_node")
    first, layers = expose_gates(built.model)
    introduced = set(_all_names(first.graph)) | set(_output_names(first))
    introduced -= set(_all_names(built.model.graph))
    gates = GATES["LSTM"]
    obvious = {*gates, "rnn_node", "rnn_node.l0", *(f"rnn_node{sep}{g}" for sep in "._/" for g in gates)}
    decoys = sorted(introduced | (obvious - set(_all_names(built.model.graph))))

    model = onnx.ModelProto()
    model.CopyFrom(built.model)
    graph = model.graph
    for k, name in enumerate(decoys):
        graph.node.append(helper.make_node("Identity", ["X"], [name], name=f"decoy_{k}"))
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [5, 2, 3]))
    onnx.checker.check_model(model, full_check=True)
    before = set(_all_names(graph))

    exposed, layers = expose_gates(model)
    onnx.checker.check_model(exposed, full_check=True)
    names = _all_names(exposed.graph)
    assert len(names) == len(set(names)), "a name is defined twice"
    (layer,) = layers
    assert not set(layer.outputs.values()) & before, "a gate output took an existing name"
    outputs = ort_run(exposed, built.feeds)
    for name in decoys:
        np.testing.assert_array_equal(outputs[name], built.feeds["X"], err_msg=name)
    want = reference(built)
    for gate, name in layer.outputs.items():
        np.testing.assert_allclose(outputs[name], want.gates[gate], **TOL, err_msg=gate)


def test_layer_names_are_node_names_for_hand_built_graphs():
    _, layers = expose_gates(stacked()[0])
    assert [layer.name for layer in layers] == ["encoder", "decoder"]


def test_unnamed_and_same_named_nodes_get_distinct_names():
    model = stacked()[0]
    for name in ("", "same"):
        for node in model.graph.node:
            node.name = name
        exposed, layers = expose_gates(model)
        names = [layer.name for layer in layers]
        assert all(names) and len(set(names)) == 2, names
        assert _output_names(exposed)[:2] == ["gru_Y_h", "gru_Y"]


# Several recurrent nodes, dynamic axes


def test_two_recurrent_nodes_in_sequence_are_both_exposed_in_graph_order():
    model, feeds, want, dims = stacked()
    exposed, layers = expose_gates(model)
    assert [(la.kind, la.directions) for la in layers] == [("LSTM", 2), ("GRU", 1)]
    outputs = ort_run(exposed, feeds)
    for layer, node_name in zip(layers, ("encoder", "decoder")):
        for gate, name in layer.outputs.items():
            np.testing.assert_allclose(outputs[name], want[node_name][gate], **TOL, err_msg=f"{node_name} {gate}")
    original = ort_run(model, feeds)
    for name in ("gru_Y_h", "gru_Y"):
        np.testing.assert_allclose(outputs[name], original[name], rtol=0, atol=1e-5)


def test_batch_and_time_stay_dynamic():
    model, _, _, dims = stacked()
    exposed, layers = expose_gates(model)
    for T, B in ((1, 1), (9, 4)):
        x = np.random.default_rng(T).standard_normal((T, B, 3)).astype(np.float32)
        outputs = ort_run(exposed, {"X": x})
        for layer in layers:
            for gate, name in layer.outputs.items():
                assert outputs[name].shape == (B, T, layer.directions, dims["H"]), (layer.name, gate)
        np.testing.assert_allclose(outputs["gru_Y"], ort_run(model, {"X": x})["gru_Y"], rtol=0, atol=1e-5)


# Opsets and where the weights come from


@pytest.mark.parametrize("opset", [7, 9, 13, 14, 18, 22])
@pytest.mark.parametrize(
    "case",
    [
        Case("LSTM", "bidirectional", sequence_lens=(5, 1, 3), batch=3, peepholes=True),
        Case("GRU", "reverse", initial=True, attrs=dict(linear_before_reset=1)),
        Case("RNN", "bidirectional", sequence_lens=(5, 1, 3), batch=3),
    ],
    ids=["LSTM", "GRU", "RNN"],
)
def test_models_of_older_and_newer_opsets(case, opset):
    built = build(case)
    built.model.opset_import[0].version = opset
    onnx.checker.check_model(built.model, full_check=True)
    exposed, (layer,) = expose_gates(built.model)
    onnx.checker.check_model(exposed, full_check=True)
    outputs, want = ort_run(exposed, built.feeds), reference(built)
    for gate, name in layer.outputs.items():
        np.testing.assert_allclose(outputs[name], want.gates[gate], **TOL, err_msg=gate)
    original = ort_run(built.model, built.feeds)
    for name in original:
        np.testing.assert_allclose(outputs[name], original[name], rtol=0, atol=1e-5, err_msg=name)


def test_weights_from_constant_nodes_are_honoured():
    """W and R come from Constant nodes: neither initializers nor graph inputs; gates still exact."""
    built = build(Case("GRU", "bidirectional"), name="gru_node")
    graph = built.model.graph
    constants = []
    for init in list(graph.initializer):
        if init.name in ("W", "R"):
            constants.append(helper.make_node("Constant", [], [init.name], value=init))
            graph.initializer.remove(init)
    graph.node.insert(0, constants[1])
    graph.node.insert(0, constants[0])
    onnx.checker.check_model(built.model, full_check=True)
    exposed, (layer,) = expose_gates(built.model)
    assert layer.name == "gru_node"
    outputs, want = ort_run(exposed, built.feeds), reference(built)
    for gate, name in layer.outputs.items():
        np.testing.assert_allclose(outputs[name], want.gates[gate], **TOL, err_msg=gate)


# Errors


def test_a_model_with_no_recurrent_node_is_a_model_error():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"])],
        "no_rnn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    with pytest.raises(ModelError, match="LSTM|GRU|RNN"):
        expose_gates(model)


def _one_node(op: str = "LSTM", x_type=TensorProto.FLOAT, opset: int = OPSET, hidden=True, extra_inputs=(), **attrs):
    """A graph of one recurrent node named "cell" with weights as initializers (R fed, when asked)."""
    H, I, blocks = 3, 2, {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((1, blocks * H, I)).astype(np.float32), "W")]
    inputs = [helper.make_tensor_value_info("X", x_type, ["time", "batch", I])]
    if hidden:
        inits.append(numpy_helper.from_array(rng.standard_normal((1, blocks * H, H)).astype(np.float32), "R"))
        attrs["hidden_size"] = H
    else:
        inputs.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, None))  # shape unknown
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in extra_inputs if name]
    node = helper.make_node(op, ["X", "W", "R", *extra_inputs], ["Y"], name="cell", **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: _one_node(x_type=TensorProto.DOUBLE), "node 'cell': input X is DOUBLE, only float32 is supported"),
        (lambda: _one_node(peephole_mode=1), "node 'cell': unknown LSTM attribute 'peephole_mode'"),
        (
            lambda: _one_node(activations=["Sigmoid", "Tanh"]),
            "node 'cell': expected 3 activations for a 1-direction LSTM, got 2",
        ),
        (lambda: _one_node(hidden=False), "node 'cell': hidden_size is not set and R's shape is unknown"),
        (
            lambda: _one_node("GRU", extra_inputs=("", "", "", "initial_c")),
            "node 'cell': GRU takes no initial_c or P input",
        ),
        (
            lambda: _one_node(direction="sideways"),
            "node 'cell': direction 'sideways' is not forward/reverse/bidirectional",
        ),
        (
            lambda: _one_node(activations=["Sigmoid", "Gelu", "Tanh"]),
            "node 'cell': activation 'Gelu' is not an ONNX RNN activation",
        ),
    ],
    ids=[
        "float64 input",
        "unknown attribute",
        "activation count",
        "no hidden_size",
        "GRU initial_c",
        "direction",
        "unknown activation",
    ],
)
def test_what_cannot_be_honoured_is_an_error_naming_the_node_and_the_cause(model, message):
    with pytest.raises(ModelError) as caught:
        expose_gates(model())
    assert str(caught.value) == message


def test_an_opset_that_cannot_be_converted_is_an_error_saying_so(monkeypatch):
    def refuse(model, version):
        raise RuntimeError("No Adapter For LSTM")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(ModelError) as caught:
        expose_gates(_one_node(opset=9))
    assert str(caught.value) == "model uses opset 9; converting it to opset 13 failed: No Adapter For LSTM"

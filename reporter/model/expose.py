"""Expose gates: every recurrent layer's gates and states become graph outputs, wherever it hides.

A graph pass in the onnx-ir manner. It walks the main graph and every `If` branch and
`Loop`/`Scan` body, at any depth: a fused LSTM/GRU/RNN node is replaced with an equivalent Scan
that also emits its gates (`reporter.model.scan_rewrite`); a cell built from elementary ops is
recognised from its equations (`reporter.model.cell_patterns`, `reporter.model.decomposed`); a gate
inside control flow is carried out to the main graph (`reporter.model.control_flow`). One graph
output per gate is appended, and the layer manifest is stored in the model's metadata, so that
exposing an exposed model is a no-op and the manifest travels with the file. The input model is
never modified; the model's own outputs keep their names, order and values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from reporter.errors import ModelError
from reporter.layers import GATES, KINDS, Layer, gate_activations, layers_from_json, layers_to_json
from reporter.model.cell_patterns import Dataflow, graph_constants
from reporter.model.control_flow import BRANCH_ATTRIBUTES, lift_out_of, runs_backward
from reporter.model.decomposed import Found, decomposed_layers
from reporter.model.graph_builder import GraphBuilder, all_names, fresh_name, reverse_time
from reporter.model.layer_names import LayerNamer
from reporter.model.recurrent_spec import read_spec
from reporter.model.scan_rewrite import build_scan_rewrite
from reporter.model.step_order import reads_flipped

__all__ = ["MANIFEST_KEY", "NOTES_KEY", "RECURRENT_OPS", "expose_gates"]

RECURRENT_OPS = KINDS  # the ONNX operators whose gates are exposed
MANIFEST_KEY = "gate_reporter.layers"
NOTES_KEY = "gate_reporter.notes"  # what exposure found but could not expose, one line each
_MIN_OPSET = 13  # Unsqueeze/Squeeze/Slice with tensor inputs
_DIRECTION = {(False,): "forward", (True,): "reverse", (False, True): "bidirectional"}


def expose_gates(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Layer]]:
    """Return a copy of `model` with every gate as a graph output, and the layer manifest."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    manifest = {p.key: p.value for p in exposed.metadata_props}.get(MANIFEST_KEY)
    if manifest is not None:
        return exposed, _checked_manifest(exposed, manifest)
    if exposed.functions:
        exposed = onnx.inliner.inline_local_functions(exposed)
    exposed = _with_min_opset(exposed)
    graph = exposed.graph
    inferred, taken, notes = _inferred(exposed).graph, all_names(graph), []
    constants = graph_constants(graph)
    found = _expose_graph(graph, _Scope(inferred, _graph_types(inferred, constants), constants), [], taken, notes)
    if not found:
        raise ModelError(
            f"model {graph.name!r} has no LSTM, GRU or RNN node, and no recurrent cell built from "
            "elementary ops, to expose" + (f" ({notes[0]})" if notes else "")
        )
    layers, b, namer = [], GraphBuilder(taken, "gate_reporter"), LayerNamer()
    for layer in found:
        name = namer.name(layer.node, layer.kind, layer.cell == "fused", layer.branch)
        outputs = {
            gate: b.op("Identity", tensor, out=fresh_name(taken, f"{name}/{gate}"))
            for gate, tensor in layer.gates.items()
        }
        layers.append(_layer(name, layer, outputs))
    graph.node.extend(b.nodes)
    for layer in layers:
        for gate_output in layer.outputs.values():
            graph.output.append(
                helper.make_tensor_value_info(
                    gate_output, TensorProto.FLOAT, [None, None, layer.directions, layer.hidden_size]
                )
            )
    props = {**{p.key: p.value for p in exposed.metadata_props}, MANIFEST_KEY: layers_to_json(layers)}
    if notes:
        props[NOTES_KEY] = "\n".join(notes)
    helper.set_model_props(exposed, props)
    return exposed, layers


@dataclass
class _Scope:
    """What one graph sees: the graph after shape inference (its nodes align with the graph's),
    and the types and constants of its tensors over those of its enclosing graphs (sibling
    subgraphs may reuse a name for tensors of different shapes)."""

    inferred: onnx.GraphProto
    types: dict
    constants: dict

    def inner(self, k: int, node: onnx.NodeProto, attribute: str) -> _Scope:
        """The scope of `node`'s subgraph `attribute`, `node` being the k-th node of this graph."""
        twin = self.inferred.node[k] if k < len(self.inferred.node) else node
        twin = twin if twin.op_type == node.op_type else node
        sub = next(a.g for a in twin.attribute if a.name == attribute)
        constants = graph_constants(sub)
        return _Scope(sub, {**self.types, **_graph_types(sub, constants)}, {**self.constants, **constants})


def _expose_graph(
    graph: onnx.GraphProto, scope: _Scope, carried: list, taken: set[str], notes: list[str]
) -> list[Found]:
    """Expose every layer of `graph` and of its subgraphs; each layer's gates as tensors of `graph`,
    in graph order. New nodes go into `graph` itself."""
    original, b = list(graph.node), GraphBuilder(taken, "gate_reporter")
    flow = Dataflow(graph, scope.constants)
    dims = lambda name: scope.types.get(name, (None, None))[1]  # noqa: E731
    anchors = {id(node): k for k, node in enumerate(original)}
    generic = not any(node.op_type in (*RECURRENT_OPS, *BRANCH_ATTRIBUTES) for node in original)
    found = [(anchors[id(f.node)], f) for f in decomposed_layers(flow, carried, dims, b, notes, generic)]
    replacements = {}
    for k, node in enumerate(original):
        if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx"):
            layer, replacements[id(node)] = _fused(node, scope.types, taken)
            found.append((k, layer))
        for attribute in BRANCH_ATTRIBUTES.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            sub = next(a.g for a in node.attribute if a.name == attribute)
            where = f"{node.op_type} {node.name or node.output[0]!r} {attribute}"
            for layer in _expose_graph(sub, scope.inner(k, node, attribute), _carried_states(node, sub), taken, notes):
                if node.op_type != "If" and any(level.startswith("If ") for level in layer.branch):
                    notes.append(
                        f"{layer.kind} layer at node {layer.node.name!r} not exposed: it sits in an If inside "
                        f"{where}, whose iterations may take different branches"
                    )
                    continue
                layer.gates = {
                    gate: lift_out_of(node, sub, tensor, layer.directions, layer.hidden_size, b)
                    for gate, tensor in layer.gates.items()
                }
                layer.branch = [where, *layer.branch]
                if runs_backward(node) and layer.direction == "forward":
                    layer.direction = "reverse"  # its steps ran last to first; lifted, they are in input time
                elif node.op_type == "Loop" and layer.cell != "fused" and reads_flipped(node, sub, flow):
                    layer.gates = {gate: reverse_time(b, tensor, 1, None) for gate, tensor in layer.gates.items()}
                    layer.direction = "reverse"  # it ran over the flipped input: flipped back into input time
                found.append((k, layer))
    nodes = [new for node in original for new in replacements.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend([*nodes, *b.nodes])
    return [layer for _, layer in sorted(found, key=lambda pair: pair[0])]


def _fused(node: onnx.NodeProto, types: dict, taken: set[str]) -> tuple[Found, list[onnx.NodeProto]]:
    """A fused node's layer, and the Scan rewrite that replaces it."""
    spec = read_spec(node, lambda t: types.get(t, (None, None))[1])
    x_type = types.get(spec.inputs["X"], (None, None))[0]
    if x_type not in (None, TensorProto.FLOAT):
        raise ModelError(
            f"node {node.name!r}: input X is {TensorProto.DataType.Name(x_type)}, only float32 is supported"
        )
    prefix = fresh_name(taken, f"gate_reporter/{node.name or node.op_type}")
    outputs = {gate: fresh_name(taken, f"{prefix}/{gate}") for gate in GATES[spec.kind]}
    nodes = build_scan_rewrite(spec, taken, f"{prefix}/scan", outputs)
    activations = gate_activations(spec.kind, [a.name for a in spec.activations[0]])
    layer = Found(spec.kind, spec.directions, spec.hidden_size, outputs, node, activations, _DIRECTION[spec.reverse])
    return layer, nodes


def _carried_states(node: onnx.NodeProto, sub: onnx.GraphProto) -> list[tuple[str, str]]:
    """(state input, updated state output) pairs of a Loop or Scan body; none for an If branch."""
    if node.op_type == "Loop":
        count = len(node.input) - 2
        return [(sub.input[2 + k].name, sub.output[1 + k].name) for k in range(count)]
    if node.op_type == "Scan":
        scanned = next(a.i for a in node.attribute if a.name == "num_scan_inputs")
        return [(sub.input[k].name, sub.output[k].name) for k in range(len(node.input) - scanned)]
    return []


def _layer(name: str, found: Found, outputs: dict[str, str]) -> Layer:
    """Describe an exposed layer; `activations` tells later steps each gate's value range."""
    return Layer(
        name,
        found.kind,
        found.directions,
        found.hidden_size,
        outputs,
        found.node.name,
        found.direction,
        found.activations,
        branch=" › ".join(found.branch),
        cell=found.cell,
        note=found.note,
    )


def _checked_manifest(model: onnx.ModelProto, manifest: str) -> list[Layer]:
    """Read the manifest of an already-exposed model, checking it still matches the graph."""
    try:
        layers = layers_from_json(manifest)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"model metadata {MANIFEST_KEY!r} is not a valid layer manifest: {exc}") from None
    graph_outputs = {o.name for o in model.graph.output}
    missing = [o for layer in layers for o in layer.outputs.values() if o not in graph_outputs]
    if missing:
        raise ModelError(f"model says its gates are exposed, but outputs {missing[:3]} are missing")
    return layers


def _with_min_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Upgrade models older than opset 13, whose op signatures the rewrite does not emit."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or version >= _MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, _MIN_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors of many kinds
        raise ModelError(f"model uses opset {version}; converting it to opset {_MIN_OPSET} failed: {exc}") from None


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model after shape inference (with data propagation: sizes computed from Shape, as a
    legacy-exported chunk() has), or the model itself where inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a nicety here: unknown shapes are handled downstream
        return model


def _graph_types(graph: onnx.GraphProto, constants: dict[str, np.ndarray]) -> dict[str, tuple[int | None, list | None]]:
    """Element type and dims (ints, or None where symbolic) of every tensor of one graph (not its
    subgraphs) that shape inference knows; `constants`, its initializers' and Constants' values
    (`graph_constants`), count as known."""
    known = {
        name: (helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)) for name, value in constants.items()
    }
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.HasField("tensor_type"):
            tensor = info.type.tensor_type
            dims = (
                [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
                if tensor.HasField("shape")
                else None
            )
            known.setdefault(info.name, (tensor.elem_type or None, dims))
    return known

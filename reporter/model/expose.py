"""Expose gates: every LSTM/GRU/RNN node's gates and states become graph outputs.

A graph pass in the onnx-ir manner: it finds the recurrent nodes, replaces each with an
equivalent Scan that also emits its gates (`reporter.model.scan_rewrite`), appends one graph output
per gate, and returns a new model with the layer manifest stored in its metadata, so that exposing
an exposed model is a no-op and the manifest travels with the file. The input model is never
modified; the model's own outputs keep their names, order and values.
"""

from __future__ import annotations

import ast
import re

import onnx
from onnx import TensorProto, helper

from reporter.errors import ModelError
from reporter.layers import GATES, KINDS, Layer, gate_activations, layers_from_json, layers_to_json
from reporter.model.graph_builder import fresh_name
from reporter.model.recurrent_spec import read_spec
from reporter.model.scan_rewrite import build_scan_rewrite

__all__ = ["MANIFEST_KEY", "RECURRENT_OPS", "expose_gates"]

RECURRENT_OPS = KINDS  # the ONNX operators whose gates are exposed
MANIFEST_KEY = "gate_reporter.layers"
_MIN_OPSET = 13  # Unsqueeze/Squeeze/Slice with tensor inputs
_GENERATED_NAME = re.compile(r"(LSTM|GRU|RNN)__\d+")  # tf2onnx's names for the nodes it fuses
_TF_INTERNAL = {"PartitionedCall", "StatefulPartitionedCall"}  # TensorFlow's own scopes inside a Keras layer


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
    _refuse_nested_recurrent_nodes(graph)
    targets = [n for n in graph.node if n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx")]
    if not targets:
        raise ModelError(f"model {graph.name!r} has no LSTM, GRU or RNN node to expose")
    types = _known_types(exposed)
    taken = _all_names(graph)
    replacements, layers = {}, []
    for node, name in zip(targets, _layer_names(targets)):
        spec = read_spec(node, lambda t: types.get(t, (None, None))[1])
        x_type = types.get(spec.inputs["X"], (None, None))[0]
        if x_type not in (None, TensorProto.FLOAT):
            raise ModelError(
                f"node {node.name!r}: input X is {TensorProto.DataType.Name(x_type)}, only float32 is supported"
            )
        outputs = {gate: fresh_name(taken, f"{name}/{gate}") for gate in GATES[spec.kind]}
        replacements[id(node)] = build_scan_rewrite(spec, taken, f"{name}/scan", outputs)
        layers.append(_layer(name, node, spec, outputs))
    new_nodes = []
    for node in graph.node:
        new_nodes.extend(replacements.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(new_nodes)
    for layer in layers:
        for gate_output in layer.outputs.values():
            graph.output.append(
                helper.make_tensor_value_info(
                    gate_output, TensorProto.FLOAT, [None, None, layer.directions, layer.hidden_size]
                )
            )
    helper.set_model_props(
        exposed, {**{p.key: p.value for p in exposed.metadata_props}, MANIFEST_KEY: layers_to_json(layers)}
    )
    return exposed, layers


def _layer(name: str, node: onnx.NodeProto, spec, outputs: dict[str, str]) -> Layer:
    """Describe an exposed node; `activations` tells later steps each gate's value range."""
    ranges = gate_activations(spec.kind, [a.name for a in spec.activations[0]])
    direction = {(False,): "forward", (True,): "reverse", (False, True): "bidirectional"}[spec.reverse]
    return Layer(name, spec.kind, spec.directions, spec.hidden_size, outputs, node.name, direction, ranges)


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


def _subgraphs(graph: onnx.GraphProto):
    """Yield every graph nested in a node attribute of `graph`, at any depth."""
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                yield sub
                yield from _subgraphs(sub)


def _refuse_nested_recurrent_nodes(graph: onnx.GraphProto) -> None:
    """A node inside an If/Loop/Scan body cannot have its gates made graph outputs."""
    for sub in _subgraphs(graph):
        for node in sub.node:
            if node.op_type in RECURRENT_OPS:
                raise ModelError(f"node {node.name!r}: {node.op_type} inside a control-flow subgraph cannot be exposed")


def _all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name in the graph and its subgraphs (new names must avoid them)."""
    names = set()
    for g in [graph, *_subgraphs(graph)]:
        names.update(i.name for i in g.initializer)
        names.update(v.name for v in [*g.input, *g.output, *g.value_info])
        for node in g.node:
            names.update([*node.input, *node.output, node.name])
    return names


def _known_types(model: onnx.ModelProto) -> dict[str, tuple[int | None, list | None]]:
    """Element type and dims (ints, or None where symbolic) of every tensor shape inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a nicety here: unknown shapes are handled downstream
        inferred = model
    known = {}
    graph = inferred.graph
    for init in graph.initializer:
        known[init.name] = (init.data_type, list(init.dims))
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


def _module_path(node: onnx.NodeProto) -> str | None:
    """The torch module path a node came from (dynamo name scopes or legacy '/a/b/LSTM'), if any."""
    meta = {p.key: p.value for p in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" in meta:
        try:
            scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
        except (ValueError, SyntaxError):
            scopes = []
        return ".".join(s for s in scopes[1:-1] if s) or None
    if node.name.startswith("/"):
        return ".".join(p for p in node.name.strip("/").split("/")[:-1] if p) or None
    return None


def _tf_scope(node: onnx.NodeProto) -> str | None:
    """The Keras layer a tf2onnx node came from: tf2onnx names fused nodes "LSTM__41", but the
    node's input keeps the TensorFlow scope ("model/encoder_lstm/PartitionedCall/transpose:0")."""
    if not _GENERATED_NAME.fullmatch(node.name):
        return None
    for tensor in node.input:
        parts = tensor.split(":")[0].split("/")
        cut = next((k for k, part in enumerate(parts) if part in _TF_INTERNAL or part.startswith("while")), None)
        if cut is not None and cut > 0:
            scope = parts[1:cut] if cut > 1 else parts[:cut]  # without the model's own name
            return ".".join(scope)
    return None


def _layer_names(nodes: list[onnx.NodeProto]) -> list[str]:
    """Readable, unique, stable names: "rnn.l0", "rnn.l1" for torch exports, the Keras layer for
    tf2onnx exports, else node names."""
    names, per_module, used = [], {}, set()
    for node in nodes:
        path = _module_path(node)
        torch_like = path is not None or not node.name or node.name.startswith("/")
        if torch_like:
            base = path or node.op_type.lower()
            k = per_module.setdefault(base, 0)
            per_module[base] = k + 1
            name = f"{base}.l{k}"
        else:
            name = _tf_scope(node) or node.name
        names.append(fresh_name(used, name))
    return names

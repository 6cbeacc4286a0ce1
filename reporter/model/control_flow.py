"""Carry a gate tensor out of an `If` branch or a `Loop`/`Scan` body into the enclosing graph.

A graph output can only name a tensor of the main graph, so a gate computed inside control flow
is handed outwards one level at a time, always as `[batch, time, directions, hidden]`:

- `If`: the tensor becomes an output of its branch and of the `If` node. Every other branch
  outputs an empty `[0, 0, directions, hidden]` tensor in its place (branches must agree on their
  outputs), so a batch that took another branch shows a batch of 0: "this layer did not run".
- `Loop` / `Scan`: the tensor becomes a scan output, which the loop stacks per iteration into
  `[iterations, batch, time, directions, hidden]`; the enclosing graph turns that into
  `[batch, iterations·time, directions, hidden]`, iterations being steps of time (a loop over
  steps or over chunks of a sequence). A reverse `Scan` stacks in input order.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from reporter.model.graph_builder import GraphBuilder

__all__ = ["BRANCH_ATTRIBUTES", "lift_out_of", "runs_backward"]

BRANCH_ATTRIBUTES = {"If": ("then_branch", "else_branch"), "Loop": ("body",), "Scan": ("body",)}


def _gate_value(name: str, directions: int, hidden: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, None, directions, hidden])


def lift_out_of(
    node: onnx.NodeProto, branch: onnx.GraphProto, tensor: str, directions: int, hidden: int, b: GraphBuilder
) -> str:
    """Make `tensor` of `branch` (a subgraph of `node`) a tensor of the graph that holds `node`.

    New nodes of the enclosing graph are emitted into `b`; nodes inside the branches are appended
    to them directly. Returns the tensor's name in the enclosing graph.
    """
    outer = b.fresh("lifted")
    if node.op_type == "If":
        for name in BRANCH_ATTRIBUTES["If"]:
            graph = _attribute_graph(node, name)
            if graph is branch:
                graph.output.append(_gate_value(tensor, directions, hidden))
            else:
                graph.output.append(_gate_value(_empty(graph, b, directions, hidden), directions, hidden))
        node.output.append(outer)
        return outer
    branch.output.append(_gate_value(tensor, directions, hidden))
    if node.op_type == "Scan":
        _scan_in_input_order(node)
    node.output.append(outer)
    return _steps_along_time(b, outer, directions, hidden)


def runs_backward(node: onnx.NodeProto) -> bool:
    """Whether a Scan walks its (first) input from the last step to the first."""
    directions = next((list(a.ints) for a in node.attribute if a.name == "scan_input_directions"), [])
    return node.op_type == "Scan" and bool(directions) and directions[0] == 1


def _attribute_graph(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def _empty(graph: onnx.GraphProto, b: GraphBuilder, directions: int, hidden: int) -> str:
    """A Constant [0, 0, D, H] appended to a branch that does not compute the gate."""
    name = b.fresh("not_run")
    value = helper.make_tensor(name, TensorProto.FLOAT, [0, 0, directions, hidden], np.zeros(0, np.float32))
    graph.node.append(helper.make_node("Constant", [], [name], name=name, value=value))
    return name


def _scan_in_input_order(node: onnx.NodeProto) -> None:
    """Give the new scan output the direction of the Scan's first input, so step k lands at the
    input's step k; declared axes and directions lists grow by one entry."""
    body = _attribute_graph(node, "body")
    attrs = {a.name: a for a in node.attribute}
    inputs_scanned = attrs["num_scan_inputs"].i
    scan_outputs = len(body.output) - (len(body.input) - inputs_scanned)  # body outputs: states, then scans
    reverse = int(runs_backward(node))
    if "scan_output_directions" in attrs or reverse:
        directions = list(attrs["scan_output_directions"].ints) if "scan_output_directions" in attrs else []
        directions += [0] * (scan_outputs - 1 - len(directions)) + [reverse]
        _set_ints(node, "scan_output_directions", directions)
    if "scan_output_axes" in attrs:
        axes = list(attrs["scan_output_axes"].ints)
        _set_ints(node, "scan_output_axes", axes + [0] * (scan_outputs - len(axes)))


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    """Set an ints attribute in place: rebuilding the attribute list would copy the body graph,
    leaving the caller's reference to it detached from the node."""
    attribute = next((a for a in node.attribute if a.name == name), None)
    if attribute is None:
        node.attribute.append(helper.make_attribute(name, values))
        return
    del attribute.ints[:]
    attribute.ints.extend(values)


def _steps_along_time(b: GraphBuilder, stacked: str, directions: int, hidden: int) -> str:
    """[iterations, B, T, D, H] → [B, iterations·T, D, H] (sizes read at run time: B may be 0)."""
    moved = b.transpose(stacked, [1, 0, 2, 3, 4])
    shape = b.op("Shape", stacked)
    iterations, batch, steps = (b.slice(shape, k, k + 1, 0) for k in range(3))
    time = b.op("Mul", iterations, steps)
    return b.op("Reshape", moved, b.op("Concat", batch, time, b.ints(directions, hidden), axis=0))

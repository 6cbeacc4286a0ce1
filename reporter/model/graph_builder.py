"""Emit ONNX nodes into an existing graph without ever reusing one of its names.

`fresh_name` is the one way a graph pass picks a new tensor or node name (`subgraphs` finds the
graphs nested in a graph, whose names count too); `GraphBuilder` emits
nodes under a prefix with fresh names and deduplicated constants, and the spec's activations
(with their alpha and beta) as ONNX ops.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from reporter.model.recurrent_spec import Activation

__all__ = ["GraphBuilder", "activate", "activate_per_direction", "all_names", "fresh_name", "reverse_time", "subgraphs"]

_INT64_MIN = np.iinfo(np.int64).min


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Yield every graph nested in a node attribute of `graph`, at any depth."""
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                yield sub
                yield from subgraphs(sub)


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name in the graph and its subgraphs (new names must avoid them)."""
    names = set()
    for g in [graph, *subgraphs(graph)]:
        names.update(i.name for i in g.initializer)
        names.update(v.name for v in [*g.input, *g.output, *g.value_info])
        for node in g.node:
            names.update([*node.input, *node.output, node.name])
    return names


def fresh_name(taken: set[str], base: str) -> str:
    """`base`, or `base_k` for the first k that no existing name uses; the name is then taken."""
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


class GraphBuilder:
    """Emit ONNX nodes whose tensor names never collide with the model's."""

    def __init__(self, taken: set[str], prefix: str):
        self.taken, self.prefix, self.nodes = taken, prefix, []
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        """A new tensor name under this builder's prefix."""
        return fresh_name(self.taken, f"{self.prefix}/{hint}")

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def recompute(self, name: str) -> str:
        """Emit a second copy of the node that produced `name`, under a fresh output name."""
        node = next(n for n in self.nodes if n.output[0] == name)
        out = self.fresh(node.op_type.lower())
        copy = helper.make_node(node.op_type, list(node.input), [out], name=out)
        copy.attribute.extend(node.attribute)  # e.g. LeakyRelu's alpha
        self.nodes.append(copy)
        return out

    def const(self, value, dtype=np.float32) -> str:
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh("const")
            tensor = numpy_helper.from_array(array, name)
            self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=tensor))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", x, self.ints(start), self.ints(end), self.ints(axis))

    def unsqueeze(self, x: str, *axes: int) -> str:
        return self.op("Unsqueeze", x, self.ints(*axes))

    def squeeze(self, x: str, *axes: int) -> str:
        return self.op("Squeeze", x, self.ints(*axes))

    def transpose(self, x: str, perm: list[int]) -> str:
        return self.op("Transpose", x, perm=perm)


def reverse_time(b: GraphBuilder, x: str, axis: int, lens: str | None) -> str:
    """Reverse along time: whole length, or each sequence within its own length."""
    if lens is None:
        return b.op("Slice", x, b.ints(-1), b.ints(_INT64_MIN), b.ints(axis), b.ints(-1))
    return b.op("ReverseSequence", x, lens, time_axis=axis, batch_axis=1 - axis)


def activate(b: GraphBuilder, x: str, act: Activation) -> str:
    """Apply one spec activation to a tensor."""
    name, alpha, beta = act.name, act.alpha, act.beta
    simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign", "softplus": "Softplus"}
    if name in simple:
        return b.op(simple[name], x)
    if name == "affine":
        return b.op("Add", b.op("Mul", x, b.const(alpha)), b.const(beta))
    if name == "scaledtanh":
        return b.op("Mul", b.op("Tanh", b.op("Mul", x, b.const(beta))), b.const(alpha))
    if name == "hardsigmoid":
        return b.op("HardSigmoid", x, alpha=alpha, beta=beta)
    op_type = {"leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu", "elu": "Elu"}[name]
    return b.op(op_type, x, alpha=alpha)


def activate_per_direction(b: GraphBuilder, x: str, acts: list[Activation], axis: int = 0) -> str:
    """Apply direction d's activation to slice d along the direction axis (one op when all agree)."""
    if all(a == acts[0] for a in acts):
        return activate(b, x, acts[0])
    parts = [activate(b, b.slice(x, d, d + 1, axis), a) for d, a in enumerate(acts)]
    return b.op("Concat", *parts, axis=axis)

"""Replay's own copy of the exposed model: gate traces left time-major, as the Scan writes them.

The exposed model's contract (`expose_gates`, ARCHITECTURE.md) gives every gate as `[batch, time,
directions, hidden]`. A fused node's rewrite computes its traces time-major (`[time, directions,
batch, hidden]`, one slice per Scan step) and transposes each one at the end: a second write and
read of every gate value, up to 15% of the exposed forecaster's time on one core (`gate-report
bench --replay`). Replay needs no such copy. It runs a copy of the model whose one-direction gate
outputs skip that final Transpose, and turns each output back into the contract's axes as a
transposed view (no copy): everything downstream sees `[batch, time, directions, hidden]`, and the
statistics kernel, which walks a trace step by step, reads the time-major rows in place
(`fused_pass`). A decomposed cell's gate (`model.decomposed`: its step tensors joined along time)
is joined step after step instead, into the same time-major layout (`_stack_steps_first`). Traces
of cells inside control flow and of two directions are left as they are.

Each such output is then written by the node that computes it (`_write_in_place`): the Scan for a
gate of a forward layer without sequence lengths (a reverse layer's Slice, a masked layer's
Where, a decomposed cell's Concat). onnxruntime copies a tensor into a graph output when an
Unsqueeze or Identity stands between them (it aliases neither into a graph output), 12 copies of
a whole trace per batch of the 2 × 128-unit bench model, 18 of its 166 ms on one core
(onnxruntime's profiler). The Scan's `[time, batch, hidden]` output gets the direction axis back
as a view (`batch_major`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from reporter.layers import Layer
from reporter.model.cell_patterns import graph_constants
from reporter.model.graph_builder import all_names, fresh_name, subgraphs

__all__ = ["batch_major", "skip_final_transposes"]

_TO_BATCH_MAJOR = [2, 0, 1, 3]  # [T, D, B, H] → [B, T, D, H], the rewrite's last Transpose


def batch_major(value: np.ndarray) -> np.ndarray:
    """A time-major trace `[time, directions, batch, hidden]` (or a Scan's `[time, batch, hidden]`,
    one direction) seen as `[batch, time, directions, hidden]`, without a copy."""
    return (value[:, None] if value.ndim == 3 else value).transpose(_TO_BATCH_MAJOR)


def skip_final_transposes(model: onnx.ModelProto, layers: list[Layer]) -> tuple[onnx.ModelProto, frozenset[str]]:
    """A copy of `model` whose one-direction gate outputs are time-major, and those outputs' names.

    An output qualifies when it is the last of a chain `Transpose(perm=[2, 0, 1, 3]) → Identity…`
    in the main graph whose tensors nothing else reads, in the main graph or in any subgraph (an
    `If` branch or a loop body may read them by name); the chain then starts from the Transpose's
    input and the Transpose goes. The model passed in is not modified.
    """
    wanted = {name for layer in layers if layer.directions == 1 for name in layer.outputs.values()}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    producer = {name: node for node in graph.node for name in node.output}
    readers = Counter(name for g in [graph, *subgraphs(graph)] for node in g.node for name in node.input)
    readers.update(output.name for output in graph.output)
    changed, stale = set(), set()  # stale: tensors now time-major, whose recorded shapes no longer hold
    constants, steps_first = graph_constants(graph), {}  # steps_first: a [-1, 1, 1, H] shape → [1, 1, -1, H]
    for output in graph.output:
        if output.name not in wanted:
            continue
        chain = _chain_to_transpose(output.name, producer)
        if chain is not None and all(readers[node.output[0]] == 1 for node in chain):
            stale.update(node.output[0] for node in chain)
            transpose, rest = chain[0], chain[1:]
            if rest:
                rest[0].input[0] = transpose.input[0]
                graph.node.remove(transpose)
            else:  # the Transpose writes the graph output itself
                transpose.op_type = "Identity"
                del transpose.attribute[:]
        elif (stack := _steps_stacked(output.name, producer, readers, constants)) is not None:
            stale.update(node.output[0] for node in stack)
            _stack_steps_first(graph, stack, constants, steps_first)
        else:
            continue
        output.type.tensor_type.ClearField("shape")
        changed.add(output.name)
    stale.update(_write_in_place(graph, changed))
    kept = [info for info in graph.value_info if info.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return copy, frozenset(changed)


def _behind_identities(name: str, producer: dict) -> tuple[onnx.NodeProto | None, list]:
    """The node that makes `name` once Identity nodes are passed, and those Identity nodes, the
    last one first."""
    chain, node = [], producer.get(name)
    while node is not None and node.op_type == "Identity":
        chain.append(node)
        node = producer.get(node.input[0])
    return node, chain


def _chain_to_transpose(name: str, producer: dict) -> list | None:
    """The nodes from the batch-major Transpose to the tensor `name` (through Identity nodes), in
    graph order; None when `name` is not made that way."""
    node, chain = _behind_identities(name, producer)
    if node is None or node.op_type != "Transpose":
        return None
    perm = next((list(attr.ints) for attr in node.attribute if attr.name == "perm"), None)
    if perm != _TO_BATCH_MAJOR:
        return None
    return [node, *reversed(chain)]


def _steps_stacked(name: str, producer: dict, readers: Counter, constants: dict) -> list | None:
    """A decomposed cell's gate (`model.decomposed`): its step tensors, each reshaped to
    `[batch, 1, 1, hidden]`, joined along time by one Concat, then Identity nodes to `name`. The
    Reshapes, the Concat and the Identity nodes, when that is how `name` is made and nothing else
    reads any of them; else None."""
    node, chain = _behind_identities(name, producer)
    axis = next((attr.i for attr in node.attribute if attr.name == "axis"), None) if node is not None else None
    if node is None or node.op_type != "Concat" or axis != 1:
        return None
    parts = [producer.get(step) for step in node.input]
    for part in parts:
        if part is None or part.op_type != "Reshape" or len(part.input) != 2:
            return None
        shape = constants.get(part.input[1])
        dims = np.asarray(shape).tolist() if shape is not None else None
        if not (isinstance(dims, list) and len(dims) == 4 and dims[:3] == [-1, 1, 1] and dims[3] > 0):
            return None
    nodes = [*parts, node, *reversed(chain)]
    return nodes if all(readers[n.output[0]] == 1 for n in nodes) else None


def _stack_steps_first(graph: onnx.GraphProto, nodes: list, constants: dict, steps_first: dict) -> None:
    """Make a decomposed gate's stack (`_steps_stacked`) time-major: each step `[1, 1, batch,
    hidden]`, joined along axis 0 into `[time, 1, batch, hidden]`, the layout of a Scan's trace
    with its direction axis (`batch_major` views either as `[batch, time, 1, hidden]`). Each step
    is then one contiguous block of the stack: one copy per step, where joining along axis 1
    copies one row per window and step (the exposed GRUCell loop, 128 units, 256 windows × 100
    steps, one batch per core: 1.53 → 1.43× the unmodified model), and the statistics read it in
    place."""
    concat = next(node for node in nodes if node.op_type == "Concat")
    next(attr for attr in concat.attribute if attr.name == "axis").i = 0
    for part in nodes[: len(concat.input)]:
        hidden = int(np.asarray(constants[part.input[1]]).reshape(-1)[3])
        if hidden not in steps_first:
            name = fresh_name(all_names(graph), "steps_first")
            graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 1, -1, hidden], np.int64), name))
            steps_first[hidden] = name
        part.input[1] = steps_first[hidden]


def _write_in_place(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    """Let the node that computes each output in `names` write it: walk back from the output
    through Identity nodes and Unsqueezes that add the direction axis (`[T, B, H]` → `[T, 1, B,
    H]`), rename the tensor found there to the output's name wherever the main graph reads it, and
    drop the nodes nothing reads any more. A tensor a subgraph reads by name, a graph input or
    initializer, or another graph output is left alone. Returns the renamed tensors."""
    constants = graph_constants(graph)
    producer = {name: node for node in graph.node for name in node.output}
    inner = {name for g in subgraphs(graph) for node in g.node for name in node.input}
    outputs = {output.name for output in graph.output}
    renamed, passed = set(), []
    for name in sorted(names):
        source, node, chain = name, producer.get(name), []
        while node is not None and (node.op_type == "Identity" or _adds_direction_axis(node, constants)):
            chain.append(node)
            source = node.input[0]
            node = producer.get(source)
        axes = sum(step.op_type == "Unsqueeze" for step in chain)  # `batch_major` restores one axis
        if node is None or source == name or source in outputs or source in inner or name in inner or axes > 1:
            continue
        last = producer[name]
        last.output[:] = [f"{name}/unread" if out == name else out for out in last.output]
        for reader in graph.node:
            reader.input[:] = [name if value == source else value for value in reader.input]
        node.output[:] = [name if out == source else out for out in node.output]
        producer[name] = node
        renamed.update((source, name))
        passed.extend(chain)
    _drop_unread(graph, passed)
    return renamed


def _adds_direction_axis(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> bool:
    """An Unsqueeze that inserts axis 1 only (the axes as opset 13's input or as an attribute)."""
    if node.op_type != "Unsqueeze":
        return False
    attribute = next((list(attr.ints) for attr in node.attribute if attr.name == "axes"), None)
    axes = attribute if attribute is not None else constants.get(node.input[1]) if len(node.input) > 1 else None
    return axes is not None and np.asarray(axes).tolist() == [1]


def _drop_unread(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Remove those of `nodes` whose output nothing reads (in any graph) and is no graph output,
    until none is left (a chain goes from its end)."""
    while True:
        read = {name for g in [graph, *subgraphs(graph)] for node in g.node for name in node.input}
        read.update(output.name for output in graph.output)
        unread = [node for node in nodes if node.output[0] not in read]
        if not unread:
            return
        for node in unread:
            graph.node.remove(node)
            nodes.remove(node)

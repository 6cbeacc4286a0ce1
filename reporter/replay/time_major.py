"""Replay's own copy of the exposed model: gate traces left time-major, as the Scan writes them.

The exposed model's contract (`expose_gates`, ARCHITECTURE.md) gives every gate as `[batch, time,
directions, hidden]`. A fused node's rewrite computes its traces time-major (`[time, directions,
batch, hidden]`, one slice per Scan step) and transposes each one at the end: a second write and
read of every gate value, up to 15% of the exposed forecaster's time on one core (`gate-report
bench --replay`). Replay needs no such copy. It runs a copy of the model whose one-direction gate
outputs skip that final Transpose, and turns each output back into the contract's axes as a
transposed view (no copy): everything downstream sees `[batch, time, directions, hidden]`, and the
statistics kernel, which walks a trace step by step, reads the time-major rows in place
(`fused_pass`). Traces the rewrite did not make (decomposed cells, cells inside control flow, two
directions) are left as they are.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from reporter.layers import Layer
from reporter.model.graph_builder import subgraphs

__all__ = ["batch_major", "skip_final_transposes"]

_TO_BATCH_MAJOR = [2, 0, 1, 3]  # [T, D, B, H] → [B, T, D, H], the rewrite's last Transpose


def batch_major(value: np.ndarray) -> np.ndarray:
    """A time-major trace `[time, directions, batch, hidden]` seen as `[batch, time, directions,
    hidden]`, without a copy."""
    return value.transpose(_TO_BATCH_MAJOR)


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
    for output in graph.output:
        chain = _chain_to_transpose(output.name, producer) if output.name in wanted else None
        if chain is None or any(readers[node.output[0]] != 1 for node in chain):
            continue
        stale.update(node.output[0] for node in chain)
        transpose, rest = chain[0], chain[1:]
        if rest:
            rest[0].input[0] = transpose.input[0]
            graph.node.remove(transpose)
        else:  # the Transpose writes the graph output itself
            transpose.op_type = "Identity"
            del transpose.attribute[:]
        output.type.tensor_type.ClearField("shape")
        changed.add(output.name)
    kept = [info for info in graph.value_info if info.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return copy, frozenset(changed)


def _chain_to_transpose(name: str, producer: dict) -> list | None:
    """The nodes from the batch-major Transpose to the tensor `name` (through Identity nodes), in
    graph order; None when `name` is not made that way."""
    chain, node = [], producer.get(name)
    while node is not None and node.op_type == "Identity":
        chain.append(node)
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Transpose":
        return None
    perm = next((list(attr.ints) for attr in node.attribute if attr.name == "perm"), None)
    if perm != _TO_BATCH_MAJOR:
        return None
    return [node, *reversed(chain)]

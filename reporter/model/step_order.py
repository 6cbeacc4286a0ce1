"""The time order of an unrolled cell's steps: which step of the input each one reads.

Steps linked by their carried state (`reporter.model.cell_patterns.chain_steps`) are in the
order the cell ran them. A backward pass runs from the last input step to the first, so its
steps are put in input time by what they read: each step reads its own slice of one input
tensor (`x[:, t]`, a Split's t-th output, a Slice at t), and that tensor may itself be the input
flipped in time.
"""

from __future__ import annotations

import numpy as np
import onnx

from reporter.model.cell_patterns import CellMatch, Dataflow

__all__ = ["flipped", "reads_flipped", "time_order"]


def time_order(flow: Dataflow, chain: list[CellMatch]) -> int:
    """+1 when a chain's steps read their input forward in time, −1 backward, 0 when it cannot tell.

    Each step reads its own slice of one input tensor (`x[:, t]`, a Split's t-th output, a Slice
    at t); the order of those positions along the chain is the order in time, reversed once more
    when the sliced tensor is itself the input flipped in time (how a backward pass is unrolled).
    """
    if len(chain) < 2:
        return 1
    reads = [_reads(flow, step) for step in chain]
    for source in set(reads[0]).intersection(*reads[1:]):
        positions = [read[source] for read in reads]
        if all(a < b for a, b in zip(positions, positions[1:])):
            order = 1
        elif all(a > b for a, b in zip(positions, positions[1:])):
            order = -1
        else:
            continue
        return -order if flipped(flow, source) else order
    return 0


def _reads(flow: Dataflow, step: CellMatch) -> dict[str, int]:
    """The slices a step reads, as sliced tensor -> position: every constant selection on the
    paths from its gates back to its inputs, up to the state it carries in."""
    found = {}

    previous = flow.root(step.previous) if step.previous else None

    def selection(current: str, node: onnx.NodeProto) -> bool:
        if flow.root(current) == previous:
            return True  # the carried state: what lies behind it belongs to earlier steps
        position = _selected(flow, node, current)
        if position is not None:
            found.setdefault(node.input[0], position)
        return False  # past a gate's own split lies the input slice the step reads

    starts = [flow.activation(gate).input[0] for gate in step.gates.values() if flow.activation(gate) is not None]
    for _ in flow.walk_back(starts, stop=selection):
        pass
    return found


def _selected(flow: Dataflow, node: onnx.NodeProto, output: str) -> int | None:
    """The position a Gather, Slice or Split output takes from its input, when constant."""
    if node.op_type == "Split":
        return list(node.output).index(output)
    if node.op_type in ("Gather", "Slice") and len(node.input) > 1 and node.input[1] in flow.constants:
        values = flow.constants[node.input[1]].ravel()
        return int(values[0]) if values.size == 1 and values[0] >= 0 else None
    return None


def flipped(flow: Dataflow, name: str) -> bool:
    """Whether a tensor is its input reversed along an axis (Slice with step −1, ReverseSequence)."""
    node = flow.producer.get(flow.root(name))
    if node is None:
        return False
    if node.op_type == "ReverseSequence":
        return True
    if node.op_type == "Slice" and len(node.input) > 4 and node.input[4] in flow.constants:
        return bool(np.all(flow.constants[node.input[4]] < 0))
    return False


def reads_flipped(loop: onnx.NodeProto, body: onnx.GraphProto, outer: Dataflow) -> bool:
    """Whether a loop body reads its sequence from a tensor of the enclosing graph that is the input
    flipped in time (tf2onnx's go_backwards: ReverseSequence, then a Loop over steps): its
    iterations then run from the last input step to the first."""
    inner = {name for node in body.node for name in node.output}
    inner |= {value.name for value in body.input} | {init.name for init in body.initializer}
    read = {node.input[0] for node in body.node if node.op_type in ("Gather", "Slice") and node.input[0] not in inner}
    return any(flipped(outer, name) for name in read)

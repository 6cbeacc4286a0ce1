"""Expose the gates of cells built from elementary ops: one layer per chain of recognised steps.

`reporter.model.cell_patterns` says which tensors of a graph are which gates, step by step; here
each gate's step tensors (`[batch, hidden]`) are stacked along time into the exposure contract's
`[batch, steps, 1, hidden]`. In a `Loop`/`Scan` body a layer has one step per iteration (the
enclosing loop stacks the iterations, `reporter.model.control_flow`); there the carried states
also say which tensor is a simple RNN's `h`, and a body that carries state through sigmoid/tanh
nodes but matches no known cell becomes a "generic" layer: its traces are those nodes' outputs,
named by node, labelled by no guess.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import onnx

from reporter.layers import GATES, gate_activations
from reporter.model.cell_patterns import CANDIDATE_ACTS, CellMatch, Dataflow, chain_steps, find_cells, rnn_chains
from reporter.model.graph_builder import GraphBuilder, fresh_name
from reporter.model.layer_names import module_path
from reporter.model.step_order import time_order
from reporter.names import slug

__all__ = ["Found", "decomposed_layers"]

_TRACED = {"Sigmoid", "HardSigmoid", "Tanh"}  # what a generic layer shows


@dataclass
class Found:
    """A layer found in one graph: its gates as tensors of that graph, [batch, time, directions, hidden]."""

    kind: str
    directions: int
    hidden_size: int
    gates: dict[str, str]
    node: onnx.NodeProto  # names the layer: the fused node, or the node writing the first step's state
    activations: dict[str, str]
    direction: str = "forward"
    cell: str = "fused"  # fused | decomposed | generic
    branch: list[str] = field(default_factory=list)  # enclosing control flow, outermost first
    note: str = ""


def decomposed_layers(
    flow: Dataflow, carried: list[tuple[str, str]], dims, b: GraphBuilder, notes: list[str], generic: bool = True
) -> list[Found]:
    """Every decomposed cell of `flow`'s graph (not its subgraphs) as a layer; `carried` pairs a
    body's state inputs with the outputs that update them (empty for a main graph); `dims(tensor)`
    is a tensor's dims where shape inference knows them. `generic`: offer a recurrent body that
    matches no known cell (not where a fused node or control flow in the body holds the recurrence)."""
    widths = lambda name: _width(dims(name))  # noqa: E731
    matches = find_cells(flow.graph, flow)
    used = {name for match in matches for name in match.nodes}
    chains = chain_steps(flow, matches)
    if carried:
        chains += [[step] for step in _carried_rnn_steps(flow, carried, used)]
    else:
        chains += rnn_chains(flow, used)
    found = []
    for chain in chains:
        known = (widths(t) for step in chain for t in (step.new, step.previous, *step.gates.values()) if t)
        width = next((w for w in known if w), None)
        if width is None:
            notes.append(f"{chain[0].kind} cell at node {chain[0].anchor.name!r}: its hidden size is unknown, skipped")
            continue
        order = time_order(flow, chain)
        steps = chain[::-1] if order < 0 else chain  # stacked in input time
        gates = {gate: _stacked(b, [step.gates[gate] for step in steps], width) for gate in GATES[chain[0].kind]}
        note = "" if order else "steps in the order the cell ran them: which input step each read was not found"
        direction = "reverse" if order < 0 else "forward"
        layer = Found(chain[0].kind, 1, width, gates, chain[0].anchor, chain[0].activations, direction, "decomposed")
        layer.note = note
        found.append(layer)
    found = _paired_directions(found, b)
    if carried and not chains and generic:
        found += _generic(flow, carried, dims, b)
    return found


def _paired_directions(found: list[Found], b: GraphBuilder) -> list[Found]:
    """A forward layer followed by a reverse one of the same module, kind and size is one
    bidirectional layer (how exporters unroll a bidirectional RNN): gates [batch, time, 2, hidden]."""
    merged, k = [], 0
    while k < len(found):
        first, second = found[k], found[k + 1] if k + 1 < len(found) else None
        if (
            second is not None
            and (first.direction, second.direction) == ("forward", "reverse")
            and (first.kind, first.hidden_size, first.cell) == (second.kind, second.hidden_size, second.cell)
            and module_path(first.node) is not None
            and module_path(first.node) == module_path(second.node)
        ):
            gates = {gate: b.op("Concat", first.gates[gate], second.gates[gate], axis=2) for gate in first.gates}
            merged.append(
                Found(
                    first.kind, 2, first.hidden_size, gates, first.node, first.activations, "bidirectional", first.cell
                )
            )
            k += 2
        else:
            merged.append(first)
            k += 1
    return merged


def _carried_rnn_steps(flow: Dataflow, carried: list[tuple[str, str]], used: set[str]) -> list[CellMatch]:
    """A carried state whose update is act(… itself …), with no gate: one step of a simple RNN."""
    steps = []
    for state_in, state_out in carried:
        act = flow.producer.get(flow.root(state_out))
        if act is None or act.op_type not in CANDIDATE_ACTS or act.name in used:
            continue
        if flow.depends_on(act.input[0], state_in):
            gates, acts = dict(zip(GATES["RNN"], (act.output[0],))), gate_activations("RNN", (act.op_type,))
            steps.append(CellMatch("RNN", gates, state_in, act.output[0], acts, act))
    return steps


def _width(dims: list | None) -> int | None:
    return dims[-1] if dims and isinstance(dims[-1], int) and dims[-1] > 0 else None


def _generic(flow: Dataflow, carried: list[tuple[str, str]], dims, b: GraphBuilder) -> list[Found]:
    """A recurrent body matching no known cell: the sigmoid/tanh outputs that carry its state (each
    computed from a state input and feeding a state output), [batch, width] ones, one layer per width."""
    feeding = _upstream(flow, [out for _, out in carried])
    by_width = defaultdict(list)
    for node in flow.graph.node:
        shape = dims(node.output[0])
        if node.op_type not in _TRACED or node.output[0] not in feeding or not shape or len(shape) != 2:
            continue
        if _width(shape) and any(state in _upstream(flow, [node.input[0]], tensors=True) for state, _ in carried):
            by_width[_width(shape)].append(node)
    found = []
    for width, nodes in sorted(by_width.items()):
        gates, acts, taken = {}, {}, set()
        for node in nodes:
            gate = fresh_name(taken, slug(node.name or node.output[0]))
            gates[gate] = _stacked(b, [node.output[0]], width)
            acts[gate] = node.op_type
        note = f"matches no known cell: traces are its {len(nodes)} sigmoid/tanh outputs, named by node"
        found.append(Found("generic", 1, width, gates, nodes[0], acts, cell="generic", note=note))
    return found


def _upstream(flow: Dataflow, names: list[str], tensors: bool = False) -> set[str]:
    """Every node (by its first output) or, with `tensors`, every tensor that `names` are computed
    from, through any op."""
    seen_tensors, seen_nodes, todo = set(), set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen_tensors:
            continue
        seen_tensors.add(name)
        node = flow.producer.get(name)
        if node is not None and node.output[0] not in seen_nodes:
            seen_nodes.add(node.output[0])
            todo.extend(i for i in node.input if i)
    return seen_tensors if tensors else seen_nodes


def _stacked(b: GraphBuilder, steps: list[str], width: int) -> str:
    """Step tensors ([batch, hidden], or any shape holding batch·hidden values) → [batch, steps, 1, hidden]."""
    parts = [b.op("Reshape", step, b.ints(-1, 1, 1, width)) for step in steps]
    return parts[0] if len(parts) == 1 else b.op("Concat", *parts, axis=1)

"""Recognise LSTM, GRU and simple RNN cells written with elementary ONNX ops, from their equations.

Exporters often leave no fused `LSTM`/`GRU`/`RNN` node: tf2onnx writes a Keras GRU as a `Loop`
whose body is MatMul/Split/Sigmoid/Tanh/Mul/Add, the dynamo exporter decomposes `nn.RNN`, and a
torch loop over `nn.LSTMCell` (or a hand-written cell) is traced into T copies of the cell's ops.
A cell is identified by the role each tensor plays in the state update, never by names:

- LSTM: a new state `c' = f·c + i·g` (two products summed, each with a sigmoid operand; `g` comes
  from an activation, the carried `c` does not) that is read out as `h = o·act(c')`, `o` a sigmoid.
- GRU: a new state that interpolates between the carried `h` and an activated candidate `n`,
  `h' = z·h + (1−z)·n` or `h' = n + z·(h − n)`; `z` is the operand that multiplies the carried
  state, and the reset gate `r` is the other sigmoid that multiplies `h` (reset before the
  projection) or its projection (reset after) on the way into `n`.
- simple RNN: `h' = act(… h …)` with no gate; in a loop body the carried state says which tensor is
  `h`, unrolled the steps are linked by one shared recurrent weight.

A gate is found through the views between the activation and its use (Split, Slice, Gather,
Reshape, …), so gates packed in one tensor and split afterwards, or split then activated, both
match. What is found is one step of a cell: `CellMatch`; `chain_steps` links unrolled steps into a
layer's steps in time order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from reporter.layers import GATES, gate_activations

__all__ = ["CANDIDATE_ACTS", "CellMatch", "Dataflow", "chain_steps", "find_cells", "graph_constants", "rnn_chains"]

_VIEWS = {"Identity", "Split", "Slice", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Transpose", "Cast"}
_SAME_VALUE = {"Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Cast"}  # a tensor under another shape
_GATE_ACTS = {"Sigmoid", "HardSigmoid"}
CANDIDATE_ACTS = {"Tanh", "Relu", "Softsign", "Elu", "Selu", "LeakyRelu", "Softplus"}
_LINEAR = {"Add", "Sub", "Mul", "MatMul", "Gemm", "Concat", "Neg", *_VIEWS}  # between an activation and its inputs
_SEARCH_DEPTH = 12


@dataclass
class CellMatch:
    """One step of a recognised cell: gate -> tensor ([batch, hidden] per step, after any views)."""

    kind: str  # "LSTM" | "GRU" | "RNN"
    gates: dict[str, str]
    previous: str  # the carried state this step reads (c for an LSTM, h otherwise)
    new: str  # the state it writes
    activations: dict[str, str]  # gate -> the ONNX activation op that produced it ("linear": none)
    anchor: onnx.NodeProto  # the node that writes the new state (its name scopes name the layer)
    nodes: set[str] = field(default_factory=set)  # the activation nodes this step accounts for


def graph_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The values of a graph's initializers and Constant nodes (any of Constant's value attributes)."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            attribute = node.attribute[0]
            value = onnx.helper.get_attribute_value(attribute)
            if attribute.name in ("value", "sparse_value") and isinstance(value, onnx.TensorProto):
                values[node.output[0]] = numpy_helper.to_array(value)
            elif attribute.name in ("value_float", "value_floats", "value_int", "value_ints"):
                values[node.output[0]] = np.asarray(value, np.float32 if "float" in attribute.name else np.int64)
    return values


class Dataflow:
    """Producers, consumers and constants of one graph (a model's main graph or a subgraph)."""

    def __init__(self, graph: onnx.GraphProto, constants: dict[str, np.ndarray] | None = None):
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers[name].append(node)
        # a subgraph also sees its enclosing graphs' constants (a Loop body's "1" may live outside it):
        # `constants` are those a caller has gathered for this graph and the graphs around it
        self.constants = constants if constants is not None else graph_constants(graph)

    def op(self, name: str) -> str | None:
        node = self.producer.get(name)
        return node.op_type if node is not None else None

    def activation(self, name: str) -> onnx.NodeProto | None:
        """The activation node a tensor is a view of (Sigmoid → Split → Squeeze → here), if any."""
        for _ in range(_SEARCH_DEPTH):
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type in _GATE_ACTS | CANDIDATE_ACTS:
                return node
            if node.op_type not in _VIEWS:
                return None
            name = node.input[0]
        return None

    def is_gate(self, name: str) -> bool:
        act = self.activation(name)
        return act is not None and act.op_type in _GATE_ACTS

    def is_candidate(self, name: str) -> bool:
        act = self.activation(name)
        return act is not None and act.op_type in CANDIDATE_ACTS

    def root(self, name: str) -> str:
        """The tensor `name` holds the values of, under any reshaping or identity."""
        for _ in range(_SEARCH_DEPTH):
            node = self.producer.get(name)
            if node is None or node.op_type not in _SAME_VALUE:
                return name
            name = node.input[0]
        return name

    def is_one(self, name: str) -> bool:
        value = self.constants.get(self.root(name))
        return value is not None and value.size > 0 and bool(np.all(value == 1))

    def forward_views(self, name: str) -> list[str]:
        """`name` and every tensor that is it under another shape (Identity, Unsqueeze, …)."""
        found, todo = [name], [name]
        while todo:
            for node in self.consumers.get(todo.pop(), []):
                if node.op_type in _SAME_VALUE and node.output[0] not in found:
                    found.append(node.output[0])
                    todo.append(node.output[0])
        return found

    def walk_back(self, starts, stop=lambda name, node: False):
        """Yield (tensor, its producer) for `starts` and what they are computed from through linear
        ops (never through an activation), up to _SEARCH_DEPTH nodes back; `stop(tensor, node)`
        True ends that path there."""
        seen, todo = set(), [(name, 0) for name in starts]
        while todo:
            current, depth = todo.pop()
            node = self.producer.get(current)
            if node is None or current in seen or depth > _SEARCH_DEPTH or node.op_type not in _LINEAR:
                continue
            seen.add(current)
            yield current, node
            if not stop(current, node):
                todo.extend((i, depth + 1) for i in node.input if i)

    def depends_on(self, name: str, source: str) -> bool:
        """Whether `name` is computed from `source` through linear ops (no activation between)."""
        source = self.root(source)
        reached = {self.root(i) for _, node in self.walk_back([name]) for i in node.input if i}
        return self.root(name) == source or source in reached


def _gate_operands(flow: Dataflow, name: str):
    """For a tensor made by Mul: each (gate, other) pair where `gate` is a sigmoid's output."""
    node = flow.producer.get(name)
    if node is None or node.op_type != "Mul" or len(node.input) != 2:
        return
    a, b = node.input
    for gate, other in ((a, b), (b, a)):
        if flow.is_gate(gate):
            yield gate, other


def _act(flow: Dataflow, name: str) -> str:
    act = flow.activation(name)
    return act.op_type if act is not None else "linear"


def _lstm_at(flow: Dataflow, add: onnx.NodeProto) -> CellMatch | None:
    """c' = f·c + i·g, read out as h = o·act(c')."""
    for keep, write in (add.input, reversed(add.input)):
        for f, c in _gate_operands(flow, keep):
            if flow.activation(c) is not None:
                continue  # the carried cell state is no activation's output
            for i, g in _gate_operands(flow, write):
                if not flow.is_candidate(g):
                    continue
                readout = _readout(flow, add.output[0])
                if readout is None:
                    continue
                h, o, act_c = readout
                gates = dict(zip(GATES["LSTM"], (i, f, g, o, add.output[0], h)))
                acts = gate_activations("LSTM", (_act(flow, i), _act(flow, g), act_c.op_type))
                nodes = {flow.activation(gates[k]).name for k in "ifgo"} | {act_c.name}
                return CellMatch("LSTM", gates, c, add.output[0], acts, add, nodes)
    return None


def _readout(flow: Dataflow, c_new: str):
    """(h, o, the activation of c') for h = o·act(c'), if c' is read out so."""
    for view in flow.forward_views(c_new):
        for act in flow.consumers.get(view, []):
            if act.op_type not in CANDIDATE_ACTS:
                continue
            for out in flow.forward_views(act.output[0]):
                for mul in flow.consumers.get(out, []):
                    if mul.op_type != "Mul":
                        continue
                    other = mul.input[1] if mul.input[0] == out else mul.input[0]
                    if flow.is_gate(other):
                        return mul.output[0], other, act
    return None


def _gru_at(flow: Dataflow, add: onnx.NodeProto) -> CellMatch | None:
    """h' = z·h + (1−z)·n (either operand order), or h' = n + z·(h − n).

    Which operand is the carried h and which the candidate n is settled by the reset gate: n is the
    one computed through a sigmoid times h (or h's projection). So an initial state that is itself
    an activation's output (h0 = tanh(encoder · P) in a decoder) is no candidate by mistake."""
    for z, h, n in (*_interpolation(flow, add), *_difference_form(flow, add)):
        r = _reset_gate(flow, n, h, z)
        if r is not None:
            break
    else:
        return None
    gates = dict(zip(GATES["GRU"], (z, r, n, add.output[0])))
    z_act = _act(flow, z) if flow.is_gate(z) else "Sigmoid"  # 1 − σ is in [0, 1] too
    acts = gate_activations("GRU", (z_act, _act(flow, n)))
    nodes = {flow.activation(t).name for t in (r, n)} | ({flow.activation(z).name} if flow.is_gate(z) else set())
    return CellMatch("GRU", gates, h, add.output[0], acts, add, nodes)


def _interpolation(flow: Dataflow, add: onnx.NodeProto) -> list[tuple[str, str, str]]:
    """Readings (z, h, n) of Add(Mul(s, P), Mul(1 − s, Q)); z is whichever of s, 1 − s multiplies the state."""
    readings = []
    for first, second in (add.input, reversed(add.input)):
        for s, p in _gate_operands(flow, first):
            node = flow.producer.get(second)
            if node is None or node.op_type != "Mul":
                continue
            for u, q in (node.input, reversed(node.input)):
                sub = flow.producer.get(u)
                if sub is None or sub.op_type != "Sub" or not flow.is_one(sub.input[0]):
                    continue
                if flow.root(sub.input[1]) != flow.root(s):
                    continue
                if flow.is_candidate(q):
                    readings.append((s, p, q))
                if flow.is_candidate(p):
                    readings.append((u, q, p))
    return readings


def _difference_form(flow: Dataflow, add: onnx.NodeProto) -> list[tuple[str, str, str]]:
    """Readings (z, h, n) of Add(n, Mul(z, Sub(h, n)))."""
    readings = []
    for n, product in (add.input, reversed(add.input)):
        if not flow.is_candidate(n):
            continue
        for z, d in _gate_operands(flow, product):
            sub = flow.producer.get(d)
            if sub is not None and sub.op_type == "Sub" and flow.root(sub.input[1]) == flow.root(n):
                readings.append((z, sub.input[0], n))
    return readings


def _reset_gate(flow: Dataflow, n: str, h: str, z: str) -> str | None:
    """The sigmoid that multiplies h, or h's projection, on the way into the candidate n."""
    z_root = flow.root(z)
    for current, _ in flow.walk_back([flow.activation(n).input[0]]):
        for gate, other in _gate_operands(flow, current):
            if flow.root(gate) != z_root and flow.depends_on(other, h):
                return gate
    return None


def find_cells(graph: onnx.GraphProto, flow: Dataflow | None = None) -> list[CellMatch]:
    """Every LSTM and GRU step written with elementary ops in `graph` (not its subgraphs), in graph order."""
    flow = flow or Dataflow(graph)
    matches, used = [], set()
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        match = _lstm_at(flow, node) or _gru_at(flow, node)
        if match is not None and not (match.nodes & used):
            used |= match.nodes
            matches.append(match)
    return matches


def chain_steps(flow: Dataflow, matches: list[CellMatch]) -> list[list[CellMatch]]:
    """Link steps whose carried state is the previous step's new state: one list per layer, in time order."""
    by_new = {flow.root(m.new): m for m in matches}
    after = {}
    for match in matches:
        before = by_new.get(flow.root(match.previous))
        if before is not None and before is not match and before.kind == match.kind and id(before) not in after:
            after[id(before)] = match
    followers = {id(m) for m in after.values()}
    chains = []
    for match in matches:
        if id(match) in followers:
            continue
        chain = [match]
        while id(chain[-1]) in after and len(chain) <= len(matches):
            chain.append(after[id(chain[-1])])
        chains.append(chain)
    return chains


def rnn_chains(flow: Dataflow, skip: set[str]) -> list[list[CellMatch]]:
    """Unrolled simple RNNs: activations linked step to step through one shared weight, ≥ 3 steps.

    A feed-forward weight links each step of one layer to the same step of the next (disjoint
    pairs); a recurrent weight links the steps of one layer into a single path. Requiring a path of
    two links or more keeps a two-layer perceptron from passing for a recurrent layer.
    """
    acts = [n for n in flow.graph.node if n.op_type in CANDIDATE_ACTS and n.name not in skip]
    by_output = {n.output[0]: n for n in acts}
    links: dict[str, list[tuple[onnx.NodeProto, onnx.NodeProto]]] = defaultdict(list)
    for node in acts:
        for source, weight in _weighted_sources(flow, node.input[0], by_output):
            links[weight].append((source, node))
    chains = []
    for pairs in links.values():
        nxt = {a.name: b for a, b in pairs}
        targets = {b.name for _, b in pairs}
        starts = [a for a, _ in pairs if a.name not in targets]
        if len(pairs) < 2 or len(starts) != 1 or len(nxt) != len(pairs) or len(targets) != len(pairs):
            continue
        path = [starts[0]]
        while path[-1].name in nxt:
            path.append(nxt[path[-1].name])
        if len(path) != len(pairs) + 1:
            continue
        chains.append([_rnn_step(flow, node, previous) for previous, node in zip([None, *path], path)])
    return sorted(chains, key=lambda chain: list(flow.graph.node).index(chain[0].anchor))


def _weighted_sources(flow: Dataflow, name: str, acts: dict[str, onnx.NodeProto]):
    """(activation node, weight) for each activation that feeds `name` through a MatMul/Gemm."""
    found, seen, todo = [], set(), [(name, None, 0)]
    while todo:
        current, weight, depth = todo.pop()
        if current in acts and weight is not None:
            found.append((acts[current], weight))
            continue
        node = flow.producer.get(current)
        if node is None or (current, weight) in seen or depth > _SEARCH_DEPTH or node.op_type not in _LINEAR:
            continue
        seen.add((current, weight))
        if node.op_type in ("MatMul", "Gemm") and weight is None:
            todo.append((node.input[0], node.input[1], depth + 1))
            todo.extend((i, None, depth + 1) for i in node.input[1:] if i)
        else:
            todo.extend((i, weight, depth + 1) for i in node.input if i)
    return found


def _rnn_step(flow: Dataflow, node: onnx.NodeProto, previous: onnx.NodeProto | None) -> CellMatch:
    new = node.output[0]
    before = previous.output[0] if previous is not None else ""
    gates = dict(zip(GATES["RNN"], (new,)))
    return CellMatch("RNN", gates, before, new, gate_activations("RNN", (node.op_type,)), node, {node.name})

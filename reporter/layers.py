"""The layer manifest and the gate vocabulary: what every step knows about a recurrent layer.

The one home of these facts (a new recurrent kind is added here, and in the ONNX rewrite that
exposes it): which gates a kind exposes and in what order, which gate keeps the carried state
(the memory horizon is read from it), which activation drives each gate, the value family each
activation's outputs fall in with its histogram range and saturation thresholds, and how a gate
is named for a reader. Nothing here imports onnx or torch: the run store, statistics, charts and
pages all read layers without them.

Saturation follows Karpathy, Johnson & Fei-Fei (2015), "Visualizing and Understanding Recurrent
Networks": a sigmoid gate is left-saturated below 0.1 and right-saturated above 0.9; tanh-like
values count beyond ±0.9; unbounded ("linear") ones, such as the LSTM cell state, beyond ±4.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = [
    "CELLS",
    "FAMILY_RANGES",
    "GATES",
    "GENERIC",
    "GATE_NAMES",
    "KEEP_GATE",
    "KINDS",
    "SATURATION",
    "Layer",
    "default_activations",
    "direction_names",
    "gate_activations",
    "gate_family",
    "gate_label",
    "gate_order",
    "layers_from_json",
    "layers_to_json",
    "value_family",
]

KINDS = ("LSTM", "GRU", "RNN")  # recognised cells, fused or decomposed: their gates are named by the contract
GENERIC = "generic"  # a recurrent body that matches no known cell: its gates are named by node
CELLS = ("fused", "decomposed", "generic")
# Gates exposed per kind, in the operator's order (the contract in ARCHITECTURE.md).
GATES = {"LSTM": ("i", "f", "g", "o", "c", "h"), "GRU": ("z", "r", "n", "h"), "RNN": ("h",)}
# The gate that multiplies the carried state: its mean gives the memory horizon.
KEEP_GATE = {"LSTM": "f", "GRU": "z"}
GATE_NAMES = {
    "i": "input gate i",
    "f": "forget gate f",
    "g": "cell candidate g",
    "o": "output gate o",
    "c": "cell state c",
    "h": "hidden state h",
    "z": "update gate z",
    "r": "reset gate r",
    "n": "candidate n",
}
# Per kind, the operator's activation slots (f, g, h in the ONNX spec) and their defaults; per
# gate, the slot whose activation produces it (None: no activation, e.g. the cell state).
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_ACTIVATION_SLOT = {
    "LSTM": {"i": 0, "f": 0, "g": 1, "o": 0, "c": None, "h": 2},
    "GRU": {"z": 0, "r": 0, "n": 1, "h": 1},
    "RNN": {"h": 0},
}
FAMILY_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "linear": (-4.0, 4.0)}
SATURATION = {"sigmoid": (0.1, 0.9), "tanh": (-0.9, 0.9), "linear": (-4.0, 4.0)}
_SIGMOID_LIKE = {"sigmoid", "hardsigmoid"}
_TANH_LIKE = {"tanh", "softsign", "scaledtanh"}


@dataclass(frozen=True)
class Layer:
    """One exposed recurrent layer, as every step after exposure sees it."""

    name: str  # unique and readable: torch module path + ".l{k}", or the node's name
    kind: str  # one of KINDS, or GENERIC
    directions: int  # 1 or 2
    hidden_size: int
    outputs: dict[str, str]  # gate -> graph output name, [batch, time, directions, hidden]
    node: str = ""  # the recurrent node's name in the original graph
    direction: str = "forward"  # forward | reverse | bidirectional
    activations: dict[str, str] = field(default_factory=dict)  # gate -> activation name
    branch: str = ""  # the control flow it sits in, outermost first ("If 'sr' then_branch › …"); "" top level
    cell: str = "fused"  # fused (an ONNX LSTM/GRU/RNN node) | decomposed (elementary ops) | generic
    note: str = ""  # one line a reader should know (a generic layer says what its traces are)


def direction_names(layer: Layer) -> list[str]:
    """What each index of a trace's direction axis runs as: "forward" or "reverse" (a bidirectional
    layer's second direction, and the one direction of a reverse layer, read the window from its end)."""
    if layer.directions == 2:
        return ["forward", "reverse"]
    return ["reverse" if layer.direction == "reverse" else "forward"]


def default_activations(kind: str) -> tuple[str, ...]:
    """The operator's default activation per slot (f, g, h) for a kind."""
    return _DEFAULT_ACTIVATIONS[kind]


def gate_activations(kind: str, slots: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Per gate of a kind, the activation that produces it, from the operator's activation slots."""
    return {gate: "linear" if slot is None else slots[slot] for gate, slot in _ACTIVATION_SLOT[kind].items()}


def value_family(activation: str) -> str:
    """Name the value range an activation's outputs fall in: "sigmoid", "tanh" or "linear"."""
    name = activation.lower()
    return "sigmoid" if name in _SIGMOID_LIKE else "tanh" if name in _TANH_LIKE else "linear"


def gate_family(layer: Layer, gate: str) -> str:
    """The value family of one gate of a layer, from its manifest (or the kind's default activations)."""
    activation = layer.activations.get(gate)
    if activation is None and layer.kind in _DEFAULT_ACTIVATIONS:
        activation = gate_activations(layer.kind, _DEFAULT_ACTIVATIONS[layer.kind]).get(gate)
    return value_family(activation or "linear")


def _gate_rank(kind: str | None, gate: str) -> tuple[int, str]:
    """Sort key: the kind's operator order, or the order of every kind's gates, then the name."""
    order = GATES.get(kind) if kind else None
    order = order or tuple(GATE_NAMES)
    return (order.index(gate) if gate in order else len(order), gate)


def gate_order(layer: Layer) -> list[str]:
    """The layer's gates in the operator's order (i f g o c h, z r n h), whatever the manifest's order."""
    return sorted(layer.outputs, key=lambda gate: _gate_rank(layer.kind, gate))


def gate_label(gate: str) -> str:
    """How a reader sees a gate: "forget gate f"; an unknown gate keeps its own name."""
    return GATE_NAMES.get(gate, gate)


def sorted_gates(gates) -> list[str]:
    """Gates of any layers in the operators' order (i f g o c h, then z r n), each once."""
    return sorted(set(gates), key=lambda gate: _gate_rank(None, gate))


def layers_to_json(layers: list[Layer]) -> str:
    """Serialise a manifest (stable key order, so files are byte-identical across runs)."""
    return json.dumps([asdict(layer) for layer in layers], indent=2, sort_keys=True) + "\n"


def layers_from_json(text: str) -> list[Layer]:
    """Read a manifest written by `layers_to_json`; ValueError for an entry that is not a layer."""
    entries = json.loads(text)
    if not isinstance(entries, list):
        raise ValueError("a layer manifest is a JSON list of layers")
    layers = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"a layer entry is malformed ({str(entry)[:120]})")
        try:
            layer = Layer(**entry)
        except TypeError as exc:
            raise ValueError(f"a layer entry is malformed ({exc})") from None
        if not _well_formed(layer):
            raise ValueError(f"a layer entry is malformed ({str(layer)[:120]})")
        layers.append(layer)
    return layers


def _well_formed(layer: Layer) -> bool:
    """Whether a manifest entry is what exposure writes."""
    return (
        isinstance(layer.name, str)
        and bool(layer.name)
        and (layer.kind in KINDS or layer.kind == GENERIC)
        and layer.cell in CELLS
        and isinstance(layer.branch, str)
        and isinstance(layer.note, str)
        and layer.directions in (1, 2)
        and isinstance(layer.hidden_size, int)
        and layer.hidden_size > 0
        and isinstance(layer.outputs, dict)
        and bool(layer.outputs)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in layer.outputs.items())
        and isinstance(layer.activations, dict)
        and isinstance(layer.direction, str)
        and isinstance(layer.node, str)
    )

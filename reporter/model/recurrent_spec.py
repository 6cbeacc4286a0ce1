"""Read one ONNX LSTM/GRU/RNN node: its attributes and inputs, checked once, as a `RecurrentSpec`.

Everything the rewrite needs is resolved here, the way onnxruntime reads it: direction, layout,
clip, `linear_before_reset`, `input_forget`, and each direction's activations with their alpha
and beta. Anything that cannot be honoured is a `ModelError` naming the node and the attribute.
Where the spec leaves a choice (activation defaults), onnxruntime's reading is used, so the
exposed model's outputs equal the fused model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from reporter.errors import ModelError
from reporter.layers import default_activations

__all__ = ["Activation", "GATE_BLOCKS", "RecurrentSpec", "read_spec"]

# Number of stacked weight blocks per op kind (LSTM iofc, GRU zrh, RNN one).
GATE_BLOCKS = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Activations the spec allows: (uses alpha, uses beta, default alpha, default beta).
# Defaults follow onnxruntime, which keeps the operator defaults only for LeakyRelu, HardSigmoid
# and Elu and uses 0 for the rest (the spec's text says "as the corresponding operator", which
# would make ThresholdedRelu's alpha 1 and ScaledTanh's 1, 1): the exposed model must reproduce
# the outputs users get from the original model in onnxruntime. Measured, not assumed.
_ACTIVATION_PARAMS = {
    "relu": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
    "affine": (True, True, 0.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 0.0, 0.0),
    "scaledtanh": (True, True, 0.0, 0.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
}


@dataclass(frozen=True)
class Activation:
    """One activation function with its resolved parameters."""

    name: str  # lower-case spec name, e.g. "sigmoid"
    alpha: float
    beta: float


@dataclass(frozen=True)
class RecurrentSpec:
    """Everything about one recurrent node that the rewrite needs, read and checked once."""

    kind: str
    directions: int
    reverse: tuple[bool, ...]  # per direction: does this pass run backwards in time?
    hidden_size: int
    layout: int
    clip: float | None
    linear_before_reset: bool
    input_forget: bool
    activations: tuple[tuple[Activation, ...], ...]  # [direction][f, g, h]
    inputs: dict[str, str]  # X W R B sequence_lens initial_h initial_c P -> tensor name
    outputs: dict[str, str]  # Y Y_h Y_c -> tensor name (only those present)


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _resolve_activations(node, kind, attrs, directions) -> tuple[tuple[Activation, ...], ...]:
    """Read activations, activation_alpha and activation_beta the way onnxruntime does."""
    per_dir = len(default_activations(kind))
    names = [n.decode() if isinstance(n, bytes) else n for n in attrs.get("activations", [])]
    if not names:
        names = list(default_activations(kind)) * directions
    elif len(names) == per_dir and directions == 2:
        names = names * 2
    if len(names) != per_dir * directions:
        raise ModelError(
            f"node {node.name!r}: expected {per_dir * directions} activations for a "
            f"{directions}-direction {kind}, got {len(names)}"
        )
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    resolved = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATION_PARAMS:
            raise ModelError(f"node {node.name!r}: activation {name!r} is not an ONNX RNN activation")
        uses_alpha, uses_beta, alpha, beta = _ACTIVATION_PARAMS[key]
        if uses_alpha and alphas:
            alpha = float(alphas.pop(0))
        if uses_beta and betas:
            beta = float(betas.pop(0))
        resolved.append(Activation(key, alpha, beta))
    return tuple(tuple(resolved[d * per_dir : (d + 1) * per_dir]) for d in range(directions))


def read_spec(node: onnx.NodeProto, static_shape) -> RecurrentSpec:
    """Read and validate a recurrent node; `static_shape(name)` gives a tensor's known dims."""
    kind, attrs = node.op_type, _attributes(node)
    known = {
        "activation_alpha",
        "activation_beta",
        "activations",
        "clip",
        "direction",
        "hidden_size",
        "layout",
        "linear_before_reset",
        "input_forget",
    }
    for name in attrs:
        if name not in known:
            raise ModelError(f"node {node.name!r}: unknown {kind} attribute {name!r}")
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    reverse = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}.get(direction)
    if reverse is None:
        raise ModelError(f"node {node.name!r}: direction {direction!r} is not forward/reverse/bidirectional")
    slots = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
    inputs = {slot: name for slot, name in zip(slots, node.input) if name}
    outputs = {slot: name for slot, name in zip(["Y", "Y_h", "Y_c"], node.output) if name}
    hidden = attrs.get("hidden_size")
    if hidden is None:
        r_shape = static_shape(inputs["R"])
        if not r_shape or not isinstance(r_shape[-1], int):
            raise ModelError(f"node {node.name!r}: hidden_size is not set and R's shape is unknown")
        hidden = r_shape[-1]
    if kind != "LSTM" and ("initial_c" in inputs or "P" in inputs):
        raise ModelError(f"node {node.name!r}: {kind} takes no initial_c or P input")
    clip = attrs.get("clip")
    return RecurrentSpec(
        kind=kind,
        directions=len(reverse),
        reverse=reverse,
        hidden_size=int(hidden),
        layout=int(attrs.get("layout", 0)),
        clip=None if clip is None else float(clip),
        linear_before_reset=bool(attrs.get("linear_before_reset", 0)),
        input_forget=bool(attrs.get("input_forget", 0)),
        activations=_resolve_activations(node, kind, attrs, len(reverse)),
        inputs=inputs,
        outputs=outputs,
    )

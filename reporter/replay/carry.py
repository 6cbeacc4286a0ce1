"""A streaming model's state: which inputs take back which outputs from call to call.

Given with `--carry IN=OUT`, or detected when an input and an output have the same shape and
names that pair as a state and its next value (state → stateN, h → hn, c → cn, h0 → hn,
state_in → state_out, x → new_x).
"""

from __future__ import annotations

import onnx

from reporter.errors import WindowsFileError
from reporter.model.inputs import GraphInput, graph_inputs

__all__ = ["checked_carry", "detect_carry", "parse_carry"]


def _pairs_as_state(state_in: str, state_out: str) -> bool:
    """Whether an output's name reads as the next value of an input: state → stateN, h → hn, h0 → hn."""
    stem = state_in[:-3] if state_in.endswith("_in") else state_in.rstrip("0")
    candidates = {
        state_in + "n",
        state_in + "N",
        state_in + "_out",
        state_in + "_new",
        "new_" + state_in,
        stem + "n",
        stem + "N",
        stem + "_out",
        "next_" + state_in,
    }
    return state_out in candidates


def _output_dims(model: onnx.ModelProto) -> dict[str, tuple]:
    dims = {}
    for value in model.graph.output:
        shape = value.type.tensor_type.shape.dim
        dims[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape)
    return dims


def _same_shape(spec: GraphInput, dims: tuple) -> bool:
    return len(spec.dims) == len(dims) and all(
        not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(spec.dims, dims)
    )


def detect_carry(model: onnx.ModelProto, primary: str) -> dict[str, str]:
    """State inputs and the outputs that return them, told by their paired names and equal shapes."""
    outputs = _output_dims(model)
    carry = {}
    for spec in graph_inputs(model):
        if spec.name == primary:
            continue
        match = [name for name, dims in outputs.items() if _pairs_as_state(spec.name, name) and _same_shape(spec, dims)]
        if len(match) == 1:
            carry[spec.name] = match[0]
    return carry


def checked_carry(model: onnx.ModelProto, inputs: dict[str, GraphInput], carry: dict[str, str]) -> dict[str, str]:
    outputs = _output_dims(model)
    for state_in, state_out in carry.items():
        if state_in not in inputs:
            raise WindowsFileError(
                f"--carry {state_in}={state_out}: the model has no input {state_in!r}; its inputs: {', '.join(inputs)}"
            )
        if state_out not in outputs:
            raise WindowsFileError(
                f"--carry {state_in}={state_out}: the model has no output {state_out!r}; its "
                f"outputs: {', '.join(outputs)}"
            )
        if not _same_shape(inputs[state_in], outputs[state_out]):
            raise WindowsFileError(
                f"--carry {state_in}={state_out}: input {inputs[state_in].shape_text} and output "
                f"{list(outputs[state_out])} differ in shape"
            )
    return carry


def parse_carry(items: list[str] | None) -> dict[str, str] | None:
    """--carry IN=OUT options (repeatable) as {input: output}; None when none were given."""
    if not items:
        return None
    pairs = [item.partition("=") for item in items]
    bad = next((item for item, (a, sep, b) in zip(items, pairs) if not (a and sep and b)), None)
    if bad is not None:
        raise WindowsFileError(f"--carry {bad}: expected IN=OUT, a state input and the output that returns it")
    return {a: b for a, _, b in pairs}

"""What a model takes: float series [N, T, F] or token ids [N, T], read from its graph or module.

Windows are checked against a `ModelInput` before replay starts, so a mismatch is named as such
("expected 3 features, got 5") instead of surfacing as an onnxruntime or torch error mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from reporter.errors import CheckpointError, WindowsFileError

__all__ = ["GraphInput", "ModelInput", "example_windows", "graph_inputs", "module_input", "onnx_input"]

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


@dataclass(frozen=True)
class ModelInput:
    """What a model's first input takes: float series [N, T, F] or token ids [N, T]."""

    name: str
    kind: str  # "float" | "tokens"
    features: int | None = None  # per step, for float input, when the graph fixes it
    steps: int | None = None  # when the graph fixes the window length
    vocab: int | None = None  # embedding rows, for token input, when the graph shows them


@dataclass(frozen=True)
class GraphInput:
    """One input of an ONNX graph as a feed must match it: name, element type and dims."""

    name: str
    dtype: np.dtype
    dims: tuple  # an int per fixed axis, the symbolic name (str) or None per dynamic one

    @property
    def shape_text(self) -> str:
        """The shape as people read it: [batch, 2, 64]."""
        return "[" + ", ".join(str(dim) if dim is not None else "?" for dim in self.dims) + "]"

    def dynamic_axes(self) -> list[int]:
        """The axes whose size the graph leaves open."""
        return [axis for axis, dim in enumerate(self.dims) if not isinstance(dim, int)]


def graph_inputs(model: onnx.ModelProto) -> list[GraphInput]:
    """Every input the graph must be fed (initializers that double as inputs left out), in order."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    found = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(
            dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else (dim.dim_param or None)
            for dim in tensor.shape.dim
        )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else np.dtype(np.float32)
        found.append(GraphInput(value.name, np.dtype(dtype), dims))
    return found


def onnx_input(model: onnx.ModelProto, name: str | None = None) -> ModelInput:
    """Read the graph input the windows feed (`name`, else the first) with its element type and
    shape (and vocabulary, from its Gather)."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if not inputs:
        raise WindowsFileError("model: has no graph input to feed windows to")
    value = next((value for value in inputs if value.name == name), inputs[0])
    tensor_type = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
    steps = dims[1] if len(dims) >= 2 else None
    if tensor_type.elem_type in _FLOAT_TYPES:
        return ModelInput(value.name, "float", dims[2] if len(dims) == 3 else None, steps)
    if tensor_type.elem_type in _INT_TYPES:
        vocab = next(
            (
                initializers[node.input[0]].dims[0]
                for node in model.graph.node
                if node.op_type == "Gather"
                and len(node.input) == 2
                and node.input[1] == value.name
                and node.input[0] in initializers
            ),
            None,
        )
        return ModelInput(value.name, "tokens", None, steps, vocab)
    raise WindowsFileError(
        f"model: input {value.name!r} has element type "
        f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type)}; expected float or int64"
    )


def _first_input_layer(module: torch.nn.Module) -> torch.nn.Module | None:
    """The module's first Embedding or recurrent layer: it tells what the module takes."""
    return next(
        (layer for layer in module.modules() if isinstance(layer, (torch.nn.Embedding, torch.nn.RNNBase))), None
    )


def module_input(module: torch.nn.Module) -> ModelInput:
    """What a module takes, read from its first Embedding (token ids) or recurrent layer (features)."""
    layer = _first_input_layer(module)
    if isinstance(layer, torch.nn.Embedding):
        return ModelInput("input", "tokens", vocab=layer.num_embeddings)
    if isinstance(layer, torch.nn.RNNBase):
        return ModelInput("input", "float", features=layer.input_size)
    return ModelInput("input", "float")


def example_windows(module: torch.nn.Module, batch: int = 2, steps: int = 8) -> np.ndarray:
    """Synthesise input for a module from its first Embedding or recurrent layer."""
    rng = np.random.default_rng(0)
    layer = _first_input_layer(module)
    if isinstance(layer, torch.nn.Embedding):
        return rng.integers(0, layer.num_embeddings, size=(batch, steps), dtype=np.int64)
    if isinstance(layer, torch.nn.RNNBase):
        return rng.standard_normal((batch, steps, layer.input_size)).astype(np.float32)
    raise CheckpointError(
        f"{type(module).__name__}: has no Embedding or LSTM/GRU/RNN layer to tell its input shape; pass --windows"
    )

"""From a checkpoint to the models replay needs: the fused ONNX model and its gate-exposed twin.

One path for `export`, `bench` and `replay`: load the checkpoint safely, export it (unless it is
already ONNX), measure export parity on real windows when given, and expose the gates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from reporter.checkpoints import LoadedCheckpoint, load_checkpoint
from reporter.errors import CheckpointError, ModelError
from reporter.export import export_module
from reporter.expose import Layer, expose_gates
from reporter.windows import ModelInput, WindowSource, open_windows_source

__all__ = ["ModelSource", "example_windows", "module_input", "exposed_model_from_checkpoint", "fused_model_and_windows"]

PARITY_WINDOWS = 8  # windows on which export parity is measured


@dataclass(frozen=True)
class ModelSource:
    """A loaded checkpoint with its fused and exposed ONNX models."""

    checkpoint: LoadedCheckpoint
    fused: onnx.ModelProto
    exposed: onnx.ModelProto
    layers: list[Layer]
    parity_max_abs: float | None  # None when the checkpoint was already ONNX
    exporter: str | None


def example_windows(module: torch.nn.Module, batch: int = 2, steps: int = 8) -> np.ndarray:
    """Synthesise input for a module from its first Embedding or recurrent layer."""
    rng = np.random.default_rng(0)
    for layer in module.modules():
        if isinstance(layer, torch.nn.Embedding):
            return rng.integers(0, layer.num_embeddings, size=(batch, steps), dtype=np.int64)
        if isinstance(layer, torch.nn.RNNBase):
            return rng.standard_normal((batch, steps, layer.input_size)).astype(np.float32)
    raise CheckpointError(f"{type(module).__name__}: has no Embedding or LSTM/GRU/RNN layer to tell its input shape; pass --windows")


def module_input(module: torch.nn.Module) -> ModelInput:
    """What a module takes, read from its first Embedding (token ids) or recurrent layer (features)."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Embedding):
            return ModelInput("input", "tokens", vocab=layer.num_embeddings)
        if isinstance(layer, torch.nn.RNNBase):
            return ModelInput("input", "float", features=layer.input_size)
    return ModelInput("input", "float")


def _real_windows(path: Path, count: int) -> np.ndarray:
    """The first `count` windows of a file, as a plain in-memory array."""
    source = open_windows_source(path, nan="skip")
    return source.take(source.indices()[:count])


def _as_model_input(windows: np.ndarray) -> np.ndarray:
    """Float windows as float32, token ids as int64: what exported models take."""
    return windows.astype(np.float32 if windows.dtype.kind == "f" else np.int64, copy=False)


def _expose(path: Path, model: onnx.ModelProto):
    """expose_gates, with the file named in any error."""
    try:
        return expose_gates(model)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None


def exposed_model_from_checkpoint(path: Path, factory: str | None, factory_kwargs: dict, trust_pickle: bool,
                                  windows: Path | None, exporter: str = "legacy",
                                  source: WindowSource | None = None) -> ModelSource:
    """Load, export (parity measured on real windows when given) and expose a checkpoint.

    `source`, when given, is the replay's opened windows: they are checked against the module's
    input before export (so a mismatch is named as such, not as a torch error) and against the
    exposed model after; its first windows are the export examples. Otherwise the first windows
    of the `windows` file, or synthetic input shaped from the module, are the examples.
    """
    loaded = load_checkpoint(path, factory, factory_kwargs, trust_pickle)
    if loaded.onnx_model is not None:
        exposed, layers = _expose(path, loaded.onnx_model)
        if source is not None:
            source.check(ModelInput.from_onnx(exposed))
        return ModelSource(loaded, loaded.onnx_model, exposed, layers, None, None)
    if source is not None:
        source.check(module_input(loaded.module))
        examples = source.take(source.indices()[:PARITY_WINDOWS])
    else:
        examples = _real_windows(windows, PARITY_WINDOWS) if windows else example_windows(loaded.module)
    examples = _as_model_input(examples)
    result = export_module(loaded.module, examples, exporter=exporter, parity_windows=examples)
    exposed, layers = _expose(path, result.model)
    if source is not None:
        source.check(ModelInput.from_onnx(exposed))
    return ModelSource(loaded, result.model, exposed, layers, result.parity_max_abs, result.exporter)


def fused_model_and_windows(path: Path, factory: str | None, factory_kwargs: dict, trust_pickle: bool,
                            windows: Path | None, batch: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """The unexposed ONNX model and a batch of windows to time it on."""
    loaded = load_checkpoint(path, factory, factory_kwargs, trust_pickle)
    if windows is not None:
        batch_windows = _as_model_input(_real_windows(windows, batch))
    elif loaded.module is not None:
        batch_windows = example_windows(loaded.module, batch=batch, steps=100)
    else:
        raise CheckpointError(f"{path}: pass --windows to time an ONNX model on its own input")
    if loaded.onnx_model is not None:
        return loaded.onnx_model, batch_windows
    return export_module(loaded.module, batch_windows[:2]).model, batch_windows

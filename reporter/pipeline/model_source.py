"""From a checkpoint to the models replay needs: the fused ONNX model and its gate-exposed twin.

One path for `export`, `bench` and `replay`: load the checkpoint safely, check the windows
against what a torch module takes (before export, so a mismatch is named as such, not as a torch
error), export it (unless it is already ONNX) with parity measured on the first windows, and
expose the gates. How the windows and the model's other inputs feed the exposed graph is decided
(and checked) by `replay.feeds.plan_feeds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from reporter.errors import CheckpointError, ModelError
from reporter.layers import Layer
from reporter.model.checkpoints import LoadedCheckpoint, load_checkpoint
from reporter.model.export import INPUT_NAME, export_module
from reporter.model.expose import expose_gates
from reporter.model.inputs import example_windows, graph_inputs, module_input
from reporter.replay.windows import WindowSource

__all__ = ["ModelRecipe", "ModelSource", "exposed_model", "fused_model_and_windows", "input_names"]

PARITY_WINDOWS = 8  # windows on which export parity is measured


@dataclass(frozen=True)
class ModelRecipe:
    """How to read a checkpoint: the file, the factory a state_dict fits, and whether to trust pickles."""

    checkpoint: Path
    factory: str | None = None
    factory_kwargs: dict = field(default_factory=dict)
    trust_pickle: bool = False
    exporter: str = "legacy"

    def load(self) -> LoadedCheckpoint:
        """Read the checkpoint (no code runs unless `trust_pickle`)."""
        return load_checkpoint(self.checkpoint, self.factory, self.factory_kwargs, self.trust_pickle)


@dataclass(frozen=True)
class ModelSource:
    """A loaded checkpoint with its fused and exposed ONNX models."""

    checkpoint: LoadedCheckpoint
    fused: onnx.ModelProto
    exposed: onnx.ModelProto
    layers: list[Layer]
    parity_max_abs: float | None  # None when the checkpoint was already ONNX
    exporter: str | None


def input_names(recipe: ModelRecipe) -> list[str]:
    """The names of the inputs the model will take, before it is exported: an ONNX file's graph
    inputs (read without its weights), or the one input a torch export names "x"."""
    if recipe.checkpoint.suffix.lower() != ".onnx" or not recipe.checkpoint.is_file():
        return [INPUT_NAME]
    try:
        return [spec.name for spec in graph_inputs(onnx.load(str(recipe.checkpoint), load_external_data=False))]
    except Exception:  # noqa: BLE001 - an unreadable file is reported, by name, when it is loaded for real
        return [INPUT_NAME]


def _as_model_input(windows: np.ndarray) -> np.ndarray:
    """Float windows as float32, token ids as int64: what exported models take."""
    return windows.astype(np.float32 if windows.dtype.kind == "f" else np.int64, copy=False)


def _first(windows: WindowSource, count: int) -> np.ndarray:
    """The first `count` windows of a source, as a plain in-memory array."""
    return _as_model_input(windows.take(windows.indices()[:count]))


def _expose(path: Path, model: onnx.ModelProto):
    """expose_gates, with the file named in any error."""
    try:
        return expose_gates(model)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None


def exposed_model(recipe: ModelRecipe, windows: WindowSource | None = None) -> ModelSource:
    """Load, export and expose a checkpoint; `windows`, when given, are checked against the model
    and their first windows are the export examples (else synthetic input shaped from the module)."""
    loaded = recipe.load()
    if loaded.onnx_model is not None:
        exposed, layers = _expose(recipe.checkpoint, loaded.onnx_model)  # its windows: `replay.feeds.plan_feeds`
        return ModelSource(loaded, loaded.onnx_model, exposed, layers, None, None)
    if windows is not None:
        windows.check(module_input(loaded.module))
        examples = _first(windows, PARITY_WINDOWS)
    else:
        examples = example_windows(loaded.module)
    result = export_module(loaded.module, examples, exporter=recipe.exporter, parity_windows=examples)
    exposed, layers = _expose(recipe.checkpoint, result.model)
    return ModelSource(loaded, result.model, exposed, layers, result.parity_max_abs, result.exporter)


def fused_model_and_windows(
    recipe: ModelRecipe, windows: WindowSource | None, batch: int
) -> tuple[onnx.ModelProto, np.ndarray]:
    """The unexposed ONNX model and a batch of windows to time it on."""
    loaded = recipe.load()
    if windows is not None:
        batch_windows = _first(windows, batch)
    elif loaded.module is not None:
        batch_windows = example_windows(loaded.module, batch=batch, steps=100)
    else:
        raise CheckpointError(f"{recipe.checkpoint}: pass --windows to time an ONNX model on its own input")
    if loaded.onnx_model is not None:
        return loaded.onnx_model, batch_windows
    return export_module(loaded.module, batch_windows[:2], exporter=recipe.exporter).model, batch_windows

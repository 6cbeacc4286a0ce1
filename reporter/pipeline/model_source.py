"""From a checkpoint to the models replay needs: the fused ONNX model and its gate-exposed twin.

One path for `export`, `bench` and `replay`: load the checkpoint safely, check the windows
against what a torch module takes (before export, so a mismatch is named as such, not as a torch
error), export it (unless it is already ONNX) with parity measured on the first windows, and
expose the gates. How the windows and the model's other inputs feed the exposed graph is decided
(and checked) by `replay.feeds.plan_feeds`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from reporter.errors import CheckpointError, ModelError
from reporter.layers import Layer
from reporter.model.checkpoints import LoadedCheckpoint, load_checkpoint
from reporter.model.export import export_module
from reporter.model.expose import expose_gates
from reporter.model.inputs import example_windows, graph_inputs, module_input
from reporter.model.module_inputs import INPUT_NAME, forward_arguments
from reporter.replay.window_readers import npz_arrays, open_rows
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


def _takes_dict(module: torch.nn.Module, argument: str) -> bool:
    """Whether forward's one argument is a dict of tensors, as its annotation says (forecasting
    libraries annotate it `Dict[str, Tensor]`); an unannotated argument takes the windows."""
    annotation = str(inspect.signature(module.forward).parameters[argument].annotation).lower()
    return "dict" in annotation or "mapping" in annotation


def _series_first(windows: Path, arrays: list[str]) -> list[str]:
    """The .npz's arrays with the first one that holds series ([N, T, …]) first: it is the windows."""
    ranks = {name: len(open_rows(windows, name, None, None, None).shape) for name in arrays}
    return sorted(arrays, key=lambda name: ranks[name] < 3)


def input_names(loaded: LoadedCheckpoint, windows: Path | None = None) -> list[str]:
    """The graph inputs the model takes (an ONNX file's own, a torch forward's tensor arguments,
    or the keys of its one dict argument: the windows .npz's arrays); ["x"] for windows alone."""
    if loaded.onnx_model is not None:
        return [spec.name for spec in graph_inputs(loaded.onnx_model)]
    arguments, arrays = forward_arguments(loaded.module), npz_arrays(windows)
    if len(arguments) > 1:
        return arguments
    if arguments != [INPUT_NAME] and _takes_dict(loaded.module, arguments[0]) and arrays:
        return _series_first(windows, arrays)
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


def _named_examples(loaded: LoadedCheckpoint, windows: WindowSource, names: list[str]) -> dict[str, np.ndarray]:
    """The first windows of every array a several-input forward takes, by name."""
    arrays = npz_arrays(windows.path)
    missing = [name for name in names if name not in arrays]
    if missing:
        raise CheckpointError(
            f"{windows.path}: {type(loaded.module).__name__}.forward takes {', '.join(names)}; the "
            f"windows .npz has no array {missing[0]!r} (it has {', '.join(arrays)})"
        )
    count = min(PARITY_WINDOWS, windows.shape[0])
    return {name: _as_model_input(open_rows(windows.path, name, None, None, None).read(0, count)) for name in names}


def exposed_model(
    recipe: ModelRecipe, windows: WindowSource | None = None, loaded: LoadedCheckpoint | None = None
) -> ModelSource:
    """Load (unless `loaded`), export and expose a checkpoint; `windows`, when given, are checked
    against the module and their first windows are the export examples (else synthetic input
    shaped from the module). A forward of several tensors or one dict takes them by name from the
    windows .npz (`input_names`)."""
    loaded = loaded or recipe.load()
    if loaded.onnx_model is not None:
        exposed, layers = _expose(recipe.checkpoint, loaded.onnx_model)  # its windows: `replay.feeds.plan_feeds`
        return ModelSource(loaded, loaded.onnx_model, exposed, layers, None, None)
    names = input_names(loaded, windows.path if windows is not None else None)
    as_dict = names != [INPUT_NAME] and len(forward_arguments(loaded.module)) == 1
    if windows is None:
        examples = example_windows(loaded.module)
    elif names == [INPUT_NAME]:
        windows.check(module_input(loaded.module))
        examples = _first(windows, PARITY_WINDOWS)
    else:
        examples = _named_examples(loaded, windows, names)
    result = export_module(loaded.module, examples, exporter=recipe.exporter, parity_windows=examples, as_dict=as_dict)
    exposed, layers = _expose(recipe.checkpoint, result.model)
    return ModelSource(loaded, result.model, exposed, layers, result.parity_max_abs, result.exporter)


def fused_model_and_windows(
    recipe: ModelRecipe, windows: WindowSource | None, batch: int
) -> tuple[onnx.ModelProto, np.ndarray]:
    """The unexposed ONNX model and a batch of windows to time it on (windows being its one input)."""
    loaded = recipe.load()
    names = input_names(loaded, windows.path if windows is not None else None)
    if len(names) > 1:
        raise ModelError(
            f"{recipe.checkpoint}: bench times models whose one input is the windows; this one takes "
            f"{', '.join(names)} (replay it to see its speed)"
        )
    if windows is not None:
        batch_windows = _first(windows, batch)
    elif loaded.module is not None:
        batch_windows = example_windows(loaded.module, batch=batch, steps=100)
    else:
        raise CheckpointError(f"{recipe.checkpoint}: pass --windows to time an ONNX model on its own input")
    if loaded.onnx_model is not None:
        return loaded.onnx_model, batch_windows
    return export_module(loaded.module, batch_windows[:2], exporter=recipe.exporter).model, batch_windows

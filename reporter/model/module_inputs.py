"""A torch module's inputs by name: one windows tensor, several tensor arguments, or one dict.

Exporting a module and checking the export's parity must call the module and the ONNX graph the
same way. A model that takes windows alone is called `module(x)` and its graph input is named
"x"; one whose `forward(series, mask)` takes several tensors is called with them in order, and
one whose `forward(batch)` takes a dict of tensors (common in forecasting libraries) is called
with that dict. Either way each tensor becomes a graph input named after its argument or key, so a
windows .npz holding one array per name feeds the exported model as it fed the module.

Every tensor is batch-first; its axis 1 is the time axis when it is as long as the first input's.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from reporter.errors import ExportError

__all__ = ["INPUT_NAME", "ModuleInputs", "forward_arguments"]

INPUT_NAME = "x"  # the graph input of a model that takes windows alone
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def forward_arguments(module: torch.nn.Module) -> list[str]:
    """The names of the tensors `forward` takes (no *args, **kwargs or arguments with defaults)."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):  # TorchScript and C++ modules have no Python signature
        return [INPUT_NAME]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty]
    return names or [INPUT_NAME]


def _windows_tensor(value, what: str) -> torch.Tensor:
    """A float32 [B, T, F] or int64 [B, T] tensor, widening float64 and int32 inputs."""
    x = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.tensor(np.asarray(value))
    if x.is_floating_point() and x.ndim == 3:
        return x.to(torch.float32)
    if x.dtype in _INTEGER_DTYPES and x.ndim == 2:
        return x.to(torch.int64)
    raise ExportError(
        f"{what}: expected float [batch, time, features] or integer token ids [batch, time], "
        f"got {x.dtype} {list(x.shape)}"
    )


def _named_tensor(value, what: str) -> torch.Tensor:
    """Any batch-first numeric tensor: float as float32, integers as int64, booleans kept."""
    x = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.tensor(np.asarray(value))
    if x.ndim == 0:
        raise ExportError(f"{what}: expected a batch-first tensor, one row per window, got a scalar")
    if x.is_floating_point():
        return x.to(torch.float32)
    return x.to(torch.int64) if x.dtype in _INTEGER_DTYPES else x


@dataclass(frozen=True)
class ModuleInputs:
    """The tensors a module is called with, by graph input name, in the order the graph takes them."""

    tensors: dict[str, torch.Tensor]
    as_dict: bool = False  # forward takes one dict of these tensors

    @classmethod
    def of(cls, value, what: str, as_dict: bool = False) -> ModuleInputs:
        """Inputs from one windows array, or a mapping of name → array (tensor arguments or a dict)."""
        if isinstance(value, ModuleInputs):
            return value
        if isinstance(value, Mapping):
            return cls({name: _named_tensor(item, f"{what} {name!r}") for name, item in value.items()}, as_dict)
        return cls({INPUT_NAME: _windows_tensor(value, what)})

    @property
    def first(self) -> torch.Tensor:
        return next(iter(self.tensors.values()))

    def call(self, module: torch.nn.Module):
        """Call the module the way its forward takes these tensors."""
        return module(dict(self.tensors)) if self.as_dict else module(*self.tensors.values())

    def export_args(self) -> tuple:
        """`args` for torch.onnx.export (a trailing empty dict keeps a dict argument positional)."""
        return (dict(self.tensors), {}) if self.as_dict else tuple(self.tensors.values())

    def feed(self) -> dict[str, np.ndarray]:
        """The same values as an onnxruntime feed."""
        return {name: tensor.numpy() for name, tensor in self.tensors.items()}

    def _has_time(self, tensor: torch.Tensor) -> bool:
        return tensor.ndim >= 2 and self.first.ndim >= 2 and tensor.shape[1] == self.first.shape[1]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Per input, its batch axis and (when it has one) its time axis, by symbolic name."""
        return {name: {0: "batch", **({1: "time"} if self._has_time(t) else {})} for name, t in self.tensors.items()}

    def resized(self) -> ModuleInputs:
        """One window more and one step longer, from the inputs' own values."""

        def grow(tensor: torch.Tensor) -> torch.Tensor:
            if self._has_time(tensor):
                return tensor.repeat(2, 2, *[1] * (tensor.ndim - 2))[: tensor.shape[0] + 1, : tensor.shape[1] + 1]
            return tensor.repeat(2, *[1] * (tensor.ndim - 1))[: tensor.shape[0] + 1]

        return ModuleInputs({name: grow(t) for name, t in self.tensors.items()}, self.as_dict)

    def at_least_two(self) -> ModuleInputs:
        """Repeated along batch and time until both are at least 2 long (torch.export guards 1)."""

        def grow(tensor: torch.Tensor) -> torch.Tensor:
            axes = 2 if self._has_time(tensor) else 1
            return tensor.repeat(*[2 if axis < axes and size < 2 else 1 for axis, size in enumerate(tensor.shape)])

        return ModuleInputs({name: grow(t) for name, t in self.tensors.items()}, self.as_dict)

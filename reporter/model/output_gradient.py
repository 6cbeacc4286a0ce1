"""How much the model's last output depends on each earlier input step: ‖∂y_T / ∂x_t‖ by autograd.

`replay.gradient_flow` follows the gradient through one layer exactly from its gates; the whole
model (an embedding, several layers, a head) is a composition that only the torch module itself
knows. So where a torch module is at hand (a checkpoint read with its factory, a Lightning
checkpoint, TorchScript), torch autograd gives, per sampled window and lag L,

    ‖∂y_T / ∂x_{T−L}‖_F   over the components of the last step's output (the first MAX_COMPONENTS)
                          and every input feature at step T − L

in float64 (a copy of the module), where y_T is the output's last step when it has a time axis,
else the output itself. Token models (integer input) have no input gradient, and a model fed more
than its windows or carrying state between calls is left out: the table is then empty.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch

__all__ = ["MAX_COMPONENTS", "OUTPUT_GRADIENT_COLUMNS", "output_gradient"]

OUTPUT_GRADIENT_COLUMNS = ("output", "lag", "norm", "low", "high")
MAX_COMPONENTS = 16  # output components differentiated: one backward pass each


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({column: [] for column in OUTPUT_GRADIENT_COLUMNS})
    return frame.astype({"output": object, "lag": np.int64, "norm": np.float64, "low": np.float64, "high": np.float64})


def _last_output(out: object, steps: int) -> torch.Tensor | None:
    """The first tensor output, at its last step when it has a time axis, as [windows, components]."""
    while isinstance(out, (tuple, list)) and out:
        out = out[0]
    if isinstance(out, dict) and out:
        out = next(iter(out.values()))
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.ndim == 0:
        return None
    if out.ndim >= 3 and out.shape[1] == steps:
        out = out[:, -1]
    return out.reshape(out.shape[0], -1)


def _float64(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of the module (the module itself when it cannot be copied)."""
    try:
        return copy.deepcopy(module).double()
    except (RuntimeError, TypeError, copy.Error):  # TorchScript and some C++ modules
        return module


def output_gradient(module: torch.nn.Module | None, windows: np.ndarray, name: str) -> pd.DataFrame:
    """OUTPUT_GRADIENT_COLUMNS, one row per lag: mean, 10th and 90th percentile over `windows`
    ([N, T, F] floats) of ‖∂y_T/∂x_{T−L}‖_F, `name` naming the output."""
    if module is None or windows.ndim != 3 or windows.dtype.kind != "f" or not len(windows):
        return _empty()
    model = _float64(module)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    x = torch.tensor(windows, dtype=dtype, requires_grad=True)
    with torch.enable_grad():
        y = _last_output(model(x), windows.shape[1])
        if y is None:
            return _empty()
        squares = torch.zeros(windows.shape[:2], dtype=torch.float64)
        for k in range(min(MAX_COMPONENTS, y.shape[1])):
            (grad,) = torch.autograd.grad(y[:, k].sum(), x, retain_graph=True)
            squares += grad.double().pow(2).sum(dim=2)
    norms = squares.sqrt().numpy()[:, ::-1]  # [N, lag]
    low, high = np.percentile(norms, [10, 90], axis=0)
    frame = pd.DataFrame(
        {"output": name, "lag": np.arange(norms.shape[1]), "norm": norms.mean(axis=0), "low": low, "high": high}
    )
    return frame.astype({"output": object, "lag": np.int64})

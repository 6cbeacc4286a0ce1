"""The models `gate-report bench --replay` replays: the sample forecaster and three plain LSTMs.

The plain LSTMs (2 layers, input 16, 100 steps; 16, 128 or 1,024 units: rows short enough for
`pass_kernels.short_row_kernel`, a mid-size model, and one sized by its memory budget) have seeded
random weights and standard-normal windows: replay's cost depends on the shapes, not on what a
model learned. Each entry writes its checkpoint and windows into a folder and returns the recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from reporter.bench.replay_cost import SAMPLE, make_windows
from reporter.pipeline.model_source import ModelRecipe

__all__ = ["MODELS", "StackedLSTM"]

STEPS, INPUTS = 100, 16


class StackedLSTM(torch.nn.Module):
    """A 2-layer LSTM with a linear read-out per step, as a forecaster or tagger is built."""

    def __init__(self, hidden: int = 128, layers: int = 2, inputs: int = INPUTS):
        super().__init__()
        torch.manual_seed(hidden)
        self.rnn = torch.nn.LSTM(inputs, hidden, layers, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y)


def _lstm(hidden: int) -> Callable[[Path, int], tuple[ModelRecipe, Path]]:
    def make(folder: Path, count: int) -> tuple[ModelRecipe, Path]:
        checkpoint = folder / f"lstm{hidden}.pt"
        torch.save(StackedLSTM(hidden).state_dict(), checkpoint)
        windows = np.lib.format.open_memmap(folder / "windows.npy", "w+", np.float32, (count, STEPS, INPUTS))
        rng = np.random.default_rng(0)
        for start in range(0, count, 1024):
            windows[start : start + 1024] = rng.standard_normal(windows[start : start + 1024].shape)
        windows.flush()
        recipe = ModelRecipe(checkpoint, "reporter.bench.bench_models:StackedLSTM", {"hidden": hidden})
        return recipe, folder / "windows.npy"

    return make


MODELS: dict[str, Callable[[Path, int], tuple[ModelRecipe, Path]]] = {
    "forecaster": lambda folder, count: (SAMPLE, make_windows(count, folder / "windows.npy")),
    "lstm16": _lstm(16),
    "lstm128": _lstm(128),
    "lstm1024": _lstm(1024),
}

"""The metric a Lightning checkpoint was saved on: its training curve when there is no metrics.csv.

Lightning's `ModelCheckpoint` keeps, inside every checkpoint it writes, the metric it monitors and
that metric's value when the file was saved (`callbacks` → `ModelCheckpoint{…}` → `monitor`,
`current_score`), beside the checkpoint's `epoch` and `global_step`. A series of such checkpoints
therefore carries one point per checkpoint of its training curve even when no CSVLogger ran.

Files are read without running code: `torch.load(weights_only=True)`, or, for a checkpoint that
also pickles objects (hyper-parameters of the user's classes), the inert placeholder reader.
A file with no such entry contributes nothing.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reporter.model.placeholder_pickle import load_with_placeholders

__all__ = ["checkpoint_metrics"]


def _read(path: Path) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return load_with_placeholders(path)[0]


def _number(value: object) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _whole(value: object) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else -1


def checkpoint_metrics(paths: list[Path]) -> pd.DataFrame:
    """One row per checkpoint that monitors a metric: (metric, epoch, step, value), as
    `pipeline.training_log.read_metrics` gives a CSVLogger's file (empty when none does)."""
    rows = []
    for path in paths:
        if path.suffix.lower() not in (".ckpt", ".pt", ".pth"):
            continue
        try:
            loaded = _read(path)
        except Exception:  # noqa: BLE001 - an unreadable file has no metric; replay reports the file itself
            continue
        callbacks = loaded.get("callbacks") if isinstance(loaded, dict) else None
        for name, state in (callbacks or {}).items():
            if not (str(name).startswith("ModelCheckpoint") and isinstance(state, dict)):
                continue
            value = _number(state.get("current_score"))
            if isinstance(state.get("monitor"), str) and value is not None and np.isfinite(value):
                rows.append((state["monitor"], _whole(loaded.get("epoch")), _whole(loaded.get("global_step")), value))
                break
    frame = pd.DataFrame(rows, columns=["metric", "epoch", "step", "value"])
    frame = frame.astype({"metric": object, "epoch": np.int64, "step": np.int64, "value": np.float64})
    return frame.sort_values(["metric", "step"], kind="stable").reset_index(drop=True)

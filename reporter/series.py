"""A `[[series]]` table: one model's checkpoints in training order, or across a swept setting.

    [[series]]
    model = "forecaster"
    checkpoints = "ckpts/epoch=*.ckpt"   # a glob, ordered by the number in each name,
                                         # or a list of files, kept in the order given
    key = "epoch"                        # what orders them: "epoch" (default) or any swept setting
    values = [0, 0.5, 1]                 # optional: the key's value per checkpoint (default: the
                                         # number in each file name, "KEY=NUMBER" preferred)
    windows = "windows.npz"              # and factory, factory_kwargs, feed, carry, vocab,
                                         # trust_pickle, as in [[runs]]
    metrics = "metrics.csv"              # optional: a Lightning CSVLogger file (default: a
                                         # metrics.csv beside the checkpoints or one folder up)

Each checkpoint becomes a run whose version is "KEY=VALUE" (`epoch=3`, `forget_bias=0.5`), replayed
through the run cache like any other; the series page reads those runs in order. This module only
resolves names, order and values: it knows nothing of replay or pages.
"""

from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass
from pathlib import Path

from reporter.errors import ConfigError

__all__ = ["SERIES_KEYS", "SeriesConfig", "default_metrics", "format_value", "number_in_name", "ordered_checkpoints"]

SERIES_KEYS = {"name", "model", "checkpoints", "key", "values", "metrics"}  # besides a run's own keys
_NUMBER = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class SeriesConfig:
    """One ordered set of checkpoints of a model: `versions[k]` is the run made of checkpoint k."""

    name: str
    model: str
    key: str
    values: tuple[float, ...]
    versions: tuple[str, ...]
    metrics: Path | None = None  # a Lightning CSVLogger metrics.csv, if there is one


def format_value(value: float) -> str:
    """A key's value as versions and pages print it: 3, 0.5, 1e-05 (no trailing .0)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def number_in_name(path: Path, key: str) -> float | None:
    """The number that orders a checkpoint: after "KEY=" in its name if there, else the first one."""
    stem = path.name.removesuffix("".join(path.suffixes[-1:]))
    tagged = re.search(rf"(?:^|[^A-Za-z0-9_]){re.escape(key)}[=_-]?({_NUMBER})", stem)
    found = tagged or re.search(_NUMBER, stem)
    return float(found.group(1 if tagged else 0)) if found else None


def ordered_checkpoints(
    config_path: Path, where: str, pattern: str | list, key: str, values: list | None
) -> tuple[list[Path], list[float]]:
    """The checkpoints of a series with the key's value for each, in the series' order."""
    base = config_path.parent
    if isinstance(pattern, str):
        paths = [Path(p) for p in sorted(glob.glob(str(base / pattern)))]
        if not paths:
            raise ConfigError(f"{config_path}: {where}.checkpoints {pattern!r} matches no file")
    elif isinstance(pattern, list) and pattern and all(isinstance(p, str) and p for p in pattern):
        paths = [base / p for p in pattern]
    else:
        raise ConfigError(f"{config_path}: {where}.checkpoints must be a glob or a non-empty list of files")
    if values is None:
        numbers = [number_in_name(path, key) for path in paths]
        unnamed = [path.name for path, number in zip(paths, numbers) if number is None]
        if unnamed:
            raise ConfigError(
                f"{config_path}: {where}: no number in {unnamed[0]!r} to order it by {key}; give values = [...]"
            )
    else:
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise ConfigError(f"{config_path}: {where}.values must be a list of numbers, one per checkpoint")
        if len(values) != len(paths):
            raise ConfigError(f"{config_path}: {where}.values has {len(values)} numbers for {len(paths)} checkpoints")
        numbers = [float(v) for v in values]
    if isinstance(pattern, str):  # a list is in the order given
        order = sorted(range(len(paths)), key=lambda k: (numbers[k], paths[k].name))
        paths, numbers = [paths[k] for k in order], [numbers[k] for k in order]
    repeated = sorted({format_value(v) for v in numbers if numbers.count(v) > 1})
    if repeated:
        raise ConfigError(f"{config_path}: {where}: two checkpoints have {key} = {repeated[0]}")
    return paths, numbers


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def default_metrics(paths: list[Path]) -> Path | None:
    """A Lightning CSVLogger file beside the first checkpoint, or in the folder above it."""
    for folder in (paths[0].parent, paths[0].parent.parent):
        if (folder / "metrics.csv").is_file():
            return folder / "metrics.csv"
    return None

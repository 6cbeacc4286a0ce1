"""Read a training log: the `metrics.csv` that Lightning's CSVLogger writes beside its checkpoints.

The file holds one row per logging call: `step` (and `epoch`, when logged through a Trainer) and
one column per metric, empty where that call did not log it. `read_metrics` turns it into one row
per logged value, the shape a series page plots:

    metric      epoch  step  value
    train_loss      0     9  0.812
    val_loss        0    19  0.774
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from reporter.errors import RunError

__all__ = ["METRICS_COLUMNS", "read_metrics"]

METRICS_COLUMNS = ("metric", "epoch", "step", "value")
_POSITIONS = ("epoch", "step")  # where in training a row was logged; every other numeric column is a metric


def read_metrics(path: Path) -> pd.DataFrame:
    """One row per logged value of a CSVLogger `metrics.csv`, sorted by metric then step.

    Columns: metric (str), epoch and step (int64, -1 where the file has no such column or cell),
    value (float64). Empty cells and non-numeric columns are left out.
    """
    path = Path(path)
    table = _read_table(path)
    positions = {name: _whole_numbers(path, table, name) for name in _POSITIONS}
    metrics = [
        name
        for name in table.columns
        if name not in _POSITIONS
        and pd.api.types.is_numeric_dtype(table[name])
        and not pd.api.types.is_bool_dtype(table[name])
    ]
    parts = [
        pd.DataFrame(
            {
                "metric": name,
                "epoch": positions["epoch"],
                "step": positions["step"],
                "value": table[name].astype("float64"),
            }
        )[table[name].notna()]
        for name in metrics
    ]
    if not parts:
        return _empty()
    frame = pd.concat(parts, ignore_index=True).sort_values(["metric", "step"], kind="stable", ignore_index=True)
    return frame.astype({"metric": str, "epoch": "int64", "step": "int64", "value": "float64"})


def _read_table(path: Path) -> pd.DataFrame:
    """The CSV as pandas reads it, every failure a one-line RunError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # a row longer than the header
            return pd.read_csv(path, index_col=False)
    except FileNotFoundError:
        raise RunError(f"{path}: no such metrics file") from None
    except pd.errors.EmptyDataError:
        raise RunError(f"{path}: the metrics file is empty") from None
    except pd.errors.ParserWarning:
        raise RunError(f"{path}: not a metrics CSV: a row has more fields than the header") from None
    except pd.errors.ParserError as exc:
        raise RunError(f"{path}: not a metrics CSV: {_first_line(exc)}") from None
    except UnicodeDecodeError:
        raise RunError(f"{path}: not a metrics CSV: not UTF-8 text") from None
    except OSError as exc:
        raise RunError(f"{path}: cannot read the metrics file: {exc.strerror or exc}") from None


def _whole_numbers(path: Path, table: pd.DataFrame, name: str) -> pd.Series:
    """An epoch or step column as int64, -1 for empty cells (or every row, when there is no such column)."""
    if name not in table.columns:
        return pd.Series(-1, index=table.index, dtype="int64")
    values = pd.to_numeric(table[name], errors="coerce")
    bad = (values.isna() & table[name].notna()) | (values.notna() & (values % 1 != 0))
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise RunError(
            f"{path}: not a metrics CSV: {name} {str(table[name].iloc[row])!r} on row {row + 2} is not a whole number"
        )
    return values.fillna(-1).astype("int64")


def _empty() -> pd.DataFrame:
    """No logged value: the columns and dtypes alone."""
    return pd.DataFrame(
        {
            "metric": pd.Series([], dtype=str),
            "epoch": pd.Series([], dtype="int64"),
            "step": pd.Series([], dtype="int64"),
            "value": pd.Series([], dtype="float64"),
        }
    )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__

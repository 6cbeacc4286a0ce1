"""The limits `gate-report check` judges a diff by: defaults, and their parsing from the command
line and from `[check]` in `reporter.toml`.

    saturation_delta    the largest change of any layer × gate saturated fraction
    wasserstein         the largest per-gate distribution shift (gate-value units)
    anomaly_rate_delta  the change in the share of windows flagged anomalous
    output_drift        RMS(B − A) ÷ RMS(A) of the model outputs
"""

from __future__ import annotations

import difflib

from reporter.errors import ConfigError

__all__ = ["DEFAULT_THRESHOLDS", "parse_thresholds"]

DEFAULT_THRESHOLDS = {"saturation_delta": 0.10, "wasserstein": 0.05, "anomaly_rate_delta": 0.05, "output_drift": 0.10}


def parse_thresholds(items, base: dict[str, float] | None = None, where: str = "--threshold") -> dict[str, float]:
    """KEY=VALUE strings (or a mapping) over the defaults; unknown keys and non-numbers are errors."""
    thresholds = dict(DEFAULT_THRESHOLDS if base is None else base)
    pairs = (
        items.items()
        if isinstance(items, dict)
        else [item.split("=", 1) if "=" in item else (item, None) for item in items]
    )
    for key, value in pairs:
        if key not in DEFAULT_THRESHOLDS:
            close = difflib.get_close_matches(key, DEFAULT_THRESHOLDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(DEFAULT_THRESHOLDS)}"
            raise ConfigError(f"{where}: unknown threshold {key!r}{hint}")
        try:
            thresholds[key] = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: threshold {key} needs a number, got {value!r}") from None
        if not thresholds[key] >= 0:
            raise ConfigError(f"{where}: threshold {key} must be ≥ 0, got {value!r}")
    return thresholds

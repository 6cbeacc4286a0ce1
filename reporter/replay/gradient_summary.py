"""What a gradient flow means: its tables' columns, the thresholds of its verdicts, and the summary.

Kept apart from `gradient_flow` (which reads ONNX nodes) so that pages, diffs and the run store can
read a run's gradient flow without ONNX: one home for the columns and for what "vanishing" and
"exploding" mean.

    vanishing   the state norm (÷ √H, 1 at lag 0) is below VANISHING at lag VANISH_LAG (or at the
                last lag, for shorter windows): what happened that many steps ago no longer trains
    exploding   it exceeds EXPLODING at some lag ≥ 1: early steps get gradients far larger than late ones
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "EXPLODING", "GRADIENT_COLUMNS", "HALF", "SUMMARY_COLUMNS", "UNIT_GRADIENT_COLUMNS", "VANISHING", "VANISH_LAG",
    "gradient_summary", "half_life", "typed_frame", "verdict",
]  # fmt: skip

GRADIENT_COLUMNS = ("layer", "direction", "target", "lag", "norm", "low", "high")
UNIT_GRADIENT_COLUMNS = ("layer", "direction", "unit", "half_life", "verdict")
SUMMARY_COLUMNS = ("layer", "direction", "half_life", "final", "peak", "verdict")
EXPLODING = 10.0  # a state norm (÷√H) above this at any lag ≥ 1: the gradient explodes
VANISHING = 1e-3  # below this at lag VANISH_LAG (or the last lag, if shorter): it vanishes
VANISH_LAG = 10
HALF = 0.5


def verdict(lags: np.ndarray, norms: np.ndarray) -> str:
    """ "exploding", "vanishing" or "steady" for one curve of norms by lag (lag 0 = 1)."""
    later = norms[lags >= 1]
    if later.size and later.max() > EXPLODING:
        return "exploding"
    at = np.flatnonzero(lags == min(VANISH_LAG, int(lags.max())))
    return "vanishing" if at.size and norms[at[0]] < VANISHING else "steady"


def half_life(lags: np.ndarray, values: np.ndarray) -> float:
    """The first lag ≥ 1 at which values fall to ≤ HALF, interpolated from the lag before; NaN if never."""
    below = np.flatnonzero((lags >= 1) & (values <= HALF))
    if not below.size or below[0] == 0:
        return float("nan")
    k = below[0]
    (l0, l1), (v0, v1) = lags[k - 1 : k + 1], values[k - 1 : k + 1]
    return float(l1 if v0 <= v1 else l0 + (l1 - l0) * (v0 - HALF) / (v0 - v1))


def typed_frame(rows: list, columns: tuple[str, ...]) -> pd.DataFrame:
    """A frame with exactly `columns`, typed (ints int64, numbers float64, names str), even when empty."""
    types = dict.fromkeys(("layer", "direction", "target", "verdict"), object) | {"lag": np.int64, "unit": np.int64}
    frame = pd.DataFrame(rows, columns=list(columns))
    return frame.astype({column: types.get(column, np.float64) for column in columns})


def gradient_summary(flow: pd.DataFrame) -> pd.DataFrame:
    """SUMMARY_COLUMNS, one row per layer × direction, from the "state" curve of `gradient_flow`."""
    rows = []
    state = flow[flow["target"] == "state"]
    for (layer, direction), curve in state.groupby(["layer", "direction"], sort=False):  # in the flow's order
        curve = curve.sort_values("lag")
        lags, norms = curve["lag"].to_numpy(), curve["norm"].to_numpy(np.float64)
        later = norms[lags >= 1]
        peak = float(later.max()) if later.size else float("nan")
        rows.append((layer, direction, half_life(lags, norms), float(norms[-1]), peak, verdict(lags, norms)))
    return typed_frame(rows, SUMMARY_COLUMNS)

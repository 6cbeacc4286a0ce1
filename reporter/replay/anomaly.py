"""Score each window by how unusual its gate behaviour is, relative to a reference set of windows.

Per window, per layer × gate, a handful of features describe what the gate did over the window
(`window_features`, computed batch by batch during replay, a few hundred bytes per window):

    mean, std          level and spread of the gate's values over steps and units
    frac_low/high      share of values beyond the family's saturation thresholds (as in `stats`)
    step_change        mean |g[t] - g[t-1]|: how busily the gate moves
    peak_change        per unit the largest one-step jump, averaged: catches a single-step shock
    drift              std over time of the unit-averaged gate: slow level changes
    zero_crossings     share of steps where a tanh/linear quantity changes sign (not for sigmoid gates)

(Measured on the forecaster's labelled windows: a histogram-entropy feature lowered AUROC from
0.998 to 0.995 and took 40% of the feature time, so it is not among them.)

Scoring (`score_windows`) standardises every feature robustly against the reference windows
(median and IQR, so the anomalies being looked for barely move the scale) and runs scikit-learn's
IsolationForest fitted on the reference: a window whose features are easy to isolate scores high.
The reference is the run's own windows by default, or a trusted run's (`--reference`).
A window is flagged when its score lies above the median + 3 robust standard deviations of the
run's scores (`flagged`: the one definition pages, diffs and the command line use).
`explain_window` then says which layers, gates and steps of a window stray from the typical
per-step gate values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

from reporter.layers import Layer, gate_family, gate_order
from reporter.replay.gate_moments import StatsConfig

__all__ = [
    "FEATURES",
    "explain_window",
    "feature_names",
    "features_from_passes",
    "flag_threshold",
    "flagged",
    "score_windows",
    "typical_from_timestep_stats",
    "window_features",
]

FEATURES = ("mean", "std", "frac_low", "frac_high", "step_change", "peak_change", "drift", "zero_crossings")
_Z_CLIP = 50.0  # robust z-scores beyond this carry no more information for the forest
_TREES = 200
_SCORE_CHUNK = 8192  # windows scored at once: bounds the detector's temporaries


def _gate_features(layer: Layer, gate: str) -> tuple[str, ...]:
    if gate_family(layer, gate) == "sigmoid":
        return tuple(name for name in FEATURES if name != "zero_crossings")
    return FEATURES


def feature_names(layers: list[Layer]) -> list[str]:
    """Column names of `window_features`: "LAYER/GATE/FEATURE", layers in manifest order, gates in the op's."""
    return [
        f"{layer.name}/{gate}/{name}"
        for layer in layers
        for gate in gate_order(layer)
        for name in _gate_features(layer, gate)
    ]


def _one_gate(trace: np.ndarray, family: str, names: tuple[str, ...], config: StatsConfig) -> list[np.ndarray]:
    """The features of one gate trace [B, T, D, H], one array [B] per name."""
    batch, steps = trace.shape[:2]
    values = trace.reshape(batch, steps, -1)
    flat = values.reshape(batch, -1)
    low, high = config.thresholds(family)
    if steps > 1:  # np.subtract on views: several times faster than np.diff here
        change = np.subtract(values[:, 1:], values[:, :-1])
        np.abs(change, out=change)
    else:
        change = np.zeros((batch, 1, values.shape[2]), np.float32)

    def crossings() -> np.ndarray:
        positive = values > 0
        return np.count_nonzero(positive[:, 1:] != positive[:, :-1], axis=(1, 2)) / max(1, change[0].size)

    computed = {
        "mean": lambda: flat.mean(axis=1),
        "std": lambda: flat.std(axis=1),
        "frac_low": lambda: np.count_nonzero(flat < low, axis=1) / flat.shape[1],
        "frac_high": lambda: np.count_nonzero(flat > high, axis=1) / flat.shape[1],
        "step_change": lambda: change.reshape(batch, -1).mean(axis=1),
        "peak_change": lambda: change.max(axis=1).mean(axis=1),
        "drift": lambda: values.mean(axis=2).std(axis=1),
        "zero_crossings": crossings if steps > 1 else lambda: np.zeros(batch),
    }
    return [computed[name]() for name in names]


def window_features(
    gates: dict[str, dict[str, np.ndarray]], layers: list[Layer], config: StatsConfig | None = None, batch: int = 0
) -> np.ndarray:
    """Per window the features of every layer × gate: float32 [B, len(feature_names(layers))]; NaN
    for a layer missing from `gates` (it did not run: an `If` branch the batch did not take)."""
    config = config or StatsConfig()
    batch = batch or next(len(trace) for by_gate in gates.values() for trace in by_gate.values())
    columns = []
    for layer in layers:
        for gate in gate_order(layer):  # the operator's order, whatever order the manifest's dict is in
            names = _gate_features(layer, gate)
            if layer.name not in gates:
                columns += [np.full(batch, np.nan, np.float32)] * len(names)
                continue
            family = gate_family(layer, gate)
            columns += _one_gate(gates[layer.name][gate], family, names, config)
    return np.stack(columns, axis=1).astype(np.float32)


def features_from_passes(passes: dict, layers: list[Layer], batch: int) -> np.ndarray:
    """`window_features`, assembled from the features replay's fused pass computed per layer ×
    gate (`passes`: (layer, gate) → `fused_pass.GatePass`; a layer missing did not run)."""
    columns = []
    for layer in layers:
        for gate in gate_order(layer):
            names = _gate_features(layer, gate)
            if (layer.name, gate) not in passes:
                columns.append(np.full((batch, len(names)), np.nan))
                continue
            features = passes[(layer.name, gate)].features
            columns.append(features[:, [FEATURES.index(name) for name in names]])
    return np.concatenate(columns, axis=1).astype(np.float32) if columns else np.empty((batch, 0), np.float32)


def _robust_scale(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and scale per feature: IQR/1.349 (a normal's std), else std, else 1 for constant features.

    A feature is NaN for windows where its layer did not run (an `If` branch not taken); it is
    scaled over the windows that ran it, and standardised to 0 (typical) where it did not run.
    """
    missing = np.isnan(reference)
    if missing.any():
        reference = np.where(missing, np.nanmedian(np.where(missing.all(axis=0), 0, reference), axis=0), reference)
    median = np.median(reference, axis=0).astype(np.float64)
    q25, q75 = np.percentile(reference, [25, 75], axis=0).astype(np.float64)
    scale = (q75 - q25) / 1.349
    fallback = reference.std(axis=0, dtype=np.float64)
    scale = np.where(scale > 1e-12, scale, np.where(fallback > 1e-12, fallback, 1.0))
    return median, scale


def score_windows(features: pd.DataFrame, reference: pd.DataFrame | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per window: window, anomaly_score (higher = more anomalous), rank (1 = most), features.

    `features` has a `window` column and one column per feature; `reference` the same columns
    (default: `features` itself).
    """
    names = [name for name in features.columns if name != "window"]
    ref = features if reference is None else reference
    reference_values = ref[names].to_numpy(np.float32)
    median, scale = _robust_scale(reference_values)

    median, scale = median.astype(np.float32), scale.astype(np.float32)

    def standardise(values: np.ndarray) -> np.ndarray:
        z = values - median  # a new float32 array; the rest happens in place
        z /= scale
        np.nan_to_num(z, copy=False, nan=0.0)  # a layer that did not run for a window looks typical there
        return np.clip(z, -_Z_CLIP, _Z_CLIP, out=z)

    forest = IsolationForest(n_estimators=_TREES, random_state=seed, n_jobs=1)
    forest.fit(standardise(reference_values))
    values = features[names].to_numpy(np.float32)
    scores = np.concatenate(
        [
            -forest.score_samples(standardise(values[start : start + _SCORE_CHUNK]))
            for start in range(0, len(values), _SCORE_CHUNK)
        ]
        or [np.zeros(0)]
    )
    order = np.lexsort((features["window"].to_numpy(), -scores))  # ties: lower window index first
    rank = np.empty(len(scores), np.int64)
    rank[order] = np.arange(1, len(scores) + 1)
    frame = pd.DataFrame({"window": features["window"].to_numpy(np.int64), "anomaly_score": scores, "rank": rank})
    return pd.concat([frame, features[names].reset_index(drop=True).astype(np.float32)], axis=1)


def flag_threshold(scores: np.ndarray) -> float:
    """Scores above this are flagged: median + 3 robust standard deviations (IQR / 1.349) of the scores."""
    q25, median, q75 = np.percentile(np.asarray(scores, np.float64), [25, 50, 75])
    return float(median + 3 * (q75 - q25) / 1.349)


def flagged(scores: np.ndarray) -> np.ndarray:
    """Which windows are flagged anomalous, the one definition every page, diff and message uses:
    a score above `flag_threshold` of the run's own scores."""
    scores = np.asarray(scores, np.float64)
    return scores > flag_threshold(scores) if scores.size else np.zeros(0, bool)


def typical_from_timestep_stats(timestep_stats: pd.DataFrame) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per layer and gate, the per-step mean and spread (IQR / 1.349) over all windows and units."""
    typical: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (layer, gate), rows in timestep_stats.groupby(["layer", "gate"], sort=False):
        spread = (rows["p75"] - rows["p25"]).to_numpy(np.float64) / 1.349
        typical.setdefault(layer, {})[gate] = (rows["mean"].to_numpy(np.float64), spread)
    return typical


def explain_window(
    window_gates: dict[str, dict[str, np.ndarray]], typical: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
) -> pd.DataFrame:
    """Where one window strays: per layer, gate and step, its unit-mean value beside the typical one.

    `window_gates[layer][gate]` is the window's trace [T, D, H]; `typical[layer][gate]` the
    per-step mean and spread over all windows and units. `deviation` is the root mean square over
    units of (value - typical mean) / typical spread: about 1 where the window behaves typically.
    """
    rows = []
    for layer, gates in window_gates.items():
        for gate, trace in gates.items():
            mean, spread = typical[layer][gate]
            steps = len(trace)
            values = trace.reshape(steps, -1).astype(np.float64)
            spread = np.maximum(spread[:steps], 1e-3)
            deviation = np.sqrt((((values - mean[:steps, None]) / spread[:, None]) ** 2).mean(axis=1))
            rows.append(
                pd.DataFrame(
                    {
                        "layer": layer,
                        "gate": gate,
                        "t": np.arange(steps, dtype=np.int64),
                        "value": values.mean(axis=1),
                        "typical": mean[:steps],
                        "deviation": deviation,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)

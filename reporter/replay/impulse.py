"""Impulse responses: how long a perturbation of the input stays visible in the state and output.

Replay a sample of windows twice: as they are, and with a unit impulse added to one input feature
at one step (for token models: the token at that step substituted by another). The difference
between the two runs, per layer's hidden state (and LSTM cell state) and per model output, at
each lag after the impulse, is the response; its decay is the model's memory retention, measured
rather than inferred from gate means (`stats.memory_horizon` gives the inferred one):

    response(lag) = mean over windows of the RMS over units of |state'(step + lag) - state(step + lag)|

For a reverse-direction layer the impulse travels backwards, so its lags count steps before the
impulse. `impulse_summary` reads peak, half-life (steps from the peak until the response has
halved), the time constant of an exponential fitted to the decay, the contribution ratio (the
share of the total squared response within the first `RECENT` lags: near 1 for a model that
forgets within them) and the oscillation (zero crossings per step of the signed response).

The RMS response has no sign, so each curve also keeps a signed one: the difference projected on
its own direction at the impulse step, per window, scaled like the RMS (equal to it at lag 0):

    signed(lag) = mean over windows of <d(step + lag), d(step) / |d(step)|> / sqrt(units)

A state that swings back past where it started crosses zero; one that decays does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from reporter.layers import Layer, direction_names

__all__ = [
    "IMPULSE_COLUMNS", "RECENT", "contribution_ratio", "impulse_outputs", "impulse_response", "impulse_summary",
    "oscillation",
]  # fmt: skip

IMPULSE_COLUMNS = (
    "target", "kind", "perturbation", "feature", "direction", "lag", "response", "normalised", "signed",
)  # fmt: skip
RECENT = 20  # lags whose share of the squared response is the contribution ratio
MAX_FEATURES = 16  # perturbed features by default: the most variable ones, when a model has more
_STATE_GATES = {"h": "hidden", "c": "cell"}


def _rms_by_step(difference: np.ndarray) -> np.ndarray:
    """[B, T, ...] → [T]: RMS over everything but batch and time, then mean over the batch."""
    flat = difference.reshape(difference.shape[0], difference.shape[1], -1).astype(np.float64)
    return np.sqrt((flat**2).mean(axis=2)).mean(axis=0)


def _signed_by_step(difference: np.ndarray, step: int) -> np.ndarray:
    """[B, T, ...] → [T]: each window's difference projected on its direction at `step`, over sqrt(units)."""
    flat = difference.reshape(difference.shape[0], difference.shape[1], -1).astype(np.float64)
    start = flat[:, step]
    norm = np.linalg.norm(start, axis=1, keepdims=True)
    direction = np.divide(start, norm, out=np.zeros_like(start), where=norm > 0)
    return np.einsum("btn,bn->bt", flat, direction).mean(axis=0) / np.sqrt(flat.shape[2])


def impulse_outputs(layers: list[Layer], output_names: Sequence[str]) -> list[str]:
    """The graph outputs an impulse response reads: every layer's states and the model's outputs."""
    return [layer.outputs[gate] for layer in layers for gate in _STATE_GATES if gate in layer.outputs] + list(
        output_names
    )


def _curves(
    base: dict[str, np.ndarray],
    pushed: dict[str, np.ndarray],
    layers: list[Layer],
    output_names: Sequence[str],
    step: int,
    steps: int,
    batch: int,
) -> list[tuple[str, str, str, np.ndarray, np.ndarray]]:
    """(target, kind, direction, response by lag, signed response by lag) for every state and
    time-indexed output."""
    curves = []
    for layer in layers:
        for gate, kind in _STATE_GATES.items():
            name = layer.outputs.get(gate)
            if name is None or base[name].shape[0] == 0 or pushed[name].shape != base[name].shape:
                continue  # no such state, or the layer did not run on both (an If branch)
            difference = pushed[name] - base[name]  # [B, T, D, H]
            for d, direction in enumerate(direction_names(layer)):
                by_step = _rms_by_step(difference[:, :, d])
                signed = _signed_by_step(difference[:, :, d], step)
                if direction == "forward":
                    curves.append((f"{layer.name}/{gate}", kind, direction, by_step[step:], signed[step:]))
                else:
                    curves.append(
                        (f"{layer.name}/{gate}", kind, direction, by_step[: step + 1][::-1], signed[: step + 1][::-1])
                    )
    for name in output_names:
        if base[name].ndim >= 2 and base[name].shape[:2] == (batch, steps):  # batch-major, with a time axis
            difference = pushed[name] - base[name]
            curves.append(
                (
                    f"output:{name}",
                    "output",
                    "forward",
                    _rms_by_step(difference)[step:],
                    _signed_by_step(difference, step)[step:],
                )
            )
    return curves


def _perturbations(
    windows: np.ndarray, step: int, features: Sequence[int] | None, magnitude: float, vocab: int | None, seed: int
):
    """Yield (label, feature, perturbed windows): one per input feature, or one token substitution."""
    if windows.dtype.kind in "iu":  # token ids: substitute the token at `step` by a different one
        rng = np.random.default_rng(seed)
        high = vocab if vocab else int(windows.max()) + 1
        pushed = windows.copy()
        shift = rng.integers(1, max(2, high), size=len(windows))
        pushed[:, step] = (windows[:, step] + shift) % max(2, high)
        yield "token substitution", -1, pushed
        return
    if features is None:
        spread = windows.reshape(-1, windows.shape[2]).std(axis=0)
        features = sorted(np.argsort(-spread, kind="stable")[:MAX_FEATURES].tolist())
    for feature in features:
        pushed = windows.copy()
        pushed[:, step, feature] += magnitude
        yield f"impulse {magnitude:+g}", int(feature), pushed


def impulse_response(
    run: Callable[[np.ndarray, slice], dict[str, np.ndarray]],
    windows: np.ndarray,
    layers: list[Layer],
    output_names: Sequence[str],
    *,
    step: int | None = None,
    features: Sequence[int] | None = None,
    magnitude: float = 1.0,
    vocab: int | None = None,
    seed: int = 0,
    chunk: int | None = None,
) -> pd.DataFrame:
    """Response curves, one row per target × perturbation × direction × lag (columns: IMPULSE_COLUMNS).

    `run(windows, rows)` returns every graph output of the exposed model for `windows`, which are
    `windows[rows]` of the ones given here; the impulse goes in at `step` (default: a quarter into
    the window, leaving three quarters to watch it decay). Windows are run `chunk` at a time
    (default: all at once): each curve is a mean over windows, so chunks add up to the same curve
    while only one chunk's outputs are held.
    """
    steps = windows.shape[1]
    step = steps // 4 if step is None else step
    if not 0 <= step < steps:
        raise ValueError(f"impulse step {step} is outside windows of {steps} steps")
    chunk = chunk or len(windows)
    perturbations = list(_perturbations(windows, step, features, magnitude, vocab, seed))
    sums: dict[tuple, np.ndarray] = {}
    for start in range(0, len(windows), chunk):
        rows = slice(start, min(start + chunk, len(windows)))
        count = rows.stop - rows.start
        base = run(windows[rows], rows)
        for label, feature, pushed in perturbations:
            curves = _curves(base, run(pushed[rows], rows), layers, output_names, step, steps, count)
            for target, kind, direction, curve, signed in curves:
                key = (label, feature, target, kind, direction)
                sums[key] = sums.get(key, 0.0) + np.stack([curve, signed]) * count
    rows = []
    for (label, feature, target, kind, direction), total in sums.items():
        curve, signed = total / len(windows)
        peak = curve.max()
        rows.append(
            pd.DataFrame(
                {
                    "target": target,
                    "kind": kind,
                    "perturbation": label,
                    "feature": feature,
                    "direction": direction,
                    "lag": np.arange(len(curve), dtype=np.int64),
                    "response": curve,
                    "normalised": curve / peak if peak > 0 else np.zeros_like(curve),
                    "signed": signed,
                }
            )
        )
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in IMPULSE_COLUMNS})
    frame = pd.concat(rows, ignore_index=True)
    return frame.astype({"feature": np.int64, "response": np.float64, "normalised": np.float64, "signed": np.float64})


def _half_life(lags: np.ndarray, response: np.ndarray) -> float:
    """Steps from the peak until the response first falls to half the peak (interpolated); NaN if never."""
    top = int(np.argmax(response))
    half = response[top] / 2
    below = np.flatnonzero(response[top:] <= half)
    if response[top] <= 0 or not len(below):
        return float("nan")
    j = top + int(below[0])
    before, after = response[j - 1], response[j]
    fraction = (before - half) / (before - after) if before != after else 0.0
    return float(lags[j - 1] + fraction - lags[top])


def _tau_fit(lags: np.ndarray, response: np.ndarray) -> float:
    """Time constant of an exponential fitted (least squares on the log) from the peak on."""
    top = int(np.argmax(response))
    tail = response[top:]
    keep = tail > tail[0] * 1e-4
    if tail[0] <= 0 or keep.sum() < 3:
        return float("nan")
    slope = np.polyfit(lags[top:][keep].astype(np.float64), np.log(tail[keep]), 1)[0]
    return float(-1.0 / slope) if slope < 0 else float("inf")


def contribution_ratio(response: np.ndarray, recent: int = RECENT) -> float:
    """Share of the total squared response within the first `recent` lags (NaN for no response)."""
    total = float(np.sum(np.square(response, dtype=np.float64)))
    return float(np.sum(np.square(response[:recent], dtype=np.float64)) / total) if total > 0 else float("nan")


def oscillation(signed: np.ndarray, floor: float = 1e-3) -> float:
    """Zero crossings per step of a signed response, ignoring values within `floor` × its peak of
    zero (so rounding noise after the response has died out is no crossing)."""
    peak = float(np.max(np.abs(signed))) if len(signed) else 0.0
    if peak <= 0 or len(signed) < 2:
        return float("nan")
    signs = np.sign(signed[np.abs(signed) > floor * peak])
    return float(np.count_nonzero(signs[1:] != signs[:-1]) / (len(signed) - 1))


def impulse_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per target × perturbation × direction: peak, peak_lag, half_life and tau_fit (in steps), the
    contribution ratio and the oscillation (NaN for runs made before the signed response was kept)."""
    keys = ["target", "kind", "perturbation", "feature", "direction"]
    rows = []
    for key, curve in frame.groupby(keys, sort=False):
        lags, response = curve["lag"].to_numpy(), curve["response"].to_numpy()
        rows.append(
            {
                **dict(zip(keys, key)),
                "peak": float(response.max()),
                "peak_lag": int(lags[np.argmax(response)]),
                "half_life": _half_life(lags, response),
                "tau_fit": _tau_fit(lags, response),
                "contribution": contribution_ratio(response),
                "oscillation": oscillation(curve["signed"].to_numpy()) if "signed" in curve else float("nan"),
            }
        )
    columns = [*keys, "peak", "peak_lag", "half_life", "tau_fit", "contribution", "oscillation"]
    return pd.DataFrame(rows, columns=columns)

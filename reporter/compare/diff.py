"""Compare two runs (A: the baseline, B: the candidate) and judge the change against thresholds.

What is compared, and when it is comparable:

- per layer × gate (layers matched by name and kind): distribution shift from the fixed-bin
  histograms (Wasserstein-1 in gate-value units, and Kolmogorov-Smirnov), change in the left- and
  right-saturated fractions and in the mean;
- memory: each layer's median half-life from its keep gate, and the measured impulse-response
  half-lives;
- representation: linear CKA per layer on the sampled windows both runs traced (same windows
  file), and, when the layer's shape matches, units paired by correlation (Hungarian) and
  compared pair by pair;
- anomaly scores, each run's windows as its own model scores them: the share flagged, the shift of
  the score distribution, and (same windows) the windows whose rank moved most;
- model outputs on the same windows: drift, as RMS(B − A) ÷ RMS(A), per output.

Whatever is not comparable is said in `notes`, never silently skipped. `check` turns the
headline numbers into verdicts against thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from reporter.compare.thresholds import DEFAULT_THRESHOLDS
from reporter.compare.unit_match import linear_cka, match_units
from reporter.layers import KEEP_GATE, gate_order
from reporter.replay.anomaly import flagged
from reporter.replay.impulse import impulse_summary
from reporter.replay.stats import gate_histogram
from reporter.runstore import Run

__all__ = ["RunDiff", "Verdict", "check", "diff_runs", "gate_distance", "weighted_mean"]

MOVED_WINDOWS = 10


@dataclass
class RunDiff:
    """Everything `diff` found; each frame empty when its comparison was not possible (see notes)."""

    a: Run
    b: Run
    gates: pd.DataFrame
    horizon: pd.DataFrame
    impulse: pd.DataFrame
    cka: pd.DataFrame
    units: pd.DataFrame
    anomaly: dict
    moved: pd.DataFrame
    outputs: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def headline(self) -> dict[str, float | None]:
        """The numbers `check` judges (None: not comparable between these runs)."""

        def largest(frame: pd.DataFrame, columns: list[str]) -> float | None:
            values = frame[columns].abs().to_numpy().ravel() if not frame.empty else np.empty(0)
            values = values[~np.isnan(values)]  # a gate no step reached has no distribution to compare
            return float(values.max()) if values.size else None

        return {
            "saturation_delta": largest(self.gates, ["d_frac_low", "d_frac_high"]),
            "wasserstein": largest(self.gates, ["wasserstein"]),
            "anomaly_rate_delta": self.anomaly.get("rate_delta"),
            "output_drift": largest(self.outputs, ["relative_drift"]),
        }


def _histogram(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A layer × gate's histogram over all units, under/overflow as mass at the range's edges."""
    centres, counts, under, over = gate_histogram(rows)
    lo, hi = float(rows["hist_lo"].iloc[0]), float(rows["hist_hi"].iloc[0])
    return np.concatenate([[lo], centres, [hi]]), np.concatenate([[under], counts, [over]])


def weighted_mean(rows: pd.DataFrame, column: str) -> float:
    """A column of `gate_stats` rows averaged over every value they counted (NaN when none)."""
    return float(np.average(rows[column], weights=rows["count"])) if rows["count"].sum() else float("nan")


def _shared_layers(a: Run, b: Run, notes: list[str]) -> list[tuple[object, object]]:
    """Layers present in both runs with the same name and kind; the rest named in notes."""
    by_name = {layer.name: layer for layer in b.layers}
    pairs = []
    for layer in a.layers:
        other = by_name.get(layer.name)
        if other is None:
            notes.append(f"layer {layer.name} is only in {a.name}: not compared")
        elif other.kind != layer.kind:
            notes.append(f"layer {layer.name} is {layer.kind} in {a.name} but {other.kind} in {b.name}: not compared")
        else:
            pairs.append((layer, other))
    for name in by_name.keys() - {layer.name for layer in a.layers}:
        notes.append(f"layer {name} is only in {b.name}: not compared")
    return pairs


def gate_distance(rows_a: pd.DataFrame, rows_b: pd.DataFrame) -> tuple[float, float]:
    """Wasserstein-1 (in gate-value units) and Kolmogorov-Smirnov between one layer × gate's value
    distributions in two runs, from their `gate_stats` rows (NaN where either saw no value)."""
    (xa, wa), (xb, wb) = _histogram(rows_a), _histogram(rows_b)
    same_bins = len(xa) == len(xb) and np.allclose(xa, xb)
    w1 = scipy_stats.wasserstein_distance(xa, xb, wa, wb) if wa.sum() and wb.sum() else float("nan")
    ks = float(np.abs(np.cumsum(wa) / wa.sum() - np.cumsum(wb) / wb.sum()).max()) if same_bins else float("nan")
    return float(w1), ks


def _gate_shift(a: Run, b: Run, pairs) -> pd.DataFrame:
    rows = []
    for layer, other in pairs:
        for gate in gate_order(layer):
            if gate not in other.outputs:
                continue
            ra = a.gate_stats[(a.gate_stats["layer"] == layer.name) & (a.gate_stats["gate"] == gate)]
            rb = b.gate_stats[(b.gate_stats["layer"] == layer.name) & (b.gate_stats["gate"] == gate)]
            w1, ks = gate_distance(ra, rb)
            row = {"layer": layer.name, "gate": gate, "wasserstein": w1, "ks": ks}
            for column in ("mean", "frac_low", "frac_high"):
                row[f"{column}_a"], row[f"{column}_b"] = weighted_mean(ra, column), weighted_mean(rb, column)
                row[f"d_{column}"] = row[f"{column}_b"] - row[f"{column}_a"]
            rows.append(row)
    return pd.DataFrame(rows)


def _horizon(a: Run, b: Run, pairs) -> pd.DataFrame:
    rows = []
    for layer, _ in pairs:
        gate = KEEP_GATE.get(layer.kind)
        if gate is None:
            continue
        half = [
            run.gate_stats[(run.gate_stats["layer"] == layer.name) & (run.gate_stats["gate"] == gate)]["half_life"]
            for run in (a, b)
        ]
        rows.append(
            {
                "layer": layer.name,
                "gate": gate,
                "half_life_a": float(half[0].median()),
                "half_life_b": float(half[1].median()),
            }
        )
    frame = pd.DataFrame(rows)
    return frame.assign(delta=frame["half_life_b"] - frame["half_life_a"]) if rows else frame


def _impulse(a: Run, b: Run, pairs) -> pd.DataFrame:
    """Impulse half-lives of the states of matched layers, and of the model outputs both runs have."""
    if a.impulse.empty or b.impulse.empty:
        return pd.DataFrame()
    keys = ["target", "kind", "direction"]
    matched = {layer.name for layer, _ in pairs}
    sides = [impulse_summary(run.impulse).groupby(keys, sort=False)["half_life"].mean() for run in (a, b)]
    frame = pd.concat(sides, axis=1, keys=["half_life_a", "half_life_b"], join="inner").reset_index()
    comparable = [target.startswith("output:") or target.rsplit("/", 1)[0] in matched for target in frame["target"]]
    frame = frame[comparable].reset_index(drop=True)
    return frame.assign(delta=frame["half_life_b"] - frame["half_life_a"])


def _shared_windows(a: Run, b: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows traced in both runs: (indices, their positions in A's traces, in B's)."""
    wa, wb = np.asarray(a.traces.get("window", [])), np.asarray(b.traces.get("window", []))
    shared, pa, pb = np.intersect1d(wa, wb, return_indices=True)
    return shared, pa, pb


def _representation(a: Run, b: Run, pairs, same_windows: bool, notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    shared, pa, pb = _shared_windows(a, b)
    if not same_windows or len(shared) < 2:
        notes.append("CKA and unit matching need both runs to trace the same windows of the same file: not compared")
        return pd.DataFrame(), pd.DataFrame()
    cka_rows, unit_rows = [], []
    for layer, other in pairs:
        if f"{layer.name}/h" not in a.traces or f"{other.name}/h" not in b.traces:
            continue  # a generic layer (no h), or one that did not run on the traced windows (an If branch)
        xa = a.traces[f"{layer.name}/h"][pa].astype(np.float64)
        xb = b.traces[f"{other.name}/h"][pb].astype(np.float64)
        flat_a, flat_b = xa.reshape(-1, xa.shape[2] * xa.shape[3]), xb.reshape(-1, xb.shape[2] * xb.shape[3])
        cka_rows.append({"layer": layer.name, "cka": linear_cka(flat_a, flat_b), "windows": int(len(shared))})
        if xa.shape[2:] != xb.shape[2:]:
            notes.append(
                f"layer {layer.name} has {xa.shape[2:]} (directions, units) in {a.name} but {xb.shape[2:]} "
                f"in {b.name}: units not matched"
            )
            continue
        unit_rows.append(_matched_units(a, b, layer, flat_a, flat_b, xa.shape[3]))
    return pd.DataFrame(cka_rows), (pd.concat(unit_rows, ignore_index=True) if unit_rows else pd.DataFrame())


def _matched_units(a: Run, b: Run, layer, flat_a, flat_b, hidden: int) -> pd.DataFrame:
    rows_a, rows_b, corr = match_units(flat_a, flat_b)
    frame = pd.DataFrame(
        {
            "layer": layer.name,
            "direction_a": rows_a // hidden,
            "unit_a": rows_a % hidden,
            "direction_b": rows_b // hidden,
            "unit_b": rows_b % hidden,
            "correlation": corr,
        }
    )
    for gate in layer.outputs:
        for side, run, directions, units in (
            ("a", a, frame["direction_a"], frame["unit_a"]),
            ("b", b, frame["direction_b"], frame["unit_b"]),
        ):
            stats = run.gate_stats[(run.gate_stats["layer"] == layer.name) & (run.gate_stats["gate"] == gate)]
            stats = stats.set_index(["direction", "unit"])
            index = pd.MultiIndex.from_arrays([directions, units])
            frame[f"{gate}_mean_{side}"] = stats["mean"].reindex(index).to_numpy()
            if gate == KEEP_GATE.get(layer.kind):
                frame[f"half_life_{side}"] = stats["half_life"].reindex(index).to_numpy()
    return frame


def _anomaly(a: Run, b: Run, same_windows: bool) -> tuple[dict, pd.DataFrame]:
    """Each run's windows as its own model scores them: flagged rates, score shift, ranks that moved."""
    scores_a, scores_b = (run.window_scores["anomaly_score"].to_numpy() for run in (a, b))
    rate_a, rate_b = float(flagged(scores_a).mean()), float(flagged(scores_b).mean())
    summary = {
        "rate_a": rate_a,
        "rate_b": rate_b,
        "rate_delta": rate_b - rate_a,
        "wasserstein": float(scipy_stats.wasserstein_distance(scores_a, scores_b)),
        "ks": float(scipy_stats.ks_2samp(scores_a, scores_b).statistic),
    }
    moved = pd.DataFrame()
    if same_windows:
        joined = a.window_scores[["window", "rank"]].merge(
            b.window_scores[["window", "rank"]], on="window", suffixes=("_a", "_b")
        )
        joined["moved"] = joined["rank_b"] - joined["rank_a"]
        order = np.lexsort((joined["window"].to_numpy(), -joined["moved"].abs().to_numpy()))
        moved = joined.iloc[order[:MOVED_WINDOWS]].reset_index(drop=True)
    return summary, moved


def _outputs(a: Run, b: Run, same_windows: bool, notes: list[str]) -> pd.DataFrame:
    if not same_windows:
        notes.append("the runs replayed different windows: model outputs not compared")
        return pd.DataFrame()
    rows = []
    for name, values_a in a.outputs.items():
        values_b = b.outputs.get(name)
        if values_b is None or values_b.shape != values_a.shape:
            notes.append(f"output {name} is missing or shaped differently in {b.name}: not compared")
            continue
        delta = values_b.astype(np.float64) - values_a
        scale = float(np.sqrt(np.mean(values_a.astype(np.float64) ** 2)))
        rms = float(np.sqrt(np.mean(delta**2)))
        rows.append(
            {
                "output": name,
                "rms_a": scale,
                "rms_difference": rms,
                "max_abs_difference": float(np.abs(delta).max()),
                "relative_drift": rms / scale if scale > 0 else (0.0 if rms == 0 else float("inf")),
            }
        )
    return pd.DataFrame(rows)


def diff_runs(a: Run, b: Run) -> RunDiff:
    """Compare run B with the baseline run A."""
    notes: list[str] = []
    same_windows = a.meta["windows"]["sha256"] == b.meta["windows"]["sha256"] and a.window_scores["window"].equals(
        b.window_scores["window"]
    )
    pairs = _shared_layers(a, b, notes)
    cka, units = _representation(a, b, pairs, same_windows, notes)
    anomaly, moved = _anomaly(a, b, same_windows)
    return RunDiff(
        a,
        b,
        _gate_shift(a, b, pairs),
        _horizon(a, b, pairs),
        _impulse(a, b, pairs),
        cka,
        units,
        anomaly,
        moved,
        _outputs(a, b, same_windows, notes),
        notes,
    )


@dataclass(frozen=True)
class Verdict:
    """One threshold judged: the measured value (None: not comparable) and whether it holds."""

    key: str
    value: float | None
    limit: float

    @property
    def passed(self) -> bool:
        return self.value is None or abs(self.value) <= self.limit


def check(diff: RunDiff, thresholds: dict[str, float]) -> list[Verdict]:
    """Judge the diff's headline numbers against thresholds, in DEFAULT_THRESHOLDS order."""
    headline = diff.headline()
    return [Verdict(key, headline[key], thresholds[key]) for key in DEFAULT_THRESHOLDS]

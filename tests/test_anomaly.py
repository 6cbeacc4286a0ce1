"""Anomaly scores: features equal their definitions, planted outliers rank first, and on the
forecaster's labelled windows the gate-based score finds the anomalies (AUROC ≥ 0.9) better than
the same detector on the raw inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from reporter.layers import Layer
from reporter.pipeline.model_source import ModelRecipe, exposed_model
from reporter.replay.anomaly import explain_window, feature_names, score_windows, window_features
from reporter.replay.runner import Replayer
from reporter.replay.windows import open_windows_source

ROOT = Path(__file__).resolve().parent.parent
GRU = Layer("enc", "GRU", 2, 3, {"z": "enc/z", "n": "enc/n"}, direction="bidirectional")


def _traces(batch=5, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    z = 1 / (1 + np.exp(-3 * rng.standard_normal((batch, steps, 2, 3))))
    n = np.tanh(2 * rng.standard_normal((batch, steps, 2, 3)))
    return {"enc": {"z": z.astype(np.float32), "n": n.astype(np.float32)}}


def test_features_match_their_definitions_window_by_window():
    gates = _traces()
    features = pd.DataFrame(window_features(gates, [GRU]), columns=feature_names([GRU]))
    assert "enc/z/zero_crossings" not in features and "enc/n/zero_crossings" in features
    for b in range(5):
        for gate in ("z", "n"):
            v = gates["enc"][gate][b].reshape(6, 6).astype(np.float64)  # [T, D*H]
            low, high = (0.1, 0.9) if gate == "z" else (-0.9, 0.9)
            expected = {
                "mean": v.mean(),
                "std": v.std(),
                "frac_low": (v < low).mean(),
                "frac_high": (v > high).mean(),
                "step_change": np.abs(np.diff(v, axis=0)).mean(),
                "peak_change": np.mean([np.abs(np.diff(v[:, u])).max() for u in range(6)]),
                "drift": v.mean(axis=1).std(),
            }
            if gate == "n":
                expected["zero_crossings"] = np.mean(
                    [np.sign(v[t + 1, u]) != np.sign(v[t, u]) for t in range(5) for u in range(6)]
                )
            for name, value in expected.items():
                assert features.loc[b, f"enc/{gate}/{name}"] == pytest.approx(value, abs=1e-5), (b, gate, name)


def _frame(values: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(values, columns=[f"f{i}" for i in range(values.shape[1])])
    frame.insert(0, "window", np.arange(len(values)) * 10)
    return frame


def test_planted_outliers_rank_first_and_ranks_are_a_permutation():
    rng = np.random.default_rng(3)
    values = rng.standard_normal((400, 6))
    values[[17, 230]] += 8.0
    scores = score_windows(_frame(values))
    assert sorted(scores["rank"]) == list(range(1, 401))
    assert set(scores.nsmallest(2, "rank")["window"]) == {170, 2300}
    assert list(scores.columns[:3]) == ["window", "anomaly_score", "rank"] and "f5" in scores
    assert scores.equals(score_windows(_frame(values)))  # deterministic


def test_reference_scoring_flags_what_the_reference_never_showed():
    rng = np.random.default_rng(4)
    trusted = _frame(rng.standard_normal((300, 4)))
    shifted = rng.standard_normal((300, 4))
    shifted[:, 2] += 6.0  # every new window is off in one feature: against itself nothing stands out
    against_reference = score_windows(_frame(shifted), reference=trusted)["anomaly_score"]
    against_itself = score_windows(_frame(shifted))["anomaly_score"]
    typical_reference = score_windows(trusted, reference=trusted)["anomaly_score"]
    assert against_reference.median() > typical_reference.quantile(0.95)
    assert against_itself.median() < against_reference.median()


def test_explanation_points_at_the_disturbed_gate_and_step():
    rng = np.random.default_rng(5)
    base = 0.5 + 0.05 * rng.standard_normal((40, 10, 1, 4))
    typical = {
        "l": {
            "f": (base.mean(axis=(0, 2, 3)), base.std(axis=(0, 2, 3))),
            "i": (base.mean(axis=(0, 2, 3)), base.std(axis=(0, 2, 3))),
        }
    }
    window = {"l": {"f": base[0].copy(), "i": base[1].copy()}}
    window["l"]["f"][7] += 0.4
    explained = explain_window(window, typical)
    top = explained.loc[explained["deviation"].idxmax()]
    assert (top["layer"], top["gate"], top["t"]) == ("l", "f", 7)
    assert explained[explained["t"] != 7]["deviation"].max() < 4 < top["deviation"]
    assert len(explained) == 2 * 10


def input_space_scores(windows: np.ndarray) -> np.ndarray:
    """A plain input-space detector to compare with: the same scoring on the raw window values."""
    flat = windows.reshape(len(windows), -1)
    features = pd.DataFrame(flat, columns=[f"x{k}" for k in range(flat.shape[1])])
    return score_windows(features.assign(window=np.arange(len(windows))))["anomaly_score"].to_numpy()


def test_forecaster_anomalies_are_found_from_gates_better_than_from_raw_inputs():
    windows = ROOT / "sample_models/forecaster/windows.npz"
    source = open_windows_source(windows)
    model = exposed_model(
        ModelRecipe(ROOT / "sample_models/forecaster/v1.pt", "sample_models.forecaster.model:build"), source
    )
    result = Replayer(model.exposed, model.layers, "cpu").replay(source, batch_size=500, progress=False)
    labels = np.load(windows)["label"]
    gate_auroc = roc_auc_score(labels, score_windows(result.features)["anomaly_score"])
    input_auroc = roc_auc_score(labels, input_space_scores(source.take(source.indices())))
    print(f"forecaster v1: gate-based AUROC {gate_auroc:.3f}, raw-input IsolationForest AUROC {input_auroc:.3f}")
    assert gate_auroc >= 0.9
    assert gate_auroc > input_auroc

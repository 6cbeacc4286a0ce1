"""The shipped sample models load, export and expose, and differ the way their training says."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from reporter.config import load_config
from reporter.pipeline.model_source import ModelRecipe, exposed_model
from reporter.replay.windows import open_windows_source
from tests.conftest import ROOT, SAMPLE_CONFIG

RUNS = {(run.model, run.version): run for run in load_config(SAMPLE_CONFIG).runs}


def exposed_sample(run):
    """A configured sample run's checkpoint, exported and exposed with its own windows as examples."""
    return exposed_model(ModelRecipe(run.checkpoint, run.factory, run.factory_kwargs), open_windows_source(run.windows))


def gates(run, gate: str, count: int = 64) -> list[np.ndarray]:
    """One gate of every layer of a configured run, on its first `count` windows."""
    source = exposed_sample(run)
    session = ort.InferenceSession(source.exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(run.windows)["x"][:count]
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    return [outputs[layer.outputs[gate]] for layer in source.layers if gate in layer.outputs]


@pytest.mark.parametrize("key", sorted(RUNS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_each_sample_run_exports_with_parity_and_exposes_every_layer(key):
    run = RUNS[key]
    source = exposed_sample(run)
    assert source.parity_max_abs is not None and source.parity_max_abs < 1e-4
    expected = {"forecaster": ("LSTM", 2, 1), "charlm": ("LSTM", 2, 1), "sensor_gru": ("GRU", None, 2)}[key[0]]
    kinds = {layer.kind for layer in source.layers}
    assert kinds == {expected[0]}
    if expected[1] is not None:
        assert len(source.layers) == expected[1]
    assert all(layer.directions == expected[2] for layer in source.layers)


def test_forecaster_v2_forgets_less_than_v1():
    v1 = np.mean([f.mean() for f in gates(RUNS["forecaster", "v1"], "f")])
    v2 = np.mean([f.mean() for f in gates(RUNS["forecaster", "v2"], "f")])
    assert v2 > v1 + 0.05, (v1, v2)


def test_forecaster_windows_carry_labelled_anomalies():
    data = np.load(RUNS["forecaster", "v1"].windows)
    x, label, kind = data["x"], data["label"], data["kind"]
    assert x.dtype == np.float32 and x.ndim == 3 and len(x) >= 1500
    assert 0.03 < label.mean() < 0.08
    assert set(kind[label == 1]) >= {"spike", "level_shift", "flatline"} and set(kind[label == 0]) == {"normal"}


def test_sample_models_stay_small():
    size = sum(
        p.stat().st_size for p in (ROOT / "sample_models").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert size < 10 * 2**20

"""The run directory: written atomically, read back equal, rewritten byte-identically, refused when bad."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import helper, numpy_helper

from reporter.errors import OutputError, RunError
from reporter.layers import Layer
from reporter.model.weights import layer_weights
from reporter.replay.stats import RunStats
from reporter.replay.unit_tracks import TrackConfig, UnitTracks
from reporter.runstore import LATER_TABLES, SCHEMA_VERSION, TABLES, Run

LAYER = Layer(
    name="rnn.l0",
    kind="GRU",
    directions=2,
    hidden_size=3,
    outputs={"z": "gr.z", "r": "gr.r", "n": "gr.n", "h": "gr.h"},
    node="GRU_0",
    direction="bidirectional",
    activations={"z": "Sigmoid", "r": "Sigmoid", "n": "Tanh", "h": "Tanh"},
)


def _run() -> Run:
    """A small run with every table and array filled from real accumulators."""
    rng = np.random.default_rng(0)
    stats = RunStats([LAYER])
    for gate in LAYER.outputs:
        stats.update(LAYER.name, gate, rng.random((5, 4, 2, 3), dtype=np.float32))
    frames = stats.to_frames()
    scores = pd.DataFrame(
        {
            "window": np.arange(5),
            "anomaly_score": rng.random(5),
            "rank": [3, 1, 5, 2, 4],
            "rnn.l0/z/mean": rng.random(5).astype(np.float32),
        }
    )
    explanations = pd.DataFrame(
        {"window": [1, 1], "layer": ["rnn.l0", "rnn.l0"], "gate": ["z", "n"], "t": [2, 3], "deviation": [3.5, 1.25]}
    )
    impulse = pd.DataFrame({"target": ["rnn.l0/h"] * 2, "lag": [0, 1], "response": [1.0, 0.5]})
    traces = {
        "window": np.array([0, 3]),
        "reason": np.array(["fixed", "anomalous"]),
        "rnn.l0/z": rng.random((2, 4, 2, 3)).astype(np.float16),
        "x": rng.random((2, 4, 6), dtype=np.float32),
    }
    meta = {
        "schema_version": SCHEMA_VERSION,
        "model": "sensor <b>",
        "version": "v1",
        "n_windows": 5,
        "export_parity_max_abs": 1.5e-7,
        "reference": None,
    }
    tracks = UnitTracks(
        [LAYER],
        [" ", "a", '"', "\n"],
        TrackConfig(k=2, before=2, after=1, share=0, lift=0, coverage=0, min_count=1, correlation=0),
    )
    h = rng.uniform(-1, 1, (5, 4, 2, 3)).astype(np.float32)
    tracks.fold(tracks.part({LAYER.name: {"h": h}}, np.arange(5), rng.integers(0, 4, (5, 4))))
    weights, maps = layer_weights(_gru_model(rng), [LAYER])
    return Run(
        meta,
        [LAYER],
        frames.gate_stats,
        frames.timestep_stats,
        scores,
        explanations,
        impulse,
        traces,
        {"logits": rng.random((5, 2), dtype=np.float32)},
        unit_extremes=tracks.extremes_frame(),
        unit_hypotheses=tracks.hypotheses_frame(),
        weights=weights,
        weight_maps=maps,
    )


def _gru_model(rng) -> onnx.ModelProto:
    """A one-node bidirectional GRU graph with LAYER's shape, its weights as initializers."""
    w = numpy_helper.from_array(rng.standard_normal((2, 9, 4)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((2, 9, 3)).astype(np.float32), "R")
    node = helper.make_node("GRU", ["x", "W", "R"], ["y"], name="GRU_0", hidden_size=3, direction="bidirectional")
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph([node], "gru", [x], [y], [w, r]))


def _files(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_run_round_trips_equal_and_rewrites_byte_identically(tmp_path):
    run = _run()
    run.save(tmp_path / "a")
    loaded = Run.load(tmp_path / "a")
    assert loaded.meta == run.meta and loaded.layers == run.layers
    assert len(run.unit_extremes) == 2 * 3 * 2 * 2 and len(run.unit_hypotheses)  # both unit tables are filled
    assert len(run.weights) == 2 * 3 * 2 and len(run.weight_maps) == 12  # directions × gates × (W, R)
    for table in (*TABLES, *LATER_TABLES):
        expected, got = getattr(run, table), getattr(loaded, table)
        assert list(got.columns) == list(expected.columns)
        for column in expected.columns:
            if expected[column].dtype == object:
                assert [np.asarray(v).tolist() for v in got[column]] == [
                    np.asarray(v).tolist() for v in expected[column]
                ]
            else:
                np.testing.assert_array_equal(got[column].to_numpy(), expected[column].to_numpy())
                assert got[column].dtype == expected[column].dtype
    for name, array in run.traces.items():
        np.testing.assert_array_equal(loaded.traces[name], array)
        assert loaded.traces[name].dtype == array.dtype
    np.testing.assert_array_equal(loaded.outputs["logits"], run.outputs["logits"])
    for name, array in run.weight_maps.items():
        np.testing.assert_array_equal(loaded.weight_maps[name], array)
    loaded.save(tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_saving_over_a_run_replaces_it_whole_and_a_failed_save_keeps_the_old_one(tmp_path, monkeypatch):
    run = _run()
    run.save(tmp_path / "run")
    before = _files(tmp_path / "run")
    broken = _run()
    broken.impulse = "not a table"  # fails after some files are already written
    with pytest.raises(AttributeError):  # pyarrow cannot read a string as a table
        broken.save(tmp_path / "run")
    assert _files(tmp_path / "run") == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind


def test_a_run_from_a_newer_schema_is_refused_with_the_upgrade_hint(tmp_path):
    run = _run()
    run.meta["schema_version"] = SCHEMA_VERSION + 1
    run.save(tmp_path / "run")
    with pytest.raises(RunError, match="newer than this Gate Reporter reads"):
        Run.load(tmp_path / "run")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "gate_stats.parquet").write_bytes(b"PAR1 not really"), "gate_stats.parquet: unreadable table"),
        (lambda d: (d / "traces.npz").unlink(), "traces.npz: unreadable arrays"),
        (lambda d: (d / "run.json").write_text("{"), "run.json: unreadable run metadata"),
        (lambda d: (d / "run.json").write_text(json.dumps({"model": "m"})), "no schema_version"),
        (lambda d: (d / "layers.json").write_text("[{}]"), "layers.json: unreadable layer manifest"),
    ],
)
def test_a_damaged_run_is_a_run_error_naming_the_file(tmp_path, damage, message):
    _run().save(tmp_path / "run")
    damage(tmp_path / "run")
    with pytest.raises(RunError, match=message):
        Run.load(tmp_path / "run")


def test_a_missing_run_directory_says_how_to_make_one(tmp_path):
    with pytest.raises(RunError, match="gate-report replay"):
        Run.load(tmp_path / "nothing")


def test_a_run_cannot_be_saved_over_a_file(tmp_path):
    (tmp_path / "run").write_text("mine")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        _run().save(tmp_path / "run")
    assert (tmp_path / "run").read_text() == "mine"


def test_written_folders_are_readable_by_others_like_any_new_folder(tmp_path):
    from reporter.atomic import staging_dir

    mask = os.umask(0o022)
    try:
        with staging_dir(tmp_path / "out") as staging:
            (staging / "index.html").write_text("ok")
    finally:
        os.umask(mask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755  # mkdtemp alone would leave it 0o700

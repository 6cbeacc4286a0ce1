"""What each unit tracks, on the sample runs and their pages: the extremes agree with the gate
statistics and the windows file, the layer page lists the descriptions the run holds, and a token
window's cell view carries its traces and the sampled windows' binarised h faithfully."""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np
import pandas as pd

from reporter.replay.windows import open_windows_source
from reporter.report.site import build_site
from reporter.vocab import token_text
from tests.conftest import ROOT


def _h_max(run, layer: str) -> pd.Series:
    rows = run.gate_stats[(run.gate_stats["layer"] == layer) & (run.gate_stats["gate"] == "h")]
    return rows.set_index(["direction", "unit"])[["max", "min"]]


def test_each_units_highest_and_lowest_peak_are_its_h_maximum_and_minimum_over_all_windows(sample_runs):
    for key in (("forecaster", "v1"), ("sensor_gru", "v1"), ("charlm", "v1")):
        run = sample_runs[key]
        extremes = run.unit_extremes
        assert len(extremes), key
        for layer in run.layers:
            bounds = _h_max(run, layer.name)
            first = extremes[(extremes["layer"] == layer.name) & (extremes["rank"] == 0)]
            for polarity, column in (("on", "max"), ("off", "min")):
                peaks = first[first["polarity"] == polarity].set_index(["direction", "unit"])["value"]
                assert len(peaks) == layer.hidden_size * layer.directions, (key, layer.name)
                np.testing.assert_allclose(peaks.sort_index(), bounds[column].sort_index(), rtol=0, atol=1e-6)


def test_a_token_units_contexts_are_the_windows_file_text_around_its_peak(sample_runs):
    run = sample_runs[("charlm", "v1")]
    tokens = np.load(ROOT / "sample_models" / "charlm" / "windows.npz")["x"]
    before, after = run.meta["unit_tracks"]["before"], run.meta["unit_tracks"]["after"]
    for row in run.unit_extremes.sample(50, random_state=0).itertuples():
        spots = np.arange(row.t - before, row.t + after + 1)
        expected = [int(tokens[row.window, s]) if 0 <= s < tokens.shape[1] else -1 for s in spots]
        assert list(row.context) == expected


def test_the_layer_page_lists_every_description_and_links_sampled_peaks(sample_runs, tmp_path):
    runs = [(sample_runs[("charlm", "v1")], None), (sample_runs[("forecaster", "v1")], None)]
    site = build_site(runs, tmp_path / "site", progress=lambda line: None)
    charlm = sample_runs[("charlm", "v1")]
    habits = charlm.unit_hypotheses
    assert len(habits), "the sample character model has units the checked habits describe"
    for layer in charlm.layers:
        window = int(charlm.traces["window"][0])
        page = (site / "runs" / "charlm-v1" / f"{layer.name}-w{window}.html").read_text(encoding="utf-8")
        section = page[page.index('id="unit-tracks"') :]
        strongest = habits[habits["layer"] == layer.name].groupby(["direction", "unit"]).head(2)
        for text in strongest["text"]:
            assert html.escape(text, quote=False) in section, text
        assert f"{len(strongest.groupby(['direction', 'unit']))} of {layer.hidden_size} units have one" in section
    forecaster = sample_runs[("forecaster", "v1")]
    sampled = {int(w) for w in forecaster.traces["window"]}
    layer = forecaster.layers[0]
    page = (site / "runs" / "forecaster-v1" / f"{layer.name}-w{min(sampled)}.html").read_text(encoding="utf-8")
    section = page[page.index('id="unit-tracks"') :]
    assert "<th>tracks</th>" not in section  # float windows have peaks but no text habits
    linked = {int(w) for w in re.findall(r'<a href="w(\d+)\.html">w\d+</a> t\d+', section)}
    listed = {int(w) for w in re.findall(r"w(\d+)</a> t\d+|<div class=\"peak\">w(\d+) t", section) for w in w if w}
    peaks = forecaster.unit_extremes
    shown = peaks[(peaks["layer"] == layer.name) & (peaks["rank"] < 3)]
    assert linked == set(shown["window"]) & sampled and listed == set(shown["window"])


def _decode(text: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def test_a_token_windows_cell_view_carries_its_traces_and_every_sampled_windows_bits(sample_runs, tmp_path):
    run = sample_runs[("charlm", "v1")]
    site = build_site([(run, None)], tmp_path / "site", progress=lambda line: None)
    on = run.meta["unit_tracks"]["on"]
    for position, window in enumerate(run.traces["window"][:3]):
        page = (site / "runs" / "charlm-v1" / f"w{window}.html").read_text(encoding="utf-8")
        data = json.loads(re.search(r'<script type="application/json" id="cell-data">(.*?)</script>', page, re.S)[1])
        assert data["window"] == window and data["cells"]["tokens"] == token_text(run.traces["x"][position], run.vocab)
        for layer, stored in zip(run.layers, data["cells"]["layers"]):
            assert stored["name"] == layer.name and list(stored["gates"]) == list(layer.outputs)
            for gate, coded in stored["gates"].items():
                trace = run.traces[f"{layer.name}/{gate}"][position].astype(np.float32).reshape(100, -1)
                values = _decode(coded["q"], np.int8).reshape(trace.shape) / 127 * coded["scale"]
                np.testing.assert_allclose(values, trace, atol=coded["scale"] / 254 + 1e-6)
        assert '<script src="similar.js"></script>' in page
        script = (site / "runs" / "charlm-v1" / "similar.js").read_text(encoding="utf-8")
        similar = json.loads(script.removeprefix("window.__similar = ").removesuffix(";\n"))
        assert [w["window"] for w in similar["windows"]] == [int(w) for w in run.traces["window"]]
        for other, stored in enumerate(similar["windows"]):
            for layer in run.layers:
                h = run.traces[f"{layer.name}/h"][other].astype(np.float32).reshape(100, -1)
                bits = np.unpackbits(
                    _decode(stored["bits"][layer.name], np.uint8).reshape(100, -1), axis=1, bitorder="little"
                )
                np.testing.assert_array_equal(bits[:, : h.shape[1]], h > on)
        assert len(page.encode()) < 2 * 1024 * 1024


def test_runs_replayed_in_shards_track_units_as_one_replay(sample_runs):
    """Replay's workers each track their batches; merged, they equal one worker's tracking."""
    from reporter.pipeline.model_source import ModelRecipe, exposed_model
    from reporter.replay.runner import Replayer

    run = sample_runs[("charlm", "v1")]
    source = open_windows_source(ROOT / "sample_models" / "charlm" / "windows.npz")
    kwargs = {"vocab": 98, "embedding": 32, "hidden": 128, "layers": 2}
    recipe = ModelRecipe(ROOT / "sample_models" / "charlm" / "v1.pt", "sample_models.charlm.model:build", kwargs)
    model = exposed_model(recipe, source)
    one = Replayer(model.exposed, model.layers, "cpu", 1, vocab=run.vocab).replay(source, 96, progress=False)
    pd.testing.assert_frame_equal(one.tracks.extremes_frame(), run.unit_extremes)
    pd.testing.assert_frame_equal(one.tracks.hypotheses_frame(), run.unit_hypotheses, check_exact=False, rtol=1e-9)

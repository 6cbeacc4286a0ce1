"""Series pages against their oracles: the checkpoint files' own weights for the updates, the diff
page's Wasserstein distance for the shift, each run's own traces, histograms and impulse summary,
and the training log for the checkpoint marks. The sample forecaster's forget-bias sweep must show
what its training did: a larger starting bias, a more open forget gate."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from reporter.compare.diff import diff_runs
from reporter.compare.thresholds import DEFAULT_THRESHOLDS
from reporter.config import load_config
from reporter.pipeline.training_log import read_metrics
from reporter.replay.impulse import impulse_summary
from reporter.replay.stats import gate_histogram
from reporter.report.gather import gather_site
from reporter.report.series_charts import series_figures
from reporter.report.series_view import MOVED, series_view
from reporter.report.site import build_site
from tests.conftest import SAMPLE_CONFIG

HIDDEN = 32  # the sample forecaster's units


@pytest.fixture(scope="module")
def series(sample_runs):
    """The sample site's series by key, each as its page gathers it (with the training log)."""
    views = {}
    for config in load_config(SAMPLE_CONFIG).series:
        runs = [sample_runs[(config.model, version)] for version in config.versions]
        gathered = gather_site([(run, None) for run in runs], DEFAULT_THRESHOLDS, {run.name for run in runs})
        curves = read_metrics(config.metrics) if config.metrics else None
        views[config.key] = (config, runs, series_view(config, gathered, "s", curves))
    return views


def test_the_samples_are_an_epoch_series_with_a_log_and_a_forget_bias_sweep(series):
    epochs, sweep = series["epoch"][0], series["forget_bias"][0]
    assert epochs.values == tuple(float(k) for k in range(8)) and epochs.metrics.name == "metrics.csv"
    assert sweep.versions == tuple(f"forget_bias={v}" for v in ("0", "0.5", "1", "1.5", "2")) and sweep.metrics is None


def test_weight_updates_are_the_checkpoint_files_own_differences(series):
    config, _, view = series["epoch"]
    paths = sorted(
        (p for p in (SAMPLE_CONFIG.parent / "sample_models/forecaster/epochs").glob("*.pt")),
        key=lambda p: int(re.search(r"\d+", p.stem).group()),
    )
    states = [torch.load(path, weights_only=True) for path in paths]
    blocks = {"i": 0, "f": 1, "g": 2, "o": 3}  # torch stacks i f g o
    checked = 0
    for row in view.updates.itertuples():
        layer = int(row.layer.rsplit(".l", 1)[1])
        name = "rnn." + ("weight_hh" if row.matrix == "recurrent" else "weight_ih") + f"_l{layer}"
        rows = slice(blocks[row.gate] * HIDDEN, (blocks[row.gate] + 1) * HIDDEN)
        before, after = (states[k][name][rows].double().numpy() for k in (row.k - 1, row.k))
        delta = after - before
        assert row.relative == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(before), rel=1e-9)
        assert row.moved == pytest.approx(np.mean(np.abs(delta) > MOVED * np.sqrt(np.mean(before**2))))
        checked += 1
    assert checked == 7 * 2 * 4 * 2  # pairs × layers × gate blocks × (W, R)
    assert (view.updates["relative"] > 0).all()


def test_the_shift_is_the_diff_pages_wasserstein_and_none_before_the_first(series):
    _, runs, view = series["epoch"]
    first = view.gates[view.gates["k"] == 0]
    assert first["w1_prev"].isna().all() and len(first) == 2 * 6
    expected = diff_runs(runs[2], runs[3]).gates.set_index(["layer", "gate"])["wasserstein"]
    got = view.gates[view.gates["k"] == 3].set_index(["layer", "gate"])["w1_prev"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)


def test_strips_are_each_runs_histograms_and_frames_its_traces(series):
    _, runs, view = series["epoch"]
    rows = runs[5].gate_stats[(runs[5].gate_stats.layer == "rnn.l1") & (runs[5].gate_stats.gate == "f")]
    centres, counts, under, over = gate_histogram(rows)
    strip = view.strips[(view.strips.k == 5) & (view.strips.layer == "rnn.l1") & (view.strips.gate == "f")]
    np.testing.assert_allclose(strip["share"], counts / (counts.sum() + under + over))
    np.testing.assert_allclose(strip["bin"], centres)
    window = view.frame_window
    assert window is not None and all(window in run.traces["window"] for run in runs)
    position = int(np.flatnonzero(runs[5].traces["window"] == window)[0])
    trace = runs[5].traces["rnn.l0/f"][position, :, 0].astype(np.float64)  # [T, H]
    frame = view.frames[(view.frames.k == 5) & (view.frames.layer == "rnn.l0") & (view.frames.gate == "f")]
    np.testing.assert_allclose(np.array(frame["v"].tolist()), np.round(trace.T, 3))


def test_the_sweep_table_is_each_runs_impulse_summary_and_the_bias_opens_the_forget_gate(series):
    _, runs, view = series["forget_bias"]
    assert view.sweep["target"].tolist() == ["output:y"] * 5
    for k, run in enumerate(runs):
        rows = run.impulse[(run.impulse.target == "output:y") & (run.impulse.direction == "forward")]
        summary = impulse_summary(rows)
        row = view.sweep.iloc[k]
        for column in ("half_life", "contribution", "oscillation"):
            assert row[column] == pytest.approx(summary[column].mean(), nan_ok=True)
    forget = view.gates[(view.gates.gate == "f") & (view.gates.layer == "rnn.l0")].sort_values("k")["mean"]
    assert forget.is_monotonic_increasing and forget.iloc[-1] - forget.iloc[0] > 0.1


def test_checkpoints_are_marked_at_the_last_step_logged_in_their_epoch(series):
    config, _, view = series["epoch"]
    log = pd.read_csv(config.metrics)
    chart = series_figures(view)["curves"][0].spec()
    rules = next(layer for layer in chart["layer"] if layer["mark"]["type"] == "rule")
    marks = chart["datasets"][rules["data"]["name"]]
    assert [mark["step"] for mark in marks] == log.groupby("epoch")["step"].max().tolist()
    assert [mark["label"] for mark in marks] == [f"epoch={k}" for k in range(8)]


def test_the_site_links_series_and_checkpoints_both_ways(sample_runs, tmp_path):
    configs = load_config(SAMPLE_CONFIG).series
    wanted = {(c.model, v) for c in configs for v in c.versions}
    runs = [(run, None) for key, run in sample_runs.items() if key in wanted]
    site = build_site(runs, tmp_path / "site", progress=lambda _: None, series=[(c, None) for c in configs])
    pages = sorted(path.relative_to(site).as_posix() for path in site.rglob("*.html"))
    assert sum(page.startswith("series/") for page in pages) == 2
    assert not any(re.search(r"/w\d+\.html$", page) for page in pages)  # checkpoints get no window pages
    index = (site / "index.html").read_text()
    sweep = next(page for page in pages if page.startswith("series/forecaster_forget-bias_sweep"))
    assert f'href="{sweep}"' in index
    run_page = next(site.glob("runs/forecaster-forget_bias_1.5-*/index.html")).read_text()
    assert f'href="../../{sweep}"' in run_page and "One checkpoint of" in run_page
    html = (site / sweep).read_text()
    assert html.count('href="../runs/') >= 10 and "contribution ratio" in html


def test_torch_checkpoints_get_the_models_input_gradient_through_time(series):
    _, runs, _ = series["epoch"]
    for run in runs:
        frame = run.output_gradient
        assert frame["output"].unique().tolist() == ["y"] and frame["lag"].tolist() == list(range(64))
        assert (frame["low"] <= frame["norm"]).all() and (frame["norm"] <= frame["high"]).all()
        assert frame["norm"].iloc[0] > frame["norm"].iloc[-1] > 0  # a forecaster reads its latest steps most

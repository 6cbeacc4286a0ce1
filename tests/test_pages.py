"""Pages and review text say what the numbers mean: charts stay under their own headings when a
run cannot have one of them, NaN and ∞ read as words, diffs compare only what is comparable, and
names cannot collide or notify anyone."""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import unquote

import numpy as np
import pandas as pd

from reporter.compare.diff import diff_runs
from reporter.compare.thresholds import DEFAULT_THRESHOLDS
from reporter.report.gather import diff_view, unit_table
from reporter.report.numbers import number
from reporter.report.review import md_text, write_diff_dir, write_markdown
from reporter.report.site import build_site
from reporter.report.window_charts import heatmap_chart


def _sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section class="card">\s*<h2>([^<]+)</h2>(.*?)</section>', html, re.S))


def _chart_ids(html: str) -> list[str]:
    return re.findall(r'<div id="chart-([\w-]+)"', html)


def test_a_missing_chart_leaves_the_other_sections_alone(sample_runs, tmp_path):
    run = sample_runs[("forecaster", "v1")]
    without_impulse = dataclasses.replace(run, impulse=run.impulse.iloc[0:0])
    site = build_site([(without_impulse, None)], tmp_path / "site", progress=lambda line: None)
    sections = _sections((site / "runs" / "forecaster-v1" / "index.html").read_text(encoding="utf-8"))
    assert _chart_ids(sections["Saturation and value distributions"]) == ["saturation", "distribution"]
    assert _chart_ids(sections["Memory"]) == ["horizon"]
    assert _chart_ids(sections["Along the window"]) == ["trajectory"]
    assert _chart_ids(sections["Anomalous windows"]) == ["anomaly"]


def test_numbers_say_nan_and_infinity_in_words():
    assert number(float("nan"), "%.2f", nan="longer than the window") == "longer than the window"
    assert number(float("inf"), "%+.2f") == "+∞" and number(float("-inf"), "%.2f") == "−∞"
    assert number(None) == "not comparable" and number(0.25, "%.1f%%") == "0.2%"


def test_diff_page_and_markdown_never_print_nan_or_inf(sample_runs, tmp_path):
    diff = diff_runs(sample_runs[("forecaster", "v1")], sample_runs[("forecaster", "v2")])
    assert not diff.impulse.empty and not diff.outputs.empty
    diff.impulse.loc[0, ["half_life_b", "delta"]] = np.nan  # B's response never halved within the window
    diff.horizon.loc[0, ["half_life_a", "delta"]] = [np.inf, -np.inf]  # A's keep gate sat at exactly 1
    diff.outputs.loc[0, "relative_drift"] = np.inf  # A's outputs were all zero
    view = diff_view(diff, DEFAULT_THRESHOLDS)
    html = (write_diff_dir(view, tmp_path / "diff") / "index.html").read_text(encoding="utf-8")
    markdown = write_markdown(view, tmp_path / "my review.md").read_text(encoding="utf-8")
    for text in (html, markdown):
        assert not re.search(r"\bnan\b|\binf\b", text, re.IGNORECASE)
        assert "∞ (A is all zero)" in text
    assert "longer than the window" in html and "∞ (never decays)" in html
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown)  # a link target holds no space
    assert links and all((tmp_path / unquote(link)).is_file() for link in links)


def test_one_gate_no_step_reached_does_not_breach_every_check(sample_runs):
    diff = diff_runs(sample_runs[("forecaster", "v1")], sample_runs[("forecaster", "v2")])
    before = diff.headline()
    diff.gates.loc[len(diff.gates) - 1, ["wasserstein", "d_frac_low", "d_frac_high"]] = np.nan
    after = diff.headline()
    assert after["wasserstein"] is not None and not np.isnan(after["wasserstein"])
    assert after["wasserstein"] <= before["wasserstein"]


def _as_other_kind(run):
    """The same run with its layers claiming another kind: same names, so their impulse targets
    join, but no layer matches the original's."""
    return dataclasses.replace(run, layers=[dataclasses.replace(layer, kind="GRU") for layer in run.layers])


def test_impulse_responses_are_compared_only_for_matched_layers(sample_runs):
    lstm = sample_runs[("forecaster", "v1")]
    diff = diff_runs(lstm, _as_other_kind(lstm))
    assert any("not compared" in note for note in diff.notes)
    targets = list(diff.impulse["target"])
    assert targets and all(target.startswith("output:") for target in targets)  # outputs compared, layers not
    same = diff_runs(lstm, lstm)
    assert any(not target.startswith("output:") for target in same.impulse["target"])


def test_bidirectional_heatmap_rows_are_named_like_the_unit_table(sample_runs):
    run = sample_runs[("sensor_gru", "v1")]
    layer = next(layer for layer in run.layers if layer.directions == 2)
    trace = {gate: np.asarray(run.traces[name])[0] for gate, name in layer.outputs.items()}
    spec = heatmap_chart(layer, trace).spec()
    rows = pd.DataFrame(spec["datasets"][next(iter(spec["datasets"]))])
    table = pd.DataFrame(unit_table(run, layer))
    assert set(zip(rows["dir"], rows["unit"])) == set(zip(table["direction"], table["unit"]))
    assert (rows["row"] == rows["dir"] * layer.hidden_size + rows["unit"]).all()
    y_axis = spec["vconcat"][0]["encoding"]["y"]["axis"]
    assert "'b'" in y_axis["labelExpr"] and max(y_axis["values"]) >= layer.hidden_size


def test_names_that_read_alike_get_their_own_pages(sample_runs, tmp_path):
    run = sample_runs[("forecaster", "v1")]
    first = dataclasses.replace(run, meta={**run.meta, "model": "a-b", "version": "c"})
    second = dataclasses.replace(run, meta={**run.meta, "model": "a", "version": "b-c"})
    site = build_site([(first, None), (second, None)], tmp_path / "site", progress=lambda line: None)
    folders = sorted(path.name for path in (site / "runs").iterdir())
    assert len(folders) == 2 and len(set(folders)) == 2
    index = (site / "index.html").read_text(encoding="utf-8")
    assert all(f'href="runs/{folder}/index.html"' in index for folder in folders)


def test_markdown_names_cannot_mention_anyone():
    assert not re.search(r"@\w", md_text("@org/team model"))


def test_anomaly_shift_compares_shares_of_each_runs_windows(sample_runs):
    from reporter.report.diff_charts import anomaly_shift_chart

    a, b = sample_runs[("forecaster", "v1")], sample_runs[("sensor_gru", "v1")]
    assert a.meta["n_windows"] != b.meta["n_windows"]
    spec = anomaly_shift_chart(diff_runs(a, b)).spec()
    data = pd.DataFrame(spec["datasets"][next(iter(spec["datasets"]))])
    np.testing.assert_allclose(data.groupby("run")["share"].sum(), 1.0, atol=1e-3)


def test_log_axes_get_no_zero_from_rounding():
    """Values far below the chart's decimals stay positive on log axes (Vega warns on a zero in a log
    domain, and the browser test fails on any warning): a user's GRU had a singular value of 1e-6."""
    from reporter.report.charts import gradient_chart
    from reporter.report.weight_charts import singular_chart

    weights = pd.DataFrame(
        [{"layer": "l", "direction": 0, "gate": "z", "matrix": "recurrent", "singular_values": [2.5, 3e-6, 0.0]}]
    )
    flow = pd.DataFrame(
        {
            "layer": "l", "direction": "forward", "target": ["state", "state", "input"], "lag": [0, 1, 1],
            "norm": [1.0, 2.34567e-9, 5e-11], "low": [1.0, 4.7e-10, 1e-12], "high": [1.0, 3.1e-8, 1e-10],
        }
    )  # fmt: skip
    for spec, fields in ((singular_chart(weights).spec(), ["sigma"]), (gradient_chart(flow).spec(), ["norm", "low"])):
        rows = [row for data in spec["datasets"].values() for row in data if fields[0] in row]
        values = [row[field] for row in rows for field in fields]
        assert values and all(value > 0 for value in values), values
    assert 3e-6 in [row["sigma"] for data in singular_chart(weights).spec()["datasets"].values() for row in data]

"""Diff and check: a run against itself changes nothing; v1 → v2 of the forecaster shows the
longer memory its larger forget bias gave it; CKA and unit matching behave as defined; the review
attachments are complete and self-contained; check's exit code follows the thresholds."""

from __future__ import annotations

import re

import numpy as np
import pytest

from reporter.cli import main
from reporter.compare.diff import check, diff_runs
from reporter.compare.thresholds import DEFAULT_THRESHOLDS, parse_thresholds
from reporter.compare.unit_match import linear_cka, match_units
from reporter.config import load_config
from reporter.errors import ConfigError
from reporter.report.gather import diff_view
from reporter.report.review import md_text, write_markdown, write_single_file
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def forecaster(sample_runs):
    """The sample forecaster's v1 and v2 runs."""
    return sample_runs[("forecaster", "v1")], sample_runs[("forecaster", "v2")]


def test_a_run_against_itself_changes_nothing_and_passes(forecaster):
    v1, _ = forecaster
    diff = diff_runs(v1, v1)
    assert diff.headline() == {key: 0.0 for key in DEFAULT_THRESHOLDS}
    assert all(verdict.passed for verdict in check(diff, DEFAULT_THRESHOLDS))
    assert np.allclose(diff.cka["cka"], 1.0) and not diff.notes
    assert (diff.units["unit_a"] == diff.units["unit_b"]).all() and np.allclose(diff.units["correlation"], 1.0)
    assert (diff.horizon["delta"] == 0).all() and (diff.moved["moved"] == 0).all()


def test_v2_remembers_longer_than_v1_as_its_forget_bias_intends(forecaster):
    v1, v2 = forecaster
    diff = diff_runs(v1, v2)
    forget = diff.gates[diff.gates["gate"] == "f"]
    assert (forget["d_mean"] > 0.05).all() and (forget["wasserstein"] > 0.05).all()
    assert (diff.horizon["half_life_b"] > diff.horizon["half_life_a"] * 1.2).all()
    matched = diff.units.dropna(subset=["half_life_a", "half_life_b"])
    assert (matched["half_life_b"] > matched["half_life_a"]).mean() > 0.8  # unit by unit, after Hungarian matching
    cell = diff.impulse[diff.impulse["kind"] == "cell"]
    assert (cell["half_life_b"] > cell["half_life_a"]).all()  # measured, not only inferred from gate means
    assert ((diff.cka["cka"] > 0.5) & (diff.cka["cka"] < 0.999)).all()
    verdicts = {verdict.key: verdict for verdict in check(diff, DEFAULT_THRESHOLDS)}
    assert not verdicts["wasserstein"].passed


def test_linear_cka_is_one_for_a_layer_with_itself_and_blind_to_rotation_and_scale():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8))
    rotation, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)
    assert linear_cka(x, rng.standard_normal((500, 8))) < 0.1
    assert linear_cka(x, np.hstack([x, rng.standard_normal((500, 4))])) < 1.0  # units may differ in number


def test_matching_recovers_a_permutation_with_flipped_signs():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 6))
    permutation = np.array([3, 0, 5, 1, 4, 2])
    signs = np.array([1, -1, 1, 1, -1, 1])
    y = x[:, permutation] * signs + 0.05 * rng.standard_normal((400, 6))
    rows, cols, corr = match_units(x, y)
    assert (cols[permutation[cols] == rows] == cols).all() and np.array_equal(permutation[cols], rows)
    assert np.allclose(np.sign(corr), signs[cols]) and (np.abs(corr) > 0.99).all()


def test_markdown_summary_links_svg_charts_that_exist(forecaster, tmp_path):
    v1, v2 = forecaster
    path = write_markdown(diff_view(diff_runs(v1, v2), DEFAULT_THRESHOLDS), tmp_path / "review.md")
    text = path.read_text()
    assert "❌ breached" in text and "`wasserstein`" in text and "half-life 1." in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 4
    for image in images:
        assert not image.startswith(("/", "http")) and (tmp_path / image).read_text().lstrip().startswith("<svg")


def test_single_file_has_no_external_reference(forecaster, tmp_path):
    v1, v2 = forecaster
    size = write_single_file(diff_view(diff_runs(v1, v2), DEFAULT_THRESHOLDS), tmp_path / "one.html")
    html = (tmp_path / "one.html").read_text()
    assert size <= 5 * 2**20 and size == len(html.encode())
    assert "vegaEmbed" in html and 'data-chart="chart-shift"' in html
    assert not re.search(r"<script[^>]*\ssrc=", html)  # every script is inline
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.DOTALL)  # the page around the scripts
    assert not re.search(r"\s(src|href)\s*=", markup)  # no images, styles, frames or links to fetch
    # (that the inlined JavaScript fetches nothing either is what the browser test checks, request by request)


def test_markdown_text_cannot_inject_markup():
    hostile = "v1 | <img src=x onerror=alert(1)> ![x](http://evil) [link](javascript:1) `code` *b*\n# heading"
    escaped = md_text(hostile)
    assert "<img" not in escaped and "\n" not in escaped
    for token in ("|", "[", "]", "(", ")", "`", "*", "#", "!"):
        assert re.search(r"(?<!\\)" + re.escape(token), escaped) is None, token


def test_check_exit_codes_and_thresholds(forecaster, capsys):
    v1, v2 = forecaster
    assert main(["check", str(v1.path), str(v1.path)]) == 0
    assert "holds" in capsys.readouterr().out
    assert main(["check", str(v1.path), str(v2.path)]) == 1
    assert "BREACHED" in capsys.readouterr().out
    assert (
        main(["check", str(v1.path), str(v2.path), "--threshold", "wasserstein=1", "--threshold", "output_drift=0.5"])
        == 0
    )
    capsys.readouterr()
    assert main(["check", str(v1.path), str(v2.path), "--threshold", "wasserstien=1"]) == 2
    assert "unknown threshold 'wasserstien'; did you mean 'wasserstein'?" in capsys.readouterr().err
    assert main(["check", str(v1.path), "/nonexistent/run"]) == 2
    assert "/nonexistent/run" in capsys.readouterr().err


def test_config_check_table_sets_thresholds(tmp_path):
    text = (ROOT / "reporter.toml").read_text().replace("[site]", "[check]\nwasserstein = 0.5\n\n[site]")
    text = text.split("[[series]]")[0]  # a series' glob must match files where the config lies
    (tmp_path / "reporter.toml").write_text(text)
    assert load_config(tmp_path / "reporter.toml").thresholds["wasserstein"] == 0.5
    (tmp_path / "bad.toml").write_text(text.replace("wasserstein = 0.5", "wasserstain = 0.5"))
    with pytest.raises(ConfigError, match=r"bad\.toml: \[check\]: unknown threshold 'wasserstain'; did you mean"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="needs a number"):
        parse_thresholds(["wasserstein=lots"])

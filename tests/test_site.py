"""Site build: pages escape names, rebuilds are byte-identical, a failed build keeps the old site."""

from __future__ import annotations

import pytest

from reporter.config import load_config
from reporter.errors import ReporterError
from reporter.site import build_site
from tests.tiny_models import save_tiny

HOSTILE = '<script>alert("x")</script> & "quotes"'


def write_config(tmp_path, model_name="tiny", checkpoint="tiny.pt"):
    (tmp_path / "reporter.toml").write_text(f"""
[site]
title = "Site {HOSTILE.replace('"', "'")}"
output = "site"

[[runs]]
model = {model_name!r}
version = "v1"
checkpoint = "{checkpoint}"
factory = "tests.tiny_models:tiny_forecaster"
windows = "windows.npz"
""")
    return load_config(tmp_path / "reporter.toml")


def test_names_render_as_text_not_markup(tmp_path):
    save_tiny(tmp_path)
    site = build_site(write_config(tmp_path, model_name=HOSTILE.replace('"', "'")), progress=lambda _: None)
    page = (site / "index.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp;" in page
    assert "rnn.l0" in page and "rnn.l1" in page


def test_rebuild_is_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    save_tiny(tmp_path)
    config = write_config(tmp_path)
    first = (build_site(config, progress=lambda _: None) / "index.html").read_bytes()
    second = (build_site(config, progress=lambda _: None) / "index.html").read_bytes()
    assert first == second and b"2023-11-14 22:13 UTC" in first


def test_failed_build_leaves_previous_site_intact(tmp_path):
    save_tiny(tmp_path)
    site = build_site(write_config(tmp_path), progress=lambda _: None)
    (site / "README.md").write_text("kept")
    before = (site / "index.html").read_bytes()
    with pytest.raises(ReporterError):
        build_site(write_config(tmp_path, checkpoint="missing.pt"), progress=lambda _: None)
    assert (site / "index.html").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".site")) == []
    build_site(write_config(tmp_path), progress=lambda _: None)
    assert (site / "README.md").read_text() == "kept"  # the build keeps the folder's README

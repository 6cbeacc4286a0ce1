"""Site build: pages escape names, rebuilds are byte-identical, a failed build keeps the old site."""

from __future__ import annotations

import errno
import json

import jinja2
import numpy as np
import pytest

from reporter.config import load_config
from reporter.errors import ReporterError
from reporter.pipeline.build import build as build_site
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


def _files(site) -> dict[str, bytes]:
    return {str(path.relative_to(site)): path.read_bytes() for path in sorted(site.rglob("*")) if path.is_file()}


def test_names_render_as_text_not_markup(tmp_path):
    save_tiny(tmp_path)
    site = build_site(write_config(tmp_path, model_name=HOSTILE.replace('"', "'")), progress=lambda _: None)
    page = (site / "index.html").read_text()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp;" in page
    assert "rnn.l0" in page and "rnn.l1" in page
    pages = {name: data.decode() for name, data in _files(site).items() if name.endswith(".html")}
    assert len(pages) > 3 and any("/w" in name for name in pages)
    for name, html in pages.items():
        assert "<script>alert" not in html, name
        assert html.count("<script") == html.count("</script>"), name  # nothing closed a tag early


def test_chart_specs_cannot_break_out_of_their_script_tag():
    from reporter.report.site import environment

    spec = {"title": "</script><script>alert(1)</script>", "data": {"values": [{"a": "<!--", "b": "&amp;"}]}}
    html = (
        environment()
        .from_string('{% from "_figures.html" import figures %}{{ figures(items) }}')
        .render(items=[{"id": "x", "caption": "<b>caption</b>", "spec": spec}])
    )
    assert "</script><script>" not in html and "<!--" not in html and "<b>" not in html
    payload = html.split('data-chart="chart-x">', 1)[1].split("</script>", 1)[0]
    assert json.loads(payload) == spec  # escaped for HTML, still the same JSON


def test_rebuild_is_byte_identical_and_reuses_the_cached_replay(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    save_tiny(tmp_path)
    config = write_config(tmp_path)
    said = []
    first = _files(build_site(config, progress=said.append))
    assert any("replaying" in line for line in said)
    said.clear()
    second = _files(build_site(config, progress=said.append))
    assert first == second and b"2023-11-14 22:13 UTC" in first["index.html"]
    assert any("unchanged" in line for line in said) and not any("replaying" in line for line in said)
    assert len(list((tmp_path / "runs").iterdir())) == 1
    np.savez(tmp_path / "windows.npz", x=np.random.default_rng(9).standard_normal((12, 7, 3)).astype(np.float32))
    said.clear()
    third = _files(build_site(config, progress=said.append))
    assert any("replaying" in line for line in said) and third != first
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the stale cache entry is gone


def test_run_directories_alone_build_a_site(tmp_path, capsys):
    from reporter.cli import main

    checkpoint, windows = save_tiny(tmp_path)
    for version in ("a", "b"):
        assert (
            main(
                [
                    "replay",
                    str(checkpoint),
                    "--factory",
                    "tests.tiny_models:tiny_forecaster",
                    "--windows",
                    str(windows),
                    "-o",
                    str(tmp_path / version),
                    "--version",
                    version,
                    "--provider",
                    "cpu",
                ]
            )
            == 0
        )
    assert main(["build", "--runs", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out")]) == 0
    index = (tmp_path / "out" / "index.html").read_text()
    assert "runs/tiny-a/index.html" in index and "runs/tiny-b/index.html" in index
    assert main(["build", "--runs", str(tmp_path / "a"), str(tmp_path / "a"), "-o", str(tmp_path / "out")]) == 2
    assert "a second run of model 'tiny' version 'a'" in capsys.readouterr().err


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


class _FailAfter:
    """Render the real pages, failing with `error` once `pages` of them have been written."""

    def __init__(self, real, pages: int, error: BaseException):
        self.real, self.pages, self.error = real, pages, error

    def __call__(self, *args, **kwargs):
        for count, page in enumerate(self.real(*args, **kwargs)):
            if count == self.pages:
                raise self.error
            yield page


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (jinja2.TemplateError("a template broke"), jinja2.TemplateError),
        (OSError(errno.ENOSPC, "No space left on device"), ReporterError),
        (KeyboardInterrupt(), KeyboardInterrupt),
    ],
    ids=["template error", "disk full", "signal"],
)
def test_a_build_that_fails_while_writing_pages_leaves_the_previous_site_byte_identical(
    tmp_path, monkeypatch, error, raised
):
    from reporter.report import pages

    save_tiny(tmp_path)
    site = build_site(write_config(tmp_path), progress=lambda _: None)
    before = _files(site)
    monkeypatch.setattr(pages, "render_site", _FailAfter(pages.render_site, 3, error))
    with pytest.raises(raised) as caught:
        build_site(write_config(tmp_path), progress=lambda _: None)
    if raised is ReporterError:
        assert "No space left on device" in str(caught.value) and str(site) in str(caught.value)
    assert _files(site) == before  # every file as it was, none added
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".site")] == []  # no staging left behind


def test_a_layer_named_by_its_onnx_node_renders_as_text(tmp_path):
    """A hand-built ONNX model's layer takes its node's name: markup there stays text on every page."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from reporter.cli import main

    hostile = '<img src=x onerror="window.__pwned=1">cell</script>'
    rng = np.random.default_rng(0)
    weights = {"W": rng.normal(0, 0.5, (1, 12, 3)), "R": rng.normal(0, 0.5, (1, 12, 3))}
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x_t", "W", "R"], ["Y"], hidden_size=3, name=hostile),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path / "m.onnx")
    np.savez(tmp_path / "w.npz", x=rng.standard_normal((12, 6, 3)).astype(np.float32))
    run = tmp_path / "run"
    assert main(["replay", str(tmp_path / "m.onnx"), "--windows", str(tmp_path / "w.npz"), "-o", str(run)]) == 0
    assert main(["build", "--runs", str(run), "-o", str(tmp_path / "site")]) == 0
    pages = {path: path.read_text(encoding="utf-8") for path in (tmp_path / "site").rglob("*.html")}
    assert len(pages) > 3
    for path, html in pages.items():
        assert "<img src=x" not in html and "cell</script>" not in html, path
    assert any("&lt;img src=x onerror=&#34;window.__pwned=1&#34;&gt;cell" in html for html in pages.values())

"""The sample site in a real browser: Debian's Chromium driven by Playwright, every page opened
from file://. Every chart must have drawn marks (counted in its Vega scenegraph: a canvas alone
proves nothing), with no console error or warning and no request leaving the site folder.
Screenshots of the run pages (light and dark) and each page's draw time are kept for a person to
look at, in $GATE_REPORTER_ARTIFACTS when it is set, else in the session's temporary folder; times
are reported, not asserted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import markupsafe
import numpy as np
import pytest

from reporter.config import load_config
from reporter.pipeline.build import build as build_site
from tests.conftest import SAMPLE_CONFIG

CHROMIUM = Path("/usr/bin/chromium")
PAGE_BUDGET = 2 * 1024 * 1024  # bytes per page, besides the shared JavaScript

COUNT_MARKS = """() => window.__charts.views.map(view => {
  let marks = 0;
  const walk = node => {
    if (!node) return;
    if (node.marktype && node.marktype !== 'group' && node.role === 'mark') marks += (node.items || []).length;
    (node.items || []).forEach(walk);
  };
  walk(view.scenegraph().root);
  return marks;
})"""


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Where screenshots and draw times go: $GATE_REPORTER_ARTIFACTS, or a temporary folder."""
    folder = Path(os.environ.get("GATE_REPORTER_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def sample_site(tmp_path_factory, runs_cache, sample_runs):
    """The sample site, built from reporter.toml with the session's replay cache."""
    site = tmp_path_factory.mktemp("browser") / "site"
    return build_site(load_config(SAMPLE_CONFIG), site, progress=lambda _: None, cache=runs_cache)


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    assert CHROMIUM.exists(), "Chromium is missing: `make test` installs it with `apt-get install -y chromium`"
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield launched
        launched.close()


class Tab:
    """One browser tab, offline, recording console problems and every request outside the site.

    Requests are observed, not intercepted: `page.route` interception can stall page loads under
    the sync API (microsoft/playwright-python#2315), and an offline context already stops any
    request that would leave the machine.
    """

    def __init__(self, browser, site: Path, scheme: str = "light"):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme, offline=True)
        self.context.set_default_timeout(30_000)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.outside: list[str] = []
        site_uri = site.resolve().as_uri() + "/"
        self.page.on(
            "console",
            lambda message: (
                self.problems.append(f"{message.type}: {message.text}")
                if message.type in ("error", "warning")
                else None
            ),
        )
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("crash", lambda _: self.problems.append("the page crashed"))
        self.page.on(
            "request", lambda request: None if request.url.startswith(site_uri) else self.outside.append(request.url)
        )

    def close(self) -> None:
        self.context.close()

    def open(self, page_path: Path) -> dict:
        """Navigate, wait until every chart has drawn or failed, and return the chart state."""
        self.problems.clear()
        self.outside.clear()
        self.page.goto(page_path.resolve().as_uri())
        self.page.wait_for_function("window.__charts && window.__charts.finished !== null", timeout=20_000)
        return self.page.evaluate(
            "({expected: __charts.expected, drawn: __charts.drawn, errors: __charts.errors, "
            "finished: __charts.finished})"
        )


def test_every_page_draws_every_chart_offline_without_errors(browser, sample_site, artifacts):
    pages = sorted(sample_site.rglob("*.html"))
    assert len(pages) > 20 and (sample_site / "index.html") in pages
    timings = {}
    tab = Tab(browser, sample_site)
    for page_path in pages:
        name = str(page_path.relative_to(sample_site))
        assert page_path.stat().st_size <= PAGE_BUDGET, f"{name}: {page_path.stat().st_size} bytes"
        state = tab.open(page_path)
        assert state["errors"] == [] and state["drawn"] == state["expected"], (name, state)
        marks = tab.page.evaluate(COUNT_MARKS)
        assert len(marks) == state["expected"] and all(count > 0 for count in marks), (name, marks)
        assert tab.problems == [], (name, tab.problems)
        assert tab.outside == [], (name, tab.outside)
        if name.endswith("index.html") and name.startswith("runs/"):
            assert state["expected"] >= 5, name  # the run page's charts
        timings[name] = round(state["finished"])
    tab.close()
    slowest = max(timings, key=timings.get)
    (artifacts / "draw-times-ms.json").write_text(json.dumps(timings, indent=1, sort_keys=True))
    print(f"{len(pages)} pages; slowest to draw: {slowest} at {timings[slowest]} ms after navigation")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_run_pages_render_in_both_colour_schemes_and_are_kept_as_screenshots(browser, sample_site, artifacts, scheme):
    tab = Tab(browser, sample_site, scheme)
    for run_page in sorted((sample_site / "runs").glob("*/index.html")):
        state = tab.open(run_page)
        assert state["errors"] == [] and tab.problems == [] and tab.outside == [], (run_page, state, tab.problems)
        tab.page.screenshot(path=str(artifacts / f"{run_page.parent.name}-{scheme}.png"), full_page=True)
    tab.close()


def test_pages_link_only_inside_the_site(sample_site):
    import re

    for page_path in sample_site.rglob("*.html"):
        html = page_path.read_text()
        for target in re.findall(r'(?:href|src)="([^"]+)"', html):
            assert "://" not in target and not target.startswith("//"), (page_path, target)
            path, _, anchor = target.partition("#")
            resolved = (page_path.parent / path).resolve()
            assert resolved.is_file() and sample_site.resolve() in resolved.parents, (page_path, target)
            assert not anchor or f'id="{anchor}"' in resolved.read_text(), (page_path, target)  # the anchor exists
    assert shutil.which("chromium") or CHROMIUM.exists()


def test_single_file_diff_renders_offline(browser, sample_runs, artifacts, tmp_path):
    from reporter.compare.diff import diff_runs
    from reporter.compare.thresholds import DEFAULT_THRESHOLDS
    from reporter.report.gather import diff_view
    from reporter.report.review import write_single_file

    diff = diff_runs(sample_runs[("forecaster", "v1")], sample_runs[("forecaster", "v2")])
    write_single_file(diff_view(diff, DEFAULT_THRESHOLDS), tmp_path / "review.html")
    tab = Tab(browser, tmp_path)
    state = tab.open(tmp_path / "review.html")
    marks = tab.page.evaluate(COUNT_MARKS)
    assert state["errors"] == [] and state["drawn"] == state["expected"] >= 4, state
    assert all(count > 0 for count in marks) and tab.problems == [] and tab.outside == [], (marks, tab.problems)
    tab.page.screenshot(path=str(artifacts / "single-file-diff.png"), full_page=True)
    tab.close()


HOSTILE_MODEL = (
    '<img src=x onerror="window.__pwned=1"> "quoted" & </script><script>window.__pwned=1</script> '
    "ünïcödé 模型 " + "L" * 300
)
HOSTILE_LAYER = '<img src=x onerror="window.__pwned=2">l0</script>'
HOSTILE_VERSIONS = ('v1 "</script><svg onload="window.__pwned=3">', "v2 <i>")
HOSTILE_TITLE = '<img src=x onerror="window.__pwned=4"><h1>site</h1>'
RAW_MARKUP = ("<img src=x", "<svg onload", "<h1>site", "<script>window.__pwned", "<i>")  # never raw on a page


def _hostile_run(tmp_path: Path, version: str):
    """A real run of the tiny model, with its model, version and a layer renamed to hostile text."""
    import dataclasses

    from reporter.pipeline.make_run import RunSettings, make_run
    from reporter.pipeline.model_source import ModelRecipe, exposed_model
    from reporter.replay.windows import open_windows_source
    from tests.tiny_models import save_tiny

    checkpoint, windows = save_tiny(tmp_path)
    source = open_windows_source(windows)
    model = exposed_model(ModelRecipe(checkpoint, "tests.tiny_models:tiny_forecaster"), source)
    run = make_run(model, source, RunSettings(HOSTILE_MODEL, version, provider="cpu", impulse_windows=4))
    old = run.layers[0].name

    def new(name: str) -> str:
        return HOSTILE_LAYER + name[len(old) :] if name == old or name.startswith(old + "/") else name

    run.layers = [dataclasses.replace(layer, name=new(layer.name)) for layer in run.layers]
    for table in ("gate_stats", "timestep_stats", "explanations", "unit_extremes", "unit_hypotheses", "weights"):
        frame = getattr(run, table)
        setattr(run, table, frame.assign(layer=frame["layer"].map(new)))
    run.window_scores = run.window_scores.rename(columns=new)
    run.impulse = run.impulse.assign(target=run.impulse["target"].map(new))
    run.traces = {new(key): value for key, value in run.traces.items()}
    run.weight_maps = {
        new(key.rsplit("/", 3)[0]) + key[len(key.rsplit("/", 3)[0]) :]: v for key, v in run.weight_maps.items()
    }
    folder = f'run <img src=x onerror="window.__pwned=5"> {len(list(tmp_path.glob("run *")))}'  # a hostile folder
    return run.save(tmp_path / folder)


def _escaped(text: str) -> str:
    """How a name appears in a page's markup, escaped by Jinja's autoescape."""
    return str(markupsafe.escape(text))


def test_hostile_names_render_as_text_and_run_nothing(browser, tmp_path):
    """Payloads that fire in a headless page (img onerror, svg onload, a closing script tag) in every
    name a user controls: model, version, layer, site title and run folder. On every page none of
    them is in the markup raw, each shows escaped where its page names it, and no handler runs."""
    from reporter.compare.diff import diff_runs
    from reporter.compare.thresholds import DEFAULT_THRESHOLDS
    from reporter.pipeline.build import build as build_site
    from reporter.report.gather import diff_view
    from reporter.report.review import write_diff_dir, write_markdown
    from reporter.runstore import Run

    runs = [_hostile_run(tmp_path, version) for version in HOSTILE_VERSIONS]
    site = build_site(None, tmp_path / "site", run_dirs=runs, progress=lambda _: None, title=HOSTILE_TITLE)
    view = diff_view(diff_runs(Run.load(runs[0]), Run.load(runs[1])), DEFAULT_THRESHOLDS)
    write_diff_dir(view, tmp_path / "diff", title=HOSTILE_TITLE)
    markdown = write_markdown(view, tmp_path / "review.md").read_text()
    assert "<img" not in markdown and "<svg" not in markdown and "</script>" not in markdown
    pages = [*sorted(site.rglob("*.html")), tmp_path / "diff" / "index.html"]
    assert len(pages) > 10
    for folder, page_path in [(site, p) for p in pages[:-1]] + [(tmp_path / "diff", pages[-1])]:
        html = page_path.read_text(encoding="utf-8")
        assert [raw for raw in RAW_MARKUP if raw in html] == [], page_path
        assert _escaped(HOSTILE_TITLE) in html, page_path  # the title heads every page
        named = page_path.parent.parent == site / "runs" or page_path.parent.name == "diff"
        if named:  # run, window, layer and diff pages name the model and version
            assert _escaped(HOSTILE_MODEL[:40]) in html, page_path
            assert any(_escaped(version) in html for version in HOSTILE_VERSIONS), page_path
            if not page_path.name.startswith("rnn.l1-"):  # the other layer's own pages need not name it
                assert _escaped(HOSTILE_LAYER) in html, page_path  # model card, heatmap links and titles, diffs
        tab = Tab(browser, folder)
        state = tab.open(page_path)
        assert state["errors"] == [] and state["drawn"] == state["expected"], (page_path, state)
        assert tab.problems == [] and tab.outside == [], (page_path, tab.problems, tab.outside)
        assert tab.page.evaluate("window.__pwned") is None, page_path  # no injected handler or script ran
        text = tab.page.inner_text("body")
        if folder == site:  # site pages head their body with the title (the lone diff page only in <title>)
            assert HOSTILE_TITLE in text, page_path
        if page_path.name == "index.html" and page_path.parent.parent == site / "runs":
            assert HOSTILE_MODEL[:60] in text and HOSTILE_LAYER in text  # shown as text, not markup
        tab.close()


def test_the_checks_catch_requests_leaving_the_site_and_console_errors(browser, tmp_path):
    """The guard itself: a page that fetches from the network and logs an error is caught."""
    (tmp_path / "site").mkdir()
    (tmp_path / "outside.js").write_text("window.loaded = 1;")
    (tmp_path / "site" / "page.html").write_text(
        '<img src="http://example.com/pixel.png"><script src="../outside.js"></script>'
        '<script>console.error("broken"); window.__charts = {finished: 1, expected: 0, drawn: 0, errors: []};</script>'
    )
    tab = Tab(browser, tmp_path / "site")
    tab.open(tmp_path / "site" / "page.html")
    assert any(url.startswith("http://example.com") for url in tab.outside)
    assert any(url.endswith("/outside.js") for url in tab.outside)  # a file outside the site folder counts too
    assert any("broken" in problem for problem in tab.problems)
    tab.close()


SELECT_STEPS = """([first, last]) => {
  const spans = document.querySelectorAll('#cell-picked span[data-t]');
  const range = document.createRange();
  range.setStart(spans[first].firstChild, 0);
  range.setEnd(spans[last].firstChild, spans[last].firstChild.length);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  document.getElementById('cell-view').dispatchEvent(new MouseEvent('mouseup', {bubbles: true}));
  return window.__cells;
}"""


def _best_match(run, layer: str, window: int, first: int, last: int, on: float) -> tuple[int, float]:
    """The oracle for "find similar": over every span of every sampled window (but the selection
    itself), the most query units on throughout it, then the best Jaccard similarity of its units
    on throughout and the selection's."""
    windows = [int(w) for w in run.traces["window"]]
    bits = run.traces[f"{layer}/h"].astype(np.float32).reshape(len(windows), -1, run.layers[0].hidden_size) > on
    length = last - first + 1
    query = bits[windows.index(window), first : last + 1].all(axis=0)
    best = (0, 0.0)
    for k, other in enumerate(windows):
        for start in range(bits.shape[1] - length + 1):
            if other == window and start <= last and start + length - 1 >= first:
                continue
            there = bits[k, start : start + length].all(axis=0)
            if (query & there).any():
                best = max(best, (int((query & there).sum()), (query & there).sum() / (query | there).sum()))
    return best


def test_cell_view_colours_the_text_by_the_picked_unit_and_finds_similar_spans(
    browser, sample_site, sample_runs, artifacts
):
    run = sample_runs[("charlm", "v1")]
    window, layer = int(run.traces["window"][0]), run.layers[0]
    steps = run.traces["x"].shape[1]
    tab = Tab(browser, sample_site)
    tab.open(sample_site / "runs" / "charlm-v1" / f"w{window}.html")
    page = tab.page
    assert page.locator("#cell-picked span[data-t]").count() == steps
    assert page.locator("#cell-top .cell-row").count() == 8
    assert page.locator("#cell-top span[data-t]").count() == 8 * steps
    assert page.locator("#cell-unit option").count() == layer.hidden_size  # the picker covers every unit
    colours = lambda: page.eval_on_selector_all("#cell-picked span[data-t]", "s => s.map(e => e.style.background)")  # noqa: E731
    before = colours()
    assert len(set(before)) > 10  # coloured by value, not one flat colour
    page.select_option("#cell-unit", "5")
    after = colours()
    assert after != before and page.inner_text("#cell-picked-label").startswith("unit 5")
    page.select_option("#cell-gate", "f")
    assert page.inner_text("#cell-picked-label") == "unit 5 · f" and colours() != after
    assert "↵" in page.inner_text("#cell-picked")  # newlines are visible
    # a span where some unit's h is on throughout, chosen from the stored traces
    on = run.meta["unit_tracks"]["on"]
    h = run.traces[f"{layer.name}/h"][0].astype(np.float32).reshape(steps, -1) > on
    first = next(t for t in range(steps - 3) if h[t : t + 3].all(axis=0).any())
    state = page.evaluate(SELECT_STEPS, [first, first + 2])
    shared = int(h[first : first + 3].all(axis=0).sum())
    verb = "units" if shared > 1 else "unit", "have" if shared > 1 else "has"
    assert state["status"].startswith(
        f"{shared} {verb[0]} of {layer.name} {verb[1]} h on over steps {first}–{first + 2}"
    )
    listed = ", ".join(f"unit {u}" for u in np.flatnonzero(h[first : first + 3].all(axis=0))[:12])
    assert f"({listed}" in state["status"]  # the page reads the same units from its bits as numpy does
    results = state["results"]
    shared_best, score_best = _best_match(run, layer.name, window, first, first + 2, on)
    assert results and results[0]["shared"] == shared_best and results[0]["score"] == pytest.approx(score_best)
    ranks = [(r["shared"], r["score"]) for r in results]
    assert ranks == sorted(ranks, reverse=True)
    links = page.eval_on_selector_all("#similar-results a", "a => a.map(e => e.getAttribute('href'))")
    assert len(links) == len(results) and all((sample_site / "runs" / "charlm-v1" / link).is_file() for link in links)
    assert tab.problems == [] and tab.outside == []
    page.screenshot(path=str(artifacts / "charlm-cell-view.png"), full_page=True)
    tab.close()


def test_the_series_play_button_steps_the_heatmaps_through_the_checkpoints(browser, sample_site, artifacts):
    page_path = next((sample_site / "series").glob("forecaster_over_training-*.html"))
    tab = Tab(browser, sample_site)
    state = tab.open(page_path)
    assert state["errors"] == [] and state["drawn"] == state["expected"], state
    frames = "Object.entries(__charts.byId).find(([id]) => id.includes('series_frames'))[1]"
    slider = tab.page.locator("input[type=range]")
    assert tab.page.evaluate(f"{frames}.signal('checkpoint')") == 7 and slider.input_value() == "7"
    tab.page.click("button[data-play]")  # from the last checkpoint, play starts again at the first
    tab.page.wait_for_function(f"{frames}.signal('checkpoint') >= 2", timeout=10_000)
    tab.page.click("button[data-play]")  # pause
    shown = tab.page.evaluate(f"{frames}.signal('checkpoint')")
    assert 2 <= shown < 7 and slider.input_value() == str(shown)  # the slider follows the play button
    labels = tab.page.evaluate(
        f"""(() => {{
      const seen = new Set();
      const walk = node => {{
        if (!node) return;
        if (node.marktype === 'rect' && node.role === 'mark') (node.items || []).forEach(i => seen.add(i.datum.label));
        (node.items || []).forEach(walk);
      }};
      walk({frames}.scenegraph().root);
      return [...seen];
    }})()"""
    )
    assert labels == [f"epoch={shown}"]  # the heatmaps draw the checkpoint the slider shows, and only it
    assert tab.problems == [] and tab.outside == [], tab.problems
    tab.page.screenshot(path=str(artifacts / "series-page.png"), full_page=True)
    tab.close()

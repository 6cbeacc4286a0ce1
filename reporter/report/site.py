"""Build the static site: gather every run first, then render every page, then swap atomically.

Like mkdocs' build, all data is gathered before any page is rendered, so every page sees the same
runs; unlike it, the site is built in a temporary folder beside the output and swapped in at the
end, so a failed build leaves the previous site intact. Jinja autoescape is always on, and chart
specs enter pages only through `tojson` (which escapes `<`, `>` and `&`).

    site/index.html                               every model and version, headline figures
    site/assets/vega-<hash>.js, site-<hash>.js    Vega + Vega-Lite + vega-embed, and the page script
    site/runs/<run>/index.html                    run page: model card and run-wide charts
    site/runs/<run>/w<window>.html                window page: input, where it departs from typical
    site/runs/<run>/<layer>-w<window>.html        layer page: unit × step heatmaps, unit table
    site/diffs/<model>-<baseline>-vs-<version>.html  what changed since the configured baseline
    site/series/<series>.html                     a model's checkpoints over training or a sweep

Runs arrive already made (`reporter.pipeline.build` replays what changed); this module gathers what
the pages show (`gather`), renders them (`pages`) and writes them. It knows nothing of torch or ONNX.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import jinja2
import pandas as pd

from reporter.atomic import check_output_dir, staging_dir
from reporter.compare.thresholds import DEFAULT_THRESHOLDS
from reporter.errors import OutputError
from reporter.provenance import made_at
from reporter.report import pages
from reporter.report.gather import gather_site
from reporter.report.numbers import number
from reporter.report.series_view import gather_series
from reporter.runstore import Run
from reporter.series import SeriesConfig

__all__ = ["TEMPLATES", "asset_text", "build_site", "build_time", "environment", "write_assets"]

# The templates and the page script ship inside the package (`reporter.templates`, mapped from the
# repository's top-level templates/ folder), so a plain `pip install` has them.
TEMPLATES = resources.files("reporter.templates")
_KEPT = (
    "README.md",
    "run-page.png",
    "cell-view.png",
    "series-page.png",
)  # the output folder's own files, in git: not build output


def _template_source(name: str) -> str | None:
    """A template's text from the package, or None when there is no such template."""
    template = TEMPLATES.joinpath(*name.split("/"))
    return template.read_text(encoding="utf-8") if template.is_file() else None


def asset_text(name: str) -> str:
    """A file of the site's assets folder (e.g. the page script "site.js"), from the package."""
    return TEMPLATES.joinpath("assets", name).read_text(encoding="utf-8")


def environment() -> jinja2.Environment:
    """The one Jinja environment: autoescape on, undefined names are errors, `num` formats numbers."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = number  # NaN and ∞ in words, not "nan"/"inf"
    return env


def build_time() -> str:
    """UTC build time, honouring SOURCE_DATE_EPOCH so rebuilds are byte-identical."""
    return made_at().strftime("%Y-%m-%d %H:%M UTC")


def _hashed_asset(staging: Path, name: str, content: bytes) -> str:
    """Write an asset under a content-hashed name (cache-safe for any web server); return its site path."""
    stem, suffix = name.rsplit(".", 1)
    path = f"assets/{stem}-{hashlib.sha256(content).hexdigest()[:12]}.{suffix}"
    (staging / path).parent.mkdir(parents=True, exist_ok=True)
    (staging / path).write_bytes(content)
    return path


def write_assets(staging: Path) -> dict[str, str]:
    """The Vega JavaScript (from vl-convert, no network) and the page script, written once for all pages."""
    import vl_convert

    return {
        "vega": _hashed_asset(staging, "vega.js", vl_convert.javascript_bundle().encode("utf-8")),
        "script": _hashed_asset(staging, "site.js", asset_text("site.js").encode("utf-8")),
    }


def build_site(
    runs: list[tuple[Run, str | None]],
    output: Path,
    title: str = "Gate Reporter",
    thresholds: dict[str, float] | None = None,
    progress: Callable[[str], None] = print,
    series: list[tuple[SeriesConfig, pd.DataFrame | None]] = (),
) -> Path:
    """Gather every run (each with its baseline version, or None) and every series (each with its
    training log, or None), render every page into a temporary folder beside `output`, then swap
    it in; return `output`."""
    output = Path(output)
    check_output_dir(output)
    if not runs:
        raise OutputError(f"{output}: nothing to build: no runs")
    checkpoints = {f"{one.model} {version}" for one, _ in series for version in one.versions}  # `Run.name`s
    views = gather_site(runs, thresholds or DEFAULT_THRESHOLDS, checkpoints)
    series_views = gather_series(list(series), views)
    with staging_dir(output) as staging:
        assets = write_assets(staging)
        progress(f"rendering pages for {len(runs)} runs …")
        written = 0
        common = {"site_title": title, "built": build_time(), "assets": assets}
        try:
            for path, html in pages.render_site(environment(), views, common, series_views):
                (staging / path).parent.mkdir(parents=True, exist_ok=True)
                (staging / path).write_text(html, encoding="utf-8")
                written += 1
        except OSError as exc:  # a full disk or a quota: the previous site stays as it was
            raise OutputError(f"{output}: cannot write the site: {exc.strerror or exc}") from None
        for name in _KEPT:
            if (output / name).is_file():
                shutil.copy2(output / name, staging / name)
    progress(f"wrote {written} pages to {output}")
    return output

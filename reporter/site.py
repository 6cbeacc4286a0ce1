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

Runs arrive already made (`reporter.build` gathers them): this module knows nothing of torch or ONNX.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jinja2

from reporter import pages
from reporter.atomic import check_output_dir, staging_dir
from reporter.errors import OutputError
from reporter.numbers import number
from reporter.runstore import Run

__all__ = ["ASSETS", "TEMPLATES", "build_site", "environment", "write_assets"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
ASSETS = TEMPLATES / "assets"
_KEPT = ("README.md", "run-page.png")  # the output folder's own files, in git: not build output


def environment() -> jinja2.Environment:
    """The one Jinja environment: autoescape on, undefined names are errors, `num` formats numbers."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = number  # NaN and ∞ in words, not "nan"/"inf"
    return env


def build_time() -> str:
    """UTC build time, honouring SOURCE_DATE_EPOCH so rebuilds are byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


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

    return {"vega": _hashed_asset(staging, "vega.js", vl_convert.javascript_bundle().encode("utf-8")),
            "script": _hashed_asset(staging, "site.js", (ASSETS / "site.js").read_bytes())}


def build_site(runs: list[tuple[Run, str | None]], output: Path, title: str = "Gate Reporter",
               thresholds: dict[str, float] | None = None, progress: Callable[[str], None] = print) -> Path:
    """Render every page for these runs (each with its baseline version, or None) into a temporary
    folder beside `output`, then swap it in; return `output`."""
    from reporter.diff import DEFAULT_THRESHOLDS

    output = Path(output)
    check_output_dir(output)
    if not runs:
        raise OutputError(f"{output}: nothing to build: no runs")
    with staging_dir(output) as staging:
        assets = write_assets(staging)
        progress(f"rendering pages for {len(runs)} runs …")
        written = pages.render_all(environment(), staging, runs, title, build_time(), assets,
                                   thresholds or DEFAULT_THRESHOLDS)
        for name in _KEPT:
            if (output / name).is_file():
                shutil.copy2(output / name, staging / name)
    progress(f"wrote {written} pages to {output}")
    return output

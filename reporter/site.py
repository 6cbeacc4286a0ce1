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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import jinja2

from reporter import pages
from reporter.atomic import check_output_dir, staging_dir
from reporter.config import SiteConfig
from reporter.errors import OutputError
from reporter.run_cache import cached_run
from reporter.runstore import Run

__all__ = ["ASSETS", "TEMPLATES", "build_site", "environment", "gather_runs"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
ASSETS = TEMPLATES / "assets"
_KEPT = ("README.md", "run-page.png")  # the output folder's own files, in git: not build output


def environment() -> jinja2.Environment:
    """The one Jinja environment: autoescape on, undefined names are errors."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def build_time() -> str:
    """UTC build time, honouring SOURCE_DATE_EPOCH so rebuilds are byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def gather_runs(config: SiteConfig | None, run_dirs: Iterable[Path] = (),
                progress: Callable[[str], None] = print) -> list[tuple[Run, str | None]]:
    """Every run of the site with its baseline version: configured ones (cached), then given run directories."""
    gathered = []
    if config is not None:
        cache = config.path.parent / "runs"
        for run in config.runs:
            gathered.append((cached_run(run, cache, progress), run.baseline))
    for folder in run_dirs:
        gathered.append((Run.load(folder), None))
    seen = set()
    for run, _ in gathered:
        if run.name in seen:
            raise OutputError(f"{run.path}: a second run of model {run.meta['model']!r} version "
                              f"{run.meta['version']!r}; each model version can appear once")
        seen.add(run.name)
    return gathered


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


def build_site(config: SiteConfig | None, output: Path | None = None, run_dirs: Iterable[Path] = (),
               progress: Callable[[str], None] = print, title: str | None = None) -> Path:
    """Gather every run, render every page into a temporary folder, then swap it in."""
    if output is None and config is None:
        raise OutputError("no output folder: pass -o or a config with [site] output")
    output = Path(output or config.output)
    check_output_dir(output)
    runs = gather_runs(config, run_dirs, progress)
    if not runs:
        raise OutputError(f"{output}: nothing to build: the config has no runs and no --runs were given")
    site_title = title or (config.title if config else "Gate Reporter")
    with staging_dir(output) as staging:
        assets = write_assets(staging)
        progress(f"rendering pages for {len(runs)} runs …")
        from reporter.diff import DEFAULT_THRESHOLDS

        thresholds = (config.thresholds if config else None) or DEFAULT_THRESHOLDS
        written = pages.render_all(environment(), staging, runs, site_title, build_time(), assets, thresholds)
        for name in _KEPT:
            if (output / name).is_file():
                shutil.copy2(output / name, staging / name)
    progress(f"wrote {written} pages to {output}")
    return output

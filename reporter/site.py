"""Build the static site: gather every run's data first, then render pages, then swap atomically.

Like mkdocs' build, all data is gathered before any page is rendered, so every page sees the same
runs; unlike it, the site is built in a temporary folder beside the output and swapped in at the
end, so a failed build leaves the previous site intact. Jinja autoescape is always on.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import jinja2

from reporter.atomic import check_output_dir, staging_dir
from reporter.checkpoints import file_sha256
from reporter.config import RunConfig, SiteConfig
from reporter.expose import Layer
from reporter.model_source import exposed_model_from_checkpoint
from reporter.windows import open_windows_source

__all__ = ["RunCard", "gather_run", "build_site", "environment", "TEMPLATES"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_KEPT = ("README.md",)  # files of the output folder that are not build output (site/README.md is in git)


@dataclass(frozen=True)
class RunCard:
    """What the index shows of one run: identity, architecture, hashes, export parity."""

    model: str
    version: str
    baseline: str | None
    layers: list[Layer]
    n_windows: int
    window_shape: list[int]
    checkpoint_sha256: str
    windows_sha256: str
    parity_max_abs: float | None
    exporter: str | None

    @property
    def units(self) -> int:
        """Recurrent units over all layers and directions."""
        return sum(layer.hidden_size * layer.directions for layer in self.layers)


def gather_run(run: RunConfig) -> RunCard:
    """Export and expose one configured run, and describe it."""
    source = exposed_model_from_checkpoint(run.checkpoint, run.factory, run.factory_kwargs, run.trust_pickle, run.windows)
    windows = open_windows_source(run.windows)
    return RunCard(run.model, run.version, run.baseline, source.layers, windows.n_windows, list(windows.shape[1:]),
                   source.checkpoint.sha256, file_sha256(run.windows), source.parity_max_abs, source.exporter)


def environment() -> jinja2.Environment:
    """The one Jinja environment: autoescape on, undefined names are errors."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def build_time() -> str:
    """UTC build time, honouring SOURCE_DATE_EPOCH so rebuilds are byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def build_site(config: SiteConfig, output: Path | None = None, progress=print) -> Path:
    """Gather every run, render every page into a temporary folder, then swap it in."""
    output = Path(output or config.output)
    check_output_dir(output)
    cards = []
    for run in config.runs:
        progress(f"gathering {run.model} {run.version} …")
        cards.append(gather_run(run))
    with staging_dir(output) as staging:
        page = environment().get_template("index.html").render(title=config.title, cards=cards, built=build_time())
        (staging / "index.html").write_text(page, encoding="utf-8")
        for name in _KEPT:
            if (output / name).is_file():
                shutil.copy2(output / name, staging / name)
    return output

"""The build command: gather every run of the site (replaying only what changed), then build it.

Gathering runs needs checkpoints, ONNX and replay (`run_cache`); building the site needs only the
runs (`report.site`). Keeping the two apart keeps `report` free of torch and ONNX.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from reporter.atomic import check_output_dir
from reporter.config import SiteConfig
from reporter.errors import OutputError
from reporter.model.checkpoint_metrics import checkpoint_metrics
from reporter.pipeline.run_cache import cached_run
from reporter.pipeline.training_log import read_metrics
from reporter.report.site import build_site
from reporter.runstore import Run
from reporter.series import SeriesConfig

__all__ = ["build", "gather_runs"]


def gather_runs(
    config: SiteConfig | None,
    run_dirs: Iterable[Path] = (),
    progress: Callable[[str], None] = print,
    cache: Path | None = None,
) -> list[tuple[Run, str | None]]:
    """Every run of the site with its baseline version: configured ones (replayed into `cache`,
    default runs/ beside the config, only when their inputs changed), then given run directories."""
    gathered = []
    if config is not None:
        cache = cache or config.path.parent / "runs"
        for run in config.runs:
            gathered.append((cached_run(run, cache, progress), run.baseline))
    for folder in run_dirs:
        gathered.append((Run.load(folder), None))
    seen = set()
    for run, _ in gathered:
        if run.name in seen:
            raise OutputError(
                f"{run.path}: a second run of model {run.meta['model']!r} version "
                f"{run.meta['version']!r}; each model version can appear once"
            )
        seen.add(run.name)
    return gathered


def _training_curves(config: SiteConfig, series: SeriesConfig) -> pd.DataFrame | None:
    """A series' training log: its metrics.csv, else the metric its Lightning checkpoints were saved on."""
    if series.metrics:
        return read_metrics(series.metrics)
    paths = {(run.model, run.version): run.checkpoint for run in config.runs}
    curves = checkpoint_metrics([paths[(series.model, version)] for version in series.versions])
    return curves if len(curves) else None


def build(
    config: SiteConfig | None,
    output: Path | None = None,
    run_dirs: Iterable[Path] = (),
    progress: Callable[[str], None] = print,
    title: str | None = None,
    cache: Path | None = None,
) -> Path:
    """Gather the runs of `config` and `run_dirs`, then build the site into `output` (or [site] output)."""
    if output is None and config is None:
        raise OutputError("no output folder: pass -o or a config with [site] output")
    output = Path(output or config.output)
    check_output_dir(output)  # before any replay: a bad output path fails at once
    runs = gather_runs(config, run_dirs, progress, cache)
    if not runs:
        where = f"{config.path}: no [[runs]] table" if config is not None else "no run"
        raise OutputError(f"{where} and no --runs RUN_DIR: nothing to build")
    series = [(one, _training_curves(config, one)) for one in (config.series if config else ())]
    return build_site(
        runs,
        output,
        title or (config.title if config else "Gate Reporter"),
        (config.thresholds if config else None),
        progress,
        series,
    )

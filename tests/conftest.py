"""Fixtures shared by the test files: the sample runs and site, replayed once per session into a
temporary folder (tests never write into the checkout), and a way to feed a trace to a standalone
accumulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from reporter.config import load_config
from reporter.pipeline.run_cache import cached_run
from reporter.runstore import Run

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = ROOT / "reporter.toml"


@pytest.fixture(scope="session")
def runs_cache(tmp_path_factory) -> Path:
    """The replay cache of the sample models for this test session (what `make site` keeps in runs/)."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def sample_runs(runs_cache) -> dict[tuple[str, str], Run]:
    """The sample runs by (model, version), replayed once per session."""
    config = load_config(SAMPLE_CONFIG)
    return {(run.model, run.version): cached_run(run, runs_cache) for run in config.runs}

"""Fuzzing the readers of files other people make: windows, reporter.toml and run directories.

Hypothesis mutates valid files (flipped bytes, cuts, insertions) for a bounded number of examples;
every outcome must be a result or the tool's own one-line error, never another exception."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reporter.config import load_config
from reporter.errors import ConfigError, RunError, WindowsFileError
from reporter.replay.windows import open_windows_source
from reporter.runstore import ARRAYS, LATER_ARRAYS, LATER_TABLES, TABLES, Run
from tests.test_runstore import _run

FUZZ = settings(
    max_examples=int(os.environ.get("GATE_REPORTER_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "cut", "insert", "zero"]), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, edits) -> bytes:
    """Apply edits (at positions wrapped into the data) to bytes."""
    data = bytearray(data)
    for kind, position, payload in edits:
        at = position % max(1, len(data))
        if kind == "flip" and data:
            data[at] ^= payload[0] or 1
        elif kind == "cut":
            del data[at : at + 1 + payload[0] % 64]
        elif kind == "insert":
            data[at:at] = payload
        elif kind == "zero":
            data[at : at + len(payload)] = bytes(len(data[at : at + len(payload)]))
    return bytes(data)


def _valid_windows(folder: Path) -> dict[str, bytes]:
    x = np.random.default_rng(0).standard_normal((6, 5, 3)).astype(np.float32)
    np.save(folder / "w.npy", x)
    np.savez(folder / "w.npz", x=x)
    np.savez_compressed(folder / "c.npz", x=x)
    pd.DataFrame(x.reshape(-1, 3), columns=list("abc")).to_csv(folder / "w.csv", index=False)
    pd.DataFrame(x.reshape(-1, 3), columns=list("abc")).to_parquet(folder / "w.parquet")
    return {name: (folder / name).read_bytes() for name in ("w.npy", "w.npz", "c.npz", "w.csv", "w.parquet")}


@FUZZ
@given(name=st.sampled_from(["w.npy", "w.npz", "c.npz", "w.csv", "w.parquet"]), edits=mutations)
def test_windows_readers_give_windows_or_their_own_error(tmp_path_factory, name, edits):
    folder = tmp_path_factory.mktemp("fuzz-windows")
    valid = _valid_windows(folder)
    path = folder / name
    path.write_bytes(mutate(valid[name], edits))
    try:
        source = open_windows_source(path, window=5)
        for indices, windows in source.batches(4):
            assert windows.shape[0] == len(indices) and windows.dtype in (np.float32, np.int64)
    except WindowsFileError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)


CONFIG = """[site]
title = "sample"
output = "site"

[[runs]]
model = "m"
version = "v1"
checkpoint = "m.pt"
windows = "w.npz"
factory_kwargs = { hidden = 4 }

[[runs]]
model = "m"
version = "v2"
checkpoint = "m2.pt"
windows = "w.npz"
baseline = "v1"

[check]
wasserstein = 0.1
"""


@FUZZ
@given(edits=mutations)
def test_config_reader_gives_a_config_or_its_own_error(tmp_path_factory, edits):
    path = tmp_path_factory.mktemp("fuzz-config") / "reporter.toml"
    path.write_bytes(mutate(CONFIG.encode(), edits))
    try:
        config = load_config(path)
        assert config.runs and all(run.model and run.version for run in config.runs)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-run") / "run"
    run = _run()
    run.timings = {"replay_seconds": 1.5, "windows_per_second": 200.0}
    run.vocab = [" ", "a", "\n", '"']
    run.save(folder)
    assert sorted(path.name for path in folder.iterdir()) == sorted(RUN_FILES)  # every file is fuzzed
    return folder


RUN_FILES = [
    "run.json",
    "layers.json",
    "timings.json",
    "vocab.json",
    *(f"{t}.parquet" for t in (*TABLES, *LATER_TABLES)),
    *(f"{a}.npz" for a in (*ARRAYS, *LATER_ARRAYS)),
]


@FUZZ
@given(member=st.sampled_from(RUN_FILES), edits=mutations)
def test_run_store_reader_gives_a_run_or_its_own_error(tmp_path_factory, saved_run, member, edits):
    folder = tmp_path_factory.mktemp("fuzz-copy") / "run"
    shutil.copytree(saved_run, folder)
    (folder / member).write_bytes(mutate((saved_run / member).read_bytes(), edits))
    try:
        run = Run.load(folder)
        assert isinstance(run.meta["model"], str) and run.layers
    except RunError as exc:
        assert str(exc).startswith(str(folder)) and "\n" not in str(exc)

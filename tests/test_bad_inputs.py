"""The bad-input corpus: each case is exit code 2 and one line on stderr naming the file and the
problem, with no traceback, and nothing written. (Checkpoint, export, windows and config readers
have finer-grained tests of their own; this drives the command line end to end.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from reporter.cli import main
from tests.tiny_models import save_tiny, tiny_charlm

FACTORY = "tests.tiny_models:tiny_forecaster"
TOML = """[site]
title = "t"
output = "site"

[[runs]]
model = "tiny"
version = "v1"
checkpoint = "tiny.pt"
factory = "tests.tiny_models:tiny_forecaster"
windows = "windows.npz"
"""


def _corpus(p: Path) -> None:
    """Write every bad input beside a good tiny model and its windows."""
    save_tiny(p)
    data = (p / "tiny.pt").read_bytes()
    (p / "truncated.pt").write_bytes(data[: len(data) // 2])
    (p / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"rnn.weight": torch.zeros(3)}, p / "misfit.pt")
    x = np.random.default_rng(1).standard_normal((6, 7, 3)).astype(np.float32)
    np.save(p / "features.npy", np.zeros((6, 7, 5), np.float32))
    np.save(p / "rank.npy", np.zeros((6, 7), np.float32))
    np.save(p / "dtype.npy", np.zeros((6, 7, 3), np.complex64))
    nan = x.copy()
    nan[2, 3, 1] = np.nan
    np.save(p / "nan.npy", nan)
    np.save(p / "zero.npy", np.zeros((0, 7, 3), np.float32))
    (p / "garbage.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': garbage" + bytes(100))
    np.savez(p / "keys.npz", inputs=x, labels=np.zeros(6))
    torch.save(tiny_charlm().state_dict(), p / "charlm.pt")
    np.save(p / "tokens.npy", np.array([[1, 2, 3, 25], [0, 1, 2, 3]], dtype=np.int64))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 3])],
    )
    onnx.save(helper.make_model(graph), p / "plain.onnx")
    (p / "syntax.toml").write_text(TOML.replace('version = "v1"', 'version = "v1'))
    (p / "unknown.toml").write_text(TOML.replace("windows =", "windwos ="))
    (p / "twice.toml").write_text(TOML + TOML.split("\n\n", 1)[1])
    (p / "a_file").write_text("not a folder")


def replay(
    p: Path, checkpoint: str = "tiny.pt", windows: str = "windows.npz", output: str = "out", *extra
) -> list[str]:
    return [
        "replay",
        str(p / checkpoint),
        "--factory",
        FACTORY,
        "--windows",
        str(p / windows),
        "-o",
        str(p / output),
        "--provider",
        "cpu",
        *extra,
    ]


CASES = {
    "missing checkpoint": (lambda p: replay(p, "missing.pt"), "missing.pt: no such file"),
    "truncated checkpoint": (lambda p: replay(p, "truncated.pt"), "truncated.pt: not a readable torch checkpoint"),
    "random-bytes checkpoint": (lambda p: replay(p, "random.pt"), "random.pt: not a torch checkpoint"),
    "state_dict that does not fit": (
        lambda p: replay(p, "misfit.pt"),
        "misfit.pt: state_dict does not fit the factory: missing keys rnn.weight_ih_l0",
    ),
    "factory that does not import": (
        lambda p: [
            "replay",
            str(p / "tiny.pt"),
            "--factory",
            "no_such_pkg.models:build",
            "--windows",
            str(p / "windows.npz"),
            "-o",
            str(p / "out"),
        ],
        "no_such_pkg",
    ),
    "wrong feature count": (
        lambda p: replay(p, windows="features.npy"),
        "features.npy: expected 3 features per step, got 5",
    ),
    "wrong rank": (lambda p: replay(p, windows="rank.npy"), "rank.npy: float windows must be [N, T, F]"),
    "wrong dtype": (lambda p: replay(p, windows="dtype.npy"), "dtype.npy: windows must be float or integer"),
    "NaN": (
        lambda p: replay(p, windows="nan.npy"),
        "nan.npy: 1 of 6 windows hold NaN or Inf (windows 2; first at window 2, step 3, feature 1)",
    ),
    "zero windows": (lambda p: replay(p, windows="zero.npy"), "zero.npy: holds no windows"),
    "garbage npy": (lambda p: replay(p, windows="garbage.npy"), "garbage.npy: not a readable .npy file"),
    "npz without the array": (
        lambda p: replay(p, windows="keys.npz"),
        "keys.npz: no array named 'x'; it has inputs, labels",
    ),
    "token ids outside the embedding": (
        lambda p: [
            "replay",
            str(p / "charlm.pt"),
            "--factory",
            "tests.tiny_models:tiny_charlm",
            "--windows",
            str(p / "tokens.npy"),
            "-o",
            str(p / "out"),
        ],
        "tokens.npy: token ids must lie in [0, 19] (the embedding's rows), found ids from 0 to 25",
    ),
    "ONNX without a recurrent node": (
        lambda p: replay(p, "plain.onnx"),
        "plain.onnx: model 'plain' has no LSTM, GRU or RNN",
    ),
    "config syntax error": (lambda p: ["build", "--config", str(p / "syntax.toml")], "syntax.toml: TOML syntax error"),
    "config unknown key": (
        lambda p: ["build", "--config", str(p / "unknown.toml")],
        "unknown.toml: unknown key 'windwos' in [[runs]] #1; did you mean 'windows'?",
    ),
    "two runs with one model and version": (
        lambda p: ["build", "--config", str(p / "twice.toml")],
        "twice.toml: two runs are model 'tiny' version 'v1'",
    ),
    "output that is an existing file": (lambda p: replay(p, output="a_file"), "a_file: exists and is not a folder"),
    "unwritable output folder": (lambda p: replay(p, output=str(_unwritable(p) / "out")), "cannot write in"),
}


def _unwritable(p: Path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits: use /sys)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = p / "locked"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o500)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    _corpus(folder)
    return folder


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_exit_2_with_one_line_naming_the_file(corpus, case, capsys):
    make_args, message = CASES[case]
    code = main(make_args(corpus))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("gate-report: error: "), lines
    assert message in lines[0]
    assert "Traceback" not in captured.err
    assert not (corpus / "out").exists() and not [q for q in corpus.iterdir() if q.name.startswith(".out")]


def test_a_subprocess_shows_no_traceback_and_debug_does(corpus):
    args = replay(corpus, windows="nan.npy")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    plain = subprocess.run([sys.executable, "-m", "reporter.cli", *args], capture_output=True, text=True, env=env)
    debug = subprocess.run(
        [sys.executable, "-m", "reporter.cli", "--debug", *args], capture_output=True, text=True, env=env
    )
    assert plain.returncode == debug.returncode == 2
    assert plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr and "nan.npy" in debug.stderr.splitlines()[-1]

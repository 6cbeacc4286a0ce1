"""The gate-report command: exit codes, one-line errors, and what export writes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from reporter.cli import main
from reporter.layers import layers_from_json
from tests.tiny_models import save_tiny, tiny_forecaster

FACTORY = "tests.tiny_models:tiny_forecaster"


def test_export_writes_exposed_model_and_manifest(tmp_path, capsys):
    checkpoint, windows = save_tiny(tmp_path)
    out = tmp_path / "tiny.onnx"
    code = main(
        [
            "export",
            str(checkpoint),
            "--factory",
            FACTORY,
            "--kwargs",
            '{"hidden": 6}',
            "--windows",
            str(windows),
            "-o",
            str(out),
        ]
    )
    assert code == 0
    layers = layers_from_json((tmp_path / "tiny.layers.json").read_text())
    assert [(layer.name, layer.kind, layer.hidden_size, layer.directions) for layer in layers] == [
        ("rnn.l0", "LSTM", 6, 1),
        ("rnn.l1", "LSTM", 6, 1),
    ]
    assert "export parity max |Δ|" in capsys.readouterr().out
    # The written model's first output is the torch model's output; the gates follow.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.load(windows)["x"]
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    with torch.no_grad():
        expected = tiny_forecaster().eval()(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(None, {"x": x})[0] - expected).max() < 1e-5
    assert outputs[layers[1].outputs["h"]].shape == (10, 7, 1, 6)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def run_cli(*args, cwd):
    """Run gate-report in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "reporter.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p: ["export", str(p / "missing.pt"), "-o", str(p / "o.onnx")], "missing.pt"),
        (lambda p: ["export", str(p / "junk.pt"), "--factory", FACTORY, "-o", str(p / "o.onnx")], "junk.pt"),
        (
            lambda p: ["export", str(p / "tiny.pt"), "--factory", "no_such_pkg.mod:f", "-o", str(p / "o.onnx")],
            "no_such_pkg",
        ),
        (
            lambda p: [
                "export",
                str(p / "tiny.pt"),
                "--factory",
                FACTORY,
                "--kwargs",
                "{hidden: 6}",
                "-o",
                str(p / "o.onnx"),
            ],
            "--kwargs: not valid JSON",
        ),
        (
            lambda p: [
                "export",
                str(p / "tiny.pt"),
                "--factory",
                FACTORY,
                "--kwargs",
                '{"hidden": 9}',
                "-o",
                str(p / "o.onnx"),
            ],
            "tiny.pt",
        ),
        (lambda p: ["export", str(p / "tiny.pt"), "--factory", FACTORY, "-o", str(p)], "is a directory"),
        (
            lambda p: ["export", str(p / "tiny.pt"), "--factory", FACTORY, "-o", str(p / "tiny.pt" / "o.onnx")],
            "tiny.pt is a file, not a folder",
        ),
        (
            lambda p: [
                "export",
                str(p / "tiny.pt"),
                "--factory",
                FACTORY,
                "--windows",
                str(p / "bad.npz"),
                "-o",
                str(p / "o.onnx"),
            ],
            "bad.npz: no array named 'x'; it has y",
        ),
        (lambda p: ["build", "--config", str(p / "missing.toml")], "missing.toml: no such file"),
        (lambda p: ["build", str(p / "missing.toml")], "missing.toml: no such file"),
        (lambda p: ["build", str(p)], "is a folder; give a site config (.toml), or run folders with --runs"),
        (lambda p: ["build", str(p / "a.toml"), "--config", str(p / "b.toml")], "build: two site configs given"),
        (lambda p: ["build", str(p / ("a" * 300 + ".toml"))], "cannot read"),  # a name the system refuses
        (
            lambda p: ["build", "--runs", str(p), str(p / "a.toml")],
            "a.toml: a site config among the --runs folders; give it before --runs, or with --config",
        ),
    ],
)
def test_bad_input_is_exit_2_with_one_line(tmp_path, make_args, message):
    save_tiny(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint" * 20)
    np.savez(tmp_path / "bad.npz", y=np.zeros(3))
    result = run_cli(*make_args(tmp_path), cwd=None)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gate-report: error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "o.onnx"), cwd=None)
    assert result.returncode == 2 and "Traceback" in result.stderr and "missing.pt" in result.stderr


@pytest.mark.parametrize("command", ["export", "replay", "bench", "build", "serve", "diff", "check"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"gate-report {command}" in capsys.readouterr().out


def test_usage_error_is_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export"])
    assert exit_info.value.code == 2


def test_serve_previews_a_built_site_on_localhost(tmp_path):
    import urllib.request

    (tmp_path / "index.html").write_text("<h1>gates</h1>")
    server = subprocess.Popen(
        [sys.executable, "-m", "reporter.cli", "serve", str(tmp_path), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline()
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "index.html", timeout=10) as response:
            assert response.read() == b"<h1>gates</h1>"
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()
    assert run_cli("serve", str(tmp_path / "empty"), cwd=None).returncode == 2


def test_outputs_get_their_missing_folders_and_normal_permissions(tmp_path, capsys):
    checkpoint, windows = save_tiny(tmp_path)
    out = tmp_path / "models" / "exported" / "tiny.onnx"
    assert main(["export", str(checkpoint), "--factory", FACTORY, "-o", str(out)]) == 0
    run = tmp_path / "runs" / "nested" / "tiny"
    common = ["--factory", FACTORY, "--windows", str(windows), "--version"]
    assert main(["replay", str(checkpoint), *common, "v1", "-o", str(run)]) == 0
    review = tmp_path / "review" / "deeper"
    args = ["diff", str(run), str(run), "--markdown", str(review / "gates.md"), "--single-file", str(review / "g.html")]
    assert main([*args, "-o", str(tmp_path / "diffs" / "self")]) == 0
    capsys.readouterr()
    umask = _umask()
    for path in (out, out.with_name("tiny.layers.json"), review / "gates.md", review / "g.html"):
        assert path.is_file() and path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert (run / "run.json").is_file() and (tmp_path / "diffs" / "self" / "index.html").is_file()
    assert (out.parent.stat().st_mode & 0o777) == 0o777 & ~umask


def test_a_config_with_only_a_site_table_builds_the_given_runs(tmp_path, capsys):
    checkpoint, windows = save_tiny(tmp_path)
    run = tmp_path / "runs" / "tiny"
    args = ["--factory", FACTORY, "--windows", str(windows), "--name", "tiny", "--version", "v1", "-o", str(run)]
    assert main(["replay", str(checkpoint), *args]) == 0
    config = tmp_path / "reporter.toml"
    config.write_text('[site]\ntitle = "Only a site"\noutput = "built"\n')
    assert main(["build", "--config", str(config), "--runs", str(run)]) == 0
    assert "Only a site" in (tmp_path / "built" / "index.html").read_text()
    assert main(["build", "--config", str(config)]) == 2
    assert "reporter.toml: no [[runs]] table and no --runs RUN_DIR: nothing to build" in capsys.readouterr().err
    config.write_text('[site]\ntitle = "Named on the line"\noutput = "positional"\n')
    assert main(["build", str(config), "--runs", str(run)]) == 0  # the config as a positional argument
    assert "Named on the line" in (tmp_path / "positional" / "index.html").read_text()


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask

"""reporter.toml parsing: valid files load; each mistake is one line naming file, line or key."""

from __future__ import annotations

import pytest

from reporter.config import load_config
from reporter.errors import ConfigError

VALID = """
[site]
title = "Models"
output = "out"

[[runs]]
model = "m"
version = "v1"
checkpoint = "a.pt"
factory = "pkg.mod:build"
factory_kwargs = { hidden = 4 }
windows = "w.npz"

[[runs]]
model = "m"
version = "v2"
checkpoint = "b.pt"
windows = "w.npz"
baseline = "v1"
"""


def write(tmp_path, text):
    path = tmp_path / "reporter.toml"
    path.write_text(text)
    return path


def test_valid_config_resolves_paths_against_its_folder(tmp_path):
    config = load_config(write(tmp_path, VALID))
    assert config.title == "Models" and config.output == tmp_path / "out"
    first, second = config.runs
    assert first.checkpoint == tmp_path / "a.pt" and first.factory_kwargs == {"hidden": 4}
    assert second.baseline == "v1" and second.factory is None


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, VALID.replace('version = "v2"', "version = v2"))
    with pytest.raises(ConfigError, match=r"reporter\.toml: TOML syntax error: .*line 16"):
        load_config(path)


def test_unknown_key_suggests_nearest(tmp_path):
    path = write(tmp_path, VALID.replace('checkpoint = "a.pt"', 'chekpoint = "a.pt"'))
    with pytest.raises(ConfigError, match=r"unknown key 'chekpoint' in \[\[runs\]\] #1; did you mean 'checkpoint'\?"):
        load_config(path)


def test_duplicate_model_and_version_refused(tmp_path):
    with pytest.raises(ConfigError, match="two runs are model 'm' version 'v1'"):
        load_config(write(tmp_path, VALID.replace('version = "v2"', 'version = "v1"').replace('baseline = "v1"', "")))


def test_baseline_must_be_a_version_of_the_same_model(tmp_path):
    with pytest.raises(ConfigError, match="baseline 'v0'"):
        load_config(write(tmp_path, VALID.replace('baseline = "v1"', 'baseline = "v0"')))


def test_missing_required_key_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"\[\[runs\]\] #2 is missing 'windows'"):
        load_config(write(tmp_path, VALID.replace('checkpoint = "b.pt"\nwindows = "w.npz"', 'checkpoint = "b.pt"')))
    with pytest.raises(ConfigError, match="nope.toml: no such file"):
        load_config(tmp_path / "nope.toml")


def test_a_run_feeds_inputs_the_same_for_every_window(tmp_path):
    text = VALID.replace(
        'windows = "w.npz"\n\n', 'windows = "w.npz"\nfeed = { sr = 16000, h = "zeros", s = "st/s.npy" }\n\n', 1
    )
    run = load_config(write(tmp_path, text)).runs[0]
    assert run.feed == {"sr": 16000, "h": "zeros", "s": str(tmp_path / "st" / "s.npy")}
    with pytest.raises(ConfigError, match=r"reporter.toml: \[\[runs\]\] #1.feed must be a table"):
        load_config(write(tmp_path, VALID.replace('windows = "w.npz"\n\n', 'windows = "w.npz"\nfeed = 3\n\n', 1)))

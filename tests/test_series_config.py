"""[[series]] tables: checkpoints ordered by the number in their names or by given values, each a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from reporter.config import load_config
from reporter.errors import ConfigError
from reporter.series import format_value, number_in_name


def _config(tmp_path: Path, series: str, files=()) -> Path:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    path = tmp_path / "reporter.toml"
    path.write_text(f'[[series]]\nmodel = "m"\nwindows = "w.npz"\n{series}\n', encoding="utf-8")
    return path


def test_a_glob_is_ordered_by_the_number_in_each_name_not_alphabetically(tmp_path):
    names = ["ckpt/epoch=10.pt", "ckpt/epoch=2.pt", "ckpt/epoch=1.pt"]
    config = load_config(_config(tmp_path, 'checkpoints = "ckpt/epoch=*.pt"', names))
    (series,) = config.series
    assert series.key == "epoch" and series.values == (1.0, 2.0, 10.0)
    assert series.versions == ("epoch=1", "epoch=2", "epoch=10")
    assert [run.checkpoint.name for run in config.runs] == ["epoch=1.pt", "epoch=2.pt", "epoch=10.pt"]
    assert [run.version for run in config.runs] == list(series.versions)
    assert all(run.model == "m" and run.windows == tmp_path / "w.npz" for run in config.runs)


def test_lightning_names_are_ordered_by_the_key_not_the_first_number(tmp_path):
    names = ["v2/epoch=3-step=40.ckpt", "v2/epoch=12-step=10.ckpt"]
    config = load_config(_config(tmp_path, 'checkpoints = "v2/*.ckpt"', names))
    assert config.series[0].values == (3.0, 12.0)
    assert number_in_name(Path("run7-forget_bias=0.5.pt"), "forget_bias") == 0.5
    assert number_in_name(Path("model_3.pt"), "epoch") == 3.0


def test_a_sweep_takes_values_in_the_order_of_a_list(tmp_path):
    names = ["b.pt", "a.pt", "c.pt"]
    text = 'checkpoints = ["b.pt", "a.pt", "c.pt"]\nkey = "forget_bias"\nvalues = [0, 0.5, 1.5]'
    config = load_config(_config(tmp_path, text, names))
    assert [run.version for run in config.runs] == ["forget_bias=0", "forget_bias=0.5", "forget_bias=1.5"]
    assert [run.checkpoint.name for run in config.runs] == names


def test_a_series_sits_beside_runs_and_finds_its_metrics(tmp_path):
    files = ["logs/ckpts/epoch=0.pt", "logs/ckpts/epoch=1.pt", "logs/metrics.csv", "v1.pt"]
    path = _config(tmp_path, 'checkpoints = "logs/ckpts/*.pt"', files)
    path.write_text(
        '[[runs]]\nmodel = "m"\nversion = "v1"\ncheckpoint = "v1.pt"\nwindows = "w.npz"\n' + path.read_text(),
        encoding="utf-8",
    )
    config = load_config(path)
    assert [run.version for run in config.runs] == ["v1", "epoch=0", "epoch=1"]
    assert config.series[0].metrics == tmp_path / "logs" / "metrics.csv"
    assert config.series[0].name == "m over epoch"


@pytest.mark.parametrize(
    ("text", "files", "message"),
    [
        ('checkpoints = "none/*.pt"', [], "matches no file"),
        ('checkpoints = "*.pt"', ["best.pt"], "no number in 'best.pt'"),
        ('checkpoints = ["a.pt", "b.pt"]\nvalues = [1]', ["a.pt", "b.pt"], "1 numbers for 2 checkpoints"),
        ('checkpoints = ["a.pt", "b.pt"]\nvalues = [1, 1.0]', ["a.pt", "b.pt"], "two checkpoints have epoch = 1"),
        ('checkpoints = ["a.pt"]\nvalues = ["x"]', ["a.pt"], "values must be a list of numbers"),
        ('checkpoints = "*.pt"\nversion = "v1"', ["e1.pt"], "unknown key 'version'"),
        ('checkpoints = "*.pt"\nkey = "forget bias"', ["e1.pt"], "must be a name"),
        ('checkpoints = "*.pt"\nmetrics = "gone.csv"', ["e1.pt"], "no such file 'gone.csv'"),
        ("key = 'epoch'", [], "missing 'checkpoints'"),
    ],
)
def test_mistakes_are_one_line_naming_the_series(tmp_path, text, files, message):
    path = _config(tmp_path, text, files)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value) and str(path) in str(caught.value) and "[[series]] #1" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_series_version_clashing_with_a_run_is_refused(tmp_path):
    path = _config(tmp_path, 'checkpoints = "e*.pt"', ["e1.pt"])
    path.write_text(
        '[[runs]]\nmodel = "m"\nversion = "epoch=1"\ncheckpoint = "e1.pt"\nwindows = "w.npz"\n' + path.read_text(),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="two runs are model 'm' version 'epoch=1'"):
        load_config(path)


def test_values_print_without_trailing_zeros():
    assert [format_value(v) for v in (3.0, 0.5, 1e-5, -2.0)] == ["3", "0.5", "1e-05", "-2"]

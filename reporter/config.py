"""Read `reporter.toml`: the site's title and output folder, and the runs to report.

    [site]
    title = "…"
    output = "site"

    [[runs]]
    model = "forecaster"          version = "v2"
    checkpoint = "….pt"           factory = "package.module:function"
    factory_kwargs = { … }        windows = "….npz"          baseline = "v1"
    feed = { sr = 16000, h = "zeros" }   # model inputs fed the same for every window
    carry = { state = "stateN" }         # a streaming model's state, fed back call after call
    vocab = "vocab.json"                 # a token model's vocabulary: its windows read as text

    [[series]]                    # checkpoints over training or a sweep (`reporter.series`)
    model = "forecaster"          checkpoints = "ckpts/epoch=*.pt"   key = "epoch"
    windows = "….npz"             factory = "…"   # and the other [[runs]] keys but version/baseline

    [check]                       # thresholds for `gate-report check` and the diff pages
    saturation_delta = 0.1        wasserstein = 0.05   anomaly_rate_delta = 0.05   output_drift = 0.1

Paths are relative to the config file's folder. Mistakes are one-line `ConfigError`s naming the
file, the line (for syntax errors) or the key, with the nearest valid key suggested.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from reporter.compare.thresholds import parse_thresholds
from reporter.errors import ConfigError
from reporter.series import SERIES_KEYS, SeriesConfig, default_metrics, format_value, ordered_checkpoints

__all__ = ["RunConfig", "SiteConfig", "load_config"]

_SITE_KEYS = {"title", "output"}
_RUN_KEYS = {
    "model",
    "version",
    "checkpoint",
    "factory",
    "factory_kwargs",
    "windows",
    "baseline",
    "trust_pickle",
    "feed",
    "carry",
    "vocab",
}
_REQUIRED_RUN_KEYS = ("model", "version", "checkpoint", "windows")


@dataclass(frozen=True)
class RunConfig:
    """One checkpoint to replay and report."""

    model: str
    version: str
    checkpoint: Path
    windows: Path
    factory: str | None = None
    factory_kwargs: dict = field(default_factory=dict)
    baseline: str | None = None
    trust_pickle: bool = False
    feed: dict = field(default_factory=dict)  # input name -> a number, a list, "zeros" or a .npy path (relative)
    carry: dict | None = None  # state input -> the output fed back to it (None: detected)
    vocab: Path | None = None  # a token model's vocabulary (`reporter.vocab`): its windows read as text


@dataclass(frozen=True)
class SiteConfig:
    """The whole configuration file."""

    path: Path
    title: str
    output: Path
    runs: tuple[RunConfig, ...]  # [[runs]], then every [[series]] checkpoint as a run of its own
    thresholds: dict = field(default_factory=dict)  # [check], over `reporter.compare.thresholds.DEFAULT_THRESHOLDS`
    series: tuple[SeriesConfig, ...] = ()


def _check_keys(path: Path, where: str, table: dict, allowed: set[str]) -> None:
    """Refuse unknown keys, suggesting the closest known one."""
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(allowed))}"
            raise ConfigError(f"{path}: unknown key {key!r} in {where}{hint}")


def _string(path: Path, where: str, table: dict, key: str, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{path}: {where} is missing {key!r}")
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {where}.{key} must be a non-empty string, got {value!r}")
    return value


def _run(path: Path, index: int, table: dict, where: str | None = None) -> RunConfig:
    where = where or f"[[runs]] #{index + 1}"
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    _check_keys(path, where, table, _RUN_KEYS)
    values = {key: _string(path, where, table, key, required=True) for key in _REQUIRED_RUN_KEYS}
    kwargs = table.get("factory_kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{path}: {where}.factory_kwargs must be a table, got {kwargs!r}")
    trust = table.get("trust_pickle", False)
    if not isinstance(trust, bool):
        raise ConfigError(f"{path}: {where}.trust_pickle must be true or false")
    carry = table.get("carry")
    if carry is not None and not (isinstance(carry, dict) and all(isinstance(v, str) for v in carry.values())):
        raise ConfigError(f'{path}: {where}.carry must be a table of input = "output"')
    feed = table.get("feed", {})
    if not isinstance(feed, dict) or not all(isinstance(value, (int, float, str, list)) for value in feed.values()):
        raise ConfigError(f'{path}: {where}.feed must be a table of input = a number, a list, "zeros" or a .npy path')
    base = path.parent
    vocab = _string(path, where, table, "vocab")
    return RunConfig(
        model=values["model"],
        version=values["version"],
        checkpoint=base / values["checkpoint"],
        windows=base / values["windows"],
        factory=_string(path, where, table, "factory"),
        factory_kwargs=kwargs,
        baseline=_string(path, where, table, "baseline"),
        trust_pickle=trust,
        carry=carry,
        vocab=base / vocab if vocab else None,
        feed={
            name: str(base / value) if isinstance(value, str) and value.endswith(".npy") else value
            for name, value in feed.items()
        },
    )


def load_config(path: Path) -> SiteConfig:
    """Parse and validate a site configuration file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    _check_keys(path, "the top level", data, {"site", "runs", "series", "check"})
    site = data.get("site", {})
    if not isinstance(site, dict):
        raise ConfigError(f"{path}: [site] must be a table")
    _check_keys(path, "[site]", site, _SITE_KEYS)
    runs = data.get("runs", [])  # none is fine: `build --runs DIR` may bring every run
    if not isinstance(runs, list):
        raise ConfigError(f"{path}: runs must be [[runs]] tables")
    parsed = tuple(_run(path, k, table) for k, table in enumerate(runs))
    tables = data.get("series", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: series must be [[series]] tables")
    series = [_series(path, k, table) for k, table in enumerate(tables)]
    parsed += tuple(run for _, series_runs in series for run in series_runs)
    seen: set[tuple[str, str]] = set()
    for run in parsed:
        if (run.model, run.version) in seen:
            raise ConfigError(f"{path}: two runs are model {run.model!r} version {run.version!r}")
        seen.add((run.model, run.version))
    versions = {(run.model, run.version) for run in parsed}
    for run in parsed:
        if run.baseline is not None and (run.model, run.baseline) not in versions:
            raise ConfigError(
                f"{path}: run {run.model} {run.version} has baseline {run.baseline!r}, "
                f"which is not a version of {run.model!r} here"
            )
    title = _string(path, "[site]", site, "title") or "Gate Reporter"
    output = path.parent / (_string(path, "[site]", site, "output") or "site")
    return SiteConfig(
        path=path,
        title=title,
        output=output,
        runs=parsed,
        thresholds=_thresholds(path, data),
        series=tuple(one for one, _ in series),
    )


def _series(path: Path, index: int, table: dict) -> tuple[SeriesConfig, list[RunConfig]]:
    """A [[series]] table: its description, and one run per checkpoint (version "KEY=VALUE")."""
    where = f"[[series]] #{index + 1}"
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    _check_keys(path, where, table, (_RUN_KEYS - {"version", "checkpoint", "baseline"}) | SERIES_KEYS)
    key = _string(path, where, table, "key") or "epoch"
    if not key.isidentifier():
        raise ConfigError(f"{path}: {where}.key must be a name like epoch or forget_bias, got {key!r}")
    if "checkpoints" not in table:
        raise ConfigError(f"{path}: {where} is missing 'checkpoints'")
    paths, values = ordered_checkpoints(path, where, table["checkpoints"], key, table.get("values"))
    run_keys = {name: value for name, value in table.items() if name in _RUN_KEYS}
    runs = [
        _run(
            path,
            index,
            {**run_keys, "version": f"{key}={format_value(value)}", "checkpoint": str(checkpoint.absolute())},
            where,
        )
        for checkpoint, value in zip(paths, values)
    ]
    metrics = _string(path, where, table, "metrics")
    if metrics and not (path.parent / metrics).is_file():
        raise ConfigError(f"{path}: {where}.metrics: no such file {metrics!r}")
    return SeriesConfig(
        name=_string(path, where, table, "name") or f"{runs[0].model} over {key}",
        model=runs[0].model,
        key=key,
        values=tuple(values),
        versions=tuple(run.version for run in runs),
        metrics=path.parent / metrics if metrics else default_metrics(paths),
    ), runs


def _thresholds(path: Path, data: dict) -> dict:
    """The [check] table, validated (unknown keys and non-numbers are errors)."""
    table = data.get("check")
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [check] must be a table")
    return parse_thresholds(table, where=f"{path}: [check]")

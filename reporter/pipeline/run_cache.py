"""Reuse a configured run's replay while its checkpoint, windows and settings are unchanged.

The cache key hashes what shapes a run's numbers: the checkpoint's, windows' and vocabulary's
sha256, the factory, its arguments and the file of the module that defines it, the model's name and
version, the run settings, the versions of Gate Reporter, onnxruntime, onnx, torch, numpy and pandas
and of the run schema, and the source of Gate Reporter's modules that make a run
(`code_fingerprint`: after a fix within one version number, or a local edit, runs replay again).
Not followed: modules the factory's module imports in turn, and which provider `auto` picks. A
run directory `CACHE/<model>-<version>-<key>` whose `run.json` carries that key is loaded instead
of replayed; anything else is replayed and saved (atomically, by `Run.save`). Old entries of the
same model and version are removed after.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from reporter.config import RunConfig
from reporter.errors import RunError
from reporter.model.checkpoints import cwd_on_sys_path
from reporter.names import slug
from reporter.pipeline.make_run import RunSettings, make_run, with_vocab
from reporter.pipeline.model_source import ModelRecipe, exposed_model, input_names
from reporter.provenance import file_sha256, package_versions
from reporter.replay.feeds import feed_value, plan_feeds, windows_key
from reporter.replay.windows import open_windows_source
from reporter.runstore import ARRAYS, LATER_ARRAYS, LATER_TABLES, SCHEMA_VERSION, TABLES, Run
from reporter.vocab import load_vocab

__all__ = ["cache_key", "cached_run", "code_fingerprint", "factory_source", "source_digest"]


# Packages whose modules only read finished runs (pages, diffs' pages, the CLI, benchmarks) or
# hold none (`templates`, a package in the wheel only): an edit there leaves every run's numbers as
# they were, so it does not make the cache replay.
_READERS_ONLY = ("report", "cli", "bench", "templates")


@functools.cache
def code_fingerprint() -> str:
    """sha256 of the installed package's Python source that can shape a run (`source_digest`).

    The package version alone missed a fix made within one version number, and every edit in a
    working copy: a site rebuilt after one reused runs made by the code before it. Read once per
    process (about 60 files, a few milliseconds).
    """
    return source_digest(Path(__file__).resolve().parent.parent)


def source_digest(package: Path) -> str:
    """sha256 of every `.py` file under `package`, path and bytes, but for `_READERS_ONLY`."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] in _READERS_ONLY:
            continue
        digest.update(relative.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def factory_source(factory: str | None) -> str | None:
    """sha256 of the file that defines the factory's module, found where `import_factory` looks
    (the working folder first) and not run when it is not imported yet; None when there is none.

    A model's code changes without its checkpoint (a rescaled input, a fixed forward): the run
    must then be replayed. Modules that file imports in turn are not followed.
    """
    module = factory.split(":", 1)[0] if factory and ":" in factory else None
    if not module:
        return None
    origin = getattr(sys.modules.get(module), "__file__", None)
    if origin is None:
        with cwd_on_sys_path():
            try:
                spec = importlib.util.find_spec(module)
            except Exception:  # noqa: BLE001 - a parent package that fails to import: replay reports it
                return None
        origin = spec.origin if spec is not None else None
    return file_sha256(origin) if origin and Path(origin).is_file() else None


def _feed_identity(value) -> object:
    """A fed value as the cache key sees it: a .npy file by its content."""
    if isinstance(value, str) and value.endswith(".npy"):
        return file_sha256(value)
    return value


def cache_key(run: RunConfig, settings: RunSettings) -> str:
    """sha256 of everything that shapes the run's numbers."""
    facts = {
        "checkpoint": file_sha256(run.checkpoint),
        "windows": file_sha256(run.windows),
        "factory": run.factory,
        "factory_kwargs": run.factory_kwargs,
        "factory_source": factory_source(run.factory),
        "feed": {name: _feed_identity(value) for name, value in run.feed.items()},
        "carry": run.carry,
        "vocab": file_sha256(run.vocab) if run.vocab else None,
        "model": run.model,
        "version": run.version,
        "settings": {key: str(value) for key, value in asdict(settings).items()},
        "schema": SCHEMA_VERSION,
        "files": [*TABLES, *LATER_TABLES, *ARRAYS, *LATER_ARRAYS],  # a run that records more is replayed again
        "packages": package_versions(),  # Gate Reporter's among them
        "code": code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def cached_run(run: RunConfig, cache: Path, say: Callable[[str], None] = lambda line: None) -> Run:
    """The run for a configured model version: from the cache when still valid, else replayed now."""
    settings = RunSettings(model=run.model, version=run.version)
    vocab = load_vocab(run.vocab) if run.vocab else None  # a bad vocabulary fails before any replay
    key = cache_key(run, settings)
    prefix = f"{slug(run.model)}-{slug(run.version)}-"
    folder = cache / f"{prefix}{key[:16]}"
    if (folder / "run.json").is_file():
        try:
            cached = Run.load(folder)
            if cached.meta.get("cache_key") == key:
                say(f"{run.model} {run.version}: unchanged, using {folder}")
                return cached
        except RunError:
            pass  # a damaged entry is simply made again
    say(f"{run.model} {run.version}: replaying {run.windows.name} …")
    recipe = ModelRecipe(run.checkpoint, run.factory, run.factory_kwargs, run.trust_pickle)
    loaded = recipe.load()
    array = windows_key(run.windows, input_names(loaded, run.windows))
    source = open_windows_source(run.windows, key=array, any_rank=loaded.onnx_model is not None)
    model = exposed_model(recipe, source, loaded)
    constant = {name: feed_value(name, value) for name, value in run.feed.items()}
    feeds = plan_feeds(model.exposed, source, constant, run.carry, say)
    made = make_run(model, source, settings, None, say, feeds, vocab)
    made.meta["cache_key"] = key
    if vocab is not None:
        with_vocab(made, run.vocab, vocab)
    cache.mkdir(parents=True, exist_ok=True)
    made.save(folder)
    for stale in cache.glob(f"{prefix}*"):
        if stale != folder and stale.is_dir() and re.fullmatch(re.escape(prefix) + r"[0-9a-f]{16}", stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    return Run.load(folder)

"""The build's replay cache follows the code: a run made by other source is replayed again."""

from __future__ import annotations

import shutil
from pathlib import Path

from reporter.config import load_config
from reporter.pipeline import run_cache
from reporter.pipeline.build import build as build_site
from reporter.pipeline.make_run import RunSettings
from tests.test_site import write_config
from tests.tiny_models import save_tiny

PACKAGE = Path(run_cache.__file__).resolve().parent.parent


def _copy_of_the_package(tmp_path: Path) -> Path:
    copy = tmp_path / "reporter"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_fingerprint_is_the_installed_source():
    assert run_cache.code_fingerprint() == run_cache.source_digest(PACKAGE)
    assert len(run_cache.code_fingerprint()) == 64


def test_an_edit_that_can_change_a_run_changes_the_digest_and_a_page_edit_does_not(tmp_path):
    copy = _copy_of_the_package(tmp_path)
    before = run_cache.source_digest(copy)
    assert before == run_cache.source_digest(PACKAGE)  # path and bytes only: not where it lies
    for edited in ("replay/fused_pass.py", "model/scan_rewrite.py", "runstore.py"):
        original = (copy / edited).read_bytes()
        (copy / edited).write_bytes(original + b"\n# a fix within one version number\n")
        assert run_cache.source_digest(copy) != before, edited
        (copy / edited).write_bytes(original)
    assert run_cache.source_digest(copy) == before
    (copy / "model" / "new_cell.py").write_text("X = 1\n")  # a module added
    assert run_cache.source_digest(copy) != before
    (copy / "model" / "new_cell.py").unlink()
    (copy / "templates").mkdir(exist_ok=True)  # in a wheel, a package of its own (pyproject's package-dir)
    (copy / "templates" / "__init__.py").write_text("")
    for reader in ("report/pages.py", "cli/arguments.py", "bench/expose_cost.py", "templates/__init__.py"):
        (copy / reader).write_bytes((copy / reader).read_bytes() + b"\n# wording on a page\n")
    assert run_cache.source_digest(copy) == before


def test_a_rebuild_after_the_code_changed_replays_and_drops_the_old_entry(tmp_path, monkeypatch):
    save_tiny(tmp_path)
    config = write_config(tmp_path)
    said = []
    build_site(config, progress=said.append)
    assert any("replaying" in line for line in said)
    said.clear()
    build_site(config, progress=said.append)
    assert any("unchanged" in line for line in said) and not any("replaying" in line for line in said)
    monkeypatch.setattr(run_cache, "code_fingerprint", lambda: "0" * 64)  # the same version, other code
    said.clear()
    build_site(config, progress=said.append)
    assert any("replaying" in line for line in said) and not any("unchanged" in line for line in said)
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the entry the old code made is gone


def _key(config_path: Path) -> str:
    run = load_config(config_path).runs[0]
    return run_cache.cache_key(run, RunSettings(model=run.model, version=run.version))


def test_an_edit_to_the_factory_module_or_an_upgrade_changes_the_key(tmp_path, monkeypatch):
    save_tiny(tmp_path)
    write_config(tmp_path)
    module = tmp_path / "gr_user_model_4d1c.py"  # a user's model code beside the config, found from the cwd
    module.write_text("from tests.tiny_models import tiny_forecaster\nSCALE = 1.0\n")
    config = tmp_path / "reporter.toml"
    config.write_text(config.read_text().replace("tests.tiny_models:tiny_forecaster", f"{module.stem}:tiny_forecaster"))
    monkeypatch.chdir(tmp_path)
    before = _key(config)
    assert run_cache.factory_source(f"{module.stem}:tiny_forecaster") is not None
    assert _key(config) == before  # the same files: the same key
    module.write_text("from tests.tiny_models import tiny_forecaster\nSCALE = 3.0\n")  # the checkpoint unchanged
    edited = _key(config)
    assert edited != before
    versions = run_cache.package_versions()
    monkeypatch.setattr(run_cache, "package_versions", lambda: {**versions, "onnxruntime": "0.0.1"})
    assert _key(config) not in (before, edited)


def test_a_factory_that_cannot_be_found_leaves_the_error_to_replay():
    assert run_cache.factory_source("no_such_module_9f2e:build") is None
    assert run_cache.factory_source(None) is None
    assert run_cache.factory_source("tests.tiny_models:tiny_forecaster") == run_cache.file_sha256(
        PACKAGE.parent / "tests" / "tiny_models.py"
    )

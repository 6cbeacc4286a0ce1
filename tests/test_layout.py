"""The package's shape holds: stages import only the stages before them (import-linter contracts
in pyproject.toml), reports load without ONNX or torch, modules stay small, and the public API the
README shows is importable."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import reporter
from tests.conftest import ROOT

MAX_MODULE_LINES = 400


def test_import_contracts_are_kept():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_a_broken_contract_is_caught(tmp_path):
    """The guard itself: a report module that imports torch breaks a contract."""

    package = tmp_path / "reporter"
    for source in (ROOT / "reporter").rglob("*.py"):
        target = package / source.relative_to(ROOT / "reporter")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    numbers = package / "report" / "numbers.py"
    numbers.write_text(numbers.read_text(encoding="utf-8") + "\nimport torch  # noqa\n", encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text(encoding="utf-8"), encoding="utf-8")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(tmp_path / 'pyproject.toml')!r}, no_cache=True, no_logo=True))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Reports and comparisons need neither ONNX nor torch BROKEN" in done.stdout
    assert "reporter.report.numbers -> torch" in done.stdout


def test_reports_load_without_onnx_or_torch():
    code = (
        "import sys, reporter.report.site, reporter.report.review, reporter.compare.diff, reporter.runstore; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"


def test_no_module_is_over_400_lines():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in (ROOT / "reporter").rglob("*.py")
    }
    assert len(sizes) > 20
    assert {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}


def test_the_public_api_is_what_all_names():
    for name in reporter.__all__:
        assert getattr(reporter, name) is not None, name
    with pytest.raises(AttributeError):
        reporter.not_a_public_name  # noqa: B018


def test_the_readme_examples_import():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    imports = [line for block in blocks for line in block.splitlines() if re.match(r"(from|import) reporter", line)]
    assert imports, "the README shows no Python import of reporter"
    for line in imports:
        exec(compile(line, "README.md", "exec"), {})  # noqa: S102 - our own README's import lines

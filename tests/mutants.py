"""`make mutants`: plant one bug per guarantee in a copy of the code and check the tests catch it.

Every row of the README's "What Gate Reporter guarantees" table, and gate exactness, has at least
one planted bug here: a one-place edit of the source, applied in a temporary copy of the
repository, with the tests that must then fail. A mutation the tests let pass is a guarantee no
test holds. Each set of tests is first run with no bug planted and must pass, so a failure is the
bug's doing. Prints a table of mutation → caught by (or MISSED) and exits 1 if any was missed.

    python -m tests.mutants [NAME ...]       # all mutations, or the named ones
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    guarantee: str
    path: str  # in the copy; templates live at reporter/templates there
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments that must fail


MUTATIONS = (
    Mutation(
        "pickle-runs",
        "a checkpoint never runs code",
        "reporter/model/placeholder_pickle.py",
        '        found = _allowed().get(f"{module}.{name}")',
        '        found = _allowed().get(f"{module}.{name}") or getattr(__import__(module), name, None)',
        ("tests/test_checkpoints.py", "-k", "library_that_is_not_installed or malicious"),
    ),
    Mutation(
        "external-data",
        "external data stays in its folder",
        "reporter/model/checkpoints.py",
        "        _check_location(path, location)",
        "        pass",
        ("tests/test_checkpoints.py", "-k", "external_data"),
    ),
    Mutation(
        "exit-code",
        "bad input is exit 2 and one line",
        "reporter/cli/__init__.py",
        "        return 2",
        "        return 1",
        ("tests/test_cli.py", "-k", "bad_input or one_line"),
    ),
    Mutation(
        "no-staging",
        "nothing half-written (runs)",
        "reporter/atomic.py",
        "        yield staging\n",
        "        yield output\n        return\n",
        ("tests/test_runstore.py", "tests/test_interrupts.py"),
    ),
    Mutation(
        "site-in-place",
        "nothing half-written (sites)",
        "reporter/report/site.py",
        '                (staging / path).write_text(html, encoding="utf-8")',
        "                (output / path).parent.mkdir(parents=True, exist_ok=True)\n"
        '                (output / path).write_text(html, encoding="utf-8")',
        ("tests/test_site.py", "-k", "fails_while_writing"),
    ),
    Mutation(
        "layer-safe",
        "names render as text (layer page)",
        "reporter/templates/layer.html",
        "<code>{{ layer.name }}</code>",
        "<code>{{ layer.name | safe }}</code>",
        ("tests/test_browser.py", "-k", "hostile"),
    ),
    Mutation(
        "model-card-safe",
        "names render as text (model card)",
        "reporter/templates/run.html",
        "<tr><td><code>{{ layer.name }}</code></td>",
        "<tr><td><code>{{ layer.name | safe }}</code></td>",
        ("tests/test_browser.py", "-k", "hostile"),
    ),
    Mutation(
        "fetches",
        "pages work offline",
        "reporter/templates/base.html",
        '<script src="{{ root }}{{ assets.vega }}"></script>',
        '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>',
        ("tests/test_browser.py", "-k", "single_file or hostile"),
    ),
    Mutation(
        "gradient-cell-path",
        "gradient flow is exact",
        "reporter/replay/gradient_flow.py",
        "        gh, gc = pre @ r, total_c * f[:, t][:, None]",
        "        gh, gc = pre @ r, 0.0 * total_c",
        ("tests/test_gradient_flow.py", "-k", "equal_autograd"),
    ),
    Mutation(
        "series-order",
        "a series is in the order of its key",
        "reporter/series.py",
        "        order = sorted(range(len(paths)), key=lambda k: (numbers[k], paths[k].name))",
        "        order = sorted(range(len(paths)), key=lambda k: paths[k].name)",
        ("tests/test_series_config.py", "-k", "ordered"),
    ),
    Mutation(
        "thread-order",
        "determinism",
        "reporter/replay/runner.py",
        "stats, tracks = shards[k % len(shards)]",
        "stats, tracks = shards[self._sessions.index(session)]",
        ("tests/test_determinism.py",),
    ),
    Mutation(
        "fuzz",
        "readers survive mutated files",
        "reporter/runstore.py",
        "    except Exception as exc:  # noqa: BLE001 - zlib, zipfile and numpy raise many types on damaged files",
        "    except OSError as exc:  # noqa: BLE001 - zlib, zipfile and numpy raise many types on damaged files",
        ("tests/test_fuzz.py",),
    ),
    Mutation(
        "gates-swapped",
        "exact gates",
        "reporter/model/scan_rewrite.py",
        "pre_i, pre_o, pre_f, pre_c = (b.op(",
        "pre_f, pre_o, pre_i, pre_c = (b.op(",
        ("tests/test_expose_torch.py", "-x"),
    ),
    Mutation(
        "gru-gates-swapped",
        "exact gates (the GRU: one GEMM per gate block, each direction its own pass)",
        "reporter/model/scan_rewrite.py",
        "    z, r = (body.gate(b.op(",
        "    r, z = (body.gate(b.op(",
        ("tests/test_expose_torch.py", "tests/test_expose_spec.py", "-x", "-k", "GRU"),
    ),
    Mutation(
        "decomposed-gates-swapped",
        "exact gates (cells from elementary ops)",
        "reporter/model/cell_patterns.py",
        '                gates = dict(zip(GATES["LSTM"], (i, f, g, o, add.output[0], h)))',
        '                gates = dict(zip(GATES["LSTM"], (f, i, g, o, add.output[0], h)))',
        ("tests/test_expose_decomposed.py", "tests/test_bench.py", "-k", "decomposed"),
    ),
    Mutation(
        "loop-steps-misplaced",
        "exact gates (inside control flow)",
        "reporter/model/control_flow.py",
        "    moved = b.transpose(stacked, [1, 0, 2, 3, 4])",
        "    moved = stacked",
        ("tests/test_expose_control_flow.py",),
    ),
    Mutation(
        "histogram-dropped",
        "statistics merge exactly",
        "reporter/replay/gate_moments.py",
        '"hist": a["hist"] + b["hist"]',
        '"hist": a["hist"]',
        ("tests/test_stats.py", "-x"),
    ),
    Mutation(
        "nan-binned-low",
        "statistics are exact (the fused pass)",
        "reporter/replay/pass_kernels.py",
        "k[u] = over if v != v else",
        "k[u] = np.uintp(0) if v != v else",
        ("tests/test_fused_pass.py", "-x"),
    ),
    Mutation(
        "time-major-axes",
        "statistics are exact (time-major gates)",
        "reporter/replay/time_major.py",
        "else value).transpose(_TO_BATCH_MAJOR)",
        "else value).transpose([2, 1, 0, 3])",
        ("tests/test_time_major.py", "-x"),
    ),
    Mutation(
        "peaks-merge-lowest",
        "statistics merge exactly (unit peaks)",
        "reporter/replay/unit_tracks.py",
        "order = top_rows(-sign * np.asarray(value, np.float64), window, k)",
        "order = top_rows(sign * np.asarray(value, np.float64), window, k)",
        ("tests/test_unit_tracks.py", "-x"),
    ),
    Mutation(
        "peaks-ties-to-later-window",
        "statistics merge exactly (unit peaks)",
        "reporter/replay/top_rows.py",
        "        return window < other_window",
        "        return window > other_window",
        ("tests/test_unit_tracks.py", "-x"),
    ),
    Mutation(
        "per-window-ignored",
        "every input is fed",
        "reporter/replay/feeds.py",
        "            feeds.per_window[name] = _per_window_rows(source, inputs[name])",
        "            pass",
        ("tests/test_feeds.py",),
    ),
    Mutation(
        "state-not-carried",
        "streaming state is carried",
        "reporter/replay/calls.py",
        "        feed.update({state_in: outputs[state_out] for state_in, state_out in feeds.carry.items()})",
        "        pass",
        ("tests/test_streaming.py",),
    ),
    Mutation(
        "wheel-misses-cli",
        "a plain pip install works",
        "pyproject.toml",
        '"reporter.cli", ',
        "",
        ("tests/test_wheel.py",),
    ),
    Mutation(
        "layering",
        "the layering holds",
        "reporter/report/numbers.py",
        "import math\n",
        "import math\n\nimport onnx  # noqa: F401\n",
        ("tests/test_layout.py",),
    ),
)


def _copy(destination: Path) -> Path:
    """The repository without its venv and caches; templates inside the package, as in the wheel."""
    skip = shutil.ignore_patterns(
        ".venv", ".git", "runs", "site", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", "build", "dist"
    )
    shutil.copytree(ROOT, destination, ignore=skip)
    shutil.copytree(destination / "templates", destination / "reporter" / "templates")
    return destination


def _pytest(copy: Path, tests: tuple[str, ...]) -> tuple[bool, str, str]:
    """Run tests in the copy: (passed, the last line pytest printed, all it printed)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "GATE_REPORTER_FUZZ_EXAMPLES": "40"}
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests]
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode == 0, lines[-1] if lines else done.stderr.strip()[-120:], done.stdout


def _run(copy: Path, mutation: Mutation) -> tuple[bool, float, str]:
    """Plant the bug, run its tests, put the code back: (caught, seconds, the last line pytest printed)."""
    target = copy / mutation.path
    original = target.read_text(encoding="utf-8")
    if original.count(mutation.old) != 1:
        raise SystemExit(
            f"mutation {mutation.name}: {mutation.path} holds its text {original.count(mutation.old)} times"
        )
    target.write_text(original.replace(mutation.old, mutation.new), encoding="utf-8")
    start = time.perf_counter()
    try:
        passed, last, _ = _pytest(copy, mutation.tests)
    finally:
        target.write_text(original, encoding="utf-8")
    return not passed, time.perf_counter() - start, last


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    with tempfile.TemporaryDirectory(prefix="gate-report-mutants-") as folder:
        copy = _copy(Path(folder) / "repo")
        for mutation in chosen:  # every planted bug must find its place before any test runs
            count = (copy / mutation.path).read_text(encoding="utf-8").count(mutation.old)
            if count != 1:
                print(f"mutation {mutation.name}: {mutation.path} holds its text {count} times, not once")
                return 1
        for tests in dict.fromkeys(mutation.tests for mutation in chosen):  # unmutated, every set must pass
            passed, last, printed = _pytest(copy, tests)
            print(f"baseline {' '.join(tests)}: {last}", file=sys.stderr, flush=True)
            if not passed:
                print(printed[-6000:], file=sys.stderr)  # which test failed, and why
                print(f"the tests fail with no bug planted, so they prove nothing: {' '.join(tests)}: {last}")
                return 1
        rows = []
        for mutation in chosen:
            caught, seconds, last = _run(copy, mutation)
            rows.append((mutation, caught, seconds, last))
            print(
                f"{'caught' if caught else 'MISSED'} {mutation.name} ({seconds:.0f} s): {last}",
                file=sys.stderr,
                flush=True,
            )
    print("| guarantee | planted bug | caught by | result |\n| --- | --- | --- | --- |")
    for mutation, caught, _, last in rows:
        tests = " ".join(mutation.tests)
        print(
            f"| {mutation.guarantee} | `{mutation.name}` in `{mutation.path}` | `{tests}` | "
            f"{'caught' if caught else '**MISSED**'}: {last} |"
        )
    missed = [mutation.name for mutation, caught, _, _ in rows if not caught]
    print(
        f"\n{len(rows) - len(missed)} of {len(rows)} mutations caught"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

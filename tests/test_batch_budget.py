"""Replay's batch comes from a memory budget: sizes parse as people write them, the batch is what
fits the budget beside the process's memory, evened out so every worker has a batch in each round,
a tighter budget gives a smaller batch and the same statistics, and a bad --memory is exit 2 with
one line."""

from __future__ import annotations

import numpy as np
import pytest

from reporter.errors import ConfigError
from reporter.pipeline.model_source import ModelRecipe, exposed_model
from reporter.replay.batch_budget import CAP, OVERHEAD, balanced_batch, choose_batch, parse_memory
from reporter.replay.runner import Replayer
from reporter.replay.windows import open_windows_source
from tests.tiny_models import save_tiny


@pytest.mark.parametrize(
    "text, size",
    [("2G", 2 << 30), ("512M", 512 << 20), ("1.5GB", int(1.5 * (1 << 30))), ("800MiB", 800 << 20), ("4096", 4096)],
)
def test_memory_sizes_read_as_written(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "2X", "1.5.2G"])
def test_a_size_that_is_not_one_is_refused_naming_what_was_given(text):
    with pytest.raises(ConfigError, match="--memory"):
        parse_memory(text)


def test_the_batch_is_what_fits_the_budget_beside_what_is_used_capped_and_at_least_one():
    window = 5 << 20
    assert choose_batch(window, 2, 2 << 30, 1 << 30) == int((1 << 30) // (window * OVERHEAD * 2))
    assert choose_batch(window, 1, 2 << 30, 1 << 30) == int((1 << 30) // (window * OVERHEAD))  # one worker: twice
    assert choose_batch(1000, 2, 64 << 30, 0) == CAP
    assert choose_batch(window, 2, 1 << 30, 2 << 30) == 1  # over budget already: one window at a time


def _rounds(rows: int, batch: int, workers: int) -> int:
    """Rounds of one batch per worker that `rows` take in batches of `batch`, counted by cutting them."""
    return -(-len(range(0, rows, batch)) // workers)


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_the_evened_batch_is_the_smallest_taking_no_more_rounds_than_the_largest(workers):
    for largest in (1, 2, 7, 24, 256):
        for rows in [*range(0, 70), 255, 256, 257, 300, 511, 512, 513, 600, 4000, 5000, 50000]:
            fewest = _rounds(rows, largest, workers)
            oracle = next(b for b in range(1, largest + 1) if _rounds(rows, b, workers) == fewest)
            assert balanced_batch(largest, rows, workers) == oracle, (largest, rows, workers)
            assert balanced_batch(largest, rows, 1) == largest  # one worker: nobody to share with


def test_skipped_windows_do_not_shrink_the_batch_below_what_their_rows_need(tmp_path):
    """Batches are cut over file rows and skipped windows dropped after: 512 rows with three in four
    skipped are one round of two 256-row batches, not four rounds sized for the 128 kept."""
    replayer, _ = _tiny_replayer(tmp_path, (4, 12, 3), seed=6)
    x = np.random.default_rng(6).standard_normal((512, 12, 3)).astype(np.float32)
    x[np.arange(512) % 4 != 0, 3, 1] = np.nan
    np.save(tmp_path / "gappy.npy", x)
    source = open_windows_source(tmp_path / "gappy.npy", nan="skip")
    assert source.n_windows == 128
    result = replayer.replay(source, progress=False)
    assert result.batch_size == CAP == 256
    part = replayer.replay(source, progress=False, start=100, stop=400)  # 300 rows: two batches of 150
    assert part.batch_size == 150


def _tiny_replayer(tmp_path, shape: tuple[int, int, int], seed: int, hidden: int = 6):
    """Two sessions of the tiny forecaster's exposed model, and its random windows."""
    checkpoint, _ = save_tiny(tmp_path, hidden=hidden)
    windows = tmp_path / "w.npy"
    np.save(windows, np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    source = open_windows_source(windows)
    model = exposed_model(ModelRecipe(checkpoint, "tests.tiny_models:tiny_forecaster", {"hidden": hidden}), source)
    return Replayer(model.exposed, model.layers, "cpu", 2), source


def test_a_tighter_budget_gives_smaller_batches_and_the_same_statistics(tmp_path):
    replayer, source = _tiny_replayer(tmp_path, (300, 40, 3), seed=3)
    one = replayer.run_batch(source.take(np.array([0])))
    window_bytes = sum(value.nbytes for value in one.values())
    from reporter.replay.batch_budget import current_rss

    roomy = replayer.replay(source, memory=64 << 30, progress=False)  # first: what replay loads (numba) is in
    tight = current_rss() + int(20 * window_bytes * OVERHEAD * 2)  # about 20 windows a worker
    small = replayer.replay(source, memory=tight, progress=False)
    assert roomy.batch_size == 150 and 10 <= small.batch_size <= 20  # 300 windows: one batch of 150 each
    a, b = small.stats.to_frames().gate_stats, roomy.stats.to_frames().gate_stats
    for column in ("count", "min", "max", "frac_low", "frac_high", "hist_under", "hist_over"):
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-9)


def test_a_run_of_fewer_windows_than_a_batch_gives_every_worker_some(tmp_path):
    """128 windows at the cap of 256 were one batch on one of two cores, the other idle."""
    replayer, source = _tiny_replayer(tmp_path, (101, 12, 3), seed=5)
    ran, run = [], replayer._run
    replayer._run = lambda session, windows, indices: (
        ran.append((int(indices[0]), len(indices))) or run(session, windows, indices)
    )
    result = replayer.replay(source, progress=False)
    assert result.batch_size == 51 and result.workers == 2
    measure, *batches = ran  # one window first: what a window's outputs take (`batch_for`)
    assert measure[1] == 1 and sorted(n for _, n in batches) == [50, 51]  # (which worker takes which is not fixed)
    del ran[:]
    fixed = replayer.replay(source, batch_size=CAP, progress=False)  # a batch size given is kept as given
    assert fixed.batch_size == CAP > 101 and [n for _, n in ran] == [1, 101]  # (the kernel warmed on one window)
    del ran[:]
    replayer.replay(source, batch_size=CAP, progress=False, start=40, stop=60)
    assert ran == [(40, 1), (40, 20)]  # the warm-up window is the range's first, not the file's
    del ran[:]
    replayer.replay(source, progress=False, start=40, stop=60)  # and the one that sizes the batch
    assert ran[0] == (40, 1) and sorted(n for _, n in ran[1:]) == [10, 10]


_NO_COMPILE_IN_THE_CLOCK = """
import sys
from pathlib import Path

import numba

import reporter.replay as replay
from reporter.replay.runner import Replayer
from tests.test_batch_budget import _tiny_replayer

kernels = list({
    id(obj): obj for module in list(sys.modules.values()) if module and module.__name__.startswith(replay.__name__)
    for obj in vars(module).values() if isinstance(obj, numba.core.registry.CPUDispatcher)
}.values())
after_warm_up, warm_up = {}, Replayer._first_window
def spy(self, *args, **kwargs):
    result = warm_up(self, *args, **kwargs)
    after_warm_up.update({kernel: set(kernel.signatures) for kernel in kernels})
    return result
Replayer._first_window = spy
compiled_in_the_clock = set()
for hidden, windows in ((6, 37), (6, 300), (40, 300)):  # batches of 19 and 150: without and with a table
    folder = Path(sys.argv[1]) / f"{hidden}-{windows}"
    folder.mkdir()
    replayer, source = _tiny_replayer(folder, (windows, 9, 3), seed=2, hidden=hidden)
    replayer.replay(source, progress=False)
    compiled_in_the_clock |= {kernel.__name__ for kernel in kernels if set(kernel.signatures) != after_warm_up[kernel]}
print(sorted(kernel.__name__ for kernel in kernels))
print(sorted(compiled_in_the_clock))
"""


def test_every_kernel_replay_compiles_is_ready_before_the_clock_starts(tmp_path):
    """In a fresh process, whatever replay compiles (or loads from numba's cache) it meets in the
    warm-up window, before windows/s is timed: after an install the cache is cold, and `top_rows`
    compiling its merge's signature inside the clock made the first replay report 900 windows/s
    for 26,000."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _NO_COMPILE_IN_THE_CLOCK, str(tmp_path)], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found, compiled_in_the_clock = done.stdout.strip().splitlines()[-2:]
    assert all(name in found for name in ("row_kernel", "short_row_kernel", "top_rows"))  # the spy sees the kernels
    assert compiled_in_the_clock == "[]"


def test_a_bad_memory_size_is_exit_2_and_one_line(tmp_path, capsys):
    from reporter.cli import main

    checkpoint, windows = save_tiny(tmp_path)
    args = ["replay", str(checkpoint), "--factory", "tests.tiny_models:tiny_forecaster", "--windows", str(windows)]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "-o", str(tmp_path / "run"), "--memory", "lots"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "--memory 'lots'" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "run").exists()


def test_after_replay_one_session_is_kept_and_gives_the_same_outputs(tmp_path):
    """make_run closes all sessions but one after the replay (each holds an arena as large as its
    biggest batch); what runs after it must see the same model."""
    replayer, source = _tiny_replayer(tmp_path, (40, 12, 3), seed=4)
    before = replayer.replay(source, batch_size=8, progress=False)
    first = replayer.run_batch(source.take(np.arange(5)))
    replayer.keep_one_session()
    assert replayer.workers == 1 and len(replayer._sessions) == 1
    again = replayer.run_batch(source.take(np.arange(5)))
    assert first.keys() == again.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    after = replayer.replay(source, batch_size=8, progress=False)
    assert after.workers == 1
    a, b = before.stats.to_frames().gate_stats, after.stats.to_frames().gate_stats
    np.testing.assert_array_equal(a["hist_over"], b["hist_over"])
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-9)

"""`gate-report bench --replay`: replay throughput and peak memory as the number of windows grows.

Each size runs in a fresh subprocess (so peak resident memory, `ru_maxrss`, is that size's alone):
the sample forecaster is replayed with everything `gate-report replay` does (statistics, anomaly
scores, sampled traces, impulse responses, the run directory written) over N windows made by
tiling its stored windows with a little noise. In the same subprocess, as the baseline, the fused
model alone runs over the same windows on the same threads. Reported: windows/s of both, their
ratio, and peak memory per size with the ratio largest ÷ smallest (goal ≤ 1.3: memory must not
grow with the number of windows; only the per-window rows of window_scores do, ~0.5 KB each).
With several providers (`--provider cpu,cuda`) every size runs once per provider, so a GPU's
speed-up is read against the CPU in the same benchmark on the same machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reporter.pipeline.model_source import ModelRecipe

__all__ = ["ReplayBench", "bench_replay", "format_replay", "make_windows"]

ROOT = Path(__file__).resolve().parents[2]  # the repository: the benchmark replays its sample forecaster
WINDOWS = ROOT / "sample_models" / "forecaster" / "windows.npz"
SAMPLE = ModelRecipe(ROOT / "sample_models" / "forecaster" / "v1.pt", "sample_models.forecaster.model:build")


@dataclass(frozen=True)
class ReplayBench:
    """One size: replay and fused-model throughput, wall time of the whole run, peak memory."""

    windows: int
    provider: str  # "cpu" or "cuda"
    workers: int  # sessions side by side, each with its own host thread for the statistics
    replay_wps: float  # windows/s of the replay loop (model, statistics, features)
    fused_wps: float  # windows/s of the fused model alone, same threads and batches
    total_s: float  # the whole run: replay, scoring, sampled traces, impulse, writing
    peak_rss_mb: float

    @property
    def cost(self) -> float:
        """Fused ÷ replay throughput: what the gates, statistics and features cost per window."""
        return self.fused_wps / self.replay_wps


def make_windows(count: int, path: Path, seed: int = 0) -> Path:
    """Write `count` forecaster-like windows: the stored ones tiled, with a little noise."""
    base = np.load(WINDOWS)["x"]
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, *base.shape[1:]))
    for start in range(0, count, len(base)):
        stop = min(start + len(base), count)
        out[start:stop] = base[: stop - start] + 0.05 * rng.standard_normal((stop - start, *base.shape[1:]))
    out.flush()
    del out
    return path


def _fused_throughput(model, source, batch_size: int, workers: int, provider: str) -> float:
    """Windows/s of the fused model alone over every window: `workers` 1-thread CPU sessions at
    once, or one CUDA session fed through IO binding, as replay runs them."""
    from reporter.replay.sessions import open_session, run_bound

    sessions = [open_session(model.SerializeToString(), provider) for _ in range(workers)]
    name = sessions[0].get_inputs()[0].name
    outputs = [output.name for output in sessions[0].get_outputs()]
    batches, lock = source.batches(batch_size), threading.Lock()

    def work(session) -> None:
        while True:
            with lock:
                item = next(batches, None)
            if item is None:
                return
            if provider == "cuda":
                run_bound(session, {name: item[1]}, outputs, "cuda")
            else:
                session.run(None, {name: item[1]})

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return source.n_windows / (time.perf_counter() - start)


def child(count: int, batch_size: int, provider: str = "cpu", workers: int | None = None) -> dict:
    """Run in the subprocess: one full replay of `count` windows, then the fused baseline."""
    import resource

    from reporter.pipeline.make_run import RunSettings, make_run
    from reporter.pipeline.model_source import exposed_model
    from reporter.replay.windows import open_windows_source

    with tempfile.TemporaryDirectory() as folder:
        source = open_windows_source(make_windows(count, Path(folder) / "windows.npy"))
        start = time.perf_counter()
        model = exposed_model(SAMPLE, source)
        run = make_run(
            model, source, RunSettings("forecaster", "bench", provider=provider, batch_size=batch_size, workers=workers)
        )
        run.save(Path(folder) / "run")
        total = time.perf_counter() - start
        fused = _fused_throughput(model.fused, source, batch_size, run.meta["workers"], provider)
    return {
        "windows": count,
        "provider": provider,
        "workers": run.meta["workers"],
        "replay_wps": run.timings["windows_per_second"],
        "fused_wps": fused,
        "total_s": total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_replay(
    sizes=(5000, 50000), batch_size: int = 256, say=print, providers=("cpu",), workers: int | None = None
) -> list[ReplayBench]:
    """Measure each size, for each provider, in its own subprocess."""
    rows = []
    for provider in providers:
        for count in sizes:
            say(f"replaying {count} windows on {provider} in a fresh process …")
            code = (
                f"import json, reporter.bench.replay_cost as b; "
                f"print(json.dumps(b.child({count}, {batch_size}, {provider!r}, {workers!r})))"
            )
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"replay benchmark of {count} windows on {provider} failed:\n{done.stderr}")
            rows.append(ReplayBench(**json.loads(done.stdout.strip().splitlines()[-1])))
    return rows


def format_replay(rows: list[ReplayBench]) -> str:
    """A plain-text table; per provider the peak-memory ratio largest ÷ smallest run, and with
    several providers each one's replay speed against the first's."""
    lines = [
        f"{'provider':>8} {'workers':>7} {'windows':>8} {'replay win/s':>13} {'fused win/s':>12} "
        f"{'fused/replay':>13} {'whole run s':>12} {'peak RSS MB':>12}"
    ]
    for r in rows:
        lines.append(
            f"{r.provider:>8} {r.workers:>7} {r.windows:>8} {r.replay_wps:>13.0f} {r.fused_wps:>12.0f} "
            f"{r.cost:>12.2f}× {r.total_s:>12.1f} {r.peak_rss_mb:>12.0f}"
        )
    providers = list(dict.fromkeys(r.provider for r in rows))
    for provider in providers:
        mine = [r for r in rows if r.provider == provider]
        if len(mine) > 1:
            ratio = mine[-1].peak_rss_mb / mine[0].peak_rss_mb
            lines.append(
                f"{provider}: peak memory {mine[-1].windows} ÷ {mine[0].windows} windows: {ratio:.2f}× "
                f"(goal ≤ 1.3: flat)"
            )
    first = {r.windows: r for r in rows if r.provider == providers[0]}
    for r in rows:
        if r.provider != providers[0] and r.windows in first:
            lines.append(
                f"{r.provider} ÷ {providers[0]} replay, {r.windows} windows: "
                f"{r.replay_wps / first[r.windows].replay_wps:.2f}×"
            )
    lines.append(
        "replay: statistics and anomaly features per batch, one host thread per session (cpu: 1-thread "
        "sessions; cuda: sessions fed through IO binding); fused: the unmodified model alone on the same "
        "batches and sessions."
    )
    return "\n".join(lines)

"""`gate-report bench --replay`: replay throughput and peak memory, by model and number of windows.

Each case runs in a fresh subprocess (so peak resident memory, `ru_maxrss`, read as soon as the
whole run is done, is that run's alone) and does everything `gate-report replay` does (statistics,
anomaly scores, sampled traces, impulse responses, the run directory written). The models: the
sample forecaster (2 × 32 LSTM units, 64 steps) over N windows made by tiling its stored windows
with a little noise, at two sizes for memory flatness; a mid-size 2-layer LSTM (input 16, 128
units, 100 steps; seeded random weights, `bench_models`) over 4,000 windows; and a 1,024-unit one
over 600 windows with a 2 GB memory budget, where the batch size the budget chose is what is
measured. In the same subprocess, after that whole run, the replay alone runs again over the same
windows, alternating three times with the baseline: the fused model alone over the same windows on
the same threads and batches (medians reported). The first replay is what a user's run meets; its
first batches pay for touching fresh memory (page faults, onnxruntime's arenas growing), which the
fused baseline, run after it, does not, so fused ÷ warm replay is the like-for-like ratio.
Reported: windows/s of each, both ratios, the batch size, and peak memory (goal ≤ 1.3 for the
forecaster's largest ÷ smallest: memory must not grow with the number of windows; only the
per-window rows of window_scores do, ~0.5 KB each). With several providers (`--provider
cpu,cuda`) every case runs once per provider, so a GPU's speed-up is read against the CPU in the
same benchmark on the same machine.
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

__all__ = ["DEFAULT_CASES", "Case", "ReplayBench", "bench_replay", "format_replay", "make_windows"]

ROOT = Path(__file__).resolve().parents[2]  # the repository: the benchmark replays its sample forecaster
WINDOWS = ROOT / "sample_models" / "forecaster" / "windows.npz"
WARM_ROUNDS = 3  # warm replays and fused runs, alternating; the medians are reported
SAMPLE = ModelRecipe(ROOT / "sample_models" / "forecaster" / "v1.pt", "sample_models.forecaster.model:build")


@dataclass(frozen=True)
class Case:
    """One model and size to replay; `memory` (bytes) makes replay choose its batch from a budget."""

    model: str  # a key of `bench_models.MODELS`
    windows: int
    memory: int | None = None


DEFAULT_CASES = (
    Case("forecaster", 5000),
    Case("forecaster", 50000),
    Case("lstm16", 20000),
    Case("lstm128", 4000),
    Case("lstm1024", 600, memory=2 << 30),
)


@dataclass(frozen=True)
class ReplayBench:
    """One case: replay and fused-model throughput, wall time of the whole run, peak memory."""

    windows: int
    provider: str  # "cpu" or "cuda"
    workers: int  # sessions side by side, each with its own host thread for the statistics
    replay_wps: float  # windows/s of the replay loop (model, statistics, features)
    fused_wps: float  # windows/s of the fused model alone, same threads and batches
    total_s: float  # the whole run: replay, scoring, sampled traces, impulse, writing
    peak_rss_mb: float
    model: str = "forecaster"
    batch: int = 256  # windows per batch, as the memory budget chose
    memory_mb: float | None = None  # the budget, when one was set
    warm_wps: float | None = None  # windows/s of the replay run again in the same process (median)

    @property
    def cost(self) -> float:
        """Fused ÷ replay throughput, replay as a fresh process meets it (its first batches included)."""
        return self.fused_wps / self.replay_wps

    @property
    def warm_cost(self) -> float | None:
        """Fused ÷ replay with both warm, like for like: the fused model runs after the replay, on
        memory the replay already touched, so only the second replay is on the same footing."""
        return self.fused_wps / self.warm_wps if self.warm_wps else None


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


def _fused_throughput(sessions: list, source, batch_size: int, provider: str) -> float:
    """Windows/s of the fused model alone over every window: 1-thread CPU sessions side by side,
    or one CUDA session fed through IO binding, as replay runs them."""
    from reporter.replay.sessions import run_bound

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


def child(
    count: int, batch_size: int | None, provider: str = "cpu", workers: int | None = None, model: str = "forecaster",
    memory: int | None = None,
) -> dict:  # fmt: skip
    """Run in the subprocess: one whole run over `count` windows of `model` (cold: what a user's
    run meets), then the replay alone again (warm) alternating with the fused baseline, each on
    the same workers and batch."""
    import resource

    from reporter.bench.bench_models import MODELS
    from reporter.pipeline.make_run import RunSettings, make_run
    from reporter.pipeline.model_source import exposed_model
    from reporter.replay.runner import Replayer
    from reporter.replay.sessions import open_session
    from reporter.replay.windows import open_windows_source

    with tempfile.TemporaryDirectory() as folder:
        recipe, windows = MODELS[model](Path(folder), count)
        source = open_windows_source(windows)
        start = time.perf_counter()
        exposed = exposed_model(recipe, source)
        settings = RunSettings(model, "bench", provider=provider, batch_size=batch_size, memory=memory, workers=workers)
        run = make_run(exposed, source, settings)
        run.save(Path(folder) / "run")
        total = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the run's: before the warm rounds
        batch, workers = run.meta["batch_size"], run.meta["workers"]
        again = Replayer(exposed.exposed, exposed.layers, provider, workers, settings.stats)
        fused_sessions = [open_session(exposed.fused.SerializeToString(), provider) for _ in range(workers)]
        warm, fused = [], []
        for _ in range(WARM_ROUNDS):  # interleaved: a drift in the machine's speed meets both alike
            warm.append(again.replay(source, batch, progress=False).windows_per_second)
            fused.append(_fused_throughput(fused_sessions, source, batch, provider))
    return {
        "windows": count,
        "provider": provider,
        "workers": workers,
        "replay_wps": run.timings["windows_per_second"],
        "fused_wps": float(np.median(fused)),
        "total_s": total,
        "peak_rss_mb": peak,
        "model": model,
        "batch": batch,
        "memory_mb": memory / (1 << 20) if memory else None,
        "warm_wps": float(np.median(warm)),
    }


def bench_replay(
    cases=DEFAULT_CASES, batch_size: int | None = None, say=print, providers=("cpu",), workers: int | None = None
) -> list[ReplayBench]:
    """Measure each case, for each provider, in its own subprocess."""
    rows = []
    for provider in providers:
        for case in cases:
            say(f"replaying {case.windows} windows of {case.model} on {provider} in a fresh process …")
            code = (
                f"import json, reporter.bench.replay_cost as b; print(json.dumps(b.child({case.windows}, "
                f"{batch_size!r}, {provider!r}, {workers!r}, {case.model!r}, {case.memory!r})))"
            )
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"replay benchmark of {case} on {provider} failed:\n{done.stderr}")
            rows.append(ReplayBench(**json.loads(done.stdout.strip().splitlines()[-1])))
    return rows


def format_replay(rows: list[ReplayBench]) -> str:
    """A plain-text table; per provider and model the peak-memory ratio largest ÷ smallest run, and
    with several providers each one's replay speed against the first's."""
    lines = [
        f"{'provider':>8} {'model':>10} {'workers':>7} {'windows':>8} {'batch':>6} {'replay win/s':>13} "
        f"{'warm win/s':>11} {'fused win/s':>12} {'fused/replay':>13} {'fused/warm':>11} {'whole run s':>12} "
        f"{'peak RSS MB':>12} {'budget MB':>10}"
    ]
    for r in rows:
        budget = f"{r.memory_mb:.0f}" if r.memory_mb else "—"
        warm = (f"{r.warm_wps:>11.0f}", f"{r.warm_cost:>10.2f}×") if r.warm_wps else (f"{'—':>11}", f"{'—':>11}")
        lines.append(
            f"{r.provider:>8} {r.model:>10} {r.workers:>7} {r.windows:>8} {r.batch:>6} {r.replay_wps:>13.0f} "
            f"{warm[0]} {r.fused_wps:>12.0f} {r.cost:>12.2f}× {warm[1]} {r.total_s:>12.1f} {r.peak_rss_mb:>12.0f} "
            f"{budget:>10}"
        )
    providers = list(dict.fromkeys(r.provider for r in rows))
    for provider in providers:
        for model in dict.fromkeys(r.model for r in rows):
            mine = [r for r in rows if r.provider == provider and r.model == model]
            if len(mine) > 1:
                ratio = mine[-1].peak_rss_mb / mine[0].peak_rss_mb
                lines.append(
                    f"{provider}: peak memory {mine[-1].windows} ÷ {mine[0].windows} windows: {ratio:.2f}× "
                    f"(goal ≤ 1.3: flat)"
                )
        for r in rows:
            if r.provider == provider and r.memory_mb and r.peak_rss_mb > r.memory_mb:
                lines.append(
                    f"{provider}: {r.model} peaked at {r.peak_rss_mb:.0f} MB, over its {r.memory_mb:.0f} MB budget"
                )
    first = {(r.model, r.windows): r for r in rows if r.provider == providers[0]}
    for r in rows:
        if r.provider != providers[0] and (r.model, r.windows) in first:
            lines.append(
                f"{r.provider} ÷ {providers[0]} replay, {r.model} {r.windows} windows: "
                f"{r.replay_wps / first[(r.model, r.windows)].replay_wps:.2f}×"
            )
    lines.append(
        "replay: statistics and anomaly features per batch, one host thread per session (cpu: 1-thread "
        "sessions; cuda: sessions fed through IO binding), in a fresh process (its first batches touch "
        "fresh memory); warm: the same replay again in that process, alternating with fused: the unmodified "
        "model alone on the same batches and sessions (medians of 3; read fused/warm for like against like)."
    )
    return "\n".join(lines)

"""`gate-report bench --dask-scaling`: replay throughput on 1 process vs a LocalCluster, as a ratio.

The sample forecaster replays the same windows (its stored ones tiled with noise) three ways in
one run: one process with one single-thread session (the per-window cost), one process with two
sessions (what `replay` does without Dask), and a LocalCluster of N single-thread worker
processes through `reporter.dask_replay` (cluster start-up excluded; scattering the model,
reopening the file on each worker, shipping accumulators back and merging included). Reported:
windows/s of each, the cluster's speed-up over one thread against the ideal N×, and the measured
CPU cost per window, to size a cluster: W workers replay about W ÷ cost windows per second.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DaskScaling", "bench_dask_scaling", "format_scaling"]


@dataclass(frozen=True)
class DaskScaling:
    """Windows/s of each way, for `windows` windows on `workers` cluster workers."""

    windows: int
    workers: int
    one_thread_wps: float
    one_process_wps: float  # `replay` without Dask: one session per core in one process
    cluster_wps: float

    @property
    def speedup(self) -> float:
        """Cluster ÷ one single-thread session (ideal: `workers`)."""
        return self.cluster_wps / self.one_thread_wps

    @property
    def cost_ms(self) -> float:
        """CPU milliseconds per window on one core (statistics and features included)."""
        return 1000.0 / self.one_thread_wps


def bench_dask_scaling(count: int = 20000, workers: int = 2, batch_size: int = 256, say=print) -> DaskScaling:
    """Measure the three ways on the same windows file."""
    from distributed import Client, LocalCluster

    from reporter.bench.replay_cost import SAMPLE, make_windows
    from reporter.pipeline.model_source import exposed_model
    from reporter.replay.dask_shards import replay_on_dask
    from reporter.replay.gate_moments import StatsConfig
    from reporter.replay.runner import Replayer
    from reporter.replay.windows import open_windows_source

    with tempfile.TemporaryDirectory() as folder:
        source = open_windows_source(make_windows(count, Path(folder) / "windows.npy"))
        model = exposed_model(SAMPLE, source)
        rates = {}
        for label, sessions in (("one_thread", 1), ("one_process", workers)):
            say(f"replaying {count} windows in this process, {sessions} session(s) …")
            replayer = Replayer(model.exposed, model.layers, "cpu", workers=sessions)
            replayer.replay(source, batch_size, progress=False, stop=min(count, 4 * batch_size))  # warm-up
            rates[label] = replayer.replay(source, batch_size, progress=False).windows_per_second
        say(f"starting a LocalCluster of {workers} worker processes …")
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            replay_on_dask("", model.exposed, model.layers, source, batch_size, StatsConfig(), client=client)  # warm-up
            start = time.perf_counter()
            replay_on_dask("", model.exposed, model.layers, source, batch_size, StatsConfig(), client=client)
            rates["cluster"] = source.n_windows / (time.perf_counter() - start)
    return DaskScaling(count, workers, rates["one_thread"], rates["one_process"], rates["cluster"])


def format_scaling(row: DaskScaling) -> str:
    """A plain-text report with the ratios."""
    return "\n".join(
        [
            f"{row.windows} forecaster windows, windows/s (higher is better):",
            f"  1 process, 1 session              {row.one_thread_wps:>9.0f}",
            f"  1 process, {row.workers} sessions (replay)     {row.one_process_wps:>9.0f}   "
            f"{row.one_process_wps / row.one_thread_wps:.2f}× one session",
            f"  LocalCluster, {row.workers} worker processes  {row.cluster_wps:>9.0f}   {row.speedup:.2f}× one session "
            f"(ideal {row.workers}×; {100 * (1 - row.speedup / row.workers):.0f}% lost to overhead)",
            f"cost per window: {row.cost_ms:.3f} ms of one core; W workers replay about W × {row.one_thread_wps:.0f} "
            f"windows/s, less the overhead above",
        ]
    )

"""Replay sharded over a Dask cluster: an existing one (`--dask tcp://host:8786`) or a local one
(`--dask local[:N]`, a LocalCluster of N single-thread worker processes).

The windows file is cut into shards of consecutive file indices (whole batches, so with the same
batch size every batch holds the same windows as in a one-process replay; per-window results are
identical whatever the batch size). Each
worker reopens the file (it must be reachable at the same path, as on a shared filesystem),
replays its shard with onnxruntime, and sends back only what the accumulators hold and one small
row per window (anomaly features, last-step outputs): never traces. The client merges the shards
in file order (`stats` merges exactly). A worker that dies is replaced and its shards rerun by
Dask; a shard whose data is bad fails the run with the shard named. Requires the optional extra
`gate-reporter[dask]` (dask.distributed).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable

import numpy as np
import onnx
from tqdm import tqdm

from reporter.errors import ReporterError, WindowsFileError
from reporter.layers import Layer, layers_from_json, layers_to_json
from reporter.replay.gate_moments import StatsConfig
from reporter.replay.runner import Replayer, ReplayResult, merge_results
from reporter.replay.windows import WindowSource, open_windows_source

__all__ = ["connect", "plan_shards", "replay_on_dask", "replay_shard"]

SHARDS_PER_WORKER = 3  # enough to balance uneven workers, few enough that per-task overhead stays small
_REPLAYERS: dict[str, Replayer] = {}  # per worker process: one session per model, reused by its shards


def connect(address: str):
    """A dask.distributed Client: `local` / `local:N` starts a LocalCluster of N worker processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ReporterError("--dask needs dask.distributed: pip install 'gate-reporter[dask]'") from None
    if address == "local" or address.startswith("local:"):
        count = address.partition(":")[2] or "2"
        if not count.isdigit() or int(count) < 1:
            raise ReporterError(f"--dask {address}: expected local or local:N with N ≥ 1 worker processes")
        cluster = LocalCluster(
            n_workers=int(count),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        return Client(cluster)
    try:
        return Client(address, timeout=30)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ReporterError(f"--dask {address}: cannot reach the scheduler ({exc})") from None


def plan_shards(source: WindowSource, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) file-index ranges of whole batches, about SHARDS_PER_WORKER per worker."""
    total = source.shape[0]
    batches = -(-total // batch_size)
    per_shard = max(1, -(-batches // max(1, workers * SHARDS_PER_WORKER)))
    step = per_shard * batch_size
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def _identity(source) -> dict:
    """What a worker compares to be sure it opened the client's windows file: shape and size."""
    return {"shape": list(source.shape), "size": source.path.stat().st_size}


def replay_shard(
    model: bytes,
    layers: str,
    stats: StatsConfig,
    recipe: dict,
    skipped: np.ndarray,
    start: int,
    stop: int,
    batch_size: int,
    vocab: list[str] | None = None,
) -> ReplayResult:
    """On a worker: reopen the windows file (no rescan) and replay one shard on one CPU thread."""
    source = open_windows_source(
        recipe["path"],
        key=recipe.get("key", "x"),
        window=recipe.get("window"),
        stride=recipe.get("stride"),
        columns=recipe.get("columns"),
        nan=recipe.get("nan", "error"),
        any_rank=recipe.get("any_rank", False),
        skipped=skipped,
    )
    here = _identity(source)
    if here != recipe.get("identity", here):
        raise WindowsFileError(
            f"{recipe['path']}: on this worker the file differs from the client's (shape "
            f"{here['shape']}, {here['size']} bytes): is it the same file?"
        )
    key = hashlib.sha256(model + layers.encode() + repr((stats, vocab)).encode()).hexdigest()
    if key not in _REPLAYERS:  # a session takes a moment to build: once per worker, not once per shard
        _REPLAYERS.clear()
        _REPLAYERS[key] = Replayer(
            onnx.load_from_string(model), layers_from_json(layers), "cpu", workers=1, stats_config=stats, vocab=vocab
        )
    return _REPLAYERS[key].replay(source, batch_size, progress=False, start=start, stop=stop)


def replay_on_dask(
    address: str,
    exposed: onnx.ModelProto,
    layers: list[Layer],
    source: WindowSource,
    batch_size: int,
    stats: StatsConfig,
    say: Callable[[str], None] = lambda line: None,
    progress: bool | None = None,
    client=None,
    vocab: list[str] | None = None,
) -> ReplayResult:
    """Replay every window of `source` on the cluster at `address` (or on `client`); merge on the client."""
    from distributed import as_completed

    own = client is None
    client = connect(address) if own else client
    try:
        workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        shards = plan_shards(source, batch_size, workers)
        say(
            f"dask: {len(shards)} shards of up to {shards[0][1] - shards[0][0]} windows on {workers} workers "
            f"({client.scheduler.address})"
        )
        model = client.scatter(exposed.SerializeToString(), broadcast=True, hash=False)  # a key of its own per replay
        start = time.perf_counter()
        recipe = {**source.recipe, "identity": _identity(source)}
        futures = {
            client.submit(
                replay_shard,
                model,
                layers_to_json(layers),
                stats,
                recipe,
                source.skipped,
                lo,
                hi,
                batch_size,
                vocab,
                pure=False,
                key=f"gate-report-shard-{k}-{lo}-{hi}",
            ): k
            for k, (lo, hi) in enumerate(shards)
        }
        parts: dict[int, ReplayResult] = {}
        show = sys.stderr.isatty() if progress is None else progress
        with tqdm(total=source.n_windows, unit="win", desc="replay (dask)", disable=not show, file=sys.stderr) as bar:
            for future in as_completed(futures):
                k = futures[future]
                try:
                    parts[k] = future.result()
                except Exception as exc:  # noqa: BLE001 - bad data, a crashed session, KilledWorker: name the shard
                    client.cancel(list(futures))
                    lo, hi = shards[k]
                    raise ReporterError(
                        f"shard {k} (windows {lo}..{hi - 1}) failed: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}"
                    ) from None
                bar.update(len(parts[k].features))
        seconds = time.perf_counter() - start
        return merge_results([parts[k] for k in range(len(shards))], seconds, workers, "cpu")
    finally:
        if own:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()

"""Replay the gate-exposed model over stored windows and fold every batch into accumulators.

Per batch: run onnxruntime, feed each gate trace to the statistics accumulators, keep each
window's anomaly features and last-step model outputs (a few hundred bytes per window), and drop
the traces. Memory therefore stays flat however many windows there are.

On the CPU, replay runs one single-thread session per core, each on its own batches, with its own
accumulators, merged at the end (`reporter.replay.stats` merges exactly). That is what keeps the
exposed model near the fused model's speed: the exposed loop body is many small operations that
one session's thread pool splits poorly (see `gate-report bench`, "2×1"). onnxruntime and the
numpy kernels release the GIL, so threads are enough. On CUDA, one session does all batches.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from tqdm import tqdm

from reporter.errors import ModelError
from reporter.layers import Layer
from reporter.replay.anomaly import feature_names, features_from_passes
from reporter.replay.batch_budget import CAP, balanced_batch, choose_batch, current_rss, default_budget
from reporter.replay.calls import run_calls
from reporter.replay.feeds import Feeds
from reporter.replay.fused_pass import warm_up
from reporter.replay.gate_moments import StatsConfig
from reporter.replay.held_signals import signals_held
from reporter.replay.sessions import open_session, run_bound, tune_allocator
from reporter.replay.stats import RunStats
from reporter.replay.time_major import batch_major, skip_final_transposes
from reporter.replay.unit_tracks import UnitTracks
from reporter.replay.windows import WindowSource

__all__ = ["ReplayResult", "Replayer", "merge_results", "model_output_names"]

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
MAX_OUTPUT_VALUES = 4096  # last-step output values kept per window (more: the output is not kept)


def _batch_major(model: onnx.ModelProto, name: str) -> bool:
    """Whether an output's first axis can be the batch: not a fixed size in the graph (a final
    state [layers, B, H] has a fixed first axis; the batch axis of an exported model is dynamic)."""
    value = next(output for output in model.graph.output if output.name == name)
    dims = value.type.tensor_type.shape.dim
    return not (len(dims) and dims[0].HasField("dim_value"))


def model_output_names(model: onnx.ModelProto, layers: list[Layer]) -> list[str]:
    """The graph outputs that are the model's own (everything but the exposed gates), in order."""
    gate_outputs = {name for layer in layers for name in layer.outputs.values()}
    return [output.name for output in model.graph.output if output.name not in gate_outputs]


@dataclass
class ReplayResult:
    """What replay keeps: merged accumulators, and per window its features and last-step outputs."""

    stats: RunStats
    features: pd.DataFrame  # window, then one column per anomaly feature, in window order
    outputs: dict[str, np.ndarray]  # output name -> [N, ...] last step per window, in window order
    provider: str
    seconds: float
    workers: int
    tracks: UnitTracks | None = None  # what each unit tracks (`unit_tracks`)
    batch_size: int = 0  # windows per batch, as given or as the memory budget chose (`batch_budget`)

    @property
    def windows_per_second(self) -> float:
        """Replay throughput: windows divided by wall time (model, statistics and features)."""
        return len(self.features) / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class _Rows:
    """Per-window results, preallocated for every window at the start (one allocation, no growth
    by batches, no fragmentation): anomaly features and each model output's last step."""

    windows: np.ndarray  # file indices of the replayed windows, ascending
    features: np.ndarray  # [N, F] float32
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, indices: np.ndarray, features: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        """Store one batch's rows at its windows' positions."""
        positions = np.searchsorted(self.windows, indices)
        self.features[positions] = features
        for name, last in outputs.items():
            if name not in self.outputs:
                with self.lock:
                    self.outputs.setdefault(name, np.full((len(self.windows), *last.shape[1:]), np.nan, np.float32))
            self.outputs[name][positions] = last


def _last_step(value: np.ndarray, batch: int) -> np.ndarray | None:
    """A model output's value at the last step per window ([B, T, ...] → [B, ...]), if small enough;
    outputs that are not batch-major (e.g. a final state [layers, B, H]) are not kept."""
    if value.ndim == 0 or value.shape[0] != batch or (value.ndim >= 3 and value.shape[1] == 0):
        return None
    per_window = value[:, -1] if value.ndim >= 3 else value
    if per_window[0].size > MAX_OUTPUT_VALUES:
        return None
    return np.asarray(per_window, dtype=np.float32)


class _Turns:
    """Batch k folds into shard k mod W, after batch k − W: the same batches meet the same float
    sums in the same order whichever thread ran them, so two replays write identical statistics."""

    def __init__(self, shards: int):
        self.shards, self.next, self.condition, self.aborted = shards, list(range(shards)), threading.Condition(), False

    def wait(self, k: int, failure: list) -> bool:
        """Block until batch k may fold; False when the replay is failing instead."""
        with self.condition:
            while self.next[k % self.shards] != k and not self.aborted and not failure:
                self.condition.wait(0.2)
            return not (self.aborted or failure)

    def done(self, k: int) -> None:
        with self.condition:
            self.next[k % self.shards] = k + self.shards
            self.condition.notify_all()

    def abort(self) -> None:
        with self.condition:
            self.aborted = True
            self.condition.notify_all()


def _finish(threads: list[threading.Thread]) -> None:
    """Wait for workers told to stop. A worker left inside onnxruntime while the interpreter shuts
    down aborts the process ("terminate called without an active exception", exit -6 instead of
    130), so an interrupted replay returns only once every session call has ended. Workers start
    under `signals_held`, so each one running counts as alive here."""
    for thread in threads:
        if thread.is_alive():
            thread.join()


class Replayer:
    """Runs an exposed model over windows: `run_batch` for a few windows, `replay` for all of them."""

    def __init__(
        self,
        exposed: onnx.ModelProto,
        layers: list[Layer],
        provider: str = "cpu",
        workers: int | None = None,
        stats_config: StatsConfig | None = None,
        feeds: Feeds | None = None,
        vocab: list[str] | None = None,
    ):
        tune_allocator()
        self.vocab = vocab  # token text, for the habits `unit_tracks` checks
        self.layers, self.provider, self.stats_config = layers, provider, stats_config or StatsConfig()
        self.feeds = feeds  # the model's other inputs (`replay.feeds`); None: the windows are its one input
        runnable, self._time_major = skip_final_transposes(exposed, layers)  # no final copy of each gate
        self.model_bytes = runnable.SerializeToString()
        self.output_names = [name for name in model_output_names(exposed, layers) if _batch_major(exposed, name)]
        # On CUDA too: the statistics run on the host and cost far more than the model (`bench --replay`).
        self.workers = max(1, workers or min(2, os.cpu_count() or 1))
        self._sessions = [open_session(self.model_bytes, provider) for _ in range(self.workers)]
        self.input_name = feeds.primary if feeds else self._sessions[0].get_inputs()[0].name
        primary = next(spec for spec in self._sessions[0].get_inputs() if spec.name == self.input_name)
        self.input_dtype = _ORT_TYPES.get(primary.type)  # windows are float32 or int64
        self.names = [output.name for output in self._sessions[0].get_outputs()]
        self._gate_outputs = {name for layer in layers for name in layer.outputs.values()}

    def keep_one_session(self) -> None:
        """Close every session but the first, for the few windows run after `replay`: each holds
        an onnxruntime arena as large as its biggest batch needed, which would otherwise stay."""
        del self._sessions[1:]
        self.workers = 1

    def run_batch(self, windows: np.ndarray, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every graph output (model outputs and gates) for a few windows (`indices`: their file
        indices, which inputs stored per window need). One-direction gates come back as `[batch,
        time, 1, hidden]` views of what the Scan wrote (`replay.time_major`), not C-contiguous."""
        return self._run(self._sessions[0], windows, indices)

    def _run(self, session: ort.InferenceSession, windows: np.ndarray, indices: np.ndarray | None) -> dict:
        """One batch through one session; on CUDA through IO binding (see `run_bound`). Gates the
        session wrote time-major (`time_major`) come back as `[batch, time, …]` views of them."""
        if self.input_dtype is not None and windows.dtype != self.input_dtype:
            windows = windows.astype(self.input_dtype)  # an int32-id or float16/float64 model input
        if self.provider == "cuda":
            run = functools.partial(run_bound, session, names=self.names, device="cuda")
        else:
            run = lambda feed: dict(zip(self.names, session.run(None, feed)))  # noqa: E731

        def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            try:
                outputs = run(feed)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's errors on a feed that does not fit
                where = f"windows {indices[0]}..{indices[-1]}" if indices is not None and len(indices) else "windows"
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelError(f"onnxruntime cannot run the model on {where}: {first}") from None
            return {name: batch_major(v) if name in self._time_major else v for name, v in outputs.items()}

        if self.feeds is None:
            return call({self.input_name: windows})
        return run_calls(call, self.feeds, windows, indices, self._gate_outputs)

    def gates(self, outputs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Regroup a batch's graph outputs as {layer name: {gate: [B, T, D, H]}}, leaving out the layers
        that did not run: a layer in an `If` branch the batch did not take has traces of batch 0."""
        return {
            layer.name: {gate: outputs[name] for gate, name in layer.outputs.items()}
            for layer in self.layers
            if all(outputs[name].shape[0] > 0 for name in layer.outputs.values())
        }

    def batch_for(self, source: WindowSource, budget: int | None = None, indices: np.ndarray | None = None) -> int:
        """Windows per batch within `budget` bytes (default: `batch_budget.default_budget`), from
        what one window's outputs (the first of `indices`, default of the file) measure when run
        through the model."""
        window_bytes = self._first_window(source, indices)
        if window_bytes is None:
            return CAP
        return choose_batch(window_bytes, self.workers, budget or default_budget(), current_rss())

    def _first_window(self, source: WindowSource, indices: np.ndarray | None = None) -> int | None:
        """Run the first window (of `indices`, default all the file keeps) through the model, the
        statistics and the unit tracks, as a batch is; the bytes of its outputs (None without
        windows). The compiled kernels (`pass_kernels`, through `fused_pass.warm_up`; `top_rows`)
        compile on first use (~100 MB while LLVM works, 3 s a kernel when numba's cache is cold, as
        after an install) and load from that cache in 0.2–0.4 s otherwise: done here, their memory
        counts as used when the batch is sized, and their time is not replay's. Folding the window
        twice merges the tracks as the shards' batches are merged: `top_rows`' second signature."""
        first = (source.indices() if indices is None else indices)[:1]
        if not len(first):
            return None
        warm_up()
        windows = source.take(first)
        outputs = self._run(self._sessions[0], windows, first)
        shard = (RunStats(self.layers, self.stats_config), UnitTracks(self.layers, self.vocab))
        rows = _Rows(first, np.empty((1, len(feature_names(self.layers))), np.float32))
        _, tracked = self._batch_states(shard, rows, first, windows, outputs)
        for _ in range(2):
            shard[1].fold(tracked)
        return sum(value.nbytes for value in outputs.values())

    def replay(
        self,
        source: WindowSource,
        batch_size: int | None = None,
        progress: bool | None = None,
        start: int = 0,
        stop: int | None = None,
        memory: int | None = None,
    ) -> ReplayResult:
        """Replay the windows of `source` with file index in [start, stop) (default: all of them),
        `batch_size` windows at a time, or as many as fit in `memory` bytes (`batch_for`), evened out
        so that each round gives every worker a batch (`balanced_batch`).

        A progress bar with windows/s is shown when stderr is a terminal.
        """
        end = source.shape[0] if stop is None else min(stop, source.shape[0])
        kept = source.indices()
        kept = kept[(kept >= start) & (kept < end)]
        if batch_size:
            self._first_window(source, kept)  # as `batch_for` does: the kernel is loaded before the clock starts
        else:
            batch_size = balanced_batch(self.batch_for(source, memory, kept), max(0, end - start), self.workers)
        shards = [
            (RunStats(self.layers, self.stats_config), UnitTracks(self.layers, self.vocab)) for _ in range(self.workers)
        ]
        rows = _Rows(kept, np.empty((len(kept), len(feature_names(self.layers))), np.float32))
        batches = enumerate(source.batches(batch_size, start, stop))
        lock, failure, turns = threading.Lock(), [], _Turns(len(shards))
        show = sys.stderr.isatty() if progress is None else progress
        bar = tqdm(
            total=len(kept),
            unit="win",
            desc="replay",
            disable=not show,
            smoothing=0.1,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        start = time.perf_counter()
        threads = [
            threading.Thread(
                target=self._work, args=(session, shards, rows, batches, lock, failure, bar, turns), daemon=True
            )
            for session in self._sessions
        ]
        try:
            with signals_held():  # a Ctrl-C amid `start` would leave a worker `_finish` cannot see
                for thread in threads:
                    thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)  # short joins keep Ctrl-C responsive
        except BaseException:
            failure.append(None)  # tell the workers to stop after their current batch
            turns.abort()
            _finish(threads)
            raise
        finally:
            bar.close()
        if failure:
            raise failure[0]
        return self._result(shards, rows, time.perf_counter() - start, batch_size)

    def _work(
        self,
        session: ort.InferenceSession,
        shards: list[tuple[RunStats, UnitTracks]],
        rows: _Rows,
        batches: Iterator,
        lock: threading.Lock,
        failure: list,
        bar: tqdm,
        turns: _Turns,
    ) -> None:
        """One worker: take the next batch, run it, fold it into its shard; until none is left."""
        try:
            while not failure:
                with lock:  # the windows reader is a generator: one reader at a time
                    item = next(batches, None)
                if item is None:
                    return
                k, (indices, windows) = item
                outputs = self._run(session, windows, indices)
                parts, tracked = self._batch_states(shards[0], rows, indices, windows, outputs)
                if turns.wait(k, failure):
                    stats, tracks = shards[k % len(shards)]
                    stats.fold_parts(parts)
                    tracks.fold(tracked)
                    turns.done(k)
                bar.update(len(indices))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
            failure.append(exc)
            turns.abort()

    def _batch_states(
        self,
        shard: tuple[RunStats, UnitTracks],
        rows: _Rows,
        indices: np.ndarray,
        windows: np.ndarray,
        outputs: dict[str, np.ndarray],
    ) -> tuple[dict, dict]:
        """Turn one batch into fresh statistics and unit-tracking states and store its per-window
        rows; drop the traces."""
        gates = self.gates(outputs)
        passes = shard[0].parts(gates, extras=True)  # one fused pass per gate: statistics, features, peaks
        peaks = {layer: result.peaks for (layer, gate), result in passes.items() if result.peaks is not None}
        parts = passes, shard[1].part(gates, indices, windows, peaks)
        last_steps = {name: _last_step(outputs[name], len(indices)) for name in self.output_names}
        rows.put(
            indices,
            features_from_passes(passes, self.layers, len(indices)),
            {name: last for name, last in last_steps.items() if last is not None},
        )
        return parts

    def _result(
        self, shards: list[tuple[RunStats, UnitTracks]], rows: _Rows, seconds: float, batch_size: int
    ) -> ReplayResult:
        """Merge the workers' accumulators; per-window rows are already in window order."""
        stats, tracks = shards[0]
        for shard, tracked in shards[1:]:
            stats, tracks = stats.merge(shard), tracks.merge(tracked)
        frame = pd.DataFrame(rows.features, columns=feature_names(self.layers), copy=False)
        frame.insert(0, "window", rows.windows)
        return ReplayResult(stats, frame, rows.outputs, self.provider, seconds, self.workers, tracks, batch_size)


def merge_results(parts: list[ReplayResult], seconds: float, workers: int, provider: str) -> ReplayResult:
    """Combine replays of consecutive shards (in file order) into one, as if replayed in one pass."""
    stats, tracks = parts[0].stats, parts[0].tracks
    for part in parts[1:]:
        stats = stats.merge(part.stats)
        tracks = tracks.merge(part.tracks) if tracks is not None and part.tracks is not None else None
    features = pd.concat([part.features for part in parts], ignore_index=True)
    with_rows = [part for part in parts if len(part.features)]  # a shard whose windows were all skipped has none
    names = [
        name for name in (with_rows[0].outputs if with_rows else {}) if all(name in part.outputs for part in with_rows)
    ]
    outputs = {name: np.concatenate([part.outputs[name] for part in with_rows]) for name in names}
    return ReplayResult(stats, features, outputs, provider, seconds, workers, tracks, parts[0].batch_size)

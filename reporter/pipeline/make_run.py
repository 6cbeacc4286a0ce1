"""Make one run: replay a model over its windows, score the windows, sample traces, measure memory.

The stages, in order (each a module with one job; this one only sequences them and records
provenance): replay every window into accumulators and per-window features (`replay.runner`);
score each window against a reference (`replay.anomaly`: the run's own windows, or a trusted
run's); pick the windows whose full traces are kept (fixed, random and the most anomalous) and
replay just those; explain where each of them strays from the typical window; replay a sample
with an impulse (`replay.impulse`); and assemble the `Run` that `runstore` writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reporter.errors import RunError
from reporter.layers import gate_order
from reporter.model.output_gradient import output_gradient
from reporter.model.weights import layer_weights, weight_blocks
from reporter.pipeline.model_source import ModelSource
from reporter.provenance import file_sha256, made_at, package_versions
from reporter.replay.anomaly import explain_window, feature_names, score_windows, typical_from_timestep_stats
from reporter.replay.batch_budget import CAP
from reporter.replay.feeds import Feeds, plan_feeds
from reporter.replay.gate_moments import StatsConfig
from reporter.replay.gradient_flow import gradient_flow
from reporter.replay.impulse import IMPULSE_COLUMNS, impulse_outputs, impulse_response
from reporter.replay.runner import Replayer, ReplayResult
from reporter.replay.sessions import choose_provider, release_memory
from reporter.replay.windows import WindowSource
from reporter.runstore import SCHEMA_VERSION, Run

__all__ = ["GRADIENT_FLOPS", "RunSettings", "make_run", "sample_windows", "with_vocab"]

GRADIENT_FLOPS = 4e10  # gradient flow per run: ~8 windows of 2 × 128 units × 100 steps, seconds on a laptop core
GRADIENT_WINDOWS = 8  # sampled windows the gradients are followed on, at most (fixed ones first)


@dataclass(frozen=True)
class RunSettings:
    """How a run is made: identity, replay settings, and how many windows each analysis samples."""

    model: str
    version: str
    provider: str = "auto"
    batch_size: int | None = None  # None: as many windows as `memory` allows (`replay.batch_budget`)
    memory: int | None = None  # bytes replay may use; None: a quarter of the machine's memory
    workers: int | None = None
    stats: StatsConfig = field(default_factory=StatsConfig)
    fixed_samples: int = 4  # evenly spaced through the file: the same windows in every run
    random_samples: int = 4
    anomalous_samples: int = 8
    impulse_windows: int = 64
    seed: int = 0
    dask: str | None = None  # scheduler address, or local[:N]: replay sharded on Dask (`reporter.replay.dask_shards`)


def sample_windows(kept: np.ndarray, ranked: np.ndarray, settings: RunSettings) -> tuple[np.ndarray, np.ndarray]:
    """Choose the windows whose full traces are kept: (indices, reason per index), in that order.

    `kept` are the replayed windows' indices (ascending), `ranked` the same from most to least
    anomalous. Fixed ones are evenly spaced (stable across runs of one windows file, so versions
    can be compared window by window); random ones use the run's seed; then the most anomalous.
    """
    chosen: list[int] = []
    reasons: list[str] = []

    def take(candidates, count: int, reason: str) -> None:
        for index in candidates:
            if count == 0:
                return
            if int(index) not in chosen:
                chosen.append(int(index))
                reasons.append(reason)
                count -= 1

    spots = np.unique(np.linspace(0, len(kept) - 1, num=min(settings.fixed_samples, len(kept))).round().astype(int))
    take(kept[spots], settings.fixed_samples, "fixed")
    take(np.random.default_rng(settings.seed).permutation(kept), settings.random_samples, "random")
    take(ranked, settings.anomalous_samples, "anomalous")
    return np.array(chosen, dtype=np.int64), np.array(reasons)


def _reference_features(reference: Run | None, names: list[str]) -> pd.DataFrame | None:
    """The trusted run's window features, refusing a run of a different architecture."""
    if reference is None:
        return None
    missing = [name for name in names if name not in reference.window_scores.columns]
    if missing:
        raise RunError(
            f"{reference.path}: reference run lacks the features {', '.join(missing[:3])}"
            f"{' …' if len(missing) > 3 else ''}; it must be a run of a model with the same layers"
        )
    return reference.window_scores[["window", *names]]


def _in_batches(replayer: Replayer, batch: int):
    """`replayer.run_batch` for any number of windows, `batch` at a time (replay's batch,
    within the memory budget). An output a layer did not produce on every batch (an `If` branch some windows did
    not take) comes back empty, as if it never ran."""

    def run(windows: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
        parts = []
        for start in range(0, len(windows), batch):
            outputs = replayer.run_batch(windows[start : start + batch], indices[start : start + batch])
            parts.append(outputs)
        joined = {}
        for name, first in parts[0].items():
            pieces = [part[name] for part in parts]
            same = all(piece.shape[1:] == first.shape[1:] and len(piece) for piece in pieces)
            joined[name] = np.concatenate(pieces) if same else first[:0]
        return joined

    return run


def _traces(
    replayer: Replayer, source: WindowSource, indices: np.ndarray, reasons: np.ndarray, batch: int
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Full traces of the sampled windows: inputs, every gate (float16) and the model outputs, and
    the gates as replay gave them (float32, for the gradient flow). A layer that did not run on
    them (an `If` branch they did not take) has no trace."""
    windows = source.take(indices)
    outputs = _in_batches(replayer, batch)(windows, indices)
    traces = {"window": indices, "reason": reasons.astype("U16"), "x": windows}
    gates = replayer.gates(outputs)
    for layer, by_gate in gates.items():
        for gate, trace in by_gate.items():
            traces[f"{layer}/{gate}"] = trace.astype(np.float16)
    for name in replayer.output_names:
        traces[f"output:{name}"] = np.asarray(outputs[name], dtype=np.float32)
    return traces, gates


def _output_gradient(model: ModelSource, traces: dict[str, np.ndarray], feeds: Feeds, names: list[str]):
    """‖∂y_T/∂x_t‖ by the torch module's autograd on the first sampled windows, for a model fed its
    windows alone (`model.output_gradient`); empty for ONNX checkpoints and models fed more."""
    alone = not (feeds.per_window or feeds.constant or feeds.carry or feeds.one_window_per_call)
    windows = traces["x"][:GRADIENT_WINDOWS] if alone and names else np.empty((0,))
    return output_gradient(model.checkpoint.module, windows, names[0] if names else "")


def _gradients(
    model: ModelSource, gates: dict[str, dict[str, np.ndarray]], feeds: Feeds, say: Callable[[str], None]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gradient flow through time on the first sampled windows, as many as GRADIENT_FLOPS allows
    for the widest layer; none for a model whose state is carried between calls (a window's steps
    then span several calls, and its first state is not the node's)."""
    empty = gradient_flow(model.fused, [], {})
    steps = max((trace.shape[1] for by_gate in gates.values() for trace in by_gate.values()), default=0)
    hidden = max((layer.hidden_size for layer in model.layers), default=0)
    per_window = 2.0 * steps * hidden**3 * 4 * sum(layer.directions for layer in model.layers)
    if feeds.carry or not per_window:
        return empty
    count = min(GRADIENT_WINDOWS, int(GRADIENT_FLOPS // per_window))
    if count < 1:
        say(f"gradient flow left out: one window of layers of {hidden} units would take {per_window:.1e} flops")
        return empty
    return gradient_flow(model.fused, model.layers, gates, max_windows=count)


def _explanations(replayer: Replayer, traces: dict[str, np.ndarray], typical: dict) -> pd.DataFrame:
    """For each sampled window, the layers, gates and steps where it strays from the typical window
    (for the anomalous ones: what drove their score). Window pages draw these."""
    frames = []
    for position in range(len(traces["window"])):
        window_gates = {
            layer.name: {
                gate: traces[f"{layer.name}/{gate}"][position].astype(np.float32) for gate in gate_order(layer)
            }
            for layer in replayer.layers
            if f"{layer.name}/{gate_order(layer)[0]}" in traces  # not a layer that did not run (an If branch)
        }
        frames.append(explain_window(window_gates, typical).assign(window=int(traces["window"][position])))
    if not frames:
        return pd.DataFrame({"window": pd.Series(dtype=np.int64)})
    frame = pd.concat(frames, ignore_index=True)
    return frame[["window", *[c for c in frame.columns if c != "window"]]]


def _impulse(replayer: Replayer, source: WindowSource, settings: RunSettings, batch: int) -> pd.DataFrame:
    """Impulse-response curves on a seeded sample of windows, run `batch` at a time (replay's
    batch, within the memory budget), keeping only the states and outputs the curves read."""
    kept = source.indices()
    count = min(settings.impulse_windows, len(kept))
    chosen = np.sort(np.random.default_rng(settings.seed + 1).choice(kept, size=count, replace=False))
    wanted = set(impulse_outputs(replayer.layers, replayer.output_names))

    def run(windows: np.ndarray, rows: slice) -> dict[str, np.ndarray]:
        outputs = replayer.run_batch(windows, chosen[rows])
        return {name: value for name, value in outputs.items() if name in wanted}

    return impulse_response(
        run, source.take(chosen), replayer.layers, replayer.output_names, seed=settings.seed, chunk=batch
    )


def _meta(
    model: ModelSource, source: WindowSource, settings: RunSettings, result: ReplayResult, reference: Run | None
) -> dict:
    """run.json: identity, provenance hashes, settings and throughput."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": settings.model,
        "version": settings.version,
        "created": made_at().isoformat(),
        "checkpoint": {
            "path": str(model.checkpoint.path),
            "kind": model.checkpoint.kind,
            "sha256": model.checkpoint.sha256,
        },
        "onnx_sha256": hashlib.sha256(model.fused.SerializeToString()).hexdigest(),
        "exposed_onnx_sha256": hashlib.sha256(model.exposed.SerializeToString()).hexdigest(),
        "exporter": model.exporter,
        "export_parity_max_abs": model.parity_max_abs,
        "windows": {
            "path": str(source.path),
            "sha256": source.sha256(),
            "shape": [int(d) for d in source.shape],
            "skipped_nan": int(len(source.skipped)),
        },
        "n_windows": int(source.n_windows),
        "seq_len": int(source.seq_len),
        "provider": result.provider,
        "workers": result.workers,
        "dask": settings.dask,
        "batch_size": result.batch_size,
        "memory_budget": settings.memory,
        "thresholds": {family: list(settings.stats.thresholds(family)) for family in ("sigmoid", "tanh", "linear")},
        "histogram_bins": settings.stats.bins,
        "reference": None if reference is None else {"name": reference.name, "path": str(reference.path)},
        "packages": package_versions(),
    }


def make_run(
    model: ModelSource,
    source: WindowSource,
    settings: RunSettings,
    reference: Run | None = None,
    say: Callable[[str], None] = lambda line: None,
    feeds: Feeds | None = None,
    vocab: list[str] | None = None,
) -> Run:
    """Replay, score, sample, explain and measure: everything a run directory holds. `feeds` says
    where the model's inputs besides its windows come from (`replay.feeds.plan_feeds`); `vocab`, a
    token model's text per id, lets replay read what each unit tracks (`replay.unit_tracks`)."""
    feeds = feeds or plan_feeds(model.exposed, source, say=say)
    if settings.dask:
        from reporter.replay.dask_shards import replay_on_dask

        if feeds is not None and (feeds.per_window or feeds.constant or feeds.carry or feeds.one_window_per_call):
            raise RunError(
                "--dask replays models whose one input is the windows; this model takes "
                f"{', '.join(feeds.inputs)}: replay it without --dask"
            )
        provider = "cpu"
        result = replay_on_dask(
            settings.dask,
            model.exposed,
            model.layers,
            source,
            settings.batch_size or CAP,
            settings.stats,
            say,
            vocab=vocab,
        )
        replayer = Replayer(model.exposed, model.layers, provider, 1, settings.stats)  # for the few sampled windows
    else:
        provider, why = choose_provider(settings.provider)
        say(why)
        replayer = Replayer(model.exposed, model.layers, provider, settings.workers, settings.stats, feeds, vocab)
        result = replayer.replay(source, settings.batch_size, memory=settings.memory)
    replayer.keep_one_session()  # the sampled windows and impulses run on one session; the others' arenas go
    release_memory()  # and so do the batches' buffers, which glibc kept for batches that no longer come
    say(
        f"replayed {source.n_windows} windows in {result.seconds:.{1 if result.seconds >= 1 else 2}f} s "
        f"({result.windows_per_second:.0f} windows/s, "
        f"{result.workers} worker{'s' if result.workers > 1 else ''}, batches of {result.batch_size})"
    )
    names = feature_names(model.layers)
    scores = score_windows(result.features, _reference_features(reference, names))
    ranked = scores.sort_values("rank")["window"].to_numpy()
    indices, reasons = sample_windows(source.indices(), ranked, settings)
    traces, sampled_gates = _traces(replayer, source, indices, reasons, result.batch_size)
    say("following gradients back through time …")
    flow, unit_gradients = _gradients(model, sampled_gates, feeds, say)
    del sampled_gates
    saliency = _output_gradient(model, traces, feeds, replayer.output_names)
    frames = result.stats.to_frames()
    if len(source.shape) > 3:  # chunks with their own steps: an impulse per chunk axis would mislabel lags
        say("impulse responses left out: windows of chunks [N, T, …] with more than one axis per chunk")
        impulse = pd.DataFrame({name: pd.Series(dtype=object) for name in IMPULSE_COLUMNS})
    else:
        say("measuring impulse responses …")
        impulse = _impulse(replayer, source, settings, result.batch_size)
    meta = {**_meta(model, source, settings, result, reference), "inputs": feeds.describe()}
    meta["unit_tracks"] = dataclasses.asdict(result.tracks.config) if result.tracks else None
    weights, weight_maps = layer_weights(model.fused, model.layers)
    if not frames.timestep_stats.empty:  # in gate steps: a carried window of T calls may step more than T times
        meta["seq_len"] = int(frames.timestep_stats["t"].max()) + 1
    return Run(
        meta=meta,
        layers=model.layers,
        gate_stats=frames.gate_stats,
        timestep_stats=frames.timestep_stats,
        window_scores=scores,
        explanations=_explanations(replayer, traces, typical_from_timestep_stats(frames.timestep_stats)),
        impulse=impulse,
        traces=traces,
        outputs=result.outputs,
        unit_extremes=result.tracks.extremes_frame() if result.tracks else pd.DataFrame(),
        unit_hypotheses=result.tracks.hypotheses_frame() if result.tracks else pd.DataFrame(),
        weights=weights,
        weight_maps=weight_maps,
        weight_blocks=weight_blocks(model.fused, model.layers),
        gradient_flow=flow,
        unit_gradients=unit_gradients,
        output_gradient=saliency,
        timings={"replay_seconds": round(result.seconds, 3), "windows_per_second": round(result.windows_per_second, 1)},
    )


def with_vocab(run: Run, path: Path, vocab: list[str]) -> Run:
    """Give a run its token vocabulary (read by `reporter.vocab.load_vocab` from `path`), recorded
    in run.json by file name, sha256 and size, so that its pages show token windows as text."""
    run.vocab = vocab
    run.meta["vocab"] = {"file": Path(path).name, "sha256": file_sha256(path), "tokens": len(vocab)}
    return run

"""`gate-report bench`: what exposing gates costs, as ratios measured in one run.

Every figure is a ratio against a baseline timed in the same process, interleaved run by run
(A, B, C, A, B, C, …) and summarised by the median, so a busy machine slows all sides alike.
Nothing here is asserted in tests: speed is reported, never a pass/fail condition.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch

from reporter.layers import GATES, Layer
from reporter.model.expose import expose_gates
from reporter.replay.sessions import open_session
from reporter.replay.time_major import skip_final_transposes

__all__ = ["BenchRow", "time_interleaved", "bench_builtin", "bench_onnx", "capture_gates_torch", "format_rows"]

THREADS = 2
SETTLE_S = 0.05  # idle time before each timed run (`time_interleaved`)


@dataclass(frozen=True)
class BenchRow:
    """One measured case: median seconds per batch of each contender, and the ratios that matter."""

    case: str
    fused_s: float  # the unmodified ONNX model (fused nodes, or a decomposed cell's ops): one session, 2 threads
    exposed_s: float  # the gate-exposed model: one session, 2 threads
    torch_loop_s: float | None  # gates captured by a PyTorch loop over cell steps, 2 threads
    fused_pair_s: float | None = None  # per batch, two 1-thread sessions on two batches at once
    exposed_pair_s: float | None = None
    replay_pair_s: float | None = None  # the exposed model as replay runs it (`replay.time_major`), 2×1

    @property
    def overhead(self) -> float:
        """Exposed ÷ fused, one 2-thread session each: what a user's own session pays (goal ≤ 1.5)."""
        return self.exposed_s / self.fused_s

    @property
    def overhead_pair(self) -> float | None:
        """Exposed ÷ fused when each core runs its own batch, the exposed model as users get it."""
        return None if self.exposed_pair_s is None else self.exposed_pair_s / self.fused_pair_s

    @property
    def overhead_replay(self) -> float | None:
        """Exposed ÷ fused as replay runs it: each core its own batch, gates left time-major (goal ≤ 1.2)."""
        return None if self.replay_pair_s is None else self.replay_pair_s / self.fused_pair_s

    @property
    def speedup_vs_torch(self) -> float | None:
        """Torch loop ÷ exposed, one 2-thread session: how much faster than capturing gates by hand (goal ≥ 2)."""
        return None if self.torch_loop_s is None else self.torch_loop_s / self.exposed_s

    @property
    def speedup_replay_vs_torch(self) -> float | None:
        """Torch loop ÷ replay's exposed model per batch, both on the same 2 cores (torch: 2 threads
        on one batch; replay: one batch per core)."""
        if self.torch_loop_s is None or self.replay_pair_s is None:
            return None
        return self.torch_loop_s / self.replay_pair_s


def time_interleaved(
    contenders: dict[str, Callable[[], object]], repeats: int = 7, settle: float | None = None
) -> dict[str, float]:
    """Median wall time of each callable, run in turn so background load hits all equally.

    Each run starts `settle` seconds (default `SETTLE_S`) after the one before, on idle cores, as
    a user's one session does: a finished onnxruntime session's pool threads keep spinning for a
    while, and a session started at once shares the cores with them (measured: the fused LSTM as
    one 2-thread session took 98–112 ms right after the exposed model's run, 68–77 ms 50 ms
    later). Each round starts one contender further on, so what idling leaves over does not always
    fall on the same one.
    """
    settle = SETTLE_S if settle is None else settle
    for fn in contenders.values():  # warm-up: allocator, thread pools, lazy init
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            fn = contenders[name]
            time.sleep(settle)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def batch_pair(model: onnx.ModelProto, feed: dict) -> Callable[[], None]:
    """Run two batches at once on two 1-thread sessions opened as replay opens them
    (`replay.sessions.open_session`; onnxruntime releases the GIL)."""
    model_bytes = model.SerializeToString()
    sessions = [open_session(model_bytes, "cpu", threads=1) for _ in range(THREADS)]
    pool = ThreadPoolExecutor(max_workers=THREADS)

    def run_pair() -> None:
        for future in [pool.submit(s.run, None, feed) for s in sessions]:
            future.result()

    return run_pair


def session(model: onnx.ModelProto, threads: int = THREADS) -> ort.InferenceSession:
    """A CPU onnxruntime session limited to `threads` threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def capture_gates_torch(rnn: torch.nn.LSTM | torch.nn.GRU, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The way users capture gates today: a Python loop over cell steps, one layer at a time."""
    gates: dict[str, torch.Tensor] = {}
    layer_input = x if rnn.batch_first else x.transpose(0, 1)
    batch, steps = layer_input.shape[:2]
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = (
            getattr(rnn, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        h = layer_input.new_zeros(batch, rnn.hidden_size)
        c = torch.zeros_like(h)
        per_step = []
        for t in range(steps):
            xi, hh = (
                torch.nn.functional.linear(layer_input[:, t], w_ih, b_ih),
                torch.nn.functional.linear(h, w_hh, b_hh),
            )
            if isinstance(rnn, torch.nn.LSTM):
                i, f, g, o = (xi + hh).chunk(4, dim=1)
                i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                c = f * c + i * g
                h = o * torch.tanh(c)
                per_step.append(torch.stack([i, f, g, o, c, h]))
            else:
                xr, xz, xn = xi.chunk(3, dim=1)
                hr, hz, hn = hh.chunk(3, dim=1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
                per_step.append(torch.stack([z, r, n, h]))
        stacked = torch.stack(per_step, dim=2)  # [gate, B, T, H]
        names = GATES["LSTM" if isinstance(rnn, torch.nn.LSTM) else "GRU"]
        for k, name in enumerate(names):
            gates[f"l{layer}.{name}"] = stacked[k]
        layer_input = stacked[-1]
    return gates


def _export_for_bench(module: torch.nn.Module, x: torch.Tensor, dynamic_time: bool = True) -> onnx.ModelProto:
    """Export a bare recurrent module (legacy exporter: one fused node per layer; a loop over a
    cell is unrolled over x's steps into elementary ops, so its time axis is fixed)."""
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x[:2],),
            buffer,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch", 1: "time"} if dynamic_time else {0: "batch"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def _onnx_contenders(
    fused: onnx.ModelProto, exposed: onnx.ModelProto, layers: list[Layer], feed: dict
) -> dict[str, Callable[[], object]]:
    """The fused and the exposed model, each as one 2-thread session and as two 1-thread sessions,
    and the exposed model as replay runs it (two 1-thread sessions, gates time-major) where that
    differs (`replay.time_major`: not for cells inside control flow)."""
    s_fused, s_exposed = session(fused), session(exposed)
    contenders = {
        "fused": lambda: s_fused.run(None, feed),
        "exposed": lambda: s_exposed.run(None, feed),
        "fused_pair": batch_pair(fused, feed),
        "exposed_pair": batch_pair(exposed, feed),
    }
    runnable, time_major = skip_final_transposes(exposed, layers)
    if time_major:
        contenders["replay_pair"] = batch_pair(runnable, feed)
    return contenders


def _row(case: str, t: dict[str, float]) -> BenchRow:
    """A case's medians as a row (the pairs ran two batches at once: per batch, half their time)."""
    return BenchRow(
        case,
        t["fused"],
        t["exposed"],
        t.get("torch"),
        t["fused_pair"] / THREADS,
        t["exposed_pair"] / THREADS,
        t.get("replay_pair", t["exposed_pair"]) / THREADS,  # absent: replay runs the exposed model as it is
    )


def _builtin_case(
    kind: str, batch: int, steps: int, input_size: int, hidden: int, layers: int, repeats: int
) -> BenchRow:
    """One reference case: a torch LSTM or GRU, exported, exposed and timed against its cell loop."""
    torch.manual_seed(0)
    rnn = getattr(torch.nn, kind)(input_size, hidden, num_layers=layers, batch_first=True).eval()
    x = torch.randn(batch, steps, input_size)
    fused = _export_for_bench(rnn, x)
    exposed, gate_layers = expose_gates(fused)

    def torch_loop():
        with torch.no_grad():
            return capture_gates_torch(rnn, x)

    t = time_interleaved(
        {**_onnx_contenders(fused, exposed, gate_layers, {"x": x.numpy()}), "torch": torch_loop}, repeats
    )
    return _row(f"{layers}-layer {kind}, in {input_size}, hidden {hidden}, {batch}×{steps}", t)


class CellLoop(torch.nn.Module):
    """A recurrent layer written as a loop over `nn.LSTMCell`/`nn.GRUCell`, as people write their own
    cells: exporters unroll it into elementary ops, which exposure recognises (a decomposed cell)."""

    def __init__(self, kind: str, input_size: int, hidden: int):
        super().__init__()
        self.cell = getattr(torch.nn, f"{kind}Cell")(input_size, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        c, steps = h, []
        for t in range(x.shape[1]):
            if isinstance(self.cell, torch.nn.LSTMCell):
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
            steps.append(h)
        return torch.stack(steps, 1)

    def as_layer(self) -> torch.nn.Module:
        """The same weights as a one-layer nn.LSTM/GRU, for the torch loop that captures gates."""
        kind = "LSTM" if isinstance(self.cell, torch.nn.LSTMCell) else "GRU"
        rnn = getattr(torch.nn, kind)(self.cell.input_size, self.cell.hidden_size, batch_first=True).eval()
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(rnn, f"{name}_l0").data.copy_(getattr(self.cell, name).data)
        return rnn


def _decomposed_case(kind: str, batch: int, steps: int, input_size: int, hidden: int, repeats: int) -> BenchRow:
    """A loop over a torch cell, exported unrolled: exposed ÷ unmodified where no fused node exists."""
    torch.manual_seed(0)
    module = CellLoop(kind, input_size, hidden).eval()
    x = torch.randn(batch, steps, input_size)
    plain = _export_for_bench(module, x, dynamic_time=False)
    exposed, layers = expose_gates(plain)
    assert [layer.cell for layer in layers] == ["decomposed"], "the bench's cell loop was not recognised"
    rnn = module.as_layer()

    def torch_loop():
        with torch.no_grad():
            return capture_gates_torch(rnn, x)

    t = time_interleaved({**_onnx_contenders(plain, exposed, layers, {"x": x.numpy()}), "torch": torch_loop}, repeats)
    return _row(f"{kind}Cell loop, decomposed, hidden {hidden}, {batch}×{steps}", t)


def bench_builtin(
    kinds=("LSTM", "GRU"),
    batch: int = 256,
    steps: int = 100,
    input_size: int = 16,
    hidden: int = 128,
    layers: int = 2,
    repeats: int = 7,
) -> list[BenchRow]:
    """The reference cases: 2-layer LSTM and GRU (fused nodes), then loops over LSTMCell and GRUCell
    (cells decomposed into elementary ops), 256 windows × 100 steps, 2 threads."""
    torch.set_num_threads(THREADS)
    fused = [_builtin_case(kind, batch, steps, input_size, hidden, layers, repeats) for kind in kinds]
    return fused + [_decomposed_case(kind, batch, steps, input_size, hidden, repeats) for kind in kinds]


def bench_onnx(model: onnx.ModelProto, windows: np.ndarray, case: str, repeats: int = 7) -> BenchRow:
    """Fused vs exposed for a user's own model on a batch of its windows."""
    exposed, layers = expose_gates(model)
    feed = {model.graph.input[0].name: windows}
    return _row(case, time_interleaved(_onnx_contenders(model, exposed, layers, feed), repeats))


def format_rows(rows: list[BenchRow]) -> str:
    """A plain-text table: median milliseconds per batch and the ratios, with their goals."""

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value * 1e3:.1f}"

    def ratio(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}×"

    header = [
        ("case", 44),
        ("unmodified", 10),
        ("exposed", 8),
        ("torch loop", 10),
        ("exposed/unmod.", 14),
        ("unmod. 2×1", 10),
        ("exposed 2×1", 12),
        ("exposed/unmod.", 14),
        ("replay 2×1", 10),
        ("replay/unmod.", 13),
        ("torch/exposed", 14),
        ("torch/replay", 12),
    ]
    goals = [
        "",
        "ms",
        "ms",
        "ms",
        "≤1.5 goal",
        "ms/batch",
        "ms/batch",
        "2×1",
        "ms/batch",
        "2×1, ≤1.2",
        "≥2 goal",
        "≥2 goal",
    ]
    lines = [
        " ".join(f"{name:>{width}}" if k else f"{name:{width}}" for k, (name, width) in enumerate(header)),
        " ".join(f"{g:>{w}}" if k else f"{g:{w}}" for k, (g, (_, w)) in enumerate(zip(goals, header, strict=True))),
    ]
    for r in rows:
        cells = [
            r.case,
            ms(r.fused_s),
            ms(r.exposed_s),
            ms(r.torch_loop_s),
            ratio(r.overhead),
            ms(r.fused_pair_s),
            ms(r.exposed_pair_s),
            ratio(r.overhead_pair),
            ms(r.replay_pair_s),
            ratio(r.overhead_replay),
            ratio(r.speedup_vs_torch),
            ratio(r.speedup_replay_vs_torch),
        ]
        lines.append(
            " ".join(f"{c:>{w}}" if k else f"{c:{w}}" for k, (c, (_, w)) in enumerate(zip(cells, header, strict=True)))
        )
    lines.append(
        "2 threads: one session with 2 intra-op threads. 2×1: two 1-thread sessions, each on its own batch, "
        "per-batch time (how replay uses 2 cores); replay: the exposed model as replay runs it, its gates left "
        f"time-major (no final transposes). Each run starts on settled cores ({SETTLE_S * 1e3:.0f} ms idle)."
    )
    return "\n".join(lines)

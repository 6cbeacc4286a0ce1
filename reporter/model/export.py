"""Export a torch module to ONNX with dynamic batch and time axes, and measure output parity.

The default "legacy" (TorchScript-based) exporter emits one fused LSTM/GRU/RNN node per layer for
all three kinds, which is what gate exposure needs. The "dynamo" exporter fuses LSTM and GRU but
unrolls nn.RNN over time, fixing the time axis. `export_module` refuses a model whose input axes
are fixed, or that fails on a batch one longer and wider than the example, rather than hand on a
model that only runs at the example's shape.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch

from reporter.errors import ExportError

__all__ = ["EXPORTERS", "ExportResult", "export_module", "output_parity"]

EXPORTERS = ("legacy", "dynamo")
INPUT_NAME = "x"
_AXES = {0: "batch", 1: "time"}
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclass(frozen=True)
class ExportResult:
    """An exported model and what is known about how faithfully it copies the module."""

    model: onnx.ModelProto
    input_name: str  # "x"
    output_names: list[str]  # ["y"], or ["y0", "y1", ...] for several outputs
    exporter: str  # "legacy" | "dynamo"
    parity_max_abs: float  # max |onnxruntime - torch| over the parity windows, all outputs


def export_module(
    module: torch.nn.Module,
    example: np.ndarray | torch.Tensor,
    *,
    exporter: str = "legacy",
    opset: int | None = None,
    parity_windows: np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor] | None = None,
) -> ExportResult:
    """Export `module` for input like `example` (batch-first), then check it against torch."""
    if exporter not in EXPORTERS:
        choices = ", ".join(EXPORTERS)
        raise ExportError(f"{type(module).__name__}: unknown exporter {exporter!r}, expected one of {choices}")
    x = _as_input(example, "example")
    with _eval_mode(module):
        names = _output_names(module, x)
        model = _export_quietly(module, x, names, exporter, opset)
    _check_dynamic_input(module, model, exporter)
    output_parity(module, model, _resized(x))  # raises if the model only runs at the example's size
    windows = x if parity_windows is None else parity_windows
    return ExportResult(model, INPUT_NAME, names, exporter, output_parity(module, model, windows))


def output_parity(
    module: torch.nn.Module,
    model: onnx.ModelProto,
    windows: np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor],
) -> float:
    """Return the largest |onnxruntime - torch| over every output of every window batch."""
    session = _session(model, type(module).__name__)
    worst = 0.0
    for batch in _batches(windows):
        x = _as_input(batch, "parity window")
        try:
            worst = max(worst, _max_abs_diff(_torch_run(module, x), _onnx_run(session, x)))
        except ExportError as exc:
            raise ExportError(f"{type(module).__name__}: on a {list(x.shape)} window, {exc}") from exc
    return worst


def _batches(windows: object) -> list[object]:
    """Treat one array as one batch, anything else as a sequence of batches."""
    return [windows] if isinstance(windows, (np.ndarray, torch.Tensor)) else list(windows)


def _as_input(value: object, what: str) -> torch.Tensor:
    """Make a float32 [B, T, F] or int64 [B, T] tensor, widening float64 and int32 inputs."""
    x = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.tensor(np.asarray(value))
    if x.is_floating_point() and x.ndim == 3:
        return x.to(torch.float32)
    if x.dtype in _INTEGER_DTYPES and x.ndim == 2:
        return x.to(torch.int64)
    raise ExportError(
        f"{what}: expected float [batch, time, features] or integer token ids [batch, time], "
        f"got {x.dtype} {list(x.shape)}"
    )


def _resized(x: torch.Tensor) -> torch.Tensor:
    """Make a batch one longer on both dynamic axes, from the example's own values."""
    batch, time = x.shape[:2]
    return x.repeat(2, 2, *[1] * (x.ndim - 2))[: batch + 1, : time + 1]


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout) and hand the module back as it came."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _torch_run(module: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Run the module in eval mode without gradients, outputs flattened."""
    try:
        with _eval_mode(module), torch.no_grad():
            outputs = module(x)
    except Exception as exc:
        raise ExportError(f"torch fails: {_first_line(exc)}") from exc
    return [t.numpy() for t in _flatten(outputs)]


def _onnx_run(session: ort.InferenceSession, x: torch.Tensor) -> list[np.ndarray]:
    """Run the exported model on one batch."""
    try:
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})
    except Exception as exc:
        raise ExportError(f"onnxruntime fails: {_first_line(exc)}") from exc


def _flatten(outputs: object) -> list[torch.Tensor]:
    """List the tensors of a (nested) tuple of outputs in the order ONNX exporters use."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (tuple, list)):
        return [t for item in outputs for t in _flatten(item)]
    raise ExportError(f"the module returned {type(outputs).__name__}; expected tensors or tuples of tensors")


def _output_names(module: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """Name one output "y", several "y0", "y1", ... (runs the module once)."""
    try:
        count = len(_torch_run(module, x))
    except ExportError as exc:
        raise ExportError(f"{type(module).__name__}: on the example, {exc}") from exc
    return ["y"] if count == 1 else [f"y{i}" for i in range(count)]


def _export_quietly(
    module: torch.nn.Module, x: torch.Tensor, names: list[str], exporter: str, opset: int | None
) -> onnx.ModelProto:
    """Run one exporter with its warnings, prints and log lines kept from the user."""
    export = _export_legacy if exporter == "legacy" else _export_dynamo
    try:
        with _quiet():
            return export(module, x, names, opset)
    except Exception as exc:
        problem = _first_line(_root_cause(exc))
        raise ExportError(f"{type(module).__name__}: {exporter} ONNX export failed: {problem}") from exc


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence warnings, prints and torch's exporter loggers for a while."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    sink = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        for context in (redirect_stdout(sink), redirect_stderr(sink), _descriptors_muted()):
            stack.enter_context(context)
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


@contextlib.contextmanager
def _descriptors_muted() -> Iterator[None]:
    """Point file descriptors 1 and 2 at devnull: the legacy exporter's C++ dumps its IR there."""
    try:
        saved = [(fd, os.dup(fd)) for fd in (1, 2)]
    except OSError:  # no such descriptors (embedded interpreter): nothing to mute
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd, _ in saved:
            os.dup2(null, fd)
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


def _export_legacy(module: torch.nn.Module, x: torch.Tensor, names: list[str], opset: int | None) -> onnx.ModelProto:
    """Export through TorchScript tracing: fused LSTM/GRU/RNN nodes for every kind."""
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (x,),
        buffer,
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=names,
        dynamic_axes={INPUT_NAME: _AXES},
        opset_version=opset,
    )
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(module: torch.nn.Module, x: torch.Tensor, names: list[str], opset: int | None) -> onnx.ModelProto:
    """Export through torch.export with symbolic batch and time dimensions."""
    # torch.export specialises any dimension of size 1 (and guards dims against 1), so trace on
    # an example at least 2 long on both axes and declare both dims with min=2; the ONNX model
    # still runs at size 1.
    dims = {axis: torch.export.Dim(name, min=2) for axis, name in _AXES.items()}
    with _rnn_time_loops():
        program = torch.onnx.export(
            module,
            (_at_least_two(x),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes=(dims,),
            opset_version=opset,
            verbose=False,
            report=False,
        )
    return program.model_proto


def _at_least_two(x: torch.Tensor) -> torch.Tensor:
    """Repeat a batch along batch and time until both are at least 2 long (values don't matter)."""
    return x.repeat(*[2 if axis < 2 and size < 2 else 1 for axis, size in enumerate(x.shape)])


@contextlib.contextmanager
def _rnn_time_loops() -> Iterator[None]:
    """Keep the time axis symbolic through torch.onnx's decompositions of LSTM and GRU."""
    # torch.onnx applies these patches while capturing but not while decomposing, so without them
    # the exported outputs are annotated with the example's length. Private API: skip if gone.
    try:
        from torch.export._patches import register_gru_while_loop_decomposition, register_lstm_while_loop_decomposition
    except ImportError:
        yield
        return
    with register_lstm_while_loop_decomposition(), register_gru_while_loop_decomposition():
        yield


def _check_dynamic_input(module: torch.nn.Module, model: onnx.ModelProto, exporter: str) -> None:
    """Refuse a model whose batch or time axis the exporter fixed to the example's size."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis, name in _AXES.items():
        if dims[axis].HasField("dim_value"):
            raise ExportError(
                f"{type(module).__name__}: {exporter} exporter fixed the {name} axis of the input to "
                f"{dims[axis].dim_value}; try exporter='legacy'"
            )


def _session(model: onnx.ModelProto, owner: str) -> ort.InferenceSession:
    """Open a small, quiet CPU session for parity checks."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: failures come back as ExportError, not log lines
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"{owner}: onnxruntime cannot load the exported model: {_first_line(exc)}") from exc


def _max_abs_diff(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Compare torch's and onnxruntime's outputs, output by output."""
    if len(expected) != len(got):
        raise ExportError(f"torch gives {len(expected)} outputs, the ONNX model {len(got)}")
    worst = 0.0
    for index, (want, have) in enumerate(zip(expected, got)):
        if want.shape != have.shape:
            shapes = f"{list(have.shape)} in ONNX, {list(want.shape)} in torch"
            raise ExportError(f"output {index} has shape {shapes}")
        if want.size:
            worst = max(worst, float(np.max(np.abs(want.astype(np.float64) - have.astype(np.float64)))))
    return worst


def _root_cause(exc: BaseException) -> BaseException:
    """Follow `raise ... from` links to the error that started it (torch.onnx wraps its own)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _first_line(exc: BaseException) -> str:
    """Describe an exception by its type and its message's first non-empty line, without colours."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__

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
from collections.abc import Iterator, Mapping
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch

from reporter.errors import ExportError
from reporter.model.module_inputs import ModuleInputs

__all__ = ["EXPORTERS", "ExportResult", "export_module", "output_parity"]

EXPORTERS = ("legacy", "dynamo")
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ExportResult:
    """An exported model and what is known about how faithfully it copies the module."""

    model: onnx.ModelProto
    input_names: list[str]  # ["x"], or the forward's argument names or dict keys
    output_names: list[str]  # ["y"], or ["y0", "y1", ...] for several outputs
    exporter: str  # "legacy" | "dynamo"
    parity_max_abs: float  # max |onnxruntime - torch| over the parity windows, all outputs

    @property
    def input_name(self) -> str:
        """The input the windows feed: "x", or the forward's first argument or dict key."""
        return self.input_names[0]


def export_module(
    module: torch.nn.Module,
    example: np.ndarray | torch.Tensor | Mapping,
    *,
    exporter: str = "legacy",
    opset: int | None = None,
    parity_windows=None,
    as_dict: bool = False,
) -> ExportResult:
    """Export `module` for input like `example` (batch-first), then check it against torch.

    `example` is a windows array, or a mapping of name → array for a forward that takes several
    tensors (in that order) or, with `as_dict`, one dict of them (`module_inputs`).
    """
    if exporter not in EXPORTERS:
        choices = ", ".join(EXPORTERS)
        raise ExportError(f"{type(module).__name__}: unknown exporter {exporter!r}, expected one of {choices}")
    x = ModuleInputs.of(example, "example", as_dict)
    with _eval_mode(module):
        names = _output_names(module, x)
        model = _export_quietly(module, x, names, exporter, opset)
    _check_dynamic_input(module, model, exporter, x)
    output_parity(module, model, x.resized())  # raises if the model only runs at the example's size
    windows = x if parity_windows is None else parity_windows
    return ExportResult(model, list(x.tensors), names, exporter, output_parity(module, model, windows, as_dict))


def output_parity(module: torch.nn.Module, model: onnx.ModelProto, windows, as_dict: bool = False) -> float:
    """Return the largest |onnxruntime - torch| over every output of every window batch."""
    session = _session(model, type(module).__name__)
    worst = 0.0
    for batch in _batches(windows):
        x = ModuleInputs.of(batch, "parity window", as_dict)
        try:
            worst = max(worst, _max_abs_diff(_torch_run(module, x), _onnx_run(session, x)))
        except ExportError as exc:
            raise ExportError(f"{type(module).__name__}: on a {list(x.first.shape)} window, {exc}") from exc
    return worst


def _batches(windows: object) -> list[object]:
    """Treat one array (or one set of named arrays) as one batch, anything else as a sequence of batches."""
    return [windows] if isinstance(windows, (np.ndarray, torch.Tensor, Mapping, ModuleInputs)) else list(windows)


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout) and hand the module back as it came."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _torch_run(module: torch.nn.Module, x: ModuleInputs) -> list[np.ndarray]:
    """Run the module in eval mode without gradients, outputs flattened."""
    try:
        with _eval_mode(module), torch.no_grad():
            outputs = x.call(module)
    except Exception as exc:
        raise ExportError(f"torch fails: {_first_line(exc)}") from exc
    return [t.numpy() for t in _flatten(outputs)]


def _onnx_run(session: ort.InferenceSession, x: ModuleInputs) -> list[np.ndarray]:
    """Run the exported model on one batch."""
    try:
        names = {value.name for value in session.get_inputs()}  # a dict entry forward never reads is no input
        return session.run(None, {name: value for name, value in x.feed().items() if name in names})
    except Exception as exc:
        raise ExportError(f"onnxruntime fails: {_first_line(exc)}") from exc


def _flatten(outputs: object) -> list[torch.Tensor]:
    """List the tensors of a (nested) tuple of outputs in the order ONNX exporters use."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (tuple, list)):
        return [t for item in outputs for t in _flatten(item)]
    raise ExportError(f"the module returned {type(outputs).__name__}; expected tensors or tuples of tensors")


def _output_names(module: torch.nn.Module, x: ModuleInputs) -> list[str]:
    """Name one output "y", several "y0", "y1", ... (runs the module once)."""
    try:
        count = len(_torch_run(module, x))
    except ExportError as exc:
        raise ExportError(f"{type(module).__name__}: on the example, {exc}") from exc
    return ["y"] if count == 1 else [f"y{i}" for i in range(count)]


def _export_quietly(
    module: torch.nn.Module, x: ModuleInputs, names: list[str], exporter: str, opset: int | None
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


def _export_legacy(module: torch.nn.Module, x: ModuleInputs, names: list[str], opset: int | None) -> onnx.ModelProto:
    """Export through TorchScript tracing: fused LSTM/GRU/RNN nodes for every kind."""
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        x.export_args(),
        buffer,
        dynamo=False,
        input_names=list(x.tensors),
        output_names=names,
        dynamic_axes=x.dynamic_axes(),
        opset_version=opset,
    )
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(module: torch.nn.Module, x: ModuleInputs, names: list[str], opset: int | None) -> onnx.ModelProto:
    """Export through torch.export with symbolic batch and time dimensions."""
    # torch.export specialises any dimension of size 1 (and guards dims against 1), so trace on
    # an example at least 2 long on both axes and declare both dims with min=2; the ONNX model
    # still runs at size 1.
    symbols = {name: torch.export.Dim(name, min=2) for name in ("batch", "time")}
    dims = {name: {axis: symbols[symbol] for axis, symbol in axes.items()} for name, axes in x.dynamic_axes().items()}
    shapes = (dims,) if x.as_dict else tuple(dims.values())
    with _rnn_time_loops():
        program = torch.onnx.export(
            module,
            x.at_least_two().export_args()[:1] if x.as_dict else x.at_least_two().export_args(),
            dynamo=True,
            input_names=list(x.tensors),
            output_names=names,
            dynamic_shapes=shapes,
            opset_version=opset,
            verbose=False,
            report=False,
        )
    return program.model_proto


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


def _check_dynamic_input(module: torch.nn.Module, model: onnx.ModelProto, exporter: str, x: ModuleInputs) -> None:
    """Refuse a model whose batch or time axis the exporter fixed to the example's size."""
    axes = x.dynamic_axes()
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, name in axes.get(value.name, {}).items():
            if axis < len(dims) and dims[axis].HasField("dim_value"):
                which = "the input" if len(axes) == 1 else f"input {value.name}"
                raise ExportError(
                    f"{type(module).__name__}: {exporter} exporter fixed the {name} axis of {which} to "
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

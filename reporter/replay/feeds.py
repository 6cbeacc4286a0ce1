"""What every model input gets, batch by batch: the windows, arrays stored beside them, constants.

A model may take more than its windows: a sample rate, a mask, an initial recurrent state. Each
graph input is fed from one of three places, chosen once before replay starts:

    the windows         the windows file's array for the model's input (`--key`; in an .npz, by
                        default the array named after the first input, else "x")
    per window          another array of the same .npz named after the input, first axis = windows
    every window alike  `--feed NAME=VALUE` (`feed = { NAME = VALUE }` in reporter.toml): a number,
                        a JSON list, `zeros`, or a .npy file

An input fed from nowhere stops replay before it starts, naming each such input with its shape
and both ways to feed it. A constant's one open axis takes the batch size, so an initial state
`zeros` for `[layers, batch, hidden]` fits every batch.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from reporter.errors import WindowsFileError
from reporter.model.inputs import GraphInput, graph_inputs, onnx_input
from reporter.replay.carry import checked_carry, detect_carry
from reporter.replay.window_readers import npz_arrays, open_rows
from reporter.replay.windows import WindowSource

__all__ = ["FEED_VALUES", "Feeds", "feed_value", "parse_feeds", "plan_feeds", "windows_key"]

FEED_VALUES = "a number, a JSON list, zeros, or a .npy file"


def feed_value(name: str, value) -> np.ndarray | str:
    """One --feed value: a number or list (an array), "zeros", or a .npy file (read without pickles)."""
    if isinstance(value, str) and value.strip() == "zeros":
        return "zeros"
    if isinstance(value, str) and value.strip().endswith(".npy"):
        path = Path(value.strip())
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise WindowsFileError(f"--feed {name}={value}: cannot read {path} ({exc})") from None
        if array.dtype.kind not in "biuf":
            raise WindowsFileError(f"--feed {name}={value}: {path} holds {array.dtype}, not numbers")
        return array
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise WindowsFileError(f"--feed {name}={value}: expected {FEED_VALUES}") from None
    try:
        array = np.asarray(value)
    except ValueError:  # a ragged list
        raise WindowsFileError(f"--feed {name}={value!r}: a list must be rectangular, like [[1, 2], [3, 4]]") from None
    if array.dtype.kind not in "biuf":
        raise WindowsFileError(f"--feed {name}={value!r}: expected {FEED_VALUES}")
    return array


def parse_feeds(items: list[str] | None) -> dict[str, np.ndarray | str]:
    """--feed NAME=VALUE options (repeatable) as {name: value}."""
    feeds = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise WindowsFileError(f"--feed {item}: expected NAME=VALUE, VALUE being {FEED_VALUES}")
        feeds[name] = feed_value(name, value)
    return feeds


def _cast(spec: GraphInput, value: np.ndarray) -> np.ndarray:
    """A fed value in the input's element type; an integer input takes whole finite numbers only."""
    if (
        spec.dtype.kind in "iu"
        and value.dtype.kind == "f"
        and not (np.isfinite(value) & (value == np.round(value))).all()
    ):
        raise WindowsFileError(f"--feed {spec.name}: input {spec.name} takes {spec.dtype} whole numbers, got {value!r}")
    return np.ascontiguousarray(value, dtype=spec.dtype)


def _constant(spec: GraphInput, value: np.ndarray | str, batch: int) -> np.ndarray:
    """A constant shaped for a batch: its one open axis takes the batch size."""
    open_axes = spec.dynamic_axes()
    if isinstance(value, str) or value.ndim == 0:
        if len(open_axes) > 1:
            raise WindowsFileError(
                f"--feed {spec.name}: input {spec.name} {spec.shape_text} has {len(open_axes)} open "
                "axes; give a .npy file of its full shape"
            )
        shape = [batch if axis in open_axes else dim for axis, dim in enumerate(spec.dims)]
        fill = 0 if isinstance(value, str) else _cast(spec, value)
        return np.full(shape, fill, dtype=spec.dtype)
    if value.ndim != len(spec.dims) or any(
        isinstance(dim, int) and dim != size for dim, size in zip(spec.dims, value.shape)
    ):
        raise WindowsFileError(
            f"--feed {spec.name}: input {spec.name} is {spec.shape_text}, the value fed has shape {list(value.shape)}"
        )
    if len(open_axes) == 1 and value.shape[open_axes[0]] == 1:  # one row, repeated for every window of the batch
        shape = list(value.shape)
        shape[open_axes[0]] = batch
        value = np.broadcast_to(value, shape)
    return _cast(spec, value)


@dataclass
class Feeds:
    """Where each graph input comes from; `batch` builds the feed of one batch of windows (or of
    one window, or one chunk of them: `replay.calls` decides how many calls a batch takes)."""

    primary: str  # the input the windows go to
    inputs: dict[str, GraphInput]
    per_window: dict[str, object] = field(default_factory=dict)  # name -> row reader of the windows .npz
    constant: dict[str, np.ndarray | str] = field(default_factory=dict)
    carry: dict[str, str] = field(default_factory=dict)  # state input -> the output fed back to it
    batchless: bool = False  # the windows' input has no batch axis: one window per call
    batch_of_one: bool = False  # the graph fixes the batch at 1: one window per call
    _shaped: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def one_window_per_call(self) -> bool:
        return self.batchless or self.batch_of_one

    def batch(self, windows: np.ndarray, indices: np.ndarray | None = None, batch: int | None = 0) -> dict:
        """Every input's value for these windows (`indices`: their file indices, for per-window
        arrays); `batch=None` for one window fed to an input without a batch axis."""
        size = len(windows) if batch == 0 else 1
        feed = {self.primary: windows}
        if self.per_window and indices is None:
            raise ValueError("per-window inputs need the windows' file indices")
        for name, rows in self.per_window.items():
            value = np.ascontiguousarray(rows.take(np.asarray(indices)), dtype=self.inputs[name].dtype)
            feed[name] = value if batch is not None else value[0]
        for name, value in self.constant.items():
            key = (name, size)
            if key not in self._shaped:
                self._shaped[key] = _constant(self.inputs[name], value, size)
            feed[name] = self._shaped[key]
        for name in self.carry:  # a state not stored or fed starts from zeros
            if name not in feed:
                feed[name] = _constant(self.inputs[name], "zeros", size)
        return feed

    def describe(self) -> dict:
        """For run.json: which input took the windows, which came per window, which were fed or carried."""
        constant = {
            name: value
            if isinstance(value, str)
            else value.tolist()
            if value.size <= 16
            else f"array {list(value.shape)}"
            for name, value in self.constant.items()
        }
        described = {"windows": self.primary, "per_window": sorted(self.per_window), "constant": constant}
        if self.carry:
            described["carry"] = dict(self.carry)
        if self.one_window_per_call:
            described["calls"] = "one window per call"
        return described


def windows_key(path: Path, input_names: list[str], requested: str | None = None) -> str:
    """Which array of a windows file feeds the model's windows: the one asked for, else in an .npz
    the first input's own name when it is there, else "x"."""
    if requested:
        return requested
    members = npz_arrays(path)
    return next((name for name in input_names if name in members), "x")


def _check_windows(source: WindowSource, spec: GraphInput, per_call: tuple, mode: str) -> None:
    """Each call's slice of the windows must fit the input's fixed axes."""
    if len(per_call) != len(spec.dims) or any(
        isinstance(dim, int) and dim != size for dim, size in zip(spec.dims, per_call)
    ):
        raise WindowsFileError(
            f"{source.path}: windows {list(source.shape)} give {mode} calls of shape "
            f"{list(per_call)}, but input {spec.name} is {spec.shape_text}"
        )


def _per_window_rows(source: WindowSource, spec: GraphInput):
    """A row reader for the .npz array feeding `spec` one row per window, checked against the input."""
    rows = open_rows(source.path, spec.name, None, None, None)
    if not rows.shape or rows.shape[0] != source.shape[0]:
        raise WindowsFileError(
            f"{source.path}: array {spec.name!r} has {rows.shape[:1] or 'no'} rows, the windows "
            f"{source.shape[0]}: a per-window input needs one row per window"
        )
    if spec.dims and isinstance(spec.dims[0], int) and spec.dims[0] != 1:
        raise WindowsFileError(
            f"{source.path}: input {spec.name} is {spec.shape_text}, its batch not on the first axis; "
            "a per-window array is [windows, …]: feed it with --feed, or carry it with --carry"
        )
    if len(rows.shape) != len(spec.dims) or any(
        isinstance(dim, int) and dim != size for dim, size in zip(spec.dims[1:], rows.shape[1:])
    ):
        raise WindowsFileError(
            f"{source.path}: array {spec.name!r} is {list(rows.shape)} for input {spec.name} "
            f"{spec.shape_text}: one row per window, then the input's own axes"
        )
    with zipfile.ZipFile(source.path) as archive:
        compressed = any(
            info.compress_type != zipfile.ZIP_STORED
            for info in archive.infolist()
            if info.filename in (spec.name, spec.name + ".npy")
        )
    if compressed:  # a compressed member cannot be read by row without decompressing from its start: hold it
        return _InMemory(rows.read(0, rows.shape[0]))
    return rows


class _InMemory:
    """A per-window array held in memory (a compressed .npz member), read by row like the others."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape = array, array.shape

    def take(self, indices: np.ndarray) -> np.ndarray:
        return self.array[np.asarray(indices)]


def plan_feeds(
    model: onnx.ModelProto,
    source: WindowSource,
    constant: dict | None = None,
    carry: dict[str, str] | None = None,
    say=lambda line: None,
) -> Feeds:
    """Decide where each of the model's inputs comes from and how many calls a batch takes; refuse
    inputs fed from nowhere. `carry` None: detected when the windows have one axis more than the input."""
    inputs = {spec.name: spec for spec in graph_inputs(model)}
    constant = dict(constant or {})
    unknown = [name for name in constant if name not in inputs]
    if unknown:
        raise WindowsFileError(
            f"--feed {unknown[0]}: the model has no input {unknown[0]!r}; its inputs: {', '.join(inputs)}"
        )
    key = source.recipe.get("key", "x")
    primary = key if key in inputs else next(iter(inputs))
    if primary in constant:
        raise WindowsFileError(
            f"--feed {primary}: {primary} is the input the windows feed ({source.path}); feed the model's other inputs"
        )
    for name, value in constant.items():
        _constant(inputs[name], value, 1)  # a value that cannot fit is refused before replay starts
    spec = inputs[primary]
    extra_axis = len(source.shape) == len(spec.dims) + 1
    if carry is None and extra_axis:
        carry = detect_carry(model, primary)
        if carry:
            pairs = ", ".join(f"{a}={b}" for a, b in carry.items())
            say(f"carrying state between calls: {pairs} (detected from the names and shapes; --carry sets it)")
    carry = checked_carry(model, inputs, carry or {})
    if carry:
        if not extra_axis:
            raise WindowsFileError(
                f"{source.path}: with --carry, windows are [N, T, …one call's input…]; these are "
                f"{list(source.shape)} and input {primary} is {spec.shape_text}"
            )
        _check_windows(source, spec, (spec.dims[0], *source.shape[2:]), "per-chunk")
    elif extra_axis:
        _check_windows(source, spec, tuple(source.shape[1:]), "per-window")
    else:
        _check_windows(source, spec, (spec.dims[0], *source.shape[1:]), "per-batch")
        source.check(onnx_input(model, primary))
    feeds = Feeds(
        primary,
        inputs,
        constant=constant,
        carry=carry,
        batchless=extra_axis and not carry,
        batch_of_one=spec.dims[:1] == (1,),
    )
    for name in npz_arrays(source.path):
        if name in inputs and name != primary and name not in constant:
            feeds.per_window[name] = _per_window_rows(source, inputs[name])
    missing = [
        spec
        for name, spec in inputs.items()
        if name != primary and name not in feeds.per_window and name not in constant and name not in carry
    ]
    if missing:
        named = ", ".join(f"{spec.name} {spec.dtype} {spec.shape_text}" for spec in missing)
        first = missing[0].name
        raise WindowsFileError(
            f"{source.path}: the model's inputs {named} are not fed: store an array per input in "
            f"the windows .npz (first axis = windows, e.g. '{first}'), or pass --feed {first}=VALUE "
            f"for every window alike ({FEED_VALUES})"
        )
    return feeds

"""Read stored input windows as validated batches, without loading the file whole.

Float windows are [N, T, F] series; token-id windows are integer [N, T]. Formats:

    .npy            read in row ranges straight from the file (seek + read: resident memory stays
                    one batch, however large the file)
    .npz            one named array (`key`, default "x"), streamed from its zip member the same way
    .pt             a tensor, or a dict holding one under `key` (torch.load(weights_only=True), mmap)
    .parquet, .csv  a [rows, columns] table cut into sliding windows (`window`, `stride`, `columns`);
                    a single integer column is a token stream, cut into [N, T] token-id windows

Opening a source scans it once in bounded chunks for NaN/Inf (and token-id range), so problems
are reported before replay starts: as an error naming how many windows and where, or, with
`nan="skip"`, by dropping those windows and recording which. Every failure is a one-line
`WindowsError_` naming the file.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from reporter.errors import WindowsError_

__all__ = ["ModelInput", "WindowSource", "open_windows_source", "FORMATS"]

FORMATS = (".npy", ".npz", ".pt", ".parquet", ".csv")
_SCAN_VALUES = 1 << 22  # values per chunk of the NaN/range scan (16 MB of float32)


@dataclass(frozen=True)
class ModelInput:
    """What a model's first input takes: float series [N, T, F] or token ids [N, T]."""

    name: str
    kind: str  # "float" | "tokens"
    features: int | None = None  # per step, for float input, when the graph fixes it
    steps: int | None = None  # when the graph fixes the window length
    vocab: int | None = None  # embedding rows, for token input, when the graph shows them

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto) -> ModelInput:
        """Read the first real graph input's element type and shape (and vocabulary, from its Gather)."""
        initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        inputs = [value for value in model.graph.input if value.name not in initializers]
        if not inputs:
            raise WindowsError_("model: has no graph input to feed windows to")
        value = inputs[0]
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
        float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
        if tensor_type.elem_type in float_types:
            return cls(value.name, "float", dims[2] if len(dims) == 3 else None, dims[1] if len(dims) >= 2 else None)
        if tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            vocab = next((initializers[node.input[0]].dims[0] for node in model.graph.node
                          if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == value.name
                          and node.input[0] in initializers), None)
            return cls(value.name, "tokens", None, dims[1] if len(dims) >= 2 else None, vocab)
        raise WindowsError_(f"model: input {value.name!r} has element type "
                            f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type)}; expected float or int64")


# ---------------------------------------------------------------------------------------------
# Row readers: read(start, stop) and take(indices) on the file's first axis.

class _ArrayRows:
    """Rows of an array already addressable in memory (an mmap, or a sliding view of a table)."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype = array, tuple(array.shape), array.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop])

    @contextlib.contextmanager
    def reader(self):
        """Sequential reads (the same as `read`: an array needs no open handle)."""
        yield self.read

    def take(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[np.asarray(indices)])


class _NpyRows:
    """Rows of a C-ordered .npy array, in a file or a zip member, read by seeking: no mapping kept."""

    def __init__(self, path: Path, member: str | None, offset: int, shape: tuple, dtype: np.dtype):
        self.path, self.member, self.offset, self.shape, self.dtype = path, member, offset, shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def _open(self):
        if self.member is None:
            return open(self.path, "rb")
        archive = zipfile.ZipFile(self.path)
        return _ZipMember(archive, archive.open(self.member))

    def read(self, start: int, stop: int) -> np.ndarray:
        with self._open() as file:
            return self._read(file, start, stop)

    @contextlib.contextmanager
    def reader(self):
        """One open handle for reads in ascending order: a compressed zip member then only ever
        decompresses forward, instead of from its start for every batch."""
        with self._open() as file:
            yield lambda start, stop: self._read(file, start, stop)

    def _read(self, file, start: int, stop: int) -> np.ndarray:
        file.seek(self.offset + start * self.row_bytes)
        data = file.read((stop - start) * self.row_bytes)
        if len(data) != (stop - start) * self.row_bytes:
            raise WindowsError_(f"{self.path}: truncated: rows {start}..{stop - 1} are not all in the file")
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def take(self, indices: np.ndarray) -> np.ndarray:
        with self._open() as file:
            rows = [self._read(file, int(i), int(i) + 1) for i in indices]
        return np.concatenate(rows) if rows else np.zeros((0, *self.shape[1:]), self.dtype)


class _ZipMember:
    """A zip member that closes its archive with it."""

    def __init__(self, archive: zipfile.ZipFile, member):
        self.archive, self.member = archive, member

    def __enter__(self):
        return self.member

    def __exit__(self, *exc) -> None:
        self.member.close()
        self.archive.close()


def _npy_header(file, path: Path) -> tuple[tuple, bool, np.dtype]:
    """Shape, Fortran order and dtype from an .npy header, refusing pickled objects."""
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
    else:
        raise WindowsError_(f"{path}: not a readable .npy file (unknown format version {version})")
    if dtype.hasobject:
        raise WindowsError_(f"{path}: holds Python objects (a pickle); windows must be a numeric array")
    return tuple(shape), fortran, dtype


def _npy_rows(path: Path) -> _NpyRows | _ArrayRows:
    with open(path, "rb") as file:
        shape, fortran, dtype = _npy_header(file, path)
        offset = file.tell()
    if fortran:
        return _ArrayRows(np.load(path, mmap_mode="r", allow_pickle=False))
    rows = _NpyRows(path, None, offset, shape, dtype)
    if path.stat().st_size < offset + rows.row_bytes * (shape[0] if shape else 1):
        raise WindowsError_(f"{path}: truncated: the header promises shape {list(shape)}, the file is shorter")
    return rows


def _npz_rows(path: Path, key: str) -> _NpyRows | _ArrayRows:
    with zipfile.ZipFile(path) as archive:
        names = [name[:-4] if name.endswith(".npy") else name for name in archive.namelist()]
        if key not in names:
            raise WindowsError_(f"{path}: no array named {key!r}; it has {', '.join(names) or 'none'} (choose with --key)")
        member = archive.namelist()[names.index(key)]
        with archive.open(member) as file:
            shape, fortran, dtype = _npy_header(file, path)
            offset = file.tell()
        size = archive.getinfo(member).file_size
    if fortran:
        with np.load(path, allow_pickle=False) as loaded:
            return _ArrayRows(loaded[key])
    rows = _NpyRows(path, member, offset, shape, dtype)
    if size < offset + rows.row_bytes * (shape[0] if shape else 1):
        raise WindowsError_(f"{path}: truncated: array {key!r} is shorter than its header says")
    return rows


def _pt_rows(path: Path, key: str) -> _ArrayRows:
    import pickle

    import torch

    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WindowsError_(f"{path}: refused: it is not plain tensors (weights_only load: "
                            f"{str(exc).splitlines()[0]})") from None
    if isinstance(loaded, dict):
        if key not in loaded:
            raise WindowsError_(f"{path}: no tensor named {key!r}; it has {', '.join(map(str, loaded)) or 'none'} "
                                "(choose with --key)")
        loaded = loaded[key]
    if not isinstance(loaded, torch.Tensor):
        raise WindowsError_(f"{path}: holds a {type(loaded).__name__}, expected a tensor (or a dict of tensors)")
    if loaded.dtype in (torch.bfloat16, torch.float16):
        loaded = loaded.float()
    return _ArrayRows(loaded.detach().numpy())


def _table(path: Path, columns: Sequence[str] | None):
    """A table as a pandas frame of the chosen (or all numeric) columns."""
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
        _check_columns(path, columns, names)
        frame = pq.read_table(path, columns=list(columns) if columns else None).to_pandas()
    else:
        frame = pd.read_csv(path)
        _check_columns(path, columns, list(frame.columns))
    if columns:
        frame = frame[list(columns)]
        text = [name for name in frame.columns if not pd.api.types.is_numeric_dtype(frame[name])]
        if text:
            raise WindowsError_(f"{path}: column {text[0]!r} is not numeric")
    else:
        frame = frame.select_dtypes("number")
        if frame.shape[1] == 0:
            raise WindowsError_(f"{path}: has no numeric columns")
    return frame


def _check_columns(path: Path, wanted: Sequence[str] | None, names: list[str]) -> None:
    missing = [name for name in wanted or () if name not in names]
    if missing:
        raise WindowsError_(f"{path}: no column {missing[0]!r}; it has {', '.join(map(str, names))}")


def _table_rows(path: Path, window: int | None, stride: int | None, columns: Sequence[str] | None) -> _ArrayRows:
    if window is None:
        raise WindowsError_(f"{path}: a table needs --window (steps per window) to be cut into windows")
    frame = _table(path, columns)
    values = frame.to_numpy()
    if values.shape[1] == 1 and values.dtype.kind in "iu":  # one integer column: a token stream
        values = values[:, 0].astype(np.int64)
    else:
        values = values.astype(np.float32)
    if len(values) < window:
        raise WindowsError_(f"{path}: has {len(values)} rows, fewer than one window of {window}")
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)[:: stride or window]
    return _ArrayRows(view if view.ndim == 2 else view.transpose(0, 2, 1))  # [N, F, T] → [N, T, F]


def _rows(path: Path, key: str, window: int | None, stride: int | None, columns: Sequence[str] | None):
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _npy_rows(path)
    if suffix == ".npz":
        return _npz_rows(path, key)
    if suffix == ".pt":
        return _pt_rows(path, key)
    if suffix in (".parquet", ".csv"):
        return _table_rows(path, window, stride, columns)
    raise WindowsError_(f"{path}: unsupported windows format {suffix!r} (expected {', '.join(FORMATS)})")


# ---------------------------------------------------------------------------------------------

def _model_dtype(path: Path, shape: tuple, dtype: np.dtype) -> np.dtype:
    """float32 for float [N, T, F], int64 for integer [N, T]; anything else is an error."""
    if dtype.kind == "f":
        if len(shape) != 3:
            raise WindowsError_(f"{path}: float windows must be [N, T, F], got shape {list(shape)}")
        model_dtype = np.dtype(np.float32)
    elif dtype.kind in "iu":
        if len(shape) != 2:
            raise WindowsError_(f"{path}: token-id windows must be [N, T], got shape {list(shape)}")
        model_dtype = np.dtype(np.int64)
    else:
        raise WindowsError_(f"{path}: windows must be float or integer, got dtype {dtype}")
    if 0 in shape:
        raise WindowsError_(f"{path}: holds no windows (shape {list(shape)})")
    return model_dtype


class WindowSource:
    """A validated windows file: which windows are kept, and batches of them in model dtype."""

    def __init__(self, path: Path, rows, dtype: np.dtype, skipped: np.ndarray, token_range: tuple[int, int] | None):
        self.path, self._rows, self.dtype = path, rows, dtype
        self.shape = tuple(int(d) for d in rows.shape)  # of the file, skipped windows included
        self.skipped = skipped
        self.token_range = token_range
        self._kept = np.setdiff1d(np.arange(self.shape[0], dtype=np.int64), skipped)
        self._sha256: str | None = None
        self.recipe: dict = {"path": str(path)}  # how `open_windows_source` opened it (to reopen elsewhere)

    @property
    def kind(self) -> str:
        return "float" if self.dtype.kind == "f" else "tokens"

    @property
    def n_windows(self) -> int:
        """Windows replayed (the file's, less any skipped)."""
        return int(len(self._kept))

    @property
    def seq_len(self) -> int:
        return self.shape[1]

    @property
    def features(self) -> int | None:
        return self.shape[2] if self.kind == "float" else None

    def indices(self) -> np.ndarray:
        """File indices of the kept windows, ascending."""
        return self._kept.copy()

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (file indices, C-contiguous windows) for the kept windows with index in [start, stop)."""
        stop = self.shape[0] if stop is None else min(stop, self.shape[0])
        skipped = set(self.skipped.tolist())
        with self._rows.reader() as read:
            for first in range(start, stop, batch_size):
                last = min(first + batch_size, stop)
                rows = read(first, last)
                indices = np.arange(first, last, dtype=np.int64)
                if skipped:
                    keep = np.array([i not in skipped for i in indices.tolist()])
                    rows, indices = rows[keep], indices[keep]
                if len(indices):
                    yield indices, np.ascontiguousarray(rows, dtype=self.dtype)

    def take(self, indices) -> np.ndarray:
        """The windows at these file indices, in model dtype."""
        indices = np.asarray(indices, dtype=np.int64)
        return np.ascontiguousarray(self._rows.take(indices), dtype=self.dtype)

    def sha256(self) -> str:
        """The windows file's sha256 (computed once)."""
        if self._sha256 is None:
            from reporter.checkpoints import file_sha256

            self._sha256 = file_sha256(self.path)
        return self._sha256

    def check(self, model_input: ModelInput) -> None:
        """Refuse windows the model cannot take: wrong kind, feature count, length or token range."""
        if model_input.kind != self.kind:
            wanted = "float series [N, T, F]" if model_input.kind == "float" else "integer token ids [N, T]"
            raise WindowsError_(f"{self.path}: the model takes {wanted}, these windows are {self.kind} "
                                f"with shape {list(self.shape)}")
        if model_input.features is not None and model_input.features != self.features:
            raise WindowsError_(f"{self.path}: expected {model_input.features} features per step, got {self.features}")
        if model_input.steps is not None and model_input.steps != self.seq_len:
            raise WindowsError_(f"{self.path}: the model takes windows of {model_input.steps} steps, got {self.seq_len}")
        if model_input.vocab is not None and self.token_range is not None:
            low, high = self.token_range
            if low < 0 or high >= model_input.vocab:
                raise WindowsError_(f"{self.path}: token ids must lie in [0, {model_input.vocab - 1}] (the embedding's "
                                    f"rows), found ids from {low} to {high}")


def _blocks(rows, count: int, chunk: int, dtype: np.dtype):
    """(first index, block in the model's dtype) over the file, one handle, bounded memory."""
    with rows.reader() as read:
        for first in range(0, count, chunk):
            with np.errstate(over="ignore", invalid="ignore"):  # a float64 1e39 becomes inf, as replay will see it
                block = read(first, min(first + chunk, count)).astype(dtype, copy=False)
            yield first, block


def _scan(path: Path, rows, dtype: np.dtype, nan: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    """One bounded-memory pass: windows holding NaN/Inf (float), or the id range (tokens)."""
    count = rows.shape[0]
    per_row = max(1, int(np.prod(rows.shape[1:], dtype=np.int64)))
    chunk = max(1, _SCAN_VALUES // per_row)
    bad: list[np.ndarray] = []
    first_where = None
    low, high = None, None
    for first, block in _blocks(rows, count, chunk, dtype):
        if dtype.kind == "f":
            finite = np.isfinite(block)
            rows_bad = ~finite.reshape(len(block), -1).all(axis=1)
            if rows_bad.any():
                bad.append(first + np.flatnonzero(rows_bad))
                if first_where is None:
                    where = np.argwhere(~finite)[0]
                    first_where = (first + int(where[0]), int(where[1]), int(where[2]))
        else:
            block_low, block_high = int(block.min()), int(block.max())
            low = block_low if low is None else min(low, block_low)
            high = block_high if high is None else max(high, block_high)
    skipped = np.concatenate(bad) if bad else np.zeros(0, np.int64)
    if len(skipped) and nan != "skip":
        shown = ", ".join(map(str, skipped[:5].tolist())) + (", …" if len(skipped) > 5 else "")
        window, step, feature = first_where
        raise WindowsError_(f"{path}: {len(skipped)} of {count} windows hold NaN or Inf (windows {shown}; first at "
                            f"window {window}, step {step}, feature {feature}); fix them or pass --nan skip")
    if len(skipped) == count:
        raise WindowsError_(f"{path}: every one of its {count} windows holds NaN or Inf")
    return skipped.astype(np.int64), None if low is None else (low, high)


def open_windows_source(path, key: str = "x", window: int | None = None, stride: int | None = None,
                        columns: Sequence[str] | None = None, nan: str = "error",
                        model_input: ModelInput | None = None, skipped: np.ndarray | None = None) -> WindowSource:
    """Open and validate a windows file; `model_input`, when given, is checked too.

    `skipped`, when given, are the windows an earlier open of the same file found unusable: the
    NaN/Inf scan is not repeated (how a replay shard reopens the file on a cluster worker).
    """
    recipe = {"path": str(Path(path).resolve()), "key": key, "window": window, "stride": stride,
              "columns": list(columns) if columns else None, "nan": nan}
    path = Path(path)
    if nan not in ("error", "skip"):
        raise WindowsError_(f"--nan {nan}: expected error or skip")
    if not path.is_file():
        raise WindowsError_(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WindowsError_(f"{path}: is empty")
    try:
        rows = _rows(path, key, window, stride, columns)
        dtype = _model_dtype(path, rows.shape, rows.dtype)
        if skipped is None:
            skipped, token_range = _scan(path, rows, dtype, nan)  # reads every byte: corrupt data shows up here
        else:
            skipped, token_range = np.asarray(skipped, dtype=np.int64), None
    except WindowsError_:
        raise
    except (ValueError, OSError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WindowsError_(f"{path}: not a readable {path.suffix.lower()} file ({reason})") from None
    except Exception as exc:  # noqa: BLE001 - parsers of hostile files raise anything; report, never crash
        raise WindowsError_(f"{path}: not a readable {path.suffix.lower()} file ({type(exc).__name__}: {exc})") from None
    source = WindowSource(path, rows, dtype, skipped, token_range)
    source.recipe = recipe
    if model_input is not None:
        source.check(model_input)
    return source

"""Row readers for each windows format: `read(start, stop)`, `reader()` and `take(indices)` on the
file's first axis, never loading a file whole.

    .npy            read in row ranges straight from the file (seek + read)
    .npz            one named array, streamed from its zip member the same way
    .pt             a tensor, or a dict holding one (torch.load(weights_only=True), mmap)
    .parquet, .csv  a table cut into sliding windows; one integer column is a token stream
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reporter.errors import WindowsFileError

__all__ = ["FORMATS", "npz_arrays", "open_rows"]

FORMATS = (".npy", ".npz", ".pt", ".parquet", ".csv")


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
            raise WindowsFileError(f"{self.path}: truncated: rows {start}..{stop - 1} are not all in the file")
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
        raise WindowsFileError(f"{path}: not a readable .npy file (unknown format version {version})")
    if dtype.hasobject:
        raise WindowsFileError(f"{path}: holds Python objects (a pickle); windows must be a numeric array")
    return tuple(shape), fortran, dtype


def _npy_rows(path: Path) -> _NpyRows | _ArrayRows:
    with open(path, "rb") as file:
        shape, fortran, dtype = _npy_header(file, path)
        offset = file.tell()
    if fortran:
        return _ArrayRows(np.load(path, mmap_mode="r", allow_pickle=False))
    rows = _NpyRows(path, None, offset, shape, dtype)
    if path.stat().st_size < offset + rows.row_bytes * (shape[0] if shape else 1):
        raise WindowsFileError(f"{path}: truncated: the header promises shape {list(shape)}, the file is shorter")
    return rows


def _npz_rows(path: Path, key: str) -> _NpyRows | _ArrayRows:
    with zipfile.ZipFile(path) as archive:
        names = [name[:-4] if name.endswith(".npy") else name for name in archive.namelist()]
        if key not in names:
            raise WindowsFileError(
                f"{path}: no array named {key!r}; it has {', '.join(names) or 'none'} (choose with --key)"
            )
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
        raise WindowsFileError(f"{path}: truncated: array {key!r} is shorter than its header says")
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
        raise WindowsFileError(
            f"{path}: refused: it is not plain tensors (weights_only load: {str(exc).splitlines()[0]})"
        ) from None
    if isinstance(loaded, dict):
        if key not in loaded:
            raise WindowsFileError(
                f"{path}: no tensor named {key!r}; it has {', '.join(map(str, loaded)) or 'none'} (choose with --key)"
            )
        loaded = loaded[key]
    if not isinstance(loaded, torch.Tensor):
        raise WindowsFileError(f"{path}: holds a {type(loaded).__name__}, expected a tensor (or a dict of tensors)")
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
            raise WindowsFileError(f"{path}: column {text[0]!r} is not numeric")
    else:
        frame = frame.select_dtypes("number")
        if frame.shape[1] == 0:
            raise WindowsFileError(f"{path}: has no numeric columns")
    return frame


def _check_columns(path: Path, wanted: Sequence[str] | None, names: list[str]) -> None:
    missing = [name for name in wanted or () if name not in names]
    if missing:
        raise WindowsFileError(f"{path}: no column {missing[0]!r}; it has {', '.join(map(str, names))}")


def _table_rows(path: Path, window: int | None, stride: int | None, columns: Sequence[str] | None) -> _ArrayRows:
    if window is None:
        raise WindowsFileError(f"{path}: a table needs --window (steps per window) to be cut into windows")
    frame = _table(path, columns)
    values = frame.to_numpy()
    if values.shape[1] == 1 and values.dtype.kind in "iu":  # one integer column: a token stream
        values = values[:, 0].astype(np.int64)
    else:
        values = values.astype(np.float32)
    if len(values) < window:
        raise WindowsFileError(f"{path}: has {len(values)} rows, fewer than one window of {window}")
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)[:: stride or window]
    return _ArrayRows(view if view.ndim == 2 else view.transpose(0, 2, 1))  # [N, F, T] → [N, T, F]


def open_rows(path: Path, key: str, window: int | None, stride: int | None, columns: Sequence[str] | None):
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _npy_rows(path)
    if suffix == ".npz":
        return _npz_rows(path, key)
    if suffix == ".pt":
        return _pt_rows(path, key)
    if suffix in (".parquet", ".csv"):
        return _table_rows(path, window, stride, columns)
    raise WindowsFileError(f"{path}: unsupported windows format {suffix!r} (expected {', '.join(FORMATS)})")


def npz_arrays(path: Path | None) -> list[str]:
    """The array names of a windows .npz (none for other formats or unreadable files: those are
    reported, by name, when the windows are opened)."""
    if path is None or Path(path).suffix.lower() != ".npz" or not Path(path).is_file():
        return []
    try:
        with zipfile.ZipFile(path) as archive:
            return [name.removesuffix(".npy") for name in archive.namelist()]
    except (OSError, zipfile.BadZipFile):
        return []

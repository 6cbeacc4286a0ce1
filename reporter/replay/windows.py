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
`WindowsFileError` naming the file.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from reporter.errors import WindowsFileError
from reporter.model.inputs import ModelInput
from reporter.provenance import file_sha256
from reporter.replay.window_readers import FORMATS, open_rows

__all__ = ["FORMATS", "WindowSource", "open_windows_source"]

_SCAN_VALUES = 1 << 22  # values per chunk of the NaN/range scan (16 MB of float32)


def _model_dtype(path: Path, shape: tuple, dtype: np.dtype, any_rank: bool = False) -> np.dtype:
    """float32 for float [N, T, F], int64 for integer [N, T]; anything else is an error. With
    `any_rank`, any [N, T, …]: an ONNX model's input says what fits (`replay.feeds`)."""
    if any_rank and len(shape) >= 2 and dtype.kind in "fiu":
        model_dtype = np.dtype(np.float32 if dtype.kind == "f" else np.int64)
    elif dtype.kind == "f":
        if len(shape) != 3:
            raise WindowsFileError(f"{path}: float windows must be [N, T, F], got shape {list(shape)}")
        model_dtype = np.dtype(np.float32)
    elif dtype.kind in "iu":
        if len(shape) != 2:
            raise WindowsFileError(f"{path}: token-id windows must be [N, T], got shape {list(shape)}")
        model_dtype = np.dtype(np.int64)
    else:
        raise WindowsFileError(f"{path}: windows must be float or integer, got dtype {dtype}")
    if 0 in shape:
        raise WindowsFileError(f"{path}: holds no windows (shape {list(shape)})")
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
        return self.shape[2] if self.kind == "float" and len(self.shape) > 2 else None

    def indices(self) -> np.ndarray:
        """File indices of the kept windows, ascending."""
        return self._kept.copy()

    def batches(
        self, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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
            self._sha256 = file_sha256(self.path)
        return self._sha256

    def check(self, model_input: ModelInput) -> None:
        """Refuse windows the model cannot take: wrong kind, feature count, length or token range."""
        if model_input.kind != self.kind:
            wanted = "float series [N, T, F]" if model_input.kind == "float" else "integer token ids [N, T]"
            raise WindowsFileError(
                f"{self.path}: the model takes {wanted}, these windows are {self.kind} with shape {list(self.shape)}"
            )
        if model_input.features is not None and model_input.features != self.features:
            raise WindowsFileError(
                f"{self.path}: expected {model_input.features} features per step, got {self.features}"
            )
        if model_input.steps is not None and model_input.steps != self.seq_len:
            raise WindowsFileError(
                f"{self.path}: the model takes windows of {model_input.steps} steps, got {self.seq_len}"
            )
        if model_input.vocab is not None and self.token_range is not None:
            low, high = self.token_range
            if low < 0 or high >= model_input.vocab:
                raise WindowsFileError(
                    f"{self.path}: token ids must lie in [0, {model_input.vocab - 1}] (the embedding's "
                    f"rows), found ids from {low} to {high}"
                )


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
                    first_where = (first + int(where[0]), int(where[1]), int(where[2]) if len(where) > 2 else 0)
        else:
            block_low, block_high = int(block.min()), int(block.max())
            low = block_low if low is None else min(low, block_low)
            high = block_high if high is None else max(high, block_high)
    skipped = np.concatenate(bad) if bad else np.zeros(0, np.int64)
    if len(skipped) and nan != "skip":
        shown = ", ".join(map(str, skipped[:5].tolist())) + (", …" if len(skipped) > 5 else "")
        window, step, feature = first_where
        raise WindowsFileError(
            f"{path}: {len(skipped)} of {count} windows hold NaN or Inf (windows {shown}; first at "
            f"window {window}, step {step}, feature {feature}); fix them or pass --nan skip"
        )
    if len(skipped) == count:
        raise WindowsFileError(f"{path}: every one of its {count} windows holds NaN or Inf")
    return skipped.astype(np.int64), None if low is None else (low, high)


def open_windows_source(
    path,
    key: str = "x",
    window: int | None = None,
    stride: int | None = None,
    columns: Sequence[str] | None = None,
    nan: str = "error",
    model_input: ModelInput | None = None,
    skipped: np.ndarray | None = None,
    any_rank: bool = False,
) -> WindowSource:
    """Open and validate a windows file; `model_input`, when given, is checked too. `any_rank`
    admits windows of any rank [N, T, …], for models whose graph says what fits (ONNX files).

    `skipped`, when given, are the windows an earlier open of the same file found unusable: the
    NaN/Inf scan is not repeated (how a replay shard reopens the file on a cluster worker).
    """
    recipe = {
        "path": str(Path(path).resolve()),
        "key": key,
        "window": window,
        "stride": stride,
        "columns": list(columns) if columns else None,
        "nan": nan,
        "any_rank": any_rank,
    }
    path = Path(path)
    if nan not in ("error", "skip"):
        raise WindowsFileError(f"--nan {nan}: expected error or skip")
    if not path.is_file():
        raise WindowsFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WindowsFileError(f"{path}: is empty")
    try:
        rows = open_rows(path, key, window, stride, columns)
        dtype = _model_dtype(path, rows.shape, rows.dtype, any_rank)
        if skipped is None:
            skipped, token_range = _scan(path, rows, dtype, nan)  # reads every byte: corrupt data shows up here
        else:
            skipped, token_range = np.asarray(skipped, dtype=np.int64), None
    except WindowsFileError:
        raise
    except (ValueError, OSError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WindowsFileError(f"{path}: not a readable {path.suffix.lower()} file ({reason})") from None
    except Exception as exc:  # noqa: BLE001 - parsers of hostile files raise anything; report, never crash
        raise WindowsFileError(
            f"{path}: not a readable {path.suffix.lower()} file ({type(exc).__name__}: {exc})"
        ) from None
    source = WindowSource(path, rows, dtype, skipped, token_range)
    source.recipe = recipe
    if model_input is not None:
        source.check(model_input)
    return source

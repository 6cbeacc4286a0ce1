"""Read stored input windows: float [N, T, F] series or integer [N, T] token ids.

This first part reads `.npy` (memory-mapped, so a slice never loads the whole file) and `.npz`
(one named array); every failure is a one-line `WindowsError_` naming the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from reporter.errors import WindowsError_

__all__ = ["open_windows", "check_windows"]


def open_windows(path: Path, key: str = "x") -> np.ndarray:
    """Open a windows file as an array (memory-mapped for .npy); nothing is validated yet."""
    path = Path(path)
    if not path.is_file():
        raise WindowsError_(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if key not in archive.files:
                    raise WindowsError_(f"{path}: no array named {key!r}; it has {', '.join(archive.files) or 'none'}")
                return archive[key]
    except WindowsError_:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise WindowsError_(f"{path}: not a readable {suffix} file ({exc})") from None
    raise WindowsError_(f"{path}: unsupported windows format {suffix!r} (expected .npy or .npz)")


def check_windows(path: Path, windows: np.ndarray) -> np.ndarray:
    """Check rank, dtype and emptiness: float [N, T, F] or integer [N, T]."""
    if windows.dtype.kind == "f":
        if windows.ndim != 3:
            raise WindowsError_(f"{path}: float windows must be [N, T, F], got shape {list(windows.shape)}")
    elif windows.dtype.kind in "iu":
        if windows.ndim != 2:
            raise WindowsError_(f"{path}: token-id windows must be [N, T], got shape {list(windows.shape)}")
    else:
        raise WindowsError_(f"{path}: windows must be float or integer, got dtype {windows.dtype}")
    if windows.shape[0] == 0 or windows.shape[1] == 0:
        raise WindowsError_(f"{path}: holds no windows (shape {list(windows.shape)})")
    return windows

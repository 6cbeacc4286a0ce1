"""Atomic writes: a reader sees the old file or the new one, never half of either.

Everything Gate Reporter writes goes to a temporary sibling first and is renamed into place,
so an interrupted or failed command leaves the previous output intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from reporter.errors import OutputError

__all__ = ["write_bytes_atomic", "write_text_atomic", "check_output_file"]


def check_output_file(path: Path) -> None:
    """Refuse an output path that is a directory or whose folder cannot be written."""
    if path.is_dir():
        raise OutputError(f"{path}: is a directory, expected a file path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{path}: folder {folder} is not writable")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    check_output_file(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))

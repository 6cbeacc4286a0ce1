"""Atomic writes: a reader sees the old file or the new one, never half of either.

Everything Gate Reporter writes goes to a temporary sibling first and is renamed into place,
so an interrupted or failed command leaves the previous output intact.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from reporter.errors import OutputError

__all__ = ["check_output_dir", "check_output_file", "staging_dir", "write_bytes_atomic", "write_text_atomic"]


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


def check_output_dir(path: Path) -> None:
    """Refuse an output folder that is an existing file or whose parent cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: folder {parent} is not writable")


def _swap_in(built: Path, output: Path) -> None:
    """Replace `output` by `built` with renames only; the old folder is removed last."""
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
        os.replace(output, old / output.name)
    os.replace(built, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    """The process umask (reading it means setting it; it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staging_dir(output: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `output` to fill; on success it replaces `output`, else vanishes.

    A reader sees the old folder or the new one, never a mix: an interrupted build or replay leaves
    the previous output intact (and at worst a hidden `.NAME.building.*` folder to clean up).
    """
    output = Path(output)
    check_output_dir(output)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.building.", dir=output.parent))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a published site must be readable
        yield staging
        _swap_in(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

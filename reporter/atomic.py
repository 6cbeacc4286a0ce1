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


def _probe(path: Path, folder: Path) -> None:
    """Make and remove a temporary folder in `folder`: the only sure test that it can be written
    (permission bits say nothing for root, read-only mounts or full quotas)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".gate-report-probe-", dir=folder))
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {folder}: {exc.strerror or exc}") from None


def _check_folder(path: Path) -> None:
    """Create an output's missing parent folders (as every comparable tool does) and make sure the
    folder can be written; refuse a parent that is a file."""
    folder = path.parent if str(path.parent) else Path(".")
    blocking = next((parent for parent in [folder, *folder.parents] if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"{path}: {blocking} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create folder {folder}: {exc.strerror or exc}") from None
    _probe(path, folder)


def check_output_file(path: Path) -> None:
    """Refuse an output path that is a directory or whose folder cannot be made or written."""
    if path.is_dir():
        raise OutputError(f"{path}: is a directory, expected a file path")
    _check_folder(path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    check_output_file(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {path.parent}: {exc.strerror or exc}") from None
    try:
        os.chmod(fd, 0o666 & ~_umask())  # mkstemp makes it private; an exported model is for others to read
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def check_output_dir(path: Path) -> None:
    """Refuse an output folder that is an existing file or whose parent cannot be made or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder")
    _check_folder(path)


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
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.building.", dir=output.parent))
    except OSError as exc:
        raise OutputError(f"{output}: cannot write in {output.parent}: {exc.strerror or exc}") from None
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a published site must be readable
        yield staging
        try:
            _swap_in(staging, output)
        except OSError as exc:
            raise OutputError(f"{output}: cannot put the new folder in place: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

"""Where a result came from: file hashes, the moment it was made, and the packages that made it.

Run directories and sites record these so a reader can tell which checkpoint, windows and code
produced the numbers. The moment honours `SOURCE_DATE_EPOCH` (reproducible-builds.org), so two
builds of the same inputs are byte-identical.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from importlib import metadata

from reporter.errors import ReporterError

__all__ = ["file_sha256", "made_at", "package_versions"]

_PACKAGES = ("gate-reporter", "onnxruntime", "onnx", "torch", "numpy", "pandas")


def file_sha256(path: str | os.PathLike) -> str:
    """Hash a file in chunks, so large checkpoints never sit in memory twice."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ReporterError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def made_at() -> dt.datetime:
    """Now in UTC, or the moment `SOURCE_DATE_EPOCH` names, so reproducible builds stay reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return moment.replace(microsecond=0)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shaped the numbers."""
    found = {}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found

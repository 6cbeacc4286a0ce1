"""The package's own errors: every failure a user can act on is one of these.

    ReporterError                 anything Gate Reporter reports as "bad input" (exit code 2)
     ├── CheckpointError          a checkpoint cannot be read, or does not fit its factory
     ├── ExportError              a torch module cannot be exported to ONNX
     ├── ModelError               an ONNX model that gate exposure cannot honour
     ├── WindowsFileError         stored input windows that are unreadable or do not fit the model
     ├── VocabError               a vocabulary file that cannot be read as id → token
     ├── ConfigError              reporter.toml is malformed or names something unknown
     ├── RunError                 a run directory is missing, incomplete, corrupt or too new
     └── OutputError              an output path that cannot be written

Messages name the file (or node) and the problem in one line, e.g.
"windows.npy: expected 3 features, got 5".
"""

from __future__ import annotations

__all__ = [
    "ReporterError",
    "CheckpointError",
    "ExportError",
    "ModelError",
    "WindowsFileError",
    "VocabError",
    "ConfigError",
    "RunError",
    "OutputError",
]


class ReporterError(Exception):
    """Base of every error Gate Reporter reports to a user as bad input."""


class CheckpointError(ReporterError):
    """A checkpoint cannot be read safely, or does not fit its factory."""


class ExportError(ReporterError):
    """A torch module cannot be exported to ONNX."""


class ModelError(ReporterError):
    """An ONNX model holds something gate exposure cannot honour."""


class WindowsFileError(ReporterError):
    """Stored input windows are unreadable or do not fit the model."""


class VocabError(ReporterError):
    """A vocabulary file cannot be read as id → token (or needs a library that is not installed)."""


class ConfigError(ReporterError):
    """The site configuration is malformed or names something unknown."""


class RunError(ReporterError):
    """A run directory is missing, incomplete, corrupt or from a newer schema."""


class OutputError(ReporterError):
    """An output path cannot be written."""

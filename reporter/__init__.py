"""Gate Reporter: see what the gates of trained LSTM and GRU models did, as a static site.

The public Python API; module paths inside the package may move, these names stay:

    expose_gates(model) -> (exposed model, layers)   every LSTM/GRU/RNN gate as a graph output
    Layer, layers_from_json, layers_to_json           the layer manifest
    Run                                               a run directory, `Run.load(path)`
    diff_runs(a, b), check(diff, thresholds)          what changed between two runs, and verdicts
    ReporterError                                     every error a user can act on (exit code 2)

Names are imported on first use, so `import reporter` stays light (no onnx or torch until asked).
"""

from __future__ import annotations

import importlib

__all__ = ["Layer", "ReporterError", "Run", "check", "diff_runs", "expose_gates", "layers_from_json", "layers_to_json"]

_HOMES = {
    "Layer": "reporter.layers",
    "layers_from_json": "reporter.layers",
    "layers_to_json": "reporter.layers",
    "ReporterError": "reporter.errors",
    "Run": "reporter.runstore",
    "diff_runs": "reporter.compare.diff",
    "check": "reporter.compare.diff",
    "expose_gates": "reporter.model.expose",
}


def __getattr__(name: str):
    """Import a public name from its home the first time it is asked for (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'reporter' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

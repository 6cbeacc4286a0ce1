"""What each unit tracks, as the layer page's unit table shows it: its habits and its extremes.

Read from the run's `unit_hypotheses` and `unit_extremes` (made by `replay.unit_tracks`): per
unit, the one-line descriptions that hold, and the windows where it is most on and off, with the
text around the step for token windows (decoded with the run's vocabulary) and a link to the
window's page when that window was sampled.
"""

from __future__ import annotations

import numpy as np

from reporter.layers import Layer
from reporter.replay.unit_tracks import reads_backward
from reporter.runstore import Run
from reporter.vocab import shown, token_text

__all__ = ["SHOWN_EXTREMES", "unit_habits"]

SHOWN_EXTREMES = 3  # windows listed per unit and polarity
SHOWN_HABITS = 2  # descriptions listed per unit (the strongest)


def _context(run: Run, context: np.ndarray, before: int) -> dict | None:
    """The tokens around a step as (before, token, after) text, or None without a vocabulary."""
    if run.vocab is None or len(context) == 0:
        return None
    ids = [int(i) for i in context]
    text = lambda part: "".join(token_text([i for i in part if i >= 0], run.vocab))  # noqa: E731
    line = lambda part: text(part).replace("\n", "↵").replace("\t", "⇥")  # noqa: E731 - one line per context
    return {
        "before": line(ids[:before]),
        "token": shown(text(ids[before : before + 1])),
        "after": line(ids[before + 1 :]),
    }


def unit_habits(run: Run, layer: Layer) -> dict[tuple[int, int], dict]:
    """Per (direction, unit) of a layer: `habits` (descriptions), `on` and `off` (extremes, each
    with window, step, value, page and context)."""
    out: dict[tuple[int, int], dict] = {}
    sampled = {int(w) for w in run.traces.get("window", [])}
    tracking = run.meta.get("unit_tracks") or {}
    backward = reads_backward(layer)
    hypotheses, extremes = run.unit_hypotheses, run.unit_extremes
    if not hypotheses.empty:
        for (direction, unit), rows in hypotheses[hypotheses["layer"] == layer.name].groupby(["direction", "unit"]):
            entry = out.setdefault((int(direction), int(unit)), {"habits": [], "on": [], "off": []})
            entry["habits"] = list(rows["text"].head(SHOWN_HABITS))
    if not extremes.empty:
        rows = extremes[(extremes["layer"] == layer.name) & (extremes["rank"] < SHOWN_EXTREMES)]
        for direction, unit, polarity, value, window, t, context in zip(
            rows["direction"], rows["unit"], rows["polarity"], rows["value"], rows["window"], rows["t"], rows["context"]
        ):
            entry = out.setdefault((int(direction), int(unit)), {"habits": [], "on": [], "off": []})
            before = tracking.get("after" if backward[int(direction) * layer.hidden_size] else "before", 0)
            entry[polarity].append(
                {
                    "window": int(window),
                    "t": int(t),
                    "value": float(value),
                    "page": f"w{int(window)}.html" if int(window) in sampled else None,
                    "context": _context(run, np.asarray(context), int(before)),
                }
            )
    return out

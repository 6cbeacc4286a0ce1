"""What each page shows: page contexts from runs (figures, tables, headline numbers) and rendering.

Computes, then presents: numbers come from the run (and `anomaly`, `impulse`), pictures from
`charts`; templates only lay them out. Every page gets `root`, the relative path back to the
site's top, so the site works from file:// and from any sub-folder of a docs server.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from reporter import charts
from reporter.anomaly import explain_window, flag_threshold, typical_from_timestep_stats
from reporter.expose import Layer
from reporter.impulse import impulse_summary
from reporter.numbers import number
from reporter.runstore import Run, slug
from reporter.stats import gate_family, gate_order

__all__ = ["RunView", "render_all", "unit_table"]

TOP_WINDOWS = 20  # rows of the run page's most-anomalous table
_KEEP_GATE = {"LSTM": "f", "GRU": "z"}


@dataclass(frozen=True)
class RunView:
    """One run as pages see it: the run, where its pages live, and its headline figures."""

    run: Run
    slug: str
    baseline: str | None
    diff_page: str | None = None  # site path of the diff against the baseline, when there is one

    @property
    def meta(self) -> dict:
        return self.run.meta

    @property
    def layers(self) -> list[Layer]:
        return self.run.layers

    @property
    def units(self) -> int:
        return sum(layer.hidden_size * layer.directions for layer in self.layers)

    @property
    def threshold(self) -> float:
        return flag_threshold(self.run.window_scores["anomaly_score"].to_numpy())

    @property
    def flagged(self) -> int:
        return int((self.run.window_scores["anomaly_score"] > self.threshold).sum())

    @property
    def saturated_share(self) -> float:
        """Share of units with a sigmoid gate saturated (< low or > high) more than half the time."""
        stats = self.run.gate_stats
        sigmoid = [gate_family(layer, gate) == "sigmoid" for layer, gate in
                   zip(stats["layer"].map({layer.name: layer for layer in self.layers}), stats["gate"])]
        rows = stats[sigmoid]
        if rows.empty:
            return 0.0
        saturated = (rows["frac_low"] + rows["frac_high"] > 0.5).groupby(
            [rows["layer"], rows["direction"], rows["unit"]]).any()
        return float(saturated.sum() / self.units)

    @property
    def sampled(self) -> list[int]:
        return [int(w) for w in self.run.traces.get("window", [])]

    def reason(self, window: int) -> str:
        position = self.sampled.index(window)
        return str(self.run.traces["reason"][position])

    @staticmethod
    def gates(layer: Layer) -> list[str]:
        """The layer's gates in the operator's order."""
        return gate_order(layer)

    def layer_page(self, layer: Layer, window: int) -> str:
        return f"{slug(layer.name)}-w{window}.html"


def unit_table(run: Run, layer: Layer) -> list[dict]:
    """Per (direction, unit): gate means, saturation, half-life, and flags a reader should look at."""
    stats = run.gate_stats[run.gate_stats["layer"] == layer.name]
    steps = int(run.meta.get("seq_len", 0))
    rows = []
    for (direction, unit), group in stats.groupby(["direction", "unit"], sort=True):
        by_gate = group.set_index("gate")
        flags = []
        if "h" in by_gate.index and by_gate.loc["h", "std"] < 0.01:
            flags.append("dead: its hidden state hardly changes (std < 0.01)")
        for gate in by_gate.index:
            if gate_family(layer, gate) == "sigmoid" and by_gate.loc[gate, "frac_low"] + by_gate.loc[gate, "frac_high"] > 0.95:
                flags.append(f"always saturated: gate {gate} is beyond 0.1/0.9 on over 95% of steps")
        keep = _KEEP_GATE.get(layer.kind)
        half_life = float(by_gate.loc[keep, "half_life"]) if keep in by_gate.index else float("nan")
        if steps and half_life > steps:
            flags.append(f"integrator: memory half-life {number(half_life, '%.0f')} steps, longer than the window")
        rows.append({"direction": int(direction), "unit": int(unit), "half_life": half_life, "flags": flags,
                     "gates": {gate: {"mean": float(by_gate.loc[gate, "mean"]), "std": float(by_gate.loc[gate, "std"]),
                                      "frac_low": float(by_gate.loc[gate, "frac_low"]),
                                      "frac_high": float(by_gate.loc[gate, "frac_high"])}
                               for gate in gate_order(layer) if gate in by_gate.index}})
    return rows


def _figures(*figures) -> list[dict]:
    """Figures as templates take them: id, caption and spec (None ones left out)."""
    return [{"id": figure.key, "caption": figure.caption, "spec": figure.spec()} for figure in figures if figure]


def _run_figures(view: RunView) -> dict[str, list[dict]]:
    """The run page's figures by section: a chart a run cannot have (no sigmoid gate in a plain
    RNN, no impulse table) leaves its section shorter instead of shifting the others."""
    run = view.run
    thresholds = tuple(run.meta.get("thresholds", {}).get("sigmoid", (0.1, 0.9)))
    return {"saturation": _figures(charts.saturation_chart(run.gate_stats, run.layers, thresholds),
                                   charts.distribution_chart(run.gate_stats)),
            "memory": _figures(charts.horizon_chart(run.gate_stats), charts.impulse_chart(run.impulse)),
            "along": _figures(charts.trajectory_chart(run.timestep_stats)),
            "anomaly": _figures(charts.anomaly_chart(run.window_scores, view.threshold))}


def _top_windows(view: RunView) -> list[dict]:
    scores = view.run.window_scores.nsmallest(TOP_WINDOWS, "rank")
    sampled = set(view.sampled)
    return [{"window": int(w), "rank": int(r), "score": float(s), "page": f"w{int(w)}.html" if int(w) in sampled else None}
            for w, r, s in zip(scores["window"], scores["rank"], scores["anomaly_score"])]


def _window_trace(run: Run, layer: Layer, position: int) -> dict[str, np.ndarray]:
    return {gate: run.traces[f"{layer.name}/{gate}"][position].astype(np.float32) for gate in gate_order(layer)}


def _write(env: jinja2.Environment, template: str, path: Path, **context) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(env.get_template(template).render(**context), encoding="utf-8")


def _baseline_pairs(runs: list[tuple[Run, str | None]]) -> dict[str, Run]:
    """For each run with a baseline, the baseline's run (same model, version = baseline)."""
    by_name = {(run.meta["model"], run.meta["version"]): run for run, _ in runs}
    return {run.name: by_name[(run.meta["model"], baseline)] for run, baseline in runs
            if baseline is not None and (run.meta["model"], baseline) in by_name}


def _unique(candidates: list[tuple[str, str]]) -> list[str]:
    """File names from (readable name, identity) pairs: a readable name that two identities share
    ("a-b" + "c" and "a" + "b-c" both read "a-b-c") gets a hash of each identity appended."""
    counts = Counter(name for name, _ in candidates)
    return [name if counts[name] == 1 else f"{name}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"
            for name, identity in candidates]


def render_all(env: jinja2.Environment, staging: Path, runs: list[tuple[Run, str | None]], title: str, built: str,
               assets: dict[str, str], thresholds: dict[str, float]) -> int:
    """Render the index, every diff against a baseline, and every run's run, window and layer pages."""
    from reporter.diff import diff_runs

    baselines = _baseline_pairs(runs)
    names = _unique([(slug(f"{run.meta['model']}-{run.meta['version']}"), f"{run.meta['model']}\0{run.meta['version']}")
                     for run, _ in runs])
    compared = [(run, baseline) for run, baseline in runs if run.name in baselines]
    diff_pages = dict(zip((run.name for run, _ in compared), _unique([
        (f"{slug(run.meta['model'])}-{slug(baseline)}-vs-{slug(run.meta['version'])}",
         f"{run.meta['model']}\0{baseline}\0{run.meta['version']}") for run, baseline in compared])))
    views = [RunView(run, name, baseline, f"diffs/{diff_pages[run.name]}.html" if run.name in diff_pages else None)
             for (run, baseline), name in zip(runs, names)]
    common = {"site_title": title, "built": built, "assets": assets}
    _write(env, "index.html", staging / "index.html", root="", views=views, **common)
    count = 1
    for view in views:
        if view.diff_page:
            html = render_diff(env, diff_runs(baselines[view.run.name], view.run), thresholds, root="../",
                               standalone=False, **common)
            (staging / view.diff_page).parent.mkdir(parents=True, exist_ok=True)
            (staging / view.diff_page).write_text(html, encoding="utf-8")
            count += 1
    for view in views:
        folder = staging / "runs" / view.slug
        root = "../../"
        summary = impulse_summary(view.run.impulse) if not view.run.impulse.empty else pd.DataFrame()
        _write(env, "run.html", folder / "index.html", root=root, view=view, figures=_run_figures(view),
               top=_top_windows(view), impulse=summary.to_dict("records"), **common)
        count += 1
        typical = typical_from_timestep_stats(view.run.timestep_stats)
        tables = {layer.name: unit_table(view.run, layer) for layer in view.layers}
        for position, window in enumerate(view.sampled):
            traces = {layer.name: _window_trace(view.run, layer, position) for layer in view.layers}
            explained = explain_window(traces, typical)
            row = view.run.window_scores.set_index("window").loc[window]
            score = {"anomaly_score": float(row["anomaly_score"]), "rank": int(row["rank"])}
            x = view.run.traces["x"][position]
            _write(env, "window.html", folder / f"w{window}.html", root=root, view=view, window=window,
                   score=score, reason=view.reason(window), figures=_figures(
                       charts.input_chart(x), charts.deviation_chart(explained), charts.typical_chart(explained)),
                   **common)
            count += 1
            for layer in view.layers:
                _write(env, "layer.html", folder / view.layer_page(layer, window), root=root, view=view, layer=layer,
                       gates=gate_order(layer),
                       window=window, reason=view.reason(window), units=tables[layer.name],
                       figures=_figures(charts.heatmap_chart(layer, traces[layer.name])), **common)
                count += 1
    return count


def diff_context(diff, thresholds: dict[str, float]) -> dict:
    """What the diff page shows: verdicts, figures, and the tables behind them."""
    from reporter import diff_charts
    from reporter.diff import check

    def records(frame: pd.DataFrame) -> list[dict]:
        return frame.to_dict("records") if not frame.empty else []

    return {"diff": diff, "verdicts": check(diff, thresholds),
            "figures": _figures(*diff_charts.diff_figures(diff)), "gates": records(diff.gates),
            "horizon": records(diff.horizon), "impulse_rows": records(diff.impulse), "cka": records(diff.cka),
            "moved": records(diff.moved), "outputs": records(diff.outputs), "anomaly": diff.anomaly,
            "matched_units": 0 if diff.units.empty else len(diff.units)}


def render_diff(env: jinja2.Environment, diff, thresholds: dict[str, float], **context) -> str:
    """The diff page's HTML (for the site, a diff folder, or one self-contained file)."""
    return env.get_template("diff.html").render(**diff_context(diff, thresholds), **context)

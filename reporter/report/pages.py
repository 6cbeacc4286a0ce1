"""Render pages: gathered views (`reporter.report.gather`) → charts (`charts`) → HTML (templates).

Nothing is computed here beyond turning gathered numbers into pictures and markup. Every page gets
`root`, the relative path back to the site's top, so the site works from file:// and from any
sub-folder of a docs server.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

import jinja2

from reporter.replay.gradient_summary import EXPLODING, VANISHING
from reporter.report import charts, diff_charts, series_charts, weight_charts, window_charts
from reporter.report.cell_view import SIMILAR_SCRIPT
from reporter.report.gather import DiffView, RunView
from reporter.report.series_view import SeriesView

__all__ = ["WEIGHTS_PAGE", "render_diff", "render_site"]

WEIGHTS_PAGE = "weights.html"  # per run: heatmaps of every fused layer's weight blocks


def _figures(*figures) -> list[dict]:
    """Figures as templates take them: id, caption and spec (None ones left out)."""
    return [{"id": figure.key, "caption": figure.caption, "spec": figure.spec()} for figure in figures if figure]


def _run_figures(view: RunView) -> dict[str, list[dict]]:
    """The run page's figures by section: a chart a run cannot have (no sigmoid gate in a plain
    RNN, no impulse table) leaves its section shorter instead of shifting the others."""
    run = view.run
    thresholds = tuple(run.meta.get("thresholds", {}).get("sigmoid", (0.1, 0.9)))
    return {
        "saturation": _figures(
            charts.saturation_chart(run.gate_stats, run.layers, thresholds), charts.distribution_chart(run.gate_stats)
        ),
        "memory": _figures(charts.horizon_chart(run.gate_stats), charts.impulse_chart(run.impulse)),
        "gradient": _figures(charts.gradient_chart(run.gradient_flow), charts.saliency_chart(run.output_gradient)),
        "along": _figures(charts.trajectory_chart(run.timestep_stats)),
        "anomaly": _figures(charts.anomaly_chart(run.window_scores, view.threshold)),
        "weights": _figures(weight_charts.spectra_chart(run.weights), weight_charts.singular_chart(run.weights))
        if not run.weights.empty
        else [],
    }


def render_diff(env: jinja2.Environment, view: DiffView, **context) -> str:
    """The diff page's HTML (for the site, a diff folder, or one self-contained file)."""
    diff = view.diff

    def records(frame) -> list[dict]:
        return frame.to_dict("records") if not frame.empty else []

    return env.get_template("diff.html").render(
        diff=diff,
        verdicts=view.verdicts,
        figures=_figures(*diff_charts.diff_figures(diff)),
        gates=records(diff.gates),
        horizon=records(diff.horizon),
        impulse_rows=records(diff.impulse),
        cka=records(diff.cka),
        moved=records(diff.moved),
        outputs=records(diff.outputs),
        anomaly=diff.anomaly,
        matched_units=0 if diff.units.empty else len(diff.units),
        **context,
    )


def _render(env: jinja2.Environment, template: str, **context) -> str:
    return env.get_template(template).render(**context)


def _run_pages(env: jinja2.Environment, view: RunView, common: dict) -> Iterator[tuple[str, str]]:
    """The run page, and each sampled window's page and layer pages, as (site path, HTML)."""
    folder = f"runs/{view.slug}"
    page = functools.partial(_render, env, root="../../", view=view, **common)
    thresholds = {"vanishing": VANISHING, "exploding": EXPLODING}
    yield (
        f"{folder}/index.html",
        page("run.html", figures=_run_figures(view), top=view.top, impulse=view.impulse, **thresholds),
    )
    if not view.run.weights.empty:
        heatmaps = _figures(*(weight_charts.weight_heatmaps(layer.name, view.run.weight_maps) for layer in view.layers))
        yield f"{folder}/{WEIGHTS_PAGE}", page("weights.html", figures=heatmaps)
    if view.similar is not None:  # one file the run's window pages share, rather than a copy in each
        yield f"{folder}/{SIMILAR_SCRIPT}", "window.__similar = " + json.dumps(view.similar, sort_keys=True) + ";\n"
    for window in view.windows:
        explained = window.explained
        figures = [
            window_charts.input_chart(window.x, window.text),
            window_charts.deviation_chart(explained),
            window_charts.typical_chart(explained),
        ]
        yield (
            f"{folder}/w{window.window}.html",
            page("window.html", window=window, figures=_figures(*figures), similar_script=SIMILAR_SCRIPT),
        )
        for layer in view.layers:
            ran = layer.name in window.traces  # a layer in an If branch this window did not take did not run
            heatmap = _figures(window_charts.heatmap_chart(layer, window.traces[layer.name])) if ran else []
            units = view.unit_tables[layer.name]
            yield (
                f"{folder}/{view.layer_page(layer, window.window)}",
                page(
                    "layer.html",
                    layer=layer,
                    gates=view.gates(layer),
                    window=window,
                    units=units,
                    figures=heatmap,
                    ran=ran,
                ),
            )


def _series_page(env: jinja2.Environment, view: SeriesView, common: dict) -> str:
    figures = {section: _figures(*items) for section, items in series_charts.series_figures(view).items()}
    return env.get_template("series.html").render(
        root="../",
        view=view,
        figures=figures,
        param=series_charts.CHECKPOINT_PARAM,
        sweep=view.sweep.to_dict("records"),
        gate_rows=view.gates.to_dict("records"),
        **common,
    )


def render_site(
    env: jinja2.Environment, views: list[RunView], common: dict, series: list[SeriesView] = ()
) -> Iterator[tuple[str, str]]:
    """Every page of the site as (site path, HTML): the index, the diffs, the series, then each
    run's pages.

    `common` is what every page shows: site title, build time, asset paths.
    """
    yield "index.html", env.get_template("index.html").render(root="", views=views, series=series, **common)
    for view in series:
        yield view.page, _series_page(env, view, common)
    part_of = {}
    for view in series:
        for point in view.points:
            part_of.setdefault(point["slug"], []).append({"name": view.config.name, "page": view.page})
    common = {**common, "part_of": part_of}
    for view in views:
        if view.diff is not None:
            yield view.diff.page, render_diff(env, view.diff, root="../", standalone=False, **common)
    for view in views:
        yield from _run_pages(env, view, common)

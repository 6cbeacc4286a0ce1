"""Diff outputs for code review: a diff folder, a markdown summary with SVG charts, one HTML file.

- `write_diff_dir`: the diff page with its assets, like a one-page site (atomic folder swap);
- `write_markdown`: a pull-request comment: verdicts, what changed, and the charts as SVG files
  (rendered offline by vl-convert) in a folder beside it, linked by relative path;
- `write_single_file`: one self-contained HTML file (JavaScript and data inline, nothing
  external), for attaching to a review.

Markdown has no autoescape, so every value that came from a run (model, version, layer names)
goes through `md_text`, which neutralises markdown and HTML.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import markupsafe

from reporter.atomic import staging_dir, write_text_atomic
from reporter.errors import OutputError
from reporter.report import pages
from reporter.report.diff_charts import diff_figures
from reporter.report.gather import DiffView
from reporter.report.numbers import number
from reporter.report.site import asset_text, build_time, environment, write_assets

__all__ = ["SINGLE_FILE_BUDGET", "md_text", "write_diff_dir", "write_markdown", "write_single_file"]

SINGLE_FILE_BUDGET = 5 * 1024 * 1024
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~>])")


def md_text(value) -> str:
    """Text safe inside markdown (and the HTML a markdown renderer emits): nothing becomes markup."""
    text = " ".join(str(value).split())  # no line breaks: a name cannot start a new block
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    text = text.replace("@", "@\u200b")  # a zero-width space: "@org/team" in a name notifies no one in a PR
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _context(title: str) -> dict:
    return {"site_title": title, "built": build_time(), "standalone": True}


def write_diff_dir(view: DiffView, output: Path, title: str = "Gate Reporter") -> Path:
    """The diff page as `output/index.html` with its assets."""
    with staging_dir(output) as staging:
        assets = write_assets(staging)
        html = pages.render_diff(environment(), view, root="", assets=assets, **_context(title))
        (staging / "index.html").write_text(html, encoding="utf-8")
    return output


def _inline(script: str) -> markupsafe.Markup:
    """A script's text for a <script> element; refused if it could end the element early."""
    lowered = script.lower()
    if "</script" in lowered or "<!--" in lowered:
        raise OutputError("a bundled script contains '</script' or '<!--' and cannot be inlined")
    return markupsafe.Markup(script)


def write_single_file(view: DiffView, path: Path, title: str = "Gate Reporter") -> int:
    """One HTML file holding the diff page, its data and the Vega JavaScript; return its size."""
    import vl_convert

    scripts = [_inline(vl_convert.javascript_bundle()), _inline(asset_text("site.js"))]
    html = pages.render_diff(environment(), view, root=None, assets={}, inline_scripts=scripts, **_context(title))
    size = len(html.encode("utf-8"))
    if size > SINGLE_FILE_BUDGET:
        raise OutputError(f"{path}: the single file would be {size / 2**20:.1f} MB, over the 5 MB budget")
    write_text_atomic(path, html)
    return size


def _markdown(view: DiffView, charts: dict[str, str]) -> str:
    diff, verdicts = view.diff, view.verdicts
    breached = [v for v in verdicts if not v.passed]
    lines = [
        f"## Gate Reporter: {md_text(diff.a.name)} → {md_text(diff.b.name)}",
        "",
        "| check | B − A | threshold | verdict |",
        "| --- | ---: | ---: | --- |",
    ]
    for verdict in verdicts:
        mark = "n/a" if verdict.value is None else ("✅ holds" if verdict.passed else "❌ breached")
        lines.append(f"| `{verdict.key}` | {number(verdict.value, '%.4f')} | {verdict.limit:g} | {mark} |")
    lines += [
        "",
        f"**{len(breached)} of {len(verdicts)} checks breached.**" if breached else "**All checks hold.**",
        "",
        "### What changed",
        "",
    ]
    for row in diff.horizon.to_dict("records"):
        lines.append(
            f"- Memory of {md_text(row['layer'])}: median {row['gate']}-gate half-life "
            f"{number(row['half_life_a'])} → {number(row['half_life_b'])} steps ({number(row['delta'], '%+.2f')})."
        )
    if not diff.gates.empty:
        top = diff.gates.loc[diff.gates["wasserstein"].idxmax()]
        lines.append(
            f"- Largest distribution shift: {md_text(top['layer'])} gate {top['gate']} "
            f"(Wasserstein-1 {number(top['wasserstein'], '%.4f')}, mean {number(top['mean_a'], '%.3f')} → "
            f"{number(top['mean_b'], '%.3f')})."
        )
    for row in diff.cka.to_dict("records"):
        lines.append(
            f"- Representation of {md_text(row['layer'])}: linear CKA {number(row['cka'], '%.3f')} over "
            f"{row['windows']} shared windows."
        )
    lines.append(
        f"- Windows flagged anomalous: {100 * diff.anomaly['rate_a']:.1f}% → {100 * diff.anomaly['rate_b']:.1f}%."
    )
    for row in diff.outputs.to_dict("records"):
        lines.append(
            f"- Output {md_text(row['output'])} (last step): drift "
            f"{number(100 * row['relative_drift'], '%.1f%%', inf='∞ (A is all zero)')} of its RMS, "
            f"max |B − A| {number(row['max_abs_difference'], '%.4f')}."
        )
    lines += [f"- {md_text(note)}" for note in diff.notes]
    lines.append("")
    for name, (title, caption) in charts.items():
        lines += [f"![{md_text(title)}]({quote(name)})", "", f"*{md_text(caption)}*", ""]  # "my diff-charts/…" too
    return "\n".join(lines)


def write_markdown(view: DiffView, path: Path) -> Path:
    """The markdown summary, with its charts as SVG files in `<stem>-charts/` beside it."""
    import vl_convert

    path = Path(path)
    folder = path.parent / f"{path.stem}-charts"
    charts = {}
    with staging_dir(folder) as staging:
        for figure in diff_figures(view.diff):
            spec = figure.spec()
            (staging / f"{figure.key}.svg").write_text(vl_convert.vegalite_to_svg(spec), encoding="utf-8")
            title = spec.get("title", figure.key)
            charts[f"{folder.name}/{figure.key}.svg"] = (
                title.get("text", figure.key) if isinstance(title, dict) else title,
                figure.caption,
            )
    write_text_atomic(path, _markdown(view, charts))  # after its charts are in place
    return path

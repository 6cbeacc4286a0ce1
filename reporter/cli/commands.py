"""What each `gate-report` command does: read its arguments, call the stages, print what it wrote.

Each `run_*` function takes the parsed arguments and returns the exit code; errors are the
package's own (`ReporterError`), which `reporter.cli.main` turns into exit 2 and one line.
Heavy imports stay inside the commands, so `gate-report --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reporter.errors import ReporterError

__all__ = ["positive", "run_bench", "run_build", "run_check", "run_diff", "run_export", "run_replay", "run_serve"]


def _kwargs(text: str | None) -> dict:
    """Parse --kwargs: a JSON object of factory keyword arguments."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReporterError(f"--kwargs: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ReporterError("--kwargs: expected a JSON object such as '{\"hidden\": 64}'")
    return value


def memory_size(text: str) -> int:
    """argparse type: a size in bytes such as 2G or 512M (`replay.batch_budget.parse_memory`)."""
    from reporter.errors import ConfigError
    from reporter.replay.batch_budget import parse_memory

    try:
        return parse_memory(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _recipe(args: argparse.Namespace):
    """How to read the checkpoint the command names."""
    from reporter.pipeline.model_source import ModelRecipe

    return ModelRecipe(args.checkpoint, args.factory, _kwargs(args.kwargs), args.trust_pickle, args.exporter)


def _example_windows(args: argparse.Namespace, loaded):
    """--windows opened for examples and parity (windows holding NaN/Inf left out), or None."""
    from reporter.pipeline.model_source import input_names
    from reporter.replay.feeds import windows_key
    from reporter.replay.windows import open_windows_source

    if not args.windows:
        return None
    key = windows_key(args.windows, input_names(loaded, args.windows))
    return open_windows_source(args.windows, key=key, nan="skip", any_rank=loaded.onnx_model is not None)


def run_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX with every gate exposed, plus its layer manifest."""
    from reporter.atomic import write_bytes_atomic, write_text_atomic
    from reporter.layers import layers_to_json
    from reporter.pipeline.model_source import exposed_model

    out = args.output
    manifest_path = out.with_name(out.stem + ".layers.json")
    recipe = _recipe(args)
    loaded = recipe.load()
    source = exposed_model(recipe, _example_windows(args, loaded), loaded)
    write_bytes_atomic(out, source.exposed.SerializeToString())
    write_text_atomic(manifest_path, layers_to_json(source.layers))
    for layer in source.layers:
        gates = " ".join(layer.outputs)
        found = layer.cell + (f" in {layer.branch}" if layer.branch else "") + (f"; {layer.note}" if layer.note else "")
        print(f"{layer.name}: {layer.kind}, {layer.direction}, hidden {layer.hidden_size}, gates {gates} ({found})")
    from reporter.model.expose import NOTES_KEY

    for note in {p.key: p.value for p in source.exposed.metadata_props}.get(NOTES_KEY, "").splitlines():
        print(f"note: {note}")
    parity = "n/a (ONNX input)" if source.parity_max_abs is None else f"{source.parity_max_abs:.2e}"
    print(f"wrote {out} and {manifest_path} ({_count(len(source.layers), 'layer')}; export parity max |Δ| {parity})")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """Print what exposing gates costs: exposed ÷ fused, and ÷ a PyTorch per-step loop."""
    from reporter.bench import expose_cost

    if args.dask_scaling:
        from reporter.bench import dask_scaling

        row = dask_scaling.bench_dask_scaling(
            args.dask_scaling, say=lambda line: print(line, file=sys.stderr, flush=True)
        )
        print(dask_scaling.format_scaling(row))
        return 0
    if args.replay:
        from reporter.bench import replay_cost

        providers = [provider.strip() for provider in args.provider.split(",")]
        for provider in providers:
            if provider not in ("cpu", "cuda"):
                raise ReporterError(f"--provider {provider}: expected cpu, cuda or cpu,cuda")
            if provider == "cuda":
                from reporter.replay.sessions import choose_provider

                choose_provider("cuda")  # says what is missing before any benchmark starts
        sizes = [] if args.replay == "default" else [positive(size) for size in args.replay.split(",")]
        cases = [replay_cost.Case("forecaster", size) for size in sizes]
        rows = replay_cost.bench_replay(
            cases or replay_cost.DEFAULT_CASES,
            say=lambda line: print(line, file=sys.stderr, flush=True),
            providers=providers,
            workers=args.workers,
        )
        print(replay_cost.format_replay(rows))
        return 0
    if args.checkpoint is None:
        print(f"bench: {expose_cost.THREADS} threads, median of {args.repeats} interleaved runs", flush=True)
        print(expose_cost.format_rows(expose_cost.bench_builtin(repeats=args.repeats)))
        return 0
    from reporter.pipeline.model_source import fused_model_and_windows

    recipe = _recipe(args)
    model, windows = fused_model_and_windows(recipe, _example_windows(args, recipe.load()), args.batch_size)
    case = f"{args.checkpoint.name}, {windows.shape[0]}×{windows.shape[1]}"
    print(expose_cost.format_rows([expose_cost.bench_onnx(model, windows, case, args.repeats)]))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """Replay a model over stored windows and write a run directory (atomically)."""
    from reporter.atomic import check_output_dir
    from reporter.pipeline.make_run import RunSettings, make_run, with_vocab
    from reporter.pipeline.model_source import exposed_model, input_names
    from reporter.provenance import file_sha256
    from reporter.replay.anomaly import flagged
    from reporter.replay.carry import parse_carry
    from reporter.replay.feeds import parse_feeds, plan_feeds, windows_key
    from reporter.replay.windows import open_windows_source
    from reporter.runstore import Run
    from reporter.vocab import load_vocab

    check_output_dir(args.output)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    vocab = load_vocab(args.vocab) if args.vocab else None  # a bad vocabulary fails before any replay
    reference = Run.load(args.reference) if args.reference else None
    constant, carry = parse_feeds(args.feed), parse_carry(args.carry)
    recipe = _recipe(args)
    loaded = recipe.load()
    source = open_windows_source(
        args.windows,
        key=windows_key(args.windows, input_names(loaded, args.windows), args.key),
        window=args.window,
        stride=args.stride,
        columns=args.columns.split(",") if args.columns else None,
        nan=args.nan,
        any_rank=loaded.onnx_model is not None,  # an ONNX graph says which windows fit
    )
    if len(source.skipped):
        say(f"skipped {len(source.skipped)} windows holding NaN or Inf (--nan skip)")
    model = exposed_model(recipe, source, loaded)
    feeds = plan_feeds(model.exposed, source, constant, carry, say)
    settings = RunSettings(
        model=args.name or args.checkpoint.stem,
        version=args.version or file_sha256(args.checkpoint)[:8],
        provider=args.provider,
        batch_size=args.batch_size,
        memory=args.memory,
        workers=args.workers,
        dask=args.dask,
    )
    run = make_run(model, source, settings, reference, say, feeds, vocab)
    if vocab is not None:
        with_vocab(run, args.vocab, vocab)
    run.save(args.output)
    count = int(flagged(run.window_scores["anomaly_score"].to_numpy()).sum())
    print(
        f"wrote {args.output} ({run.meta['n_windows']} windows, {_count(len(run.layers), 'layer')}, "
        f"{run.timings['windows_per_second']:.0f} windows/s on {run.meta['provider']}; {count} windows flagged "
        f"anomalous, ranked in window_scores.parquet)"
    )
    return 0


def run_build(args: argparse.Namespace) -> int:
    """Build the static site for the runs in a config file (atomically: all or nothing)."""
    from reporter.config import load_config
    from reporter.pipeline.build import build

    if args.config_file is not None and args.config is not None:
        raise ReporterError(f"build: two site configs given ({args.config_file} and --config {args.config}); give one")
    chosen = args.config_file if args.config_file is not None else args.config
    if chosen is not None and _is_folder(chosen):
        raise ReporterError(f"{chosen}: is a folder; give a site config (.toml), or run folders with --runs")
    for run_dir in args.runs or ():
        if run_dir.suffix.lower() == ".toml" and not _is_folder(run_dir):
            raise ReporterError(
                f"{run_dir}: a site config among the --runs folders; give it before --runs, or with --config"
            )
    only_runs = chosen is None and args.runs
    config = None if only_runs else load_config(chosen or Path("reporter.toml"))
    output = build(
        config, args.output, run_dirs=args.runs or (), progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    print(f"built {output / 'index.html'}")
    return 0


def _is_folder(path: Path) -> bool:
    """Whether `path` is a folder; False where the system cannot say (a name too long, no access),
    so that reading it names the problem in one line."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _thresholds(args: argparse.Namespace) -> dict[str, float]:
    """Thresholds: the defaults, then [check] of --config (or ./reporter.toml when present), then --threshold."""
    from reporter.compare.thresholds import parse_thresholds
    from reporter.config import load_config

    config = args.config or (Path("reporter.toml") if Path("reporter.toml").is_file() else None)
    base = load_config(config).thresholds if config else {}
    return parse_thresholds(args.threshold or [], base=base or None)


def run_diff(args: argparse.Namespace) -> int:
    """Compare run B with baseline run A: a diff page, and optionally a markdown summary or one HTML file."""
    from reporter.atomic import check_output_dir, check_output_file
    from reporter.compare.diff import diff_runs
    from reporter.report import review
    from reporter.report.gather import diff_view
    from reporter.runstore import Run

    if args.output is None and args.markdown is None and args.single_file is None:
        raise ReporterError("diff: say where to write it: -o DIR, --markdown FILE and/or --single-file FILE")
    for path in (args.markdown, args.single_file):
        if path is not None:
            check_output_file(path)
    if args.output is not None:
        check_output_dir(args.output)
    view = diff_view(diff_runs(Run.load(args.run_a), Run.load(args.run_b)), _thresholds(args))
    if args.output is not None:
        review.write_diff_dir(view, args.output)
        print(f"wrote {args.output / 'index.html'}")
    if args.markdown is not None:
        review.write_markdown(view, args.markdown)
        print(f"wrote {args.markdown} (charts in {args.markdown.parent / (args.markdown.stem + '-charts')})")
    if args.single_file is not None:
        size = review.write_single_file(view, args.single_file)
        print(f"wrote {args.single_file} ({size / 2**20:.1f} MB, self-contained)")
    if view.breached:
        print(f"thresholds breached: {', '.join(view.breached)} (gate-report check exits 1 on these)")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Exit 1 when run B breaches a threshold against baseline run A, 0 when all hold."""
    from reporter.compare.diff import check, diff_runs
    from reporter.runstore import Run

    thresholds = _thresholds(args)
    diff = diff_runs(Run.load(args.run_a), Run.load(args.run_b))
    verdicts = check(diff, thresholds)
    print(f"{diff.a.name} → {diff.b.name}")
    print(f"{'check':<20} {'B − A':>14} {'threshold':>10}  verdict")
    for verdict in verdicts:
        value = "not comparable" if verdict.value is None else f"{verdict.value:.4f}"
        mark = "n/a" if verdict.value is None else ("holds" if verdict.passed else "BREACHED")
        print(f"{verdict.key:<20} {value:>14} {verdict.limit:>10g}  {mark}")
    for note in diff.notes:
        print(f"note: {note}")
    return 0 if all(verdict.passed for verdict in verdicts) else 1


def run_serve(args: argparse.Namespace) -> int:
    """Preview a built site on http://127.0.0.1:PORT (local only; publish the folder itself for others)."""
    import functools
    import http.server

    from reporter.errors import OutputError

    if not (args.site / "index.html").is_file():
        raise OutputError(f"{args.site}: no index.html; build the site first (make site, or gate-report build)")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(args.site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        print(f"serving {args.site} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0


def _count(number: int, noun: str) -> str:
    """Count a noun for a reader: "1 layer", "2 layers"."""
    return f"{number} {noun}{'' if number == 1 else 's'}"

"""The `gate-report` command: parses arguments, calls the public functions, maps errors to exit codes.

Exit codes: 0 success, 1 a `check` threshold breached, 2 bad input or usage (one line on stderr
naming the file and the problem; the traceback only with --debug), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
from pathlib import Path

from reporter.errors import ReporterError

__all__ = ["main"]


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


def _add_model_arguments(parser: argparse.ArgumentParser, required: bool, windows: bool = True) -> None:
    """Arguments that say how to load a model: shared by export and bench."""
    parser.add_argument("checkpoint", type=Path, nargs=None if required else "?",
                        help="checkpoint (.pt state_dict, Lightning dict, TorchScript) or .onnx file")
    parser.add_argument("--factory", metavar="MODULE:FUNCTION", help="builds the module a state_dict fits")
    parser.add_argument("--kwargs", metavar="JSON", help="keyword arguments for the factory, as a JSON object")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a checkpoint that is a pickled module (this RUNS code from the file)")
    if windows:
        parser.add_argument("--windows", type=Path, metavar="FILE",
                            help="stored input windows (.npy, or .npz with array 'x') for examples and parity")


def _cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX with every gate exposed, plus its layer manifest."""
    from reporter.model_source import exposed_model_from_checkpoint
    from reporter.atomic import write_bytes_atomic, write_text_atomic
    from reporter.expose import layers_to_json

    out = args.output
    manifest_path = out.with_name(out.stem + ".layers.json")
    source = exposed_model_from_checkpoint(args.checkpoint, args.factory, _kwargs(args.kwargs),
                                           args.trust_pickle, args.windows, args.exporter)
    write_bytes_atomic(out, source.exposed.SerializeToString())
    write_text_atomic(manifest_path, layers_to_json(source.layers))
    for layer in source.layers:
        print(f"{layer.name}: {layer.kind}, {layer.direction}, hidden {layer.hidden_size}, gates {' '.join(layer.outputs)}")
    parity = "n/a (ONNX input)" if source.parity_max_abs is None else f"{source.parity_max_abs:.2e}"
    print(f"wrote {out} and {manifest_path} ({len(source.layers)} layers; export parity max |Δ| {parity})")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """Print what exposing gates costs: exposed ÷ fused, and ÷ a PyTorch per-step loop."""
    from reporter import bench

    if args.dask_scaling:
        from reporter import bench_dask

        row = bench_dask.bench_dask_scaling(args.dask_scaling, say=lambda line: print(line, file=sys.stderr, flush=True))
        print(bench_dask.format_scaling(row))
        return 0
    if args.replay:
        from reporter import bench_replay

        sizes = [_positive(size) for size in args.replay.split(",")]
        providers = [provider.strip() for provider in args.provider.split(",")]
        for provider in providers:
            if provider not in ("cpu", "cuda"):
                raise ReporterError(f"--provider {provider}: expected cpu, cuda or cpu,cuda")
            if provider == "cuda":
                from reporter.replay import choose_provider

                choose_provider("cuda")  # says what is missing before any benchmark starts
        rows = bench_replay.bench_replay(sizes, say=lambda line: print(line, file=sys.stderr, flush=True),
                                         providers=providers, workers=args.workers)
        print(bench_replay.format_replay(rows))
        return 0
    if args.checkpoint is None:
        print(f"bench: {bench.THREADS} threads, median of {args.repeats} interleaved runs", flush=True)
        print(bench.format_rows(bench.bench_builtin(repeats=args.repeats)))
        return 0
    from reporter.model_source import fused_model_and_windows

    model, windows = fused_model_and_windows(args.checkpoint, args.factory, _kwargs(args.kwargs),
                                             args.trust_pickle, args.windows, args.batch_size)
    row = bench.bench_onnx(model, windows, f"{args.checkpoint.name}, {windows.shape[0]}×{windows.shape[1]}", args.repeats)
    print(bench.format_rows([row]))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    """Replay a model over stored windows and write a run directory (atomically)."""
    from reporter.atomic import check_output_dir
    from reporter.checkpoints import file_sha256
    from reporter.make_run import RunSettings, make_run
    from reporter.model_source import exposed_model_from_checkpoint
    from reporter.runstore import Run
    from reporter.windows import open_windows_source

    check_output_dir(args.output)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    reference = Run.load(args.reference) if args.reference else None
    source = open_windows_source(args.windows, key=args.key, window=args.window, stride=args.stride,
                                 columns=args.columns.split(",") if args.columns else None, nan=args.nan)
    if len(source.skipped):
        say(f"skipped {len(source.skipped)} windows holding NaN or Inf (--nan skip)")
    model = exposed_model_from_checkpoint(args.checkpoint, args.factory, _kwargs(args.kwargs), args.trust_pickle,
                                          None, args.exporter, source=source)
    settings = RunSettings(model=args.name or args.checkpoint.stem,
                           version=args.version or file_sha256(args.checkpoint)[:8],
                           provider=args.provider, batch_size=args.batch_size, workers=args.workers, dask=args.dask)
    run = make_run(model, source, settings, reference, say)
    run.save(args.output)
    flagged = int((run.window_scores["rank"] <= max(1, round(0.01 * len(run.window_scores)))).sum())
    print(f"wrote {args.output} ({run.meta['n_windows']} windows, {len(run.layers)} layers, "
          f"{run.meta['windows_per_second']:.0f} windows/s on {run.meta['provider']}; top {flagged} anomalous windows "
          f"in window_scores.parquet)")
    return 0


def _positive(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _cmd_build(args: argparse.Namespace) -> int:
    """Build the static site for the runs in a config file (atomically: all or nothing)."""
    from reporter.config import load_config
    from reporter.build import build

    only_runs = args.config is None and args.runs
    config = None if only_runs else load_config(args.config or Path("reporter.toml"))
    output = build(config, args.output, run_dirs=args.runs or (),
                        progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"built {output / 'index.html'}")
    return 0


def _thresholds(args: argparse.Namespace) -> dict[str, float]:
    """Thresholds: the defaults, then [check] of --config (or ./reporter.toml when present), then --threshold."""
    from reporter.config import load_config
    from reporter.diff import parse_thresholds

    config = args.config or (Path("reporter.toml") if Path("reporter.toml").is_file() else None)
    base = load_config(config).thresholds if config else {}
    return parse_thresholds(args.threshold or [], base=base or None)


def _cmd_diff(args: argparse.Namespace) -> int:
    """Compare run B with baseline run A: a diff page, and optionally a markdown summary or one HTML file."""
    from reporter import review
    from reporter.atomic import check_output_dir, check_output_file
    from reporter.diff import check, diff_runs
    from reporter.runstore import Run

    if args.output is None and args.markdown is None and args.single_file is None:
        raise ReporterError("diff: say where to write it: -o DIR, --markdown FILE and/or --single-file FILE")
    for path in (args.markdown, args.single_file):
        if path is not None:
            check_output_file(path)
    if args.output is not None:
        check_output_dir(args.output)
    thresholds = _thresholds(args)
    diff = diff_runs(Run.load(args.run_a), Run.load(args.run_b))
    if args.output is not None:
        review.write_diff_dir(diff, args.output, thresholds)
        print(f"wrote {args.output / 'index.html'}")
    if args.markdown is not None:
        review.write_markdown(diff, args.markdown, thresholds)
        print(f"wrote {args.markdown} (charts in {args.markdown.parent / (args.markdown.stem + '-charts')})")
    if args.single_file is not None:
        size = review.write_single_file(diff, args.single_file, thresholds)
        print(f"wrote {args.single_file} ({size / 2**20:.1f} MB, self-contained)")
    breached = [v.key for v in check(diff, thresholds) if not v.passed]
    if breached:
        print(f"thresholds breached: {', '.join(breached)} (gate-report check exits 1 on these)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """Exit 1 when run B breaches a threshold against baseline run A, 0 when all hold."""
    from reporter.diff import check, diff_runs
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


def _cmd_serve(args: argparse.Namespace) -> int:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gate-report", description="See what the gates of LSTM/GRU models did.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = commands.add_parser("export", help="checkpoint → ONNX with gates exposed (+ OUT.layers.json)",
                                 description=_cmd_export.__doc__)
    _add_model_arguments(export, required=True)
    export.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy",
                        help="torch exporter (legacy emits fused nodes for LSTM, GRU and RNN)")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    export.set_defaults(run=_cmd_export)

    replay = commands.add_parser("replay", help="replay windows through the exposed model into a run directory",
                                 description=_cmd_replay.__doc__)
    _add_model_arguments(replay, required=True, windows=False)
    replay.add_argument("--windows", type=Path, required=True, metavar="FILE",
                        help="stored windows: .npy, .npz (--key), .pt, or a .parquet/.csv table (--window)")
    replay.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR")
    replay.add_argument("--name", help="model name shown in reports (default: the checkpoint's file name)")
    replay.add_argument("--version", help="model version (default: the first 8 hex digits of the checkpoint's sha256)")
    replay.add_argument("--reference", type=Path, metavar="RUN_DIR",
                        help="score windows against this trusted run instead of against themselves")
    replay.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto",
                        help="onnxruntime provider (auto: CUDA when onnxruntime-gpu finds a GPU)")
    replay.add_argument("--batch-size", type=_positive, default=256, help="windows per batch (default 256)")
    replay.add_argument("--workers", type=_positive, help="CPU sessions run side by side (default: up to 2 cores)")
    replay.add_argument("--dask", metavar="ADDRESS", help="shard the replay over a Dask cluster: a scheduler address "
                        "(tcp://host:8786) or local[:N] for N local worker processes (needs gate-reporter[dask])")
    replay.add_argument("--key", default="x", help="array name inside an .npz or .pt dict (default x)")
    replay.add_argument("--window", type=_positive, help="steps per window, for .parquet/.csv tables")
    replay.add_argument("--stride", type=_positive, help="steps between window starts in a table (default --window)")
    replay.add_argument("--columns", help="comma-separated table columns to use as features (default: all numeric)")
    replay.add_argument("--nan", choices=["error", "skip"], default="error",
                        help="windows holding NaN/Inf: stop with an error (default) or skip them")
    replay.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy", help="torch exporter")
    replay.set_defaults(run=_cmd_replay)

    build = commands.add_parser("build", help="build the static site from reporter.toml", description=_cmd_build.__doc__)
    build.add_argument("--config", type=Path, help="site config (default reporter.toml, unless only --runs are given)")
    build.add_argument("--runs", type=Path, nargs="+", metavar="RUN_DIR", help="add run directories made by replay")
    build.add_argument("-o", "--output", type=Path, help="output folder (default: [site] output in the config)")
    build.set_defaults(run=_cmd_build)

    for name, run, text in (("diff", _cmd_diff, "compare two runs: diff page, markdown summary, single HTML file"),
                            ("check", _cmd_check, "CI gate: exit 1 when a threshold is breached")):
        command = commands.add_parser(name, help=text, description=run.__doc__)
        command.add_argument("run_a", type=Path, metavar="RUN_A", help="the baseline run directory")
        command.add_argument("run_b", type=Path, metavar="RUN_B", help="the candidate run directory")
        command.add_argument("--threshold", action="append", metavar="KEY=VALUE",
                             help="saturation_delta, wasserstein, anomaly_rate_delta or output_drift (repeatable)")
        command.add_argument("--config", type=Path, help="read [check] thresholds from this file "
                                                         "(default: ./reporter.toml when present)")
        command.set_defaults(run=run)
        if name == "diff":
            command.add_argument("-o", "--output", type=Path, metavar="DIR", help="write the diff page here")
            command.add_argument("--markdown", type=Path, metavar="FILE", help="a summary for a pull-request comment")
            command.add_argument("--single-file", type=Path, metavar="FILE", help="one self-contained HTML file")

    serve = commands.add_parser("serve", help="preview a built site on localhost", description=_cmd_serve.__doc__)
    serve.add_argument("site", type=Path, nargs="?", default=Path("site"), help="the site folder (default site)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.set_defaults(run=_cmd_serve)

    bench = commands.add_parser("bench", help="measure the cost of exposing gates", description=_cmd_bench.__doc__)
    _add_model_arguments(bench, required=False)
    bench.add_argument("--batch-size", type=int, default=256, help="windows per run for a given model (default 256)")
    bench.add_argument("--repeats", type=int, default=7, help="interleaved runs per contender (default 7)")
    bench.add_argument("--replay", nargs="?", const="5000,50000", metavar="N,N",
                       help="instead: replay throughput and peak memory of the sample forecaster over N windows, "
                            "each size in a fresh process (default sizes 5000,50000)")
    bench.add_argument("--provider", default="cpu", metavar="cpu|cuda|cpu,cuda",
                       help="with --replay: the providers to replay on, each size on each (default cpu)")
    bench.add_argument("--workers", type=_positive, help="with --replay: sessions side by side (default: up to 2 cores)")
    bench.add_argument("--dask-scaling", nargs="?", const=20000, type=_positive, metavar="N",
                       help="instead: windows/s of 1 process vs a 2-worker LocalCluster on N windows (default 20000)")
    bench.set_defaults(run=_cmd_bench)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every staging folder is removed on the way out."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.run(args)
    except ReporterError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"gate-report: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gate-report: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Terminated:
        print("gate-report: terminated; nothing half-written was left behind", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())

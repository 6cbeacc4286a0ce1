"""The `gate-report` command: parses arguments, calls the public functions, maps errors to exit codes.

Exit codes: 0 success, 1 a `check` threshold breached, 2 bad input or usage (one line on stderr
naming the file and the problem; the traceback only with --debug), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def _add_model_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """Arguments that say how to load a model: shared by export and bench."""
    parser.add_argument("checkpoint", type=Path, nargs=None if required else "?",
                        help="checkpoint (.pt state_dict, Lightning dict, TorchScript) or .onnx file")
    parser.add_argument("--factory", metavar="MODULE:FUNCTION", help="builds the module a state_dict fits")
    parser.add_argument("--kwargs", metavar="JSON", help="keyword arguments for the factory, as a JSON object")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a checkpoint that is a pickled module (this RUNS code from the file)")
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


def _cmd_build(args: argparse.Namespace) -> int:
    """Build the static site for the runs in a config file (atomically: all or nothing)."""
    from reporter.config import load_config
    from reporter.site import build_site

    config = load_config(args.config)
    output = build_site(config, args.output, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"built {output / 'index.html'}")
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

    build = commands.add_parser("build", help="build the static site from reporter.toml", description=_cmd_build.__doc__)
    build.add_argument("--config", type=Path, default=Path("reporter.toml"), help="site config (default reporter.toml)")
    build.add_argument("-o", "--output", type=Path, help="output folder (default: [site] output in the config)")
    build.set_defaults(run=_cmd_build)

    bench = commands.add_parser("bench", help="measure the cost of exposing gates", description=_cmd_bench.__doc__)
    _add_model_arguments(bench, required=False)
    bench.add_argument("--batch-size", type=int, default=256, help="windows per run for a given model (default 256)")
    bench.add_argument("--repeats", type=int, default=7, help="interleaved runs per contender (default 7)")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ReporterError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"gate-report: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gate-report: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `gate-report` command line: every command's arguments, with help a user can act on."""

from __future__ import annotations

import argparse
from pathlib import Path

from reporter.cli import commands
from reporter.cli.commands import memory_size, positive

__all__ = ["build_parser"]


def _add_model_arguments(parser: argparse.ArgumentParser, required: bool, windows: bool = True) -> None:
    """Arguments that say how to load a model: shared by export, replay and bench."""
    parser.add_argument(
        "checkpoint",
        type=Path,
        nargs=None if required else "?",
        help="checkpoint (.pt state_dict, Lightning dict, TorchScript) or .onnx file",
    )
    parser.add_argument("--factory", metavar="MODULE:FUNCTION", help="builds the module a state_dict fits")
    parser.add_argument("--kwargs", metavar="JSON", help="keyword arguments for the factory, as a JSON object")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a checkpoint that is a pickled module (this RUNS code from the file)",
    )
    parser.add_argument(
        "--exporter",
        choices=["legacy", "dynamo"],
        default="legacy",
        help="torch exporter (legacy, the default, emits fused nodes for LSTM, GRU and RNN)",
    )
    if windows:
        parser.add_argument(
            "--windows",
            type=Path,
            metavar="FILE",
            help="stored input windows (.npy, or .npz with array 'x') for examples and parity",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gate-report", description="See what the gates of LSTM/GRU models did.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = subcommands.add_parser(
        "export",
        help="checkpoint → ONNX with gates exposed (+ OUT.layers.json)",
        description=commands.run_export.__doc__,
    )
    _add_model_arguments(export, required=True)
    export.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    export.set_defaults(run=commands.run_export)

    replay = subcommands.add_parser(
        "replay",
        help="replay windows through the exposed model into a run directory",
        description=commands.run_replay.__doc__,
    )
    _add_model_arguments(replay, required=True, windows=False)
    replay.add_argument(
        "--windows",
        type=Path,
        required=True,
        metavar="FILE",
        help="stored windows: .npy, .npz (--key), .pt, or a .parquet/.csv table (--window)",
    )
    replay.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR")
    replay.add_argument("--name", help="model name shown in reports (default: the checkpoint's file name)")
    replay.add_argument("--version", help="model version (default: the first 8 hex digits of the checkpoint's sha256)")
    replay.add_argument(
        "--reference",
        type=Path,
        metavar="RUN_DIR",
        help="score windows against this trusted run instead of against themselves",
    )
    replay.add_argument(
        "--provider",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="onnxruntime provider (auto: CUDA when onnxruntime-gpu finds a GPU)",
    )
    replay.add_argument(
        "--batch-size",
        type=positive,
        help="windows per batch (default: as many as --memory allows, at most 256, evened out over the workers)",
    )
    replay.add_argument(
        "--memory",
        type=memory_size,
        metavar="SIZE",
        help="memory replay may use, e.g. 2G or 512M; sets the batch size (default: a quarter of this machine's)",
    )
    replay.add_argument("--workers", type=positive, help="CPU sessions run side by side (default: up to 2 cores)")
    replay.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="shard the replay over a Dask cluster: a scheduler address "
        "(tcp://host:8786) or local[:N] for N local worker processes (needs gate-reporter[dask])",
    )
    replay.add_argument(
        "--key", help="the array of an .npz or .pt dict that holds the windows (default: the model input's name, or x)"
    )
    replay.add_argument(
        "--feed",
        action="append",
        metavar="NAME=VALUE",
        help="give model input NAME the same value for every window: a number, a JSON list, zeros, or a .npy file "
        "(repeatable; inputs that differ per window go in the windows .npz under their own names)",
    )
    replay.add_argument(
        "--carry",
        action="append",
        metavar="IN=OUT",
        help="a streaming model's state: windows are [N, T, …one call's input…], the model is called T times and "
        "output OUT is fed back to input IN (repeatable; detected from paired names like state/stateN)",
    )
    replay.add_argument(
        "--vocab",
        type=Path,
        help="a token model's vocabulary, so its windows read as text: a JSON list (id → token), a JSON object "
        "(token → id), a Hugging Face tokenizer.json, or a SentencePiece .model",
    )
    replay.add_argument("--window", type=positive, help="steps per window, for .parquet/.csv tables")
    replay.add_argument("--stride", type=positive, help="steps between window starts in a table (default --window)")
    replay.add_argument("--columns", help="comma-separated table columns to use as features (default: all numeric)")
    replay.add_argument(
        "--nan",
        choices=["error", "skip"],
        default="error",
        help="windows holding NaN/Inf: stop with an error (default) or skip them",
    )
    replay.set_defaults(run=commands.run_replay)

    build = subcommands.add_parser(
        "build", help="build the static site from reporter.toml", description=commands.run_build.__doc__
    )
    build.add_argument(
        "config_file", type=Path, nargs="?", metavar="CONFIG", help="site config, as with --config (either, not both)"
    )
    build.add_argument("--config", type=Path, help="site config (default reporter.toml, unless only --runs are given)")
    build.add_argument("--runs", type=Path, nargs="+", metavar="RUN_DIR", help="add run directories made by replay")
    build.add_argument("-o", "--output", type=Path, help="output folder (default: [site] output in the config)")
    build.set_defaults(run=commands.run_build)

    for name, run, text in (
        ("diff", commands.run_diff, "compare two runs: diff page, markdown summary, single HTML file"),
        ("check", commands.run_check, "CI gate: exit 1 when a threshold is breached"),
    ):
        command = subcommands.add_parser(name, help=text, description=run.__doc__)
        command.add_argument("run_a", type=Path, metavar="RUN_A", help="the baseline run directory")
        command.add_argument("run_b", type=Path, metavar="RUN_B", help="the candidate run directory")
        command.add_argument(
            "--threshold",
            action="append",
            metavar="KEY=VALUE",
            help="saturation_delta, wasserstein, anomaly_rate_delta or output_drift (repeatable)",
        )
        command.add_argument(
            "--config", type=Path, help="read [check] thresholds from this file (default: ./reporter.toml when present)"
        )
        command.set_defaults(run=run)
        if name == "diff":
            command.add_argument("-o", "--output", type=Path, metavar="DIR", help="write the diff page here")
            command.add_argument("--markdown", type=Path, metavar="FILE", help="a summary for a pull-request comment")
            command.add_argument("--single-file", type=Path, metavar="FILE", help="one self-contained HTML file")

    serve = subcommands.add_parser(
        "serve", help="preview a built site on localhost", description=commands.run_serve.__doc__
    )
    serve.add_argument("site", type=Path, nargs="?", default=Path("site"), help="the site folder (default site)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.set_defaults(run=commands.run_serve)

    bench = subcommands.add_parser(
        "bench", help="measure the cost of exposing gates", description=commands.run_bench.__doc__
    )
    _add_model_arguments(bench, required=False)
    bench.add_argument("--batch-size", type=int, default=256, help="windows per run for a given model (default 256)")
    bench.add_argument("--repeats", type=int, default=7, help="interleaved runs per contender (default 7)")
    bench.add_argument(
        "--replay",
        nargs="?",
        const="default",
        metavar="N,N",
        help="instead: replay throughput, batch size and peak memory, each case in a fresh process: by default "
        "the sample forecaster over 5000 and 50000 windows, 2-layer LSTMs of 16 units over 20000, of 128 over "
        "4000 and of 1024 over 600 with a 2 GB budget; with N,N only the forecaster, over N windows",
    )
    bench.add_argument(
        "--provider",
        default="cpu",
        metavar="cpu|cuda|cpu,cuda",
        help="with --replay: the providers to replay on, each size on each (default cpu)",
    )
    bench.add_argument("--workers", type=positive, help="with --replay: sessions side by side (default: up to 2 cores)")
    bench.add_argument(
        "--dask-scaling",
        nargs="?",
        const=20000,
        type=positive,
        metavar="N",
        help="instead: windows/s of 1 process vs a 2-worker LocalCluster on N windows (default 20000)",
    )
    bench.set_defaults(run=commands.run_bench)
    return parser

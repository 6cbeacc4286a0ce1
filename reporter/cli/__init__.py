"""The `gate-report` command: parses arguments, runs the command, maps errors to exit codes.

Exit codes: 0 success, 1 a `check` threshold breached, 2 bad input or usage (one line on stderr
naming the file and the problem; the traceback only with --debug), 130 interrupted, 143 terminated.

    arguments   every command's arguments and help
    commands    what each command does
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback

from reporter.errors import ReporterError

__all__ = ["main"]


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every staging folder is removed on the way out."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    from reporter.cli.arguments import build_parser

    args = build_parser().parse_args(argv)
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

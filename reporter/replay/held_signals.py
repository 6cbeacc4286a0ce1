"""Ctrl-C and SIGTERM held back while replay's workers start, and delivered once they all have.

`threading.Thread.start` launches the thread, then waits for it to say it is running. A
KeyboardInterrupt raised in that wait leaves a worker that runs but does not yet count as alive, so
an interrupted replay's cleanup did not join it, and the interpreter shut down with the worker
inside onnxruntime: the process aborted ("terminate called without an active exception", exit −6
instead of 130). Python runs signal handlers in the main thread only, so swapping the handlers for
one that notes the signal holds it back whichever thread the operating system hands it to.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["signals_held"]

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are noted, not handled; on leaving it, those noted are
    raised again in order under the handlers the block found (the first that raises ends it).
    Outside the main thread, and for a handler Python did not install (it cannot be put back),
    nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = {held: signal.getsignal(held) for held in HELD}
    previous = {held: handler for held, handler in previous.items() if handler is not None}
    for held in previous:
        signal.signal(held, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        for held, handler in previous.items():
            signal.signal(held, handler)
        for signum in noted:
            signal.raise_signal(signum)

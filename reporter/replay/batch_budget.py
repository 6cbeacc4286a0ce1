"""How many windows replay runs at once: as many as a memory budget allows, up to a cap.

A batch's memory is its exposed model's outputs (every gate of every layer, float32, per window
`steps × directions × hidden × gates × layers × 4` bytes: 0.6 MB for 2 × 128 LSTM units over 100
steps, 4.9 MB for 1,024 units) plus what onnxruntime holds meanwhile (the input projection, and
for gates replay does not keep time-major, the Scan's copy of each before it is transposed) and
the statistics kernel's copy of a batch-major trace, on every worker at once. So the
batch is measured, not guessed: one window is run through the model, its outputs' bytes times
`OVERHEAD` is the cost of a window, and the budget left over the process's current memory is
shared among the workers. The cap keeps small models at the batch that measured fastest; the
floor is one window (a model whose one window does not fit is run anyway, with a warning).
"""

from __future__ import annotations

import os
import re

from reporter.errors import ConfigError

__all__ = ["CAP", "OVERHEAD", "balanced_batch", "choose_batch", "current_rss", "default_budget", "parse_memory"]

CAP = 256  # windows per batch at most: larger batches measured no faster (`gate-report bench`)
OVERHEAD = 4.5  # peak ÷ output bytes of a batch in flight; 3.7 measured with every gate transposed (1,024 units)
_SHARE = 0.25  # of physical memory, the default budget
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(text: str) -> int:
    """A size in bytes from '2G', '512M', '1.5GB', '800MiB' or a plain number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"--memory {text!r}: expected a size such as 2G, 512M or 1.5GB")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def default_budget() -> int:
    """A quarter of the machine's physical memory (what replay may take without crowding others)."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * _SHARE)


def current_rss() -> int:
    """This process's resident memory now, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def choose_batch(window_bytes: int, workers: int, budget: int, used: int) -> int:
    """Windows per batch so that `workers` batches in flight fit in `budget` beyond `used` bytes."""
    per_window = max(1.0, window_bytes * OVERHEAD * workers)
    return int(max(1, min(CAP, (budget - used) // per_window)))


def balanced_batch(largest: int, rows: int, workers: int) -> int:
    """The smallest batch that cuts `rows` consecutive file rows (batches are cut over rows, and
    skipped windows dropped from each after) into as few rounds as batches of `largest` do, a round
    being one batch per worker. Batches of `largest` leave workers idle when the rows run out
    early: 128 windows at 256 are one batch on one of two workers, 300 are 256 and 44. The same
    rounds with smaller batches cost no more and keep every worker busy (`gate-report replay` of
    256 windows of the 128-unit bench model: 0.26 s at 256, 0.16 s at 128). One worker has no one
    to share with: it keeps `largest` (on CUDA a smaller batch costs about as much as a full one).
    Never above `largest`, so never over the memory budget that chose it."""
    if workers <= 1:
        return largest
    rounds = max(1, -(-rows // (largest * workers)))
    return max(1, min(largest, -(-rows // (workers * rounds))))

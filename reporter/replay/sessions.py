"""onnxruntime sessions for replay: which provider, how a session is opened, how CUDA is fed.

`choose_provider` answers `--provider auto|cpu|cuda` and says why in one line; `open_session`
opens a CPU session with the threads asked for, or a CUDA one without TF32 (its 10-bit matmuls
move gate values in the 4th digit from the CPU's); `run_bound` runs a batch on CUDA through IO
binding; `tune_allocator` keeps glibc from unmapping each batch's buffers.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys

import numpy as np
import onnxruntime as ort

from reporter.errors import ReporterError

__all__ = ["choose_provider", "open_session", "release_memory", "run_bound", "tune_allocator"]


def tune_allocator() -> bool:
    """Let glibc keep freed batch buffers for the next batch instead of unmapping them.

    Every batch allocates and frees the same few MB-sized arrays (gate traces, statistics
    temporaries). glibc serves allocations above its mmap threshold with fresh mmaps, so each
    batch pays page faults on every one of them, and Dask workers start with
    MALLOC_TRIM_THRESHOLD_=65536, which returns freed memory at once. Fixing the mmap threshold
    at 32 MB and the trim threshold at 128 MB halved the time per batch here (1.08 s vs 2.1 s for
    3,584 forecaster windows on one core) while peak memory stays flat (`gate-report bench
    --replay`). A no-op where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 128 << 20))


def release_memory() -> bool:
    """Hand the heap's free pages back to the system once replay's batches are done.

    With the thresholds `tune_allocator` sets, glibc keeps the last batches' buffers, up to the
    budget's size, for batches that no longer come; what runs next (the float64 module copy
    autograd differentiates, the impulse batches) would then add its own memory on top of them and
    push the run's peak past `--memory`. `malloc_trim(0)` returns every free page, not just the
    heap's top. A no-op where the C library is not glibc.
    """
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def _glibc() -> ctypes.CDLL | None:
    """glibc with its malloc tuning calls, or None where the C library is another (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def choose_provider(requested: str) -> tuple[str, str]:
    """Pick "cpu" or "cuda" for `--provider auto|cpu|cuda`; return it and a line saying why."""
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if requested == "cpu":
        return "cpu", "provider: cpu (requested)"
    if requested == "cuda":
        if not has_cuda:
            raise ReporterError(
                "--provider cuda: onnxruntime has no CUDA provider here (install gate-reporter[gpu], "
                "i.e. onnxruntime-gpu, on a machine with an NVIDIA GPU), or use --provider cpu"
            )
        return "cuda", "provider: cuda (requested)"
    if requested != "auto":
        raise ReporterError(f"--provider {requested}: expected auto, cpu or cuda")
    if has_cuda:
        return "cuda", "provider: cuda (auto: onnxruntime-gpu found the CUDA provider)"
    return "cpu", "provider: cpu (auto: no CUDA provider in this onnxruntime; install gate-reporter[gpu] for GPUs)"


@functools.cache  # once per process, however many sessions open
def _preload_cuda_libraries() -> None:
    """Load the CUDA/cuDNN libraries that pip's nvidia-* packages installed (onnxruntime-gpu ≥ 1.21
    looks for them only there when asked; torch, when imported first, has loaded them already)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.suppress(Exception):  # nothing to preload: the system's libraries are used
            preload()


def open_session(model: bytes, provider: str, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime session on the CPU (`threads` intra-op threads) or on CUDA."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    providers: list = ["CPUExecutionProvider"]
    if provider == "cuda":  # no TF32: its 10-bit matmuls would move gate values in the 4th digit from the CPU's
        _preload_cuda_libraries()
        providers = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    else:
        # The memory pattern (one block planned from the first run at a shape, allocated on the
        # second) made each CPU session's second batch of the 2 × 128-unit model take 1.06–1.11 s
        # instead of 0.18 (both sessions touching fresh pages at once), and brought nothing after.
        options.enable_mem_pattern = False
    session = ort.InferenceSession(model, options, providers=providers)
    if provider == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise ReporterError(
            "--provider cuda: onnxruntime could not start the CUDA provider (is a GPU visible, and do "
            "the CUDA/cuDNN libraries match onnxruntime-gpu?); use --provider cpu"
        )
    return session


def run_bound(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], names: list[str], device: str
) -> dict[str, np.ndarray]:
    """Run one batch with IO binding: each input is copied to `device` once, and every output is
    written by the provider straight into host memory, where the accumulators read it. No output
    is kept on the device or copied twice; outputs nothing reads are not fetched at all."""
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0))
    for name in names:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    return dict(zip(names, binding.copy_outputs_to_cpu()))

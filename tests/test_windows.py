"""Window files: readable ones open; each bad one is a one-line error naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from reporter.errors import WindowsError_
from reporter.windows import check_windows, open_windows


def test_npy_is_memory_mapped_and_npz_reads_named_array(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    np.save(tmp_path / "w.npy", x)
    np.savez(tmp_path / "w.npz", x=x, y=x[:, :, 0])
    mapped = open_windows(tmp_path / "w.npy")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, x)
    assert np.array_equal(open_windows(tmp_path / "w.npz", key="y"), x[:, :, 0])


def test_missing_npz_key_lists_what_is_there(tmp_path):
    np.savez(tmp_path / "w.npz", a=np.zeros(3), b=np.ones(2))
    with pytest.raises(WindowsError_, match=r"w\.npz: no array named 'x'; it has a, b"):
        open_windows(tmp_path / "w.npz")


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY garbage", b"random bytes" * 10])
def test_garbage_files_are_clear_errors(tmp_path, content):
    for name in ("w.npy", "w.npz"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WindowsError_, match=name.replace(".", r"\.") + ": not a readable"):
            open_windows(tmp_path / name)


def test_rank_dtype_and_empty_checks(tmp_path):
    path = tmp_path / "w.npy"
    with pytest.raises(WindowsError_, match=r"float windows must be \[N, T, F\], got shape \[2, 3\]"):
        check_windows(path, np.zeros((2, 3), np.float32))
    with pytest.raises(WindowsError_, match=r"token-id windows must be \[N, T\]"):
        check_windows(path, np.zeros((2, 3, 1), np.int64))
    with pytest.raises(WindowsError_, match="must be float or integer, got dtype <U1"):
        check_windows(path, np.array([["a"]]))
    with pytest.raises(WindowsError_, match="holds no windows"):
        check_windows(path, np.zeros((0, 5, 2), np.float32))
    ok = np.zeros((2, 5, 1), np.float32)
    assert check_windows(path, ok) is ok

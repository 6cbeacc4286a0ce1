"""Window files: every format reads the same windows in bounded batches; each bad one is a one-line error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from onnx import TensorProto, helper

from reporter.errors import WindowsFileError
from reporter.model.inputs import ModelInput, onnx_input
from reporter.replay.windows import open_windows_source


def _series(n=7, t=5, f=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, t, f)).astype(np.float32)


def _all(source, batch_size=3):
    parts = list(source.batches(batch_size))
    return np.concatenate([i for i, _ in parts]), np.concatenate([w for _, w in parts])


@pytest.mark.parametrize("fmt", ["npy", "npz", "pt", "pt-dict", "npy-fortran", "npz-compressed", "float64"])
def test_every_array_format_reads_the_same_windows(tmp_path, fmt):
    x = _series()
    path = tmp_path / f"w.{fmt.split('-')[0].replace('float64', 'npy')}"
    if fmt == "npy":
        np.save(path, x)
    elif fmt == "float64":
        np.save(path, x.astype(np.float64))
    elif fmt == "npy-fortran":
        np.save(path, np.asfortranarray(x))
    elif fmt == "npz":
        np.savez(path, x=x, other=np.zeros(2))
    elif fmt == "npz-compressed":
        np.savez_compressed(path, x=x)
    elif fmt == "pt":
        torch.save(torch.from_numpy(x), path)
    else:
        torch.save({"x": torch.from_numpy(x), "y": torch.zeros(3)}, path)
    source = open_windows_source(path)
    indices, windows = _all(source)
    assert source.shape == (7, 5, 3) and source.n_windows == 7 and source.seq_len == 5 and source.features == 3
    assert np.array_equal(indices, np.arange(7)) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows, x)
    np.testing.assert_array_equal(source.take([6, 0, 3]), x[[6, 0, 3]])
    assert [len(i) for i, _ in source.batches(3)] == [3, 3, 1]
    assert all(w.flags.c_contiguous for _, w in source.batches(3))


def test_npy_batches_are_read_by_range_not_loaded_whole(tmp_path, monkeypatch):
    x = _series(n=40)
    np.save(tmp_path / "w.npy", x)
    source = open_windows_source(tmp_path / "w.npy")
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load would read the whole file"))
    indices, windows = _all(source, batch_size=16)
    np.testing.assert_array_equal(windows, x)
    np.testing.assert_array_equal(next(source.batches(4, start=10, stop=20))[1], x[10:14])
    assert np.array_equal(np.concatenate([i for i, _ in source.batches(4, start=10, stop=20)]), np.arange(10, 20))


def test_token_windows_are_int64_and_range_checked(tmp_path):
    ids = np.random.default_rng(1).integers(0, 50, size=(6, 9)).astype(np.int32)
    np.save(tmp_path / "t.npy", ids)
    source = open_windows_source(tmp_path / "t.npy")
    assert source.kind == "tokens" and source.features is None and source.token_range == (ids.min(), ids.max())
    np.testing.assert_array_equal(_all(source)[1], ids.astype(np.int64))
    source.check(ModelInput("x", "tokens", vocab=50))
    with pytest.raises(WindowsFileError, match=r"t\.npy: token ids must lie in \[0, 39\].*from 0 to 49"):
        source.check(ModelInput("x", "tokens", vocab=40))


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_tables_are_cut_into_sliding_windows(tmp_path, suffix):
    frame = pd.DataFrame(
        {
            "time": pd.date_range("2026-01-01", periods=20, freq="h"),
            "a": np.arange(20, dtype=float),
            "b": np.arange(20, dtype=float) * 10,
            "c": 1.0,
        }
    )
    path = tmp_path / f"table.{suffix}"
    frame.to_parquet(path) if suffix == "parquet" else frame.to_csv(path, index=False)
    source = open_windows_source(path, window=6, stride=4, columns=["a", "b"])
    _, windows = _all(source)
    assert windows.shape == (4, 6, 2)  # starts 0, 4, 8, 12 (16 would run past row 19)
    np.testing.assert_array_equal(windows[1, :, 0], np.arange(4, 10))
    np.testing.assert_array_equal(windows[2, :, 1], np.arange(8, 14) * 10)
    every_numeric = open_windows_source(path, window=5)  # stride defaults to the window: no overlap
    assert every_numeric.shape == (4, 5, 3)
    with pytest.raises(WindowsFileError, match=rf"table\.{suffix}: a table needs --window"):
        open_windows_source(path)
    with pytest.raises(WindowsFileError, match=rf"table\.{suffix}: no column 'z'; it has time, a, b, c"):
        open_windows_source(path, window=5, columns=["a", "z"])
    with pytest.raises(WindowsFileError, match="fewer than one window of 50"):
        open_windows_source(path, window=50)
    if suffix == "csv":
        with pytest.raises(WindowsFileError, match="column 'time' is not numeric"):
            open_windows_source(path, window=5, columns=["time"])


def test_nan_is_an_error_naming_count_and_place_or_is_skipped(tmp_path):
    x = _series(n=10)
    x[2, 3, 1] = np.nan
    x[7, 0, 0] = np.inf
    np.save(tmp_path / "w.npy", x)
    with pytest.raises(
        WindowsFileError,
        match=r"w\.npy: 2 of 10 windows hold NaN or Inf \(windows 2, 7; first at "
        r"window 2, step 3, feature 1\); fix them or pass --nan skip",
    ):
        open_windows_source(tmp_path / "w.npy")
    source = open_windows_source(tmp_path / "w.npy", nan="skip")
    assert source.n_windows == 8 and source.skipped.tolist() == [2, 7]
    indices, windows = _all(source)
    assert indices.tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
    np.testing.assert_array_equal(windows, x[indices])
    assert np.isfinite(windows).all()
    x[:] = np.nan
    np.save(tmp_path / "w.npy", x)
    with pytest.raises(WindowsFileError, match="every one of its 10 windows holds NaN"):
        open_windows_source(tmp_path / "w.npy", nan="skip")


def test_missing_npz_key_lists_what_is_there(tmp_path):
    np.savez(tmp_path / "w.npz", a=np.zeros(3), b=np.ones(2))
    with pytest.raises(WindowsFileError, match=r"w\.npz: no array named 'x'; it has a, b \(choose with --key\)"):
        open_windows_source(tmp_path / "w.npz")
    torch.save({"inputs": torch.zeros(2, 3, 1)}, tmp_path / "w.pt")
    with pytest.raises(WindowsFileError, match=r"w\.pt: no tensor named 'x'; it has inputs"):
        open_windows_source(tmp_path / "w.pt")


@pytest.mark.parametrize("name", ["w.npy", "w.npz", "w.pt", "w.parquet"])
@pytest.mark.parametrize("content", [b"\x93NUMPY garbage", b"random bytes" * 10, bytes(range(256)) * 4])
def test_garbage_files_are_clear_errors(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(WindowsFileError, match=name.replace(".", r"\.") + ": (not a readable|refused|truncated)"):
        open_windows_source(tmp_path / name, window=2)


def test_empty_missing_truncated_pickled_and_unknown_files(tmp_path):
    (tmp_path / "e.npy").write_bytes(b"")
    with pytest.raises(WindowsFileError, match=r"e\.npy: is empty"):
        open_windows_source(tmp_path / "e.npy")
    with pytest.raises(WindowsFileError, match=r"nope\.npy: no such file"):
        open_windows_source(tmp_path / "nope.npy")
    np.save(tmp_path / "t.npy", _series(n=50))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(WindowsFileError, match=r"t\.npy: truncated"):
        open_windows_source(tmp_path / "t.npy")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WindowsFileError, match=r"o\.npy: holds Python objects"):
        open_windows_source(tmp_path / "o.npy")
    (tmp_path / "w.txt").write_text("1 2 3")
    with pytest.raises(WindowsFileError, match=r"w\.txt: unsupported windows format '\.txt'"):
        open_windows_source(tmp_path / "w.txt")


def test_rank_dtype_and_empty_checks(tmp_path):
    cases = [
        (np.zeros((2, 3), np.float32), r"float windows must be \[N, T, F\], got shape \[2, 3\]"),
        (np.zeros((2, 3, 1), np.int64), r"token-id windows must be \[N, T\], got shape \[2, 3, 1\]"),
        (np.zeros((2, 3), bool), "windows must be float or integer, got dtype bool"),
        (np.zeros((0, 5, 2), np.float32), r"holds no windows \(shape \[0, 5, 2\]\)"),
        (np.zeros((4, 0, 2), np.float32), "holds no windows"),
    ]
    for array, message in cases:
        np.save(tmp_path / "w.npy", array)
        with pytest.raises(WindowsFileError, match=r"w\.npy: " + message):
            open_windows_source(tmp_path / "w.npy")


def _model(elem_type, shape, vocab=None):
    """A one-node graph whose input is float [?, T, F] or int64 ids feeding an embedding Gather."""
    inputs = [helper.make_tensor_value_info("x", elem_type, shape)]
    if vocab:
        table = helper.make_tensor("emb", TensorProto.FLOAT, [vocab, 2], [0.0] * vocab * 2)
        node = helper.make_node("Gather", ["emb", "x"], ["y"])
        return helper.make_model(
            helper.make_graph(
                [node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table]
            )
        )
    node = helper.make_node("Identity", ["x"], ["y"])
    return helper.make_model(
        helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", elem_type, None)])
    )


def test_model_input_is_read_from_the_graph_and_checked(tmp_path):
    float_input = onnx_input(_model(TensorProto.FLOAT, ["batch", "time", 3]))
    assert float_input == ModelInput("x", "float", features=3, steps=None)
    fixed = onnx_input(_model(TensorProto.FLOAT, ["batch", 12, 3]))
    token_input = onnx_input(_model(TensorProto.INT64, ["batch", "time"], vocab=98))
    assert token_input == ModelInput("x", "tokens", vocab=98)
    np.save(tmp_path / "w.npy", _series(f=5))
    source = open_windows_source(tmp_path / "w.npy")
    with pytest.raises(WindowsFileError, match=r"w\.npy: expected 3 features per step, got 5"):
        source.check(float_input)
    with pytest.raises(WindowsFileError, match=r"w\.npy: the model takes windows of 12 steps, got 5"):
        source.check(ModelInput("x", "float", features=5, steps=12))
    with pytest.raises(
        WindowsFileError,
        match=r"w\.npy: the model takes integer token ids \[N, T\], these windows are "
        r"float with shape \[7, 5, 5\]",
    ):
        source.check(token_input)
    assert fixed.steps == 12
    with pytest.raises(WindowsFileError, match="input 'x' has element type STRING"):
        onnx_input(_model(TensorProto.STRING, ["batch", "time"]))


def test_a_single_integer_table_column_is_a_token_stream(tmp_path):
    pd.DataFrame({"token": np.arange(30) % 7}).to_csv(tmp_path / "tokens.csv", index=False)
    source = open_windows_source(tmp_path / "tokens.csv", window=10, stride=5)
    assert source.kind == "tokens" and source.shape == (5, 10)
    np.testing.assert_array_equal(source.take([1])[0], np.arange(5, 15) % 7)


def test_float64_values_beyond_float32_count_as_inf(tmp_path):
    x = np.zeros((3, 4, 2))
    x[1, 2, 0] = 1e39  # finite as float64, inf once cast to the float32 the model takes
    np.save(tmp_path / "big.npy", x)
    with pytest.raises(
        WindowsFileError, match=r"1 of 3 windows hold NaN or Inf \(windows 1; first at window 1, step 2"
    ):
        open_windows_source(tmp_path / "big.npy")


def test_compressed_npz_batches_read_forward_through_one_handle(tmp_path, monkeypatch):
    import zipfile

    x = _series(n=50)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    source = open_windows_source(tmp_path / "c.npz")
    opened = []
    real = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real(self, *a, **k))
    np.testing.assert_array_equal(np.concatenate([w for _, w in source.batches(4)]), x)
    assert len(opened) == 1  # not one decompression from the start per batch

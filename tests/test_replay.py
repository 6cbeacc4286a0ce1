"""Replay: batches and workers change nothing but speed; the run directory it writes round-trips;
every bad-window case is exit 2 with one line naming the file, and leaves the previous run intact."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from reporter.cli import main
from reporter.pipeline.make_run import RunSettings, make_run, sample_windows
from reporter.pipeline.model_source import ModelRecipe, exposed_model
from reporter.replay.anomaly import feature_names, window_features
from reporter.replay.runner import Replayer
from reporter.replay.stats import RunStats
from reporter.replay.windows import open_windows_source
from reporter.runstore import Run
from tests.tiny_models import save_tiny

FACTORY = "tests.tiny_models:tiny_forecaster"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 2-layer LSTM, its exposed model, and 37 windows of 9 steps."""
    folder = tmp_path_factory.mktemp("tiny")
    checkpoint, _ = save_tiny(folder)
    windows = folder / "w.npy"
    np.save(windows, np.random.default_rng(7).standard_normal((37, 9, 3)).astype(np.float32))
    model = exposed_model(ModelRecipe(checkpoint, FACTORY), open_windows_source(windows))
    return checkpoint, windows, model


def _assert_frames_close(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in a.columns:
        left, right = a[column].to_numpy(), b[column].to_numpy()
        if left.dtype.kind in "fc":
            np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-6, err_msg=column)
        elif left.dtype == object and len(left) and isinstance(left[0], np.ndarray):
            assert all(np.array_equal(x, y) for x, y in zip(left, right)), column
        else:
            assert np.array_equal(left, right), column


def test_replay_equals_one_pass_over_the_full_traces_whatever_the_batches_and_workers(tiny):
    _, windows, model = tiny
    source = open_windows_source(windows)
    x = source.take(source.indices())
    session = ort.InferenceSession(model.exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    full = dict(zip(names, session.run(None, {"x": x})))
    gates = {layer.name: {gate: full[name] for gate, name in layer.outputs.items()} for layer in model.layers}
    one_pass = RunStats(model.layers)
    for layer, by_gate in gates.items():
        for gate, trace in by_gate.items():
            one_pass.update(layer, gate, trace)
    expected = one_pass.to_frames()
    expected_features = window_features(gates, model.layers)
    for batch_size, workers in [(37, 1), (5, 1), (4, 2), (1, 2)]:
        result = Replayer(model.exposed, model.layers, "cpu", workers).replay(source, batch_size, progress=False)
        frames = result.stats.to_frames()
        _assert_frames_close(frames.gate_stats, expected.gate_stats)
        _assert_frames_close(frames.timestep_stats, expected.timestep_stats)
        assert result.features["window"].tolist() == list(range(37))
        np.testing.assert_allclose(
            result.features[feature_names(model.layers)].to_numpy(), expected_features, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(result.outputs[names[0]], full[names[0]][:, -1], rtol=1e-6)
        assert result.workers == workers and result.windows_per_second > 0


def test_sampled_windows_are_fixed_random_then_most_anomalous_without_repeats():
    kept = np.arange(0, 100, 2)
    ranked = np.array([98, 0, 40, 12, 14])
    indices, reasons = sample_windows(
        kept, ranked, RunSettings("m", "v", fixed_samples=3, random_samples=2, anomalous_samples=3)
    )
    assert indices[:3].tolist() == [0, 48, 98] and set(indices[3:5]) <= set(kept)
    assert reasons.tolist() == ["fixed"] * 3 + ["random"] * 2 + ["anomalous"] * 3
    assert len(set(indices.tolist())) == 8 and not {0, 98} & set(indices[5:].tolist())


def test_make_run_writes_a_run_directory_that_round_trips(tiny, tmp_path):
    _, windows, model = tiny
    source = open_windows_source(windows)
    run = make_run(model, source, RunSettings("tiny", "v1", provider="cpu", batch_size=8, impulse_windows=5))
    run.save(tmp_path / "run")
    loaded = Run.load(tmp_path / "run")
    assert loaded.meta["n_windows"] == 37 and loaded.meta["seq_len"] == 9 and loaded.meta["schema_version"] >= 1
    assert loaded.meta["windows"]["sha256"] == source.sha256()
    assert sorted(loaded.window_scores["rank"]) == list(range(1, 38))
    assert set(loaded.traces["reason"]) == {"fixed", "random", "anomalous"}
    top = loaded.window_scores.nsmallest(1, "rank")["window"].item()
    assert top in loaded.traces["window"]  # among the anomalous ones, unless already fixed or random
    assert set(loaded.explanations["window"]) <= set(loaded.traces["window"].tolist())
    np.testing.assert_array_equal(loaded.traces["x"], source.take(loaded.traces["window"]))
    assert loaded.traces["rnn.l1/h"].shape == (len(loaded.traces["window"]), 9, 1, 6)
    assert {"rnn.l0/h", "rnn.l1/c", "output:" + next(iter(loaded.outputs))} <= set(loaded.impulse["target"])
    _assert_frames_close(loaded.gate_stats, run.gate_stats)
    loaded.save(tmp_path / "again")
    for name in ("gate_stats.parquet", "window_scores.parquet", "traces.npz", "run.json"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def _replay(tmp_path, windows, *extra):
    return main(
        [
            "replay",
            str(tmp_path / "tiny.pt"),
            "--factory",
            FACTORY,
            "--windows",
            str(windows),
            "-o",
            str(tmp_path / "run"),
            "--version",
            "v1",
            "--provider",
            "cpu",
            *extra,
        ]
    )


def test_replay_command_writes_the_run_and_skips_nan_windows_on_request(tmp_path, capsys):
    save_tiny(tmp_path)
    x = np.random.default_rng(0).standard_normal((12, 6, 3)).astype(np.float32)
    x[4, 2, 0] = np.nan
    np.save(tmp_path / "w.npy", x)
    assert _replay(tmp_path, tmp_path / "w.npy", "--nan", "skip", "--batch-size", "5") == 0
    captured = capsys.readouterr()
    assert "skipped 1 windows holding NaN or Inf" in captured.err and "wrote" in captured.out
    run = Run.load(tmp_path / "run")
    assert run.meta["n_windows"] == 11 and run.meta["windows"]["skipped_nan"] == 1
    assert 4 not in run.window_scores["window"].tolist()
    assert run.meta["model"] == "tiny" and run.meta["version"] == "v1"


BAD_WINDOWS = [
    ("missing.npy", None, "missing.npy: no such file"),
    ("empty.npy", b"", "empty.npy: is empty"),
    ("garbage.npy", b"\x93NUMPY\x01\x00garbage" * 9, "garbage.npy: not a readable .npy file"),
    ("keys.npz", {"inputs": np.zeros((2, 6, 3), np.float32)}, "keys.npz: no array named 'x'; it has inputs"),
    ("rank.npy", np.zeros((4, 6), np.float32), r"rank.npy: float windows must be [N, T, F], got shape [4, 6]"),
    ("zero.npy", np.zeros((0, 6, 3), np.float32), "zero.npy: holds no windows"),
    ("features.npy", np.zeros((4, 6, 5), np.float32), "features.npy: expected 3 features per step, got 5"),
    ("tokens.npy", np.zeros((4, 6), np.int64), "tokens.npy: the model takes float series [N, T, F]"),
    ("dtype.npy", np.zeros((4, 6, 3), bool), "dtype.npy: windows must be float or integer, got dtype bool"),
    ("nan.npy", np.full((4, 6, 3), np.inf, np.float32), "nan.npy: 4 of 4 windows hold NaN or Inf"),
    ("table.csv", b"a,b,c\n1,2,3\n", "table.csv: a table needs --window"),
]


@pytest.mark.parametrize("name, content, message", BAD_WINDOWS, ids=[case[0] for case in BAD_WINDOWS])
def test_bad_windows_are_exit_2_with_one_line_and_the_previous_run_survives(tmp_path, capsys, name, content, message):
    save_tiny(tmp_path)
    np.save(tmp_path / "good.npy", np.random.default_rng(0).standard_normal((6, 6, 3)).astype(np.float32))
    assert _replay(tmp_path, tmp_path / "good.npy") == 0
    before = (tmp_path / "run" / "run.json").read_bytes()
    capsys.readouterr()
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    elif content is not None:
        np.save(path, content)
    assert _replay(tmp_path, path) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gate-report: error: ") and message in lines[0], lines
    assert (tmp_path / "run" / "run.json").read_bytes() == before
    assert Run.load(tmp_path / "run").meta["n_windows"] == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]


def test_other_bad_replay_inputs_are_exit_2(tmp_path, capsys):
    save_tiny(tmp_path)
    np.save(tmp_path / "w.npy", np.zeros((3, 6, 3), np.float32))
    (tmp_path / "file").write_text("not a folder")
    main_args = ["replay", str(tmp_path / "tiny.pt"), "--factory", FACTORY, "--windows", str(tmp_path / "w.npy")]
    assert main([*main_args, "-o", str(tmp_path / "file")]) == 2
    assert "file: exists and is not a folder" in capsys.readouterr().err
    assert main([*main_args, "-o", str(tmp_path / "r"), "--reference", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert main([*main_args, "-o", str(tmp_path / "r"), "--provider", "cuda"]) == 2
        assert "--provider cuda: onnxruntime has no CUDA provider here" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_reference_run_scores_new_windows_against_trusted_ones(tmp_path, capsys):
    save_tiny(tmp_path)
    rng = np.random.default_rng(2)
    np.save(tmp_path / "trusted.npy", rng.standard_normal((60, 6, 3)).astype(np.float32))
    np.save(tmp_path / "new.npy", (rng.standard_normal((20, 6, 3)) * 4).astype(np.float32))
    assert _replay(tmp_path, tmp_path / "trusted.npy") == 0
    (tmp_path / "run").rename(tmp_path / "trusted")
    assert _replay(tmp_path, tmp_path / "new.npy", "--reference", str(tmp_path / "trusted")) == 0
    scored = Run.load(tmp_path / "run")
    trusted = Run.load(tmp_path / "trusted")
    assert scored.meta["reference"]["path"] == str(tmp_path / "trusted")
    assert scored.window_scores["anomaly_score"].median() > trusted.window_scores["anomaly_score"].quantile(0.9)
    json.dumps(scored.meta)  # run.json stays plain JSON


def test_io_binding_gives_the_same_outputs_as_a_plain_run(tiny):
    """The CUDA path runs batches through IO binding; the same code runs on the CPU provider here."""
    from reporter.replay.sessions import open_session, run_bound

    _, windows, model = tiny
    session = open_session(model.exposed.SerializeToString(), "cpu")
    names = [o.name for o in session.get_outputs()]
    x = open_windows_source(windows).take(np.arange(7))
    bound = run_bound(session, {"x": x}, names, "cpu")
    plain = dict(zip(names, session.run(None, {"x": x})))
    assert list(bound) == names
    for name in names:
        np.testing.assert_array_equal(bound[name], plain[name])


def test_cpu_sessions_plan_no_memory_pattern(tiny):
    """onnxruntime's memory pattern allocates one planned block on a session's second batch; with two
    sessions doing so at once, that batch of the 128-unit bench model took 1.1 s instead of 0.18."""
    from reporter.replay.sessions import open_session

    _, _, model = tiny
    session = open_session(model.exposed.SerializeToString(), "cpu")
    assert session.get_session_options().enable_mem_pattern is False
    assert session.get_session_options().intra_op_num_threads == 1


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider here")
def test_cuda_replay_equals_cpu_replay(tiny):
    _, windows, model = tiny
    source = open_windows_source(windows)
    cpu = Replayer(model.exposed, model.layers, "cpu", workers=1).replay(source, 8, progress=False)
    cuda = Replayer(model.exposed, model.layers, "cuda", workers=2).replay(source, 8, progress=False)
    assert cuda.provider == "cuda"
    np.testing.assert_allclose(cuda.features.to_numpy(), cpu.features.to_numpy(), rtol=1e-4, atol=1e-5)
    cpu_frames, cuda_frames = cpu.stats.to_frames(), cuda.stats.to_frames()
    np.testing.assert_array_equal(cuda_frames.gate_stats["count"], cpu_frames.gate_stats["count"])
    np.testing.assert_allclose(cuda_frames.gate_stats["mean"], cpu_frames.gate_stats["mean"], atol=1e-5)
    flips = 2 / cpu_frames.gate_stats["count"].min()  # a value within float error of a threshold may land either side
    for column in ("frac_low", "frac_high"):
        np.testing.assert_allclose(cuda_frames.gate_stats[column], cpu_frames.gate_stats[column], atol=flips)
    for name in cpu.outputs:
        np.testing.assert_allclose(cuda.outputs[name], cpu.outputs[name], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider here")
def test_auto_provider_takes_the_gpu_and_says_so(tmp_path, capsys):
    checkpoint, windows = save_tiny(tmp_path)
    assert (
        main(
            [
                "replay",
                str(checkpoint),
                "--factory",
                FACTORY,
                "--windows",
                str(windows),
                "-o",
                str(tmp_path / "run"),
                "--provider",
                "auto",
            ]
        )
        == 0
    )
    assert "provider: cuda (auto" in capsys.readouterr().err
    assert Run.load(tmp_path / "run").meta["provider"] == "cuda"


def test_outputs_that_are_not_batch_major_are_left_out(tmp_path, capsys):
    """A model returning its final state [layers, B, H] beside y: replay keeps y, skips the state."""
    checkpoint = tmp_path / "state.pt"
    import torch

    from tests.tiny_models import tiny_with_state

    torch.save(tiny_with_state().state_dict(), checkpoint)
    np.save(tmp_path / "w.npy", np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32))  # B = layers
    assert (
        main(
            [
                "replay",
                str(checkpoint),
                "--factory",
                "tests.tiny_models:tiny_with_state",
                "--windows",
                str(tmp_path / "w.npy"),
                "-o",
                str(tmp_path / "run"),
                "--provider",
                "cpu",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    run = Run.load(tmp_path / "run")
    assert [value.shape for value in run.outputs.values()] == [(2, 3)]


def test_merging_shards_keeps_outputs_when_a_shard_had_no_windows(tiny, tmp_path):
    from reporter.replay.runner import merge_results

    _, _, model = tiny
    x = np.random.default_rng(3).standard_normal((12, 9, 3)).astype(np.float32)
    x[4:8] = np.nan
    np.save(tmp_path / "w.npy", x)
    source = open_windows_source(tmp_path / "w.npy", nan="skip")
    replayer = Replayer(model.exposed, model.layers, "cpu", workers=1)
    parts = [replayer.replay(source, 4, progress=False, start=lo, stop=lo + 4) for lo in (0, 4, 8)]
    merged = merge_results(parts, 1.0, 3, "cpu")
    whole = replayer.replay(source, 4, progress=False)
    assert set(merged.outputs) == set(whole.outputs) and len(whole.outputs) == 1
    for name in whole.outputs:
        np.testing.assert_array_equal(merged.outputs[name], whole.outputs[name])
    pd.testing.assert_frame_equal(merged.features, whole.features)


def test_models_taking_double_input_get_their_windows_cast(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from reporter.model.expose import expose_gates

    W = numpy_helper.from_array(np.eye(3, dtype=np.float32)[None], "W")
    R = numpy_helper.from_array(0.5 * np.eye(3, dtype=np.float32)[None], "R")
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["xf"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("RNN", ["xt", "W", "R"], ["Y"], hidden_size=3),
    ]
    graph = helper.make_graph(
        nodes,
        "double",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["b", "t", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["t", 1, "b", 3])],
        [W, R],
    )
    exposed, layers = expose_gates(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=10))
    onnx.checker.check_model(exposed)
    windows = np.random.default_rng(0).standard_normal((4, 5, 3)).astype(np.float32)
    np.save(tmp_path / "w.npy", windows)
    result = Replayer(exposed, layers, "cpu", workers=1).replay(
        open_windows_source(tmp_path / "w.npy"), 2, progress=False
    )
    assert result.stats.to_frames().gate_stats["count"].sum() == 4 * 5 * 3

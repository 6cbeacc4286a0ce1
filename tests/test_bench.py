"""The benchmark compares like with like: its PyTorch baseline computes the same gates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reporter.bench.expose_cost import (
    BenchRow,
    CellLoop,
    _export_for_bench,
    capture_gates_torch,
    format_rows,
    session,
    time_interleaved,
)
from reporter.model.expose import expose_gates


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_torch_baseline_captures_the_same_gates_as_the_exposed_model(kind):
    torch.manual_seed(3)
    rnn = getattr(torch.nn, kind)(4, 5, num_layers=2, batch_first=True).eval()
    x = torch.randn(3, 6, 4)
    exposed, layers = expose_gates(_export_for_bench(rnn, x))
    sess = session(exposed)
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x.numpy()})))
    with torch.no_grad():
        baseline = capture_gates_torch(rnn, x)
    assert len(baseline) == sum(len(layer.outputs) for layer in layers)
    for k, layer in enumerate(layers):
        for gate, name in layer.outputs.items():
            np.testing.assert_allclose(outputs[name][:, :, 0, :], baseline[f"l{k}.{gate}"].numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_the_decomposed_case_exposes_the_gates_its_torch_baseline_captures(kind):
    """The bench's loop over a torch cell is exported unrolled; its recognised gates are the torch loop's."""
    torch.manual_seed(4)
    module = CellLoop(kind, 4, 5).eval()
    x = torch.randn(3, 6, 4)
    exposed, layers = expose_gates(_export_for_bench(module, x, dynamic_time=False))
    assert [(layer.kind, layer.cell) for layer in layers] == [(kind, "decomposed")]
    sess = session(exposed)
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x.numpy()})))
    with torch.no_grad():
        baseline = capture_gates_torch(module.as_layer(), x)
    for gate, name in layers[0].outputs.items():
        np.testing.assert_allclose(outputs[name][:, :, 0, :], baseline[f"l0.{gate}"].numpy(), atol=1e-5, err_msg=gate)


def test_interleaving_calls_each_contender_once_per_round_after_a_warm_up():
    calls = []
    result = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, settle=0)
    assert [sorted(calls[k : k + 2]) for k in range(0, 8, 2)] == [["a", "b"]] * 4 and set(result) == {"a", "b"}


def _fake_clock(monkeypatch, calls: list) -> list:
    """The bench module's clock, made of a counter: `sleep` advances it and says so in `calls`."""
    import types

    import reporter.bench.expose_cost as expose_cost

    now = [0.0]

    def sleep(seconds):
        calls.append(("wait", seconds))
        now[0] += seconds

    monkeypatch.setattr(expose_cost, "time", types.SimpleNamespace(perf_counter=lambda: now[0], sleep=sleep))
    return now


def test_interleaving_starts_each_run_on_settled_cores_and_does_not_time_the_wait(monkeypatch):
    calls = []
    now = _fake_clock(monkeypatch, calls)

    def contender(name):
        def run():
            calls.append(name)
            now[0] += 1.0  # each run takes one tick of the fake clock

        return run

    result = time_interleaved({"a": contender("a"), "b": contender("b")}, repeats=2, settle=0.25)
    assert result == {"a": 1.0, "b": 1.0}  # the wait is not part of the time
    assert calls == ["a", "b"] + [("wait", 0.25), "a", ("wait", 0.25), "b", ("wait", 0.25), "b", ("wait", 0.25), "a"]


def test_interleaving_waits_the_module_settle_time_by_default_and_rotates_the_order(monkeypatch):
    import reporter.bench.expose_cost as expose_cost

    monkeypatch.setattr(expose_cost, "SETTLE_S", 0.015)
    calls = []
    _fake_clock(monkeypatch, calls)
    time_interleaved({name: (lambda name=name: calls.append(name)) for name in "abc"}, repeats=3)
    ran = [call for call in calls if isinstance(call, str)]
    assert ran == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then each round shifted
    assert calls[3::2] == [("wait", 0.015)] * 9  # before every timed run


def test_table_reports_ratios_against_the_baseline():
    row = BenchRow("case", 0.1, 0.12, 0.36, fused_pair_s=0.05, exposed_pair_s=0.055, replay_pair_s=0.0525)
    assert row.overhead == pytest.approx(1.2) and row.speedup_vs_torch == pytest.approx(3.0)
    assert row.overhead_pair == pytest.approx(1.1) and row.overhead_replay == pytest.approx(1.05)
    cells = format_rows([row]).split("\n")[2].split()
    assert row.speedup_replay_vs_torch == pytest.approx(0.36 / 0.0525)
    assert cells[-4:] == ["52.5", "1.05×", "3.00×", "6.86×"] and "1.20×" in cells and "1.10×" in cells


def test_replay_bench_windows_tile_the_stored_ones_and_the_table_reports_the_memory_ratio(tmp_path):
    from reporter.bench.replay_cost import WINDOWS, ReplayBench, format_replay, make_windows

    base = np.load(WINDOWS)["x"]
    made = np.load(make_windows(len(base) + 10, tmp_path / "w.npy"))
    assert made.shape == (len(base) + 10, *base.shape[1:])
    assert np.abs(made[len(base) :] - base[:10]).max() < 0.5 and not np.array_equal(made[:10], base[:10])
    rows = [
        ReplayBench(5000, "cpu", 2, 1000.0, 8000.0, 5.0, 600.0),
        ReplayBench(50000, "cpu", 2, 1100.0, 8800.0, 40.0, 660.0),
    ]
    table = format_replay(rows)
    assert rows[0].cost == pytest.approx(8.0) and "8.00×" in table
    assert "cpu: peak memory 50000 ÷ 5000 windows: 1.10×" in table and "cuda" not in table.split("\n")[-2]
    assert rows[0].warm_cost is None and table.split("\n")[1].count("—") == 3  # no warm run: no warm ratio


def test_replay_bench_table_reads_the_warm_replay_against_the_fused_baseline():
    from reporter.bench.replay_cost import ReplayBench, format_replay

    row = ReplayBench(4000, "cpu", 2, 1000.0, 3000.0, 5.0, 1600.0, "lstm128", warm_wps=2000.0)
    line = format_replay([row]).split("\n")[1].split()
    assert row.cost == pytest.approx(3.0) and row.warm_cost == pytest.approx(1.5)
    assert line[5:10] == ["1000", "2000", "3000", "3.00×", "1.50×"]


def test_replay_bench_table_compares_each_provider_with_the_first_at_the_same_size():
    from reporter.bench.replay_cost import ReplayBench, format_replay

    rows = [
        ReplayBench(5000, "cpu", 2, 1000.0, 8000.0, 5.0, 600.0),
        ReplayBench(50000, "cpu", 2, 1100.0, 8800.0, 40.0, 660.0),
        ReplayBench(5000, "cuda", 2, 3000.0, 9000.0, 2.0, 900.0),
        ReplayBench(50000, "cuda", 2, 4400.0, 9900.0, 12.0, 990.0),
    ]
    table = format_replay(rows)
    assert "cuda ÷ cpu replay, forecaster 5000 windows: 3.00×" in table
    assert "cuda ÷ cpu replay, forecaster 50000 windows: 4.00×" in table
    assert "cuda: peak memory 50000 ÷ 5000 windows: 1.10×" in table


def test_bench_refuses_an_unknown_provider(capsys):
    from reporter.cli import main

    assert main(["bench", "--replay", "10", "--provider", "tpu"]) == 2
    assert "--provider tpu" in capsys.readouterr().err


def test_a_reference_case_times_every_contender_and_names_its_model(monkeypatch):
    import reporter.bench.expose_cost as expose_cost

    monkeypatch.setattr(expose_cost, "SETTLE_S", 0.0)
    row = expose_cost._builtin_case("GRU", batch=4, steps=3, input_size=2, hidden=4, layers=2, repeats=1)
    assert row.case == "2-layer GRU, in 2, hidden 4, 4×3"
    timed = (row.fused_s, row.exposed_s, row.torch_loop_s, row.fused_pair_s, row.exposed_pair_s, row.replay_pair_s)
    assert all(value is not None and value > 0 for value in timed)


def test_the_replay_contender_runs_the_model_replay_runs(monkeypatch):
    """As replay runs it: the exposed LSTM without its gates' final transposes, a decomposed cell
    with its gates stacked time-major; where replay changes nothing, the row reads exposed 2×1."""
    import reporter.bench.expose_cost as expose_cost

    given = []
    monkeypatch.setattr(expose_cost, "batch_pair", lambda model, feed: given.append(model) or (lambda: None))
    monkeypatch.setattr(expose_cost, "SETTLE_S", 0.0)
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(2, 3, batch_first=True).eval()
    fused = _export_for_bench(rnn, torch.randn(4, 5, 2))
    exposed, layers = expose_gates(fused)
    contenders = expose_cost._onnx_contenders(fused, exposed, layers, {"x": np.zeros((4, 5, 2), np.float32)})
    transposes = [sum(node.op_type == "Transpose" for node in model.graph.node) for model in given]
    assert list(contenders)[-1] == "replay_pair" and len(given) == 3
    assert transposes[2] == transposes[1] - len(layers[0].outputs)  # every gate of the one direction

    given.clear()
    module = expose_cost.CellLoop("GRU", 2, 3).eval()
    plain = _export_for_bench(module, torch.randn(4, 5, 2), dynamic_time=False)
    exposed, layers = expose_gates(plain)
    contenders = expose_cost._onnx_contenders(plain, exposed, layers, {"x": np.zeros((4, 5, 2), np.float32)})
    assert list(contenders)[-1] == "replay_pair" and len(given) == 3
    concats = [[n for n in model.graph.node if n.op_type == "Concat" and n.attribute[0].i == 0] for model in given]
    assert len(concats[2]) == len(concats[1]) + len(layers[0].outputs)  # every gate, joined along time
    row = expose_cost._row("cell", {"fused": 1.0, "exposed": 1.0, "fused_pair": 2.0, "exposed_pair": 3.0})
    assert row.replay_pair_s == row.exposed_pair_s == 1.5

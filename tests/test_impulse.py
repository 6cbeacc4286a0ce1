"""Impulse responses against an oracle: a linear-regime RNN h' = tanh(x + a·h) forgets an impulse
as a**lag, so its half-life is ln 0.5 / ln a steps and its time constant -1 / ln a."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from reporter.model.expose import expose_gates
from reporter.replay.impulse import IMPULSE_COLUMNS, contribution_ratio, impulse_response, impulse_summary, oscillation
from reporter.replay.runner import model_output_names

UNITS = 3


def _decaying_rnn(decay: float, direction: str = "forward"):
    """One RNN node, W = I, R = decay·I, no bias; its hidden sequence, batch-major, is the model output."""
    directions = 2 if direction == "bidirectional" else 1
    W = np.stack([np.eye(UNITS, dtype=np.float32)] * directions)
    R = np.stack([decay * np.eye(UNITS, dtype=np.float32)] * directions)
    node = helper.make_node("RNN", ["x_tm", "W", "R"], ["Y"], hidden_size=UNITS, direction=direction)
    transpose = helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2])  # batch-major input
    batch_major = helper.make_node("Transpose", ["Y"], ["out"], perm=[2, 0, 1, 3])
    graph = helper.make_graph(
        [transpose, node, batch_major],
        "decay",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", UNITS])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "t", directions, UNITS])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")],
    )
    # IR 10: onnx 1.23 writes IR 14 by default, which onnxruntime-gpu 1.31 cannot read
    return expose_gates(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=10))


def _runner(model):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda windows, rows: dict(zip(names, session.run(None, {"x": windows})))


@pytest.mark.parametrize("decay", [0.5, 0.8, 0.95])
def test_half_life_and_time_constant_match_the_decay_rate(decay):
    model, layers = _decaying_rnn(decay)
    windows = np.zeros((4, 80, UNITS), np.float32)
    frame = impulse_response(_runner(model), windows, layers, [], step=5, magnitude=1e-4)
    assert tuple(frame.columns) == IMPULSE_COLUMNS
    curve = frame[(frame.feature == 1) & (frame.target == f"{layers[0].name}/h")]
    lags = curve["lag"].to_numpy()
    # One of three units is pushed: RMS over units is tanh(1e-4)·decay**lag / sqrt(3).
    expected = np.tanh(1e-4) * decay**lags / math.sqrt(UNITS)
    np.testing.assert_allclose(curve["response"], expected, rtol=1e-3, atol=1e-12)
    summary = impulse_summary(frame).set_index(["target", "feature"]).loc[(f"{layers[0].name}/h", 1)]
    assert summary["peak_lag"] == 0
    assert summary["tau_fit"] == pytest.approx(-1 / math.log(decay), rel=1e-2)
    # Half-life is interpolated linearly between whole steps: exact to within that interpolation.
    assert summary["half_life"] == pytest.approx(math.log(0.5) / math.log(decay), abs=0.1)


def test_reverse_direction_remembers_backwards_and_bidirectional_has_both():
    model, layers = _decaying_rnn(0.7, "bidirectional")
    windows = np.zeros((2, 30, UNITS), np.float32)
    frame = impulse_response(_runner(model), windows, layers, [], step=20, magnitude=1e-4, features=[0])
    by_direction = {
        d: rows.sort_values("lag")["response"].to_numpy()
        for d, rows in frame[frame.kind == "hidden"].groupby("direction")
    }
    assert len(by_direction["forward"]) == 10 and len(by_direction["reverse"]) == 21  # steps after / before
    for curve in by_direction.values():
        np.testing.assert_allclose(curve[1:] / curve[:-1], 0.7, rtol=1e-3)


def test_model_outputs_with_a_time_axis_get_curves_and_tokens_are_substituted():
    model, layers = _decaying_rnn(0.5)
    windows = np.random.default_rng(0).standard_normal((3, 12, UNITS)).astype(np.float32) * 0.1
    frame = impulse_response(_runner(model), windows, layers, model_output_names(model, layers), step=2)
    assert set(frame["kind"]) == {"hidden", "output"}
    assert set(frame["feature"]) == {0, 1, 2}
    assert (frame.groupby(["target", "feature"])["normalised"].max() == 1).all()

    calls = []

    def token_run(ids, rows):
        calls.append(ids.copy())
        return {"h": (ids[:, :, None, None] * 1.0).astype(np.float32)}

    from reporter.layers import Layer

    ids = np.random.default_rng(1).integers(0, 20, size=(4, 6))
    frame = impulse_response(token_run, ids, [Layer("emb", "RNN", 1, 1, {"h": "h"})], [], step=3, vocab=20)
    assert set(frame["perturbation"]) == {"token substitution"} and set(frame["feature"]) == {-1}
    changed = calls[1] != calls[0]
    assert changed[:, 3].all() and not np.delete(changed, 3, axis=1).any()
    assert (calls[1] >= 0).all() and (calls[1] < 20).all()


def test_summary_of_a_curve_that_never_halves_says_so():
    frame = pd.DataFrame(
        {
            "target": "t",
            "kind": "hidden",
            "perturbation": "p",
            "feature": 0,
            "direction": "forward",
            "lag": np.arange(5),
            "response": [1.0, 0.9, 0.85, 0.8, 0.75],
            "normalised": 0.0,
        }
    )
    summary = impulse_summary(frame).iloc[0]
    assert math.isnan(summary["half_life"]) and summary["tau_fit"] > 10


@pytest.mark.parametrize("decay", [0.7, -0.7])
def test_the_signed_response_follows_the_state_back_past_zero(decay):
    """R = decay·I: the pushed unit's difference is tanh(1e-4)·decay**lag, so the signed response
    is that over sqrt(3), alternating in sign for a negative decay (one crossing per step)."""
    model, layers = _decaying_rnn(decay)
    windows = np.zeros((3, 40, UNITS), np.float32)
    frame = impulse_response(_runner(model), windows, layers, [], step=4, magnitude=1e-4, features=[2])
    curve = frame[frame.target == f"{layers[0].name}/h"].sort_values("lag")
    expected = np.tanh(1e-4) * decay ** curve["lag"].to_numpy() / math.sqrt(UNITS)
    np.testing.assert_allclose(curve["signed"], expected, rtol=1e-3, atol=1e-13)
    np.testing.assert_allclose(curve["response"], np.abs(expected), rtol=1e-3, atol=1e-13)
    summary = impulse_summary(frame).iloc[0]
    alive = int(np.sum(np.abs(expected) > 1e-3 * abs(expected[0])))  # lags above the noise floor
    assert summary["oscillation"] == (0.0 if decay > 0 else pytest.approx((alive - 1) / (len(expected) - 1)))
    assert summary["contribution"] == pytest.approx(contribution_ratio(np.abs(expected)))


def test_sweep_metrics_on_known_curves():
    lags = np.arange(81)
    assert oscillation(np.cos(2 * np.pi * lags / 8)) == pytest.approx(20 / 80)  # two crossings per period of 8
    assert oscillation(0.9**lags) == 0.0 and math.isnan(oscillation(np.zeros(5)))
    a = 0.9  # sum of a**(2k) over k < n is (1 - a**(2n)) / (1 - a**2)
    assert contribution_ratio(a**lags) == pytest.approx((1 - a**40) / (1 - a**162))
    assert contribution_ratio(np.r_[np.zeros(20), np.ones(20)]) == 0.0  # all of it after the first 20 lags
    assert math.isnan(contribution_ratio(np.zeros(30)))

"""The fused statistics pass equals the numpy reading it replaced: bins and counts bit for bit,
extrema exactly, sums, moments and anomaly features to float rounding, peaks as numpy's argmax,
on traces built to break it (NaN, ±inf, values on bin edges and on saturation thresholds)."""

from __future__ import annotations

import numpy as np
import pytest

from reporter.layers import FAMILY_RANGES, SATURATION, Layer
from reporter.replay.anomaly import FEATURES, _one_gate
from reporter.replay.fused_pass import gate_pass
from reporter.replay.gate_moments import StatsConfig
from reporter.replay.pass_kernels import SHORT_ROW
from reporter.replay.timestep_stats import Bins
from tests import stats_reference

EXACT = ("count", "n_low", "n_high", "hist", "min", "max")


def _hostile(rng, shape, family: str, specials: bool = True) -> np.ndarray:
    """Values of the family's range, a share of them exactly on bin edges, thresholds and range
    ends, and (with `specials`) NaN and ±inf."""
    lo, hi = FAMILY_RANGES[family]
    x = rng.uniform(lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo), shape).astype(np.float32)
    picks = rng.random(shape)
    edges = Bins(lo, hi, 64).edges.astype(np.float32)
    x[picks < 0.15] = rng.choice(edges, size=int((picks < 0.15).sum()))
    marks = np.array([*SATURATION[family], lo, hi, 0.0, -0.0], np.float32)
    at_marks = (picks >= 0.15) & (picks < 0.25)
    x[at_marks] = rng.choice(marks, size=int(at_marks.sum()))
    if specials:
        x[(picks >= 0.25) & (picks < 0.27)] = np.nan
        x[(picks >= 0.27) & (picks < 0.28)] = np.inf
        x[(picks >= 0.28) & (picks < 0.29)] = -np.inf
    return x


@pytest.fixture(params=["rows", "short rows"])
def kernel(request, monkeypatch):
    """Each test it is given runs under both kernels, forced: `row_kernel`, which reads a step row
    by row, and `short_row_kernel`, which reads it unit by unit across windows (on its own only
    for rows of fewer than `LONG_ROW` units, in batches counted through a table). Afterwards, the
    kernel named ran and the other did not."""
    from reporter.replay import fused_pass

    ran = {"rows": 0, "short rows": 0}
    for name, attribute in (("rows", "row_kernel"), ("short rows", "short_row_kernel")):
        compiled = getattr(fused_pass, attribute)
        monkeypatch.setattr(
            fused_pass, attribute, lambda *a, _k=compiled, _n=name: ran.__setitem__(_n, ran[_n] + 1) or _k(*a)
        )
    if request.param == "rows":
        monkeypatch.setattr(fused_pass, "LONG_ROW", 0)
    else:
        monkeypatch.setattr(fused_pass, "LONG_ROW", 2**31)
        monkeypatch.setattr(fused_pass, "TABLE_FROM", 0.0)
    yield request.param
    assert ran[request.param] > 0 and sum(ran.values()) == ran[request.param], ran


CASES = [
    ("sigmoid", Bins(0.0, 1.0, 64), (9, 13, 2, 5)),
    ("tanh", Bins(-1.0, 1.0, 64), (4, 1, 1, 33)),
    ("linear", Bins(-4.0, 4.0, 64), (17, 6, 1, 7)),
    ("linear", Bins(-64.0, 64.0, 8), (5, 9, 2, 3)),  # bins wider than 1: the float64 path
]


@pytest.mark.parametrize("family, bins, shape", CASES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.usefixtures("kernel")
def test_fused_statistics_equal_the_numpy_reading(family, bins, shape, seed):
    rng = np.random.default_rng(seed)
    trace = _hostile(rng, shape, family, specials=seed % 2 == 1)
    low, high = SATURATION[family]
    fused = gate_pass(trace, bins, low, high)
    moments, steps = stats_reference.gate_update(trace, bins, low, high)
    for key in EXACT:
        np.testing.assert_array_equal(fused.moments[key], moments[key], err_msg=key)
    np.testing.assert_allclose(fused.moments["mean"], moments["mean"], rtol=1e-9, atol=1e-12, err_msg="mean")
    np.testing.assert_allclose(fused.moments["m2"], moments["m2"], rtol=1e-7, atol=1e-9, err_msg="m2")
    np.testing.assert_array_equal(fused.steps["count"], steps["count"])
    np.testing.assert_array_equal(fused.steps["hist"], steps["hist"])
    np.testing.assert_allclose(fused.steps["total"], steps["total"], rtol=1e-9, atol=1e-9)
    assert fused.moments["hist"].sum() == trace.size and fused.steps["hist"].sum() == trace.size


@pytest.mark.usefixtures("kernel")
def test_the_reference_itself_is_numpys_histogram_and_thresholds():
    """The oracle checked against numpy's own functions, so both cannot be wrong together."""
    rng = np.random.default_rng(9)
    trace = _hostile(rng, (6, 5, 1, 4), "tanh", specials=False)
    bins = Bins(-1.0, 1.0, 64)
    fused = gate_pass(trace, bins, -0.9, 0.9)
    values = trace.reshape(-1, 4)
    for unit in range(4):
        counts, _ = np.histogram(values[:, unit], bins.edges)
        np.testing.assert_array_equal(fused.moments["hist"][unit, 1:-1], counts)
        assert fused.moments["hist"][unit, 0] == (values[:, unit] < -1).sum()
        assert fused.moments["n_low"][unit] == (values[:, unit] < np.float32(-0.9)).sum()
        assert fused.moments["max"][unit] == values[:, unit].max()
        assert fused.moments["mean"][unit] == pytest.approx(values[:, unit].astype(np.float64).mean(), rel=1e-12)


@pytest.mark.parametrize("family", ["sigmoid", "tanh", "linear"])
@pytest.mark.parametrize("steps", [1, 2, 17])
@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.usefixtures("kernel")
def test_fused_window_features_equal_the_numpy_features(family, steps, specials):
    rng = np.random.default_rng(steps)
    trace = _hostile(rng, (11, steps, 2, 6), family, specials=specials)
    low, high = SATURATION[family]
    fused = gate_pass(trace, StatsConfig().family_bins(family), low, high, features=True).features
    with np.errstate(invalid="ignore", over="ignore"):  # inf − inf in the numpy reading, as in replay
        expected = np.stack(_one_gate(trace, family, FEATURES, StatsConfig()), axis=1).astype(np.float64)
    assert fused.shape == expected.shape == (11, len(FEATURES))
    np.testing.assert_array_equal(np.isnan(fused), np.isnan(expected))
    np.testing.assert_allclose(fused, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("directions, hidden", [(2, 3), (1, 40)], ids=["step-wide", "row-by-row"])
@pytest.mark.usefixtures("kernel")
def test_fused_peaks_are_numpys_argmax_and_argmin_per_window_and_unit(directions, hidden):
    """Short rows (≤ `SHORT_ROW` units) fold their peaks a step at a time, longer ones row by row."""
    rng = np.random.default_rng(5)
    trace = np.round(rng.uniform(-1, 1, (7, 9, directions, hidden)), 1).astype(np.float32)  # ties on a coarse grid
    trace[rng.random(trace.shape) < 0.1] = np.nan
    trace[rng.random(trace.shape) < 0.05] = np.inf
    trace[rng.random(trace.shape) < 0.05] = -np.inf
    x = trace.reshape(7, 9, directions * hidden)  # a view: the edits below are the trace's
    x[2, :, 5] = np.nan
    x[3, :, 1] = -np.inf  # no highest step but the first, and the lowest is −inf
    x[4, :, 3] = np.inf
    up, up_t, down, down_t = gate_pass(trace, Bins(-1.0, 1.0, 64), -0.9, 0.9, peaks=True).peaks
    scored = np.where(np.isnan(x), -np.inf, x)
    np.testing.assert_array_equal(up_t, scored.argmax(axis=1))
    np.testing.assert_array_equal(up, scored.max(axis=1))
    low = np.where(np.isnan(x), np.inf, x)
    np.testing.assert_array_equal(down_t, low.argmin(axis=1))
    np.testing.assert_array_equal(down, low.min(axis=1))
    assert (directions * hidden <= SHORT_ROW) == (hidden == 3)


@pytest.mark.usefixtures("kernel")
def test_replay_statistics_are_the_same_through_the_fused_pass_and_the_reference(monkeypatch):
    """A whole layer's statistics frame through `LayerStats`, fused against the reference pass."""
    from reporter.replay import gate_moments
    from reporter.replay.stats import LayerStats

    layer = Layer(name="l", kind="LSTM", directions=1, hidden_size=4, outputs={g: g for g in "ifgoch"})
    rng = np.random.default_rng(2)
    traces = {gate: rng.normal(0.3, 0.6, (8, 10, 1, 4)).astype(np.float32) for gate in "ifgoch"}
    fused = LayerStats(layer)
    for gate, trace in traces.items():
        fused.update(gate, trace)
    monkeypatch.setattr(gate_moments, "gate_update", stats_reference.gate_update)
    monkeypatch.setattr("reporter.replay.stats.gate_update", stats_reference.gate_update)
    reference = LayerStats(layer)
    for gate, trace in traces.items():
        reference.update(gate, trace)
    a, b = fused.gate_frame(), reference.gate_frame()
    for column in ("count", "min", "max", "frac_low", "frac_high", "hist_under", "hist_over"):
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    assert [list(h) for h in a["histogram"]] == [list(h) for h in b["histogram"]]
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-12)
    np.testing.assert_allclose(a["std"], b["std"], rtol=1e-9)


@pytest.mark.usefixtures("kernel")
def test_bins_far_from_zero_are_counted_in_float64():
    """Bin edges float32 cannot hold (lo = 2²⁵ on a grid of 1: the clip edge 2²⁵ − 1 rounds to
    2²⁵ in float32) are counted in float64: per unit, as float64 arithmetic bins each value."""
    rng = np.random.default_rng(9)
    bins = Bins(2.0**25, 2.0**25 + 64, 64)
    trace = (2.0**25 + rng.integers(-8, 72, (6, 7, 1, 9))).astype(np.float32)  # a grid of 4 at 2²⁵
    x = trace.astype(np.float64).reshape(-1, 9)
    inside = np.minimum(np.floor((x - bins.lo) / bins.width), bins.count - 1) + 1
    cell = np.where(x < bins.lo, 0, np.where(x > bins.hi, bins.count + 1, inside)).astype(int)
    want = np.stack([np.bincount(cell[:, u], minlength=bins.count + 2) for u in range(9)])
    assert want[:, 0].sum() > 0 and want[:, -1].sum() > 0 and want[:, -2].sum() > 0  # under, over, hi itself
    fused = gate_pass(trace, bins, 2.0**25, 2.0**25 + 32)
    np.testing.assert_array_equal(fused.moments["hist"], want)
    np.testing.assert_array_equal(stats_reference.gate_update(trace, bins, 2.0**25, 2.0**25 + 32)[0]["hist"], want)


def test_more_cells_than_float32_counts_exactly_are_refused():
    with pytest.raises(ValueError, match="2²⁴"):
        gate_pass(np.zeros((1, 2, 1, 3), np.float32), Bins(0.0, 1.0, 2**24), 0.1, 0.9)


@pytest.mark.usefixtures("kernel")
def test_wide_counters_give_the_same_statistics(monkeypatch):
    """Counters are int32 within a batch of fewer than 2³¹ values and int64 beyond: forced wide
    here, every output is the same."""
    from reporter.replay import fused_pass

    trace = _hostile(np.random.default_rng(8), (6, 5, 1, 9), "sigmoid")
    bins, (low, high) = Bins(0.0, 1.0, 64), SATURATION["sigmoid"]
    narrow = gate_pass(trace, bins, low, high, features=True, peaks=True)
    monkeypatch.setattr(fused_pass, "INT32_COUNTS", 0)
    wide = gate_pass(trace, bins, low, high, features=True, peaks=True)
    for key in narrow.moments:
        np.testing.assert_array_equal(narrow.moments[key], wide.moments[key], err_msg=key)
        assert narrow.moments[key].dtype == wide.moments[key].dtype
    for key in narrow.steps:
        np.testing.assert_array_equal(narrow.steps[key], wide.steps[key], err_msg=key)
    np.testing.assert_array_equal(narrow.features, wide.features)
    for a, b in zip(narrow.peaks, wide.peaks, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.usefixtures("kernel")
def test_a_time_major_view_is_read_in_place_with_the_statistics_of_its_copy():
    """Replay hands on one-direction gates as `[batch, time, 1, hidden]` views of `[time, 1, batch,
    hidden]` (`replay.time_major`): the kernel reads those rows where they are, and every statistic
    is the contiguous copy's, bit for bit."""
    from reporter.replay.fused_pass import _time_major_rows
    from reporter.replay.time_major import batch_major

    stored = _hostile(np.random.default_rng(3), (13, 1, 9, 7), "tanh")  # [T, 1, B, H], as the Scan writes it
    view = batch_major(stored)
    assert view.shape == (9, 13, 1, 7) and np.shares_memory(_time_major_rows(view), stored)
    bins, (low, high) = Bins(-1.0, 1.0, 64), SATURATION["tanh"]
    a = gate_pass(view, bins, low, high, features=True, peaks=True)
    b = gate_pass(np.ascontiguousarray(view), bins, low, high, features=True, peaks=True)
    for key in a.moments:
        np.testing.assert_array_equal(a.moments[key], b.moments[key], err_msg=key)
    for key in a.steps:
        np.testing.assert_array_equal(a.steps[key], b.steps[key], err_msg=key)
    np.testing.assert_array_equal(a.features, b.features)
    for x, y in zip(a.peaks, b.peaks, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("table_from", [0.0, np.inf])
@pytest.mark.parametrize("family, bins, shape", CASES)
def test_both_ways_of_counting_a_step_give_numpys_histograms(monkeypatch, table_from, family, bins, shape):
    """A step's counts go through a [unit, bin] table from `TABLE_FROM` windows per histogram cell,
    else straight into both histograms: each way, forced here, counts what numpy counts."""
    from reporter.replay import fused_pass

    monkeypatch.setattr(fused_pass, "TABLE_FROM", table_from)
    trace = _hostile(np.random.default_rng(5), shape, family)
    low, high = SATURATION[family]
    fused = gate_pass(trace, bins, low, high)
    moments, steps = stats_reference.gate_update(trace, bins, low, high)
    np.testing.assert_array_equal(fused.moments["hist"], moments["hist"])
    np.testing.assert_array_equal(fused.steps["hist"], steps["hist"])


def test_a_step_of_more_windows_than_uint16_counts_is_counted_in_full():
    """The kernel counts a step's values per [unit, bin] before adding them to both histograms,
    in uint16 while a batch has at most 65,535 windows and in the counters' width beyond."""
    trace = np.full((70_000, 2, 1, 1), 0.5, np.float32)
    trace[::1000] = 0.25
    moments, steps = stats_reference.gate_update(trace, Bins(0.0, 1.0, 64), 0.1, 0.9)
    fused = gate_pass(trace, Bins(0.0, 1.0, 64), 0.1, 0.9)
    np.testing.assert_array_equal(fused.moments["hist"], moments["hist"])
    np.testing.assert_array_equal(fused.steps["hist"], steps["hist"])
    assert fused.steps["hist"][0].max() == 69_930  # past uint16

"""Gate statistics: accumulators equal numpy on full traces, and merging shards equals one pass."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reporter.replay.timestep_stats as timestep_module
from reporter.errors import ConfigError, ModelError
from reporter.layers import Layer, value_family
from reporter.replay.gate_moments import GateMoments, StatsConfig, gate_update, memory_horizon
from reporter.replay.stats import GATE_STATS_COLUMNS, TIMESTEP_STATS_COLUMNS, LayerStats, RunStats
from reporter.replay.timestep_stats import Bins, TimestepStats, chunks, quantiles_from_histogram, unit_trace

CONFIG = StatsConfig()
FAMILIES = ("sigmoid", "tanh", "linear")
LSTM = Layer(
    "rnn.l0",
    "LSTM",
    2,
    3,
    {g: f"rnn.l0/{g}" for g in "ifgoch"},
    activations={"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid", "c": "linear", "h": "tanh"},
)
GRU = Layer("gru.l0", "GRU", 1, 4, {g: f"gru.l0/{g}" for g in "hnrz"})  # manifest order: sorted, as after JSON


@pytest.fixture(params=["one block", "many blocks"])
def blocks(request, monkeypatch):
    """Run a test with traces in one block, and again cut into many (so block merges are exercised)."""
    if request.param == "many blocks":
        monkeypatch.setattr(timestep_module, "_CHUNK_VALUES", 16)
        monkeypatch.setattr(timestep_module, "_CHUNK_CELLS", 200)


def _trace(rng, shape, family: str) -> np.ndarray:
    """Values spread over the family's range and past it, with bin edges and the range ends exact."""
    lo, hi = CONFIG.family_bins(family).lo, CONFIG.family_bins(family).hi
    x = rng.uniform(lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo), size=shape).astype(np.float32)
    edges = CONFIG.family_bins(family).edges.astype(np.float32)
    below_edges = np.nextafter(edges, np.float32(-np.inf))
    special = np.concatenate([edges, below_edges, [lo, hi, hi, -1e-30, 1e-30, 0.1, 0.9, -0.9]])
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=min(flat.size // 3, special.size), replace=False)
    flat[picks] = rng.choice(special.astype(np.float32), size=picks.size)
    return x


def fold(accumulator: GateMoments | TimestepStats, trace: np.ndarray) -> None:
    """Feed one batch to a standalone accumulator the way replay does: one `gate_update` pass."""
    if isinstance(accumulator, GateMoments):
        accumulator.fold(gate_update(trace, accumulator.bins, accumulator.low, accumulator.high)[0])
    else:
        accumulator.fold(gate_update(trace, accumulator.bins, 0.0, 1.0)[1])


def timestep_reference(trace: np.ndarray, bins: Bins) -> dict[str, np.ndarray]:
    """A second, separate computation of the per-timestep state (counts, sums, histograms): per
    block, bin every value and count per step, without the joint (timestep, unit) histogram."""
    x = unit_trace(trace)
    batch, steps, units = x.shape
    cells = bins.count + 2
    state = {
        "count": np.full(steps, batch * units, np.int64),
        "total": np.zeros(steps),
        "hist": np.zeros((steps, cells), np.int64),
    }
    with np.errstate(invalid="ignore", over="ignore"):
        for bs, ts in chunks(batch, steps, units, 1):
            xc, n_t = x[bs, ts], ts.stop - ts.start
            keys = bins.index(xc)
            keys += (np.arange(n_t) * cells)[:, None]
            state["hist"][ts] += np.bincount(keys.ravel(), minlength=n_t * cells).reshape(n_t, cells)
            state["total"][ts] += xc.sum(axis=(0, 2), dtype=np.float64)
    return state


def _per_unit(trace: np.ndarray) -> np.ndarray:
    """Each (direction, unit)'s values over windows and time, as float64 rows."""
    return trace.transpose(2, 3, 0, 1).reshape(trace.shape[2] * trace.shape[3], -1).astype(np.float64)


def _expected_moments(rows: np.ndarray, bins: Bins, low: float, high: float) -> dict[str, np.ndarray]:
    """What numpy says about each unit's values (rows of float64)."""
    return {
        "count": np.full(len(rows), rows.shape[1]),
        "mean": rows.mean(axis=1),
        "std": rows.std(axis=1),
        "min": rows.min(axis=1),
        "max": rows.max(axis=1),
        "frac_low": (rows < low).mean(axis=1),
        "frac_high": (rows > high).mean(axis=1),
        "hist": np.stack([np.histogram(r, bins.edges)[0] for r in rows]),
        "hist_under": (rows < bins.lo).sum(axis=1),
        "hist_over": (rows > bins.hi).sum(axis=1),
    }


def _per_unit_result(moments: GateMoments) -> dict[str, np.ndarray]:
    """`result()` with (direction, unit) flattened into one axis, as `_per_unit` does."""
    units = moments.shape[0] * moments.shape[1]
    return {k: v.reshape(units, *v.shape[2:]) for k, v in moments.result().items() if k != "edges"}


@pytest.mark.usefixtures("blocks")
@pytest.mark.parametrize("family", FAMILIES)
def test_gate_moments_equal_numpy_on_the_full_trace(family):
    rng = np.random.default_rng(1)
    batches = [_trace(rng, (5, t, 2, 3), family) for t in (4, 7, 1)]
    bins, (low, high) = CONFIG.family_bins(family), CONFIG.thresholds(family)
    moments = GateMoments(2, 3, bins, low, high)
    for batch in batches:
        fold(moments, batch)
    got = _per_unit_result(moments)
    want = _expected_moments(np.concatenate([_per_unit(b) for b in batches], axis=1), bins, low, high)
    for key in ("count", "min", "max", "frac_low", "frac_high", "hist", "hist_under", "hist_over"):
        assert np.array_equal(got[key], want[key]), key
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-12)
    np.testing.assert_allclose(got["std"], want["std"], rtol=1e-12)


def test_histogram_is_exact_at_every_edge_and_beyond_the_range():
    for family in FAMILIES:
        bins = CONFIG.family_bins(family)
        edges = bins.edges.astype(np.float32)
        x = np.concatenate(
            [
                edges,
                np.nextafter(edges, np.float32(-np.inf)),
                np.nextafter(edges, np.float32(np.inf)),
                [-1e-30, 1e-30, -1e-45, 0.0, -0.0, np.inf, -np.inf, 3e38, -3e38],
            ]
        ).astype(np.float32)
        cells = np.bincount(bins.index(x), minlength=bins.count + 2)
        finite = x[np.isfinite(x)].astype(np.float64)
        assert np.array_equal(cells[1:-1], np.histogram(finite, bins.edges)[0]), family
        assert cells[0] == np.sum(x < bins.lo) and cells[-1] == np.sum(x > bins.hi), family


def test_nan_counts_as_overflow_and_propagates_to_moments():
    trace = np.full((2, 3, 1, 2), 0.5, np.float32)
    trace[0, 1, 0, 0] = np.nan
    moments = GateMoments(1, 2, CONFIG.family_bins("sigmoid"), 0.1, 0.9)
    fold(moments, trace)
    r = moments.result()
    assert np.isnan(r["mean"][0, 0]) and np.isnan(r["max"][0, 0]) and r["hist_over"][0, 0] == 1
    assert r["mean"][0, 1] == 0.5 and r["hist_over"][0, 1] == 0


def test_saturation_thresholds_compare_as_real_numbers_not_as_float32():
    below, above = np.nextafter(np.float32(0.9), np.float32(0)), np.float32(0.9)  # float32(0.9) < 0.9
    trace = np.array([below, above, np.float32(0.1), np.nextafter(np.float32(0.1), np.float32(0))], np.float32)
    moments = GateMoments(1, 1, CONFIG.family_bins("sigmoid"), 0.1, 0.9)
    fold(moments, trace.reshape(1, 4, 1, 1))
    r = moments.result()
    assert r["frac_high"][0, 0] == 0.0  # neither float32 value is above the real 0.9
    assert r["frac_low"][0, 0] == 0.25  # float32(0.1) > 0.1, the one below it is < 0.1


@pytest.mark.usefixtures("blocks")
@pytest.mark.parametrize("family", FAMILIES)
def test_timestep_stats_equal_numpy_means_and_quantiles_within_one_bin(family):
    rng = np.random.default_rng(2)
    bins = CONFIG.family_bins(family)
    trace = np.clip(_trace(rng, (40, 6, 2, 3), family), bins.lo, bins.hi)  # quantiles in range
    standalone = TimestepStats(bins)
    standalone.fold(timestep_reference(trace, bins))
    fused = gate_update(trace, bins, *CONFIG.thresholds(family))[1]
    assert np.array_equal(fused["hist"], standalone.state()["hist"])
    result = standalone.result()
    per_step = trace.transpose(1, 0, 2, 3).reshape(6, -1).astype(np.float64)
    assert np.array_equal(result["count"], np.full(6, per_step.shape[1]))
    np.testing.assert_allclose(result["mean"], per_step.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(fused["total"] / fused["count"], per_step.mean(axis=1), rtol=1e-12)
    for name, q in zip(("p05", "p25", "p50", "p75", "p95"), (0.05, 0.25, 0.5, 0.75, 0.95)):
        assert np.all(np.abs(result[name] - np.quantile(per_step, q, axis=1)) <= bins.width), name


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(np.float32, st.integers(1, 60), elements=st.floats(-1, 1, width=32)),
    q=st.floats(0, 1),
    bin_count=st.sampled_from([2, 8, 64]),
)
def test_histogram_quantile_is_within_one_bin_width_of_numpy(values, q, bin_count):
    bins = Bins(-1.0, 1.0, bin_count)
    cells = np.bincount(bins.index(values), minlength=bin_count + 2)
    estimate = quantiles_from_histogram(cells[None, :], bins, (q,))[0, 0]
    assert abs(estimate - np.quantile(values.astype(np.float64), q)) <= bins.width * (1 + 1e-12)


def test_timestep_arrays_grow_with_longer_windows_and_never_truncate():
    bins = CONFIG.family_bins("sigmoid")
    stats = TimestepStats(bins)
    fold(stats, np.full((2, 3, 1, 2), 0.25, np.float32))
    fold(stats, np.full((1, 5, 1, 2), 0.75, np.float32))
    fold(stats, np.full((4, 2, 1, 2), 0.25, np.float32))
    r = stats.result()
    assert np.array_equal(r["count"], [14, 14, 6, 2, 2])
    np.testing.assert_allclose(r["mean"], [(12 * 0.25 + 2 * 0.75) / 14] * 2 + [(4 * 0.25 + 2 * 0.75) / 6, 0.75, 0.75])
    shorter = TimestepStats(bins)
    fold(shorter, np.full((1, 1, 1, 2), 0.5, np.float32))
    assert np.array_equal(shorter.merge(stats).result()["count"], [16, 14, 6, 2, 2])
    assert np.array_equal(stats.merge(shorter).result()["count"], [16, 14, 6, 2, 2])


def _merge_in_tree(parts: list, data):
    """Merge accumulators in a random grouping (a random binary tree over their order)."""
    if len(parts) == 1:
        return parts[0]
    cut = data.draw(st.integers(1, len(parts) - 1))
    return _merge_in_tree(parts[:cut], data).merge(_merge_in_tree(parts[cut:], data))


def _assert_same_stats(a: RunStats, b: RunStats) -> None:
    """Counts, extrema and histograms equal exactly; float sums to rounding.

    tau and half_life are left out: a pure function of the mean (tested on its own) whose
    slope is unbounded near 0, where merge order moves a mean like 4e-30 to 0.
    """
    (ga, ta), (gb, tb) = a.to_frames(), b.to_frames()
    for ours, theirs in ((ga.drop(columns=["tau", "half_life"]), gb.drop(columns=["tau", "half_life"])), (ta, tb)):
        for column in ours.columns:
            x, y = ours[column], theirs[column]
            if column in ("mean", "std", "p05", "p25", "p50", "p75", "p95"):
                np.testing.assert_allclose(x.to_numpy(float), y.to_numpy(float), rtol=1e-6, atol=1e-12, err_msg=column)
            else:
                assert x.tolist() == y.tolist(), column


_VALUES = st.one_of(st.floats(-5, 5, width=32), st.sampled_from([0.0, 1.0, -1.0, 4.0, -4.0, 0.5, 1e-30, -1e-30]))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), windows=st.integers(1, 10), steps=st.integers(1, 5))
def test_merging_shards_in_any_order_and_grouping_equals_one_pass(data, windows, steps):
    shapes = {layer.name: (windows, steps, layer.directions, layer.hidden_size) for layer in (LSTM, GRU)}
    traces = {
        (layer.name, gate): data.draw(hnp.arrays(np.float32, shapes[layer.name], elements=_VALUES))
        for layer in (LSTM, GRU)
        for gate in layer.outputs
    }
    one_pass = RunStats([LSTM, GRU])
    for (name, gate), trace in traces.items():
        one_pass.update(name, gate, trace)
    cuts = sorted(data.draw(st.sets(st.integers(1, windows - 1), max_size=windows - 1))) if windows > 1 else []
    shards = []
    for start, stop in zip([0, *cuts], [*cuts, windows]):  # shards of a single window included
        shard = RunStats([LSTM, GRU])
        for (name, gate), trace in traces.items():
            shard.update(name, gate, trace[start:stop])
        shards.append(shard)
    shards = data.draw(st.permutations(shards))
    _assert_same_stats(_merge_in_tree(shards, data), one_pass)


def test_state_round_trip_and_merging_an_empty_accumulator_is_identity():
    rng = np.random.default_rng(3)
    stats = RunStats([LSTM, GRU])
    for layer in (LSTM, GRU):
        for gate in layer.outputs:
            stats.update(layer.name, gate, _trace(rng, (3, 4, layer.directions, layer.hidden_size), "tanh"))
    state = stats.state()
    leaves = [v for layer in state.values() for gate in layer.values() for acc in gate.values() for v in acc.values()]
    assert leaves and all(type(v) is np.ndarray for v in leaves)
    frames = stats.to_frames()
    for other in (
        RunStats.from_state([LSTM, GRU], state),
        stats.merge(RunStats([LSTM, GRU])),
        RunStats([LSTM, GRU]).merge(stats),
    ):
        for ours, theirs in zip(other.to_frames(), frames):
            assert ours.equals(theirs)
    state["rnn.l0"]["f"]["moments"]["count"][:] = 0  # a state is a copy, not a view into the accumulator
    assert stats.to_frames().gate_stats.equals(frames.gate_stats)


def test_state_stays_the_same_size_however_many_windows_are_seen():
    rng = np.random.default_rng(4)
    stats = LayerStats(GRU)
    stats.update("z", _trace(rng, (2, 5, 1, 4), "sigmoid"))
    sizes = {g: {k: v.shape for k, v in s["moments"].items()} for g, s in stats.state().items()}
    for _ in range(5):
        stats.update("z", _trace(rng, (50, 5, 1, 4), "sigmoid"))
    assert {g: {k: v.shape for k, v in s["moments"].items()} for g, s in stats.state().items()} == sizes
    assert stats.state()["z"]["timesteps"]["hist"].shape == (5, CONFIG.bins + 2)


def test_memory_horizon_known_values_and_edges():
    tau, half_life = memory_horizon(0.5)
    assert half_life == pytest.approx(1.0) and tau == pytest.approx(1 / np.log(2))
    assert memory_horizon(np.exp(-1 / 10))[0] == pytest.approx(10.0)
    assert memory_horizon(1.0) == (np.inf, np.inf)
    assert memory_horizon(0.0) == (0.0, 0.0)
    tau, half_life = memory_horizon(np.array([[0.0, 0.5], [1.0, np.nan]]))
    assert tau.shape == (2, 2) and np.isnan(tau[1, 1]) and np.isinf(half_life[1, 0])
    assert np.isnan(memory_horizon(1.5)[0]) and np.isnan(memory_horizon(-0.1)[1])


def test_horizon_reads_the_mean_keep_gate_per_unit():
    layer = Layer("rnn.l0", "LSTM", 1, 2, {"f": "rnn.l0/f"})
    stats = LayerStats(layer)
    stats.update("f", np.array([0.5, 1.0], np.float32).reshape(1, 1, 1, 2))
    frame = stats.gate_frame()
    assert frame["half_life"].tolist() == [pytest.approx(1.0), np.inf]


def test_to_frames_columns_rows_and_order_for_a_bidirectional_lstm_and_a_gru():
    rng = np.random.default_rng(5)
    stats = RunStats([LSTM, GRU])
    for layer, steps in ((LSTM, 7), (GRU, 4)):
        for gate in layer.outputs:
            stats.update(layer.name, gate, _trace(rng, (3, steps, layer.directions, layer.hidden_size), "sigmoid"))
    gate_stats, timestep_stats = stats.to_frames()
    assert tuple(gate_stats.columns) == GATE_STATS_COLUMNS and tuple(timestep_stats.columns) == TIMESTEP_STATS_COLUMNS
    assert len(gate_stats) == 2 * 6 * 3 + 1 * 4 * 4 and len(timestep_stats) == 6 * 7 + 4 * 4
    lstm = gate_stats[gate_stats.layer == "rnn.l0"]
    assert lstm[["direction", "gate", "unit"]].drop_duplicates().shape[0] == 36
    assert "".join(lstm.gate.iloc[::3]) == "ifgochifgoch" and lstm.direction.tolist() == [0] * 18 + [1] * 18
    assert "".join(gate_stats[gate_stats.layer == "gru.l0"].gate.iloc[::4]) == "zrnh"
    keep = (gate_stats.kind + gate_stats.gate).isin(["LSTMf", "GRUz"])
    assert keep.sum() == 2 * 3 + 4 and gate_stats.loc[keep, ["tau", "half_life"]].notna().all().all()
    assert gate_stats.loc[~keep, ["tau", "half_life"]].isna().all().all()
    assert (gate_stats.histogram.map(len) == CONFIG.bins).all()
    counts = gate_stats.histogram.map(sum) + gate_stats.hist_under + gate_stats.hist_over
    assert (counts == gate_stats["count"]).all() and (gate_stats["count"] == [3 * 7] * 36 + [3 * 4] * 16).all()
    assert (gate_stats.loc[gate_stats.gate == "c", ["hist_lo", "hist_hi"]] == [-4.0, 4.0]).all().all()
    assert timestep_stats.t.tolist()[:8] == [0, 1, 2, 3, 4, 5, 6, 0]
    assert (timestep_stats["count"][:42] == 3 * 2 * 3).all() and (timestep_stats["count"][42:] == 3 * 4).all()
    assert gate_stats.dtypes["count"] == np.int64 and gate_stats.dtypes["mean"] == np.float64


def _parquet_bytes(frame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def test_frames_are_byte_identical_as_parquet_across_runs():
    def run() -> RunStats:
        rng, stats = np.random.default_rng(6), RunStats([LSTM, GRU])
        for layer in (LSTM, GRU):
            for gate in layer.outputs:
                stats.update(layer.name, gate, _trace(rng, (2, 3, layer.directions, layer.hidden_size), "linear"))
        return stats

    for ours, theirs in zip(run().to_frames(), run().to_frames()):
        assert _parquet_bytes(ours) == _parquet_bytes(theirs)


def test_empty_run_still_has_every_column():
    gate_stats, timestep_stats = RunStats([LSTM]).to_frames()
    assert len(gate_stats) == 36 and gate_stats["count"].eq(0).all() and gate_stats["mean"].isna().all()
    assert tuple(timestep_stats.columns) == TIMESTEP_STATS_COLUMNS and len(timestep_stats) == 0


def test_traces_that_do_not_fit_the_layer_are_clear_errors():
    stats = RunStats([LSTM])
    expected = r"layer 'rnn.l0' gate 'f': expected a trace \[batch, time, 2, 3\], got shape \(4, 5, 1, 3\)"
    with pytest.raises(ModelError, match=expected):
        stats.update("rnn.l0", "f", np.zeros((4, 5, 1, 3), np.float32))
    with pytest.raises(ModelError, match="has no gate 'z'"):
        stats.update("rnn.l0", "z", np.zeros((4, 5, 2, 3), np.float32))
    with pytest.raises(ModelError, match="no layer 'gru.l0'"):
        stats.update("gru.l0", "z", np.zeros((4, 5, 1, 4), np.float32))


def test_config_refuses_inexact_bins_and_unknown_families():
    with pytest.raises(ConfigError, match="power of two"):
        StatsConfig(bins=50)
    with pytest.raises(ConfigError, match="from 2 to 65536"):
        StatsConfig(bins=2**17)  # a power of two, but more than the kernel counts exactly in float32
    assert StatsConfig(bins=2**16).bins == 2**16
    with pytest.raises(ConfigError, match="unknown value families"):
        StatsConfig(saturation={"relu": (0.0, 1.0)})
    with pytest.raises(ConfigError, match="cannot merge"):
        GateMoments(1, 1, Bins(0, 1, 8), 0.1, 0.9).merge(GateMoments(1, 1, Bins(0, 1, 16), 0.1, 0.9))
    assert StatsConfig(saturation={"sigmoid": (0.2, 0.8)}).thresholds("sigmoid") == (0.2, 0.8)


def test_value_families_follow_the_activation():
    names = ("sigmoid", "HardSigmoid", "tanh", "softsign", "scaledtanh", "relu", "linear")
    assert [value_family(a) for a in names] == ["sigmoid", "sigmoid", "tanh", "tanh", "tanh", "linear", "linear"]
    assert GateMoments.for_gate(GRU, "z").bins == Bins(0.0, 1.0, 64)  # no activations recorded: op defaults
    assert GateMoments.for_gate(LSTM, "c").bins == Bins(-4.0, 4.0, 64)

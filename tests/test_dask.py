"""Sharded replay on Dask: a LocalCluster of 2 worker processes gives the single-process run
(counts exactly, moments to float rounding, per-window rows identically), survives a worker
killed mid-replay, and names the shard whose data went bad."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")

from reporter.bench.replay_cost import SAMPLE, make_windows  # noqa: E402
from reporter.errors import ReporterError  # noqa: E402
from reporter.pipeline.model_source import exposed_model  # noqa: E402
from reporter.replay.dask_shards import plan_shards, replay_on_dask  # noqa: E402
from reporter.replay.gate_moments import StatsConfig  # noqa: E402
from reporter.replay.runner import Replayer  # noqa: E402
from reporter.replay.windows import open_windows_source  # noqa: E402

BATCH = 128


@pytest.fixture(scope="module")
def cluster_client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def forecaster(tmp_path_factory):
    path = make_windows(6000, tmp_path_factory.mktemp("dask") / "windows.npy")
    source = open_windows_source(path)
    return exposed_model(SAMPLE, source), source


def _assert_same(dask_result, single) -> None:
    a, b = dask_result.stats.to_frames(), single.stats.to_frames()
    for frame_a, frame_b in ((a.gate_stats, b.gate_stats), (a.timestep_stats, b.timestep_stats)):
        assert list(frame_a.columns) == list(frame_b.columns) and len(frame_a) == len(frame_b)
        for column in frame_a.columns:
            left, right = frame_a[column].to_numpy(), frame_b[column].to_numpy()
            if column in ("count", "hist_under", "hist_over", "unit", "direction", "t"):
                assert np.array_equal(left, right), column  # counts: exactly
            elif left.dtype == object and isinstance(left[0], np.ndarray):
                assert all(np.array_equal(x, y) for x, y in zip(left, right)), column  # histograms: exactly
            elif left.dtype.kind == "f":
                np.testing.assert_allclose(left, right, rtol=1e-9, atol=1e-12, err_msg=column)
            else:
                assert np.array_equal(left, right), column
    pd.testing.assert_frame_equal(dask_result.features, single.features)  # whole batches: identical rows
    assert set(dask_result.outputs) == set(single.outputs)
    for name in single.outputs:
        np.testing.assert_array_equal(dask_result.outputs[name], single.outputs[name])


def test_two_worker_cluster_equals_one_process(cluster_client, forecaster):
    model, source = forecaster
    single = Replayer(model.exposed, model.layers, "cpu", workers=1).replay(source, BATCH, progress=False)
    sharded = replay_on_dask("", model.exposed, model.layers, source, BATCH, StatsConfig(), client=cluster_client)
    assert sharded.workers == 2 and len(plan_shards(source, BATCH, 2)) == 6  # 3 per worker
    _assert_same(sharded, single)


def test_a_worker_killed_mid_replay_is_survived(cluster_client, forecaster):
    model, source = forecaster
    single = Replayer(model.exposed, model.layers, "cpu", workers=1).replay(source, BATCH, progress=False)
    outcome = {}

    def run() -> None:
        outcome["result"] = replay_on_dask(
            "", model.exposed, model.layers, source, BATCH, StatsConfig(), client=cluster_client
        )

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 60
    while not cluster_client.processing() or not any(cluster_client.processing().values()):
        assert time.time() < deadline, "no shard started"
        time.sleep(0.05)
    victim = next(address for address, tasks in cluster_client.processing().items() if tasks)
    pid = cluster_client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)  # mid-shard; its nanny starts a fresh worker and the scheduler reruns the shard
    thread.join(timeout=240)
    assert not thread.is_alive() and "result" in outcome
    _assert_same(outcome["result"], single)
    cluster_client.wait_for_workers(2, timeout=60)
    assert pid not in cluster_client.run(os.getpid).values()  # it did die, and was replaced


def test_a_shard_with_bad_data_fails_the_run_naming_the_shard(cluster_client, forecaster, tmp_path):
    model, _ = forecaster
    path = make_windows(2000, tmp_path / "w.npy")
    source = open_windows_source(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])  # the file is cut after the client opened it
    with pytest.raises(ReporterError, match=r"shard \d+ \(windows \d+\.\.\d+\) failed: .*w\.npy: truncated"):
        replay_on_dask("", model.exposed, model.layers, source, BATCH, StatsConfig(), client=cluster_client)


def test_shards_are_whole_batches_covering_every_window(forecaster):
    _, source = forecaster
    shards = plan_shards(source, 100, 3)
    assert shards[0][0] == 0 and shards[-1][1] == source.shape[0]
    assert all(stop == start for (_, stop), (start, _) in zip(shards, shards[1:]))
    assert all((stop - start) % 100 == 0 for start, stop in shards[:-1])
    assert Path(source.recipe["path"]) == source.path


def test_a_worker_that_sees_another_file_at_the_same_path_refuses_it(forecaster):
    from reporter.layers import layers_to_json
    from reporter.replay.dask_shards import replay_shard

    model, source = forecaster
    recipe = {**source.recipe, "identity": {"shape": list(source.shape), "size": source.path.stat().st_size + 1}}
    with pytest.raises(ReporterError, match="differs from the client's"):
        replay_shard(
            model.exposed.SerializeToString(),
            layers_to_json(model.layers),
            StatsConfig(),
            recipe,
            source.skipped,
            0,
            BATCH,
            BATCH,
        )

"""Replay the exposed model over stored windows and turn its gate traces into statistics.

    windows         stored input windows read as validated batches (window_readers: the formats)
    feeds, carry    where every model input comes from; a streaming model's state
    calls           a batch of windows as one call, one per chunk (state carried) or one per window
    sessions        onnxruntime sessions: provider, CPU/CUDA, IO binding
    runner          sessions over batches, folding each into accumulators (held_signals: Ctrl-C
                    waits until every worker has started)
    time_major      replay's copy of the exposed model: gates left as the Scan writes them
    dask_shards     the same, sharded over a Dask cluster
    gate_moments    the mergeable per-unit accumulator and its one-pass update
    fused_pass      every statistic of a gate trace in one compiled pass (numba; pass_kernels:
                    the kernels, for long rows and for rows of few units)
    timestep_stats  mergeable per-timestep trajectories and the exact histogram bins
    stats           every layer's accumulators, and the run's two statistics tables
    anomaly         per-window gate features, anomaly scores, "flagged", explanations
    impulse         impulse responses: memory measured rather than inferred

`anomaly`, `impulse` and the statistics are pure functions of arrays and frames: the report
reads them without onnx or torch.
"""

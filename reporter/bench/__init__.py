"""`gate-report bench`: speed reported as ratios against a baseline timed in the same run.

expose_cost    exposed model ÷ fused model, and a PyTorch cell loop ÷ exposed
replay_cost    replay throughput and peak memory as the number of windows grows
dask_scaling   one process against a LocalCluster on the same windows
"""

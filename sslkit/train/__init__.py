"""Pretraining: the loop and its step, the optimizers and schedules, device and precision,
the metrics log, the online probe, and a run's life on a cluster (signals, restarts)."""

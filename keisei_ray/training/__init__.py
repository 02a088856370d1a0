"""Training: the driver loop, the worker pool, the learner actor, progress, metrics and W&B."""

"""Training: the loop, its checkpoints, schedules, health checks and the machinery under it."""

"""Training: the recipe `run(cfg)` and the owners it composes (clock, schedule, step, evaluator, best, stop)."""

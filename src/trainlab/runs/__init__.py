"""Run folders: their layout and lock, checkpoints over named parts, the metrics sinks, resuming, the sweep report."""

"""A run folder's layout: its file names, the TensorBoard tags a run writes, the run of a checkpoint, and reading a
run's metrics back. What writes a run and what reads one (report, evaluate, bench) agree by using these names.

    <run>/.hydra/config.yaml, overrides.yaml   the composed config and the command line's overrides (Hydra)
    <run>/run.log                              the terminal's lines, timestamped
    <run>/events.out.tfevents.*                TensorBoard: the tags below
    <run>/checkpoints/last.pt, last.prev.pt, best.pt
    <run>/error.log                            a failed sweep job's error and traceback
    <run>/evaluate/                            src/evaluate.py's events
"""
from pathlib import Path
from typing import Optional

CHECKPOINTS = "checkpoints"
LAST, PREVIOUS, BEST = "last.pt", "last.prev.pt", "best.pt"
ERROR_LOG = "error.log"
EVALUATE = "evaluate"

# TensorBoard tags
TRAIN_LOSS = "train/loss"  # every trainer.log_every_n_steps steps
TRAIN_ACC, TEST_LOSS, TEST_ACC, LR = "train/acc", "test/loss", "test/acc", "lr"  # per epoch
IMAGES_PER_S = "train/images_per_s"
STARTUP_S = "time/startup_s"
BEST_METRIC = "hparams/best_test_acc"  # the HPARAMS tab's column for the sweep's objective


def run_of(checkpoint: Path) -> Optional[Path]:
    """The run folder a checkpoint file belongs to (<run>/checkpoints/x.pt); None for a file kept elsewhere."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else None


def read_scalars(folder: Path) -> dict:
    """{tag: [(step, value), ...]} from the event files in `folder`; {} before the first one is written."""
    if not any(Path(folder).glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # half a second: only here

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: every point, not a sample
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

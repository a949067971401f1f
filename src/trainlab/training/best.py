"""The best epoch so far, chosen on validation: the monitor and its direction, the best value, patience for early
stopping, and the weights the test is scored with."""
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from trainlab.errors import TrainlabError
from trainlab.runs.checkpoint import load_checkpoint
from trainlab.runs.folder import BEST, higher_is_better


class Best:
    """Which epoch's weights best.pt holds: the one with the best `monitor` (val/acc or val/loss) so far, or, with no
    validation split, the latest (each epoch's weights are then the ones kept). `test` is the test split's score with
    those weights, once scored; `latest` the last epoch's validation."""

    def __init__(self, monitor: str = "val/acc"):
        self.monitor = monitor
        self.val: Optional[dict] = None  # the best epoch's validation {"loss", "acc"}; None before one (or without)
        self.epoch = 0  # the epoch whose weights best.pt holds
        self.bad_epochs = 0  # epochs since the best one, for early stopping
        self.latest: Optional[dict] = None  # the latest epoch's validation {"loss", "acc"}
        self.test: Optional[dict] = None  # {"loss", "acc", "epoch"}: the test split scored with that epoch's weights
        self.weights: Optional[dict] = None  # the best epoch's weights, held here when this process trained it

    @property
    def value(self) -> Optional[float]:
        """The best value of the monitored metric so far: what a search optimises."""
        return None if self.val is None else self._value_of(self.val)

    def _value_of(self, val: dict) -> float:
        return val["acc"] if higher_is_better(self.monitor) else val["loss"]

    def update(self, val: Optional[dict], epoch: int, model: torch.nn.Module) -> bool:
        """An epoch's validation {"loss", "acc"} (None without a validation split) -> whether it is the best so far;
        if so (and validated), its weights are kept for the test."""
        self.latest = val
        if val is None:
            self.epoch = epoch
            return True
        value, best = self._value_of(val), self.value
        if best is not None and not (value > best if higher_is_better(self.monitor) else value < best):
            self.bad_epochs += 1
            return False
        self.val, self.epoch, self.bad_epochs = val, epoch, 0
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True

    def out_of_patience(self, patience: Optional[int]) -> bool:
        """trainer.early_stopping_patience epochs have passed without a better value."""
        return patience is not None and self.epoch > 0 and self.bad_epochs >= patience

    def test_weights(self, weights_epoch: int, part_way: bool, checkpoints: Path) -> Optional[dict]:
        """The weights the test is scored with, or None where the model's own are those (the best epoch is the one
        the model holds, or no epoch was validated): kept in memory, else read from best.pt."""
        if self.epoch == 0 or (self.epoch == weights_epoch and not part_way):
            return None
        if self.weights is not None:
            return self.weights
        record = load_checkpoint(checkpoints / BEST)
        if record.get("epoch") != self.epoch:
            raise TrainlabError(f"{checkpoints / BEST} holds the weights of epoch {record.get('epoch')}, but the run's "
                                f"best epoch was {self.epoch}: the test split cannot be scored with the chosen weights; "
                                "evaluate a checkpoint with src/evaluate.py instead")
        return record["model"]

    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "val": self.val, "epoch": self.epoch, "bad_epochs": self.bad_epochs,
                "latest": self.latest, "test": self.test}

    def facts(self) -> dict:
        """What a checkpoint's readers read: the latest validation, and the test score once scored."""
        return {"val": self.latest, "test": self.test}

    def load_state_dict(self, state: dict) -> None:
        self.monitor, self.val, self.epoch = state["monitor"], state["val"], state["epoch"]
        self.bad_epochs, self.latest, self.test = state["bad_epochs"], state.get("latest"), state.get("test")


@contextmanager
def swapped_weights(model: torch.nn.Module, weights: Optional[dict]):
    """`model` holds `weights` inside the block (None: its own), and its own again after it."""
    if weights is None:
        yield model
        return
    kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    try:
        yield model
    finally:
        model.load_state_dict(kept)

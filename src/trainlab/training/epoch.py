"""One epoch of training, a step at a time, with its running sums kept so a resumed epoch reports what an
uninterrupted one would."""
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm import tqdm

from trainlab.training.clock import Clock
from trainlab.training.evaluator import Scores


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite; `batch` is the first such batch of the epoch (1-based)."""

    def __init__(self, batch: int):
        super().__init__(f"non-finite loss at batch {batch}")
        self.batch = batch


@dataclass
class Sums:
    """Running sums of an epoch in progress, on the device."""
    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    skipped: int = 0  # steps not applied because their loss was not finite (nonfinite=skip)

    @classmethod
    def zeros(cls, device):
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))


class EpochProgress:
    """The epoch in progress: its sums so far and the learning rate it began at (its line reports that one, where a
    per-step schedule has moved on since). A checkpointed part: a resumed epoch goes on from them."""

    def __init__(self, device):
        self.device, self.sums, self.lr = device, None, None

    def begin(self, lr: float) -> None:
        """At an epoch's first step, or on resuming one part-way: `lr` now, unless the checkpoint kept its own."""
        self.sums = self.sums or Sums.zeros(self.device)
        self.lr = lr if self.lr is None else self.lr

    def end(self) -> None:
        self.sums, self.lr = None, None

    def state_dict(self) -> dict:
        return {"sums": vars(self.sums).copy() if self.sums is not None else None, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        sums = state["sums"]
        self.sums = None if sums is None else Sums(**{k: v.to(self.device) if torch.is_tensor(v) else v
                                                      for k, v in sums.items()})
        self.lr = state["lr"]


class Epoch:
    """Iterating trains the rest of epoch clock.epoch, one batch a step, keeping clock.batch and the sums current,
    and yields the batch's number: between two steps the caller may checkpoint or stop. scores() once exhausted.

    on_log(global step, mean loss since the last call) runs every `log_every` batches and after the last one; the
    loss is read back from the device only then, so the other steps never wait for it. A non-finite loss raises
    NonFiniteLoss there (naming its batch), before anything else sees the weights; check_finite() does the same at
    once (call it before saving anything mid-epoch). `combine` sums (loss, correct, seen) over a distributed run's
    processes."""

    def __init__(self, step, loader, clock: Clock, progress: EpochProgress, log_every: int = 10, bar: bool = False,
                 on_log: Optional[Callable] = None, combine: Optional[Callable] = None):
        self.step, self.loader, self.clock, self.progress = step, loader, clock, progress
        self.log_every, self.bar, self.on_log, self.combine = log_every, bar, on_log, combine
        self.device = step.device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # the first non-finite batch
        self.start, self.seen_before = None, 0

    def __iter__(self):
        clock, sums = self.clock, self.progress.sums
        self.step.model.train()
        self.start, self.seen_before = time.perf_counter(), sums.seen  # a resumed epoch's images: not timed here
        window, window_steps = torch.zeros((), device=self.device), 0
        bar = tqdm(self.loader, desc=f"epoch {clock.epoch}/{clock.epochs}", initial=clock.batch, total=clock.batches,
                   leave=False, disable=not self.bar, unit="batch", dynamic_ncols=True)
        try:
            for i, (images, targets) in enumerate(bar, clock.batch + 1):
                images = images.to(self.device, non_blocking=True)
                loss, right = self.step(images, targets.to(self.device, non_blocking=True), *clock.window(i))
                if loss is None:  # not applied: its loss or gradients were not finite (nonfinite=skip)
                    sums.skipped += 1
                else:
                    bad = (self.first_bad < 0) & ~torch.isfinite(loss)
                    self.first_bad = torch.where(bad, i, self.first_bad)
                    sums.loss += loss * len(targets)
                    sums.correct += right
                    sums.seen += len(targets)
                    window += loss
                    window_steps += 1
                if i % self.log_every == 0 or i == clock.batches:
                    self.check_finite()
                    mean = (window / max(window_steps, 1)).item()
                    window.zero_()
                    window_steps = 0
                    bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
                    if self.on_log is not None:
                        self.on_log(clock.step_at(i), mean)
                clock.batch = i
                yield i
        finally:
            bar.close()

    def check_finite(self) -> None:
        """Raise NonFiniteLoss if a step of this epoch so far had a non-finite loss."""
        if self.first_bad.item() >= 0:
            raise NonFiniteLoss(self.first_bad.item())

    def scores(self) -> Scores:
        """The whole epoch's mean loss and accuracy (over every process of a distributed run)."""
        sums = self.progress.sums
        loss, correct = sums.loss.clone(), sums.correct.clone()
        seen = torch.tensor(sums.seen, device=self.device)
        if self.combine is not None:
            loss, correct, seen = self.combine(loss, correct, seen)
        seen = int(seen.item())
        mean_loss, acc = loss.item() / max(seen, 1), correct.item() / max(seen, 1)
        timed = round(seen * (sums.seen - self.seen_before) / max(sums.seen, 1))  # every process alike
        return Scores(mean_loss, acc, time.perf_counter() - self.start, seen, sums.skipped, timed)

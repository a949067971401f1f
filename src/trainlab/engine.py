"""The training loop: the run's state, one epoch of training, one pass of evaluation, the device and the seeds.

Knows nothing of Hydra, configs or files: it gets built objects and plain values, and returns plain numbers.
"""
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from trainlab.errors import TrainlabError
from trainlab.step import Numerics, TrainStep


@dataclass
class EpochStats:
    loss: float
    acc: float  # fraction correct
    seconds: float
    images: int
    skipped: int = 0  # steps not applied: their loss or gradients were not finite
    timed: Optional[int] = None  # the images trained in `seconds`: fewer than `images` in an epoch resumed part-way

    @property
    def images_per_s(self) -> float:
        return (self.images if self.timed is None else self.timed) / self.seconds


def resolve_device(name: str, job: int = 0, jobs_at_once: int = 1) -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; otherwise the named device, checked.

    With several jobs at once on one machine (a parallel launcher), job `job` takes GPU job % GPUs under 'auto', or,
    on the CPU, its 1/jobs_at_once share of the threads, so the jobs do not fight over the same cores.
    """
    if jobs_at_once > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs_at_once))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", job % torch.cuda.device_count() if jobs_at_once > 1 else 0)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainlabError(f"trainer.device '{name}' is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainlabError(f"trainer.device={name} but no GPU is visible: use trainer.device=auto or cpu")
    return device


def show_progress(wanted: bool) -> bool:
    """trainer.progress_bar, on a terminal only: a bar redrawn into a file or a pipe is noise (one shapes epoch wrote
    152 KB of redraws), and TQDM_DISABLE=1 turns bars off, as in any tqdm program."""
    disabled = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return wanted and not disabled and sys.stderr.isatty()


def seconds_since_launch():
    """Seconds since this process started (Linux's /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def seed_everything(seed: int, deterministic: bool) -> None:
    """Same seed, same device, same numbers: every generator a run draws from starts from `seed`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # benchmark mode picks kernels by timing: not repeatable


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite; `step` is the first such step of the epoch (1-based)."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss at batch {step}")
        self.step = step


@dataclass
class EpochTotals:
    """Running sums of an epoch in progress, on the device: kept in checkpoints so a resumed epoch reports the same."""
    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    skipped: int = 0  # steps not applied because their loss was not finite (nonfinite=skip)

    @classmethod
    def zeros(cls, device):
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))


@dataclass
class TrainState:
    """Where a run stands: all a resume needs besides the weights, the optimizer, the scheduler and the generators.

    (epoch, batch) is the next batch to train: epoch 1-based, `batch` batches of it done. totals are the running sums
    of an epoch stopped part-way, so that the resumed epoch reports what an uninterrupted one would. `best` is the
    best value of the monitored validation metric so far; `test` the test split's score, once it has been scored.
    """
    epoch: int = 1
    batch: int = 0
    monitor: str = "val/acc"  # or val/loss: trainer.monitor
    best_val: Optional[dict] = None  # the best epoch's validation {"loss", "acc"}; None before one (or without)
    best_epoch: int = 0  # the epoch whose weights best.pt holds
    bad_epochs: int = 0  # epochs since the best one, for early stopping
    val: Optional[dict] = None  # the latest epoch's validation {"loss", "acc"}
    test: Optional[dict] = None  # {"loss", "acc", "epoch"}: the test split scored with the weights of that epoch
    stopped: Optional[str] = None  # why training ended before trainer.epochs ("early stopping"), if it did
    totals: Optional[EpochTotals] = None
    epoch_lr: Optional[float] = None  # the learning rate the epoch in progress began at: its line reports it

    def record(self, val: Optional[dict], epoch: int) -> bool:
        """An epoch's validation {"loss", "acc"} (None without a validation split, where each epoch's weights are the
        latest and so the ones kept) -> whether they are the best so far."""
        self.val = val
        if val is None:
            self.best_epoch = epoch
            return True
        value, best = self.value_of(val), self.best
        if best is None or (value > best if self.monitor == "val/acc" else value < best):
            self.best_val, self.best_epoch, self.bad_epochs = val, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def value_of(self, val: dict) -> float:
        return val["acc"] if self.monitor == "val/acc" else val["loss"]

    @property
    def best(self) -> Optional[float]:
        """The best value of the monitored metric so far: what a search optimises."""
        return None if self.best_val is None else self.value_of(self.best_val)

    def end_epoch(self) -> None:
        self.epoch, self.batch, self.totals, self.epoch_lr = self.epoch + 1, 0, None, None

    def begin_epoch(self, lr: float) -> float:
        """The learning rate the epoch reports: `lr` now, at its start; for an epoch resumed part-way, the one it began
        at (a per-step schedule has moved on since)."""
        if self.batch == 0 or self.epoch_lr is None:
            self.epoch_lr = lr
        return self.epoch_lr

    @property
    def epochs_done(self) -> int:
        return self.epoch - 1

    def state_dict(self) -> dict:
        return {"position": {"epoch": self.epoch, "batch": self.batch},
                "best": {"monitor": self.monitor, "val": self.best_val, "epoch": self.best_epoch,
                         "bad_epochs": self.bad_epochs},
                "val": self.val, "test": self.test, "stopped": self.stopped,
                "totals": vars(self.totals).copy() if self.totals is not None else None, "epoch_lr": self.epoch_lr}

    @classmethod
    def from_state_dict(cls, saved: dict, device) -> "TrainState":
        totals = saved["totals"]
        if totals is not None:
            totals = EpochTotals(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in totals.items()})
        best = saved["best"]
        return cls(saved["position"]["epoch"], saved["position"]["batch"], best["monitor"], best["val"],
                   best["epoch"], best["bad_epochs"], saved["val"], saved["test"], saved["stopped"], totals,
                   saved.get("epoch_lr"))  # absent from checkpoints written before it was kept


@dataclass(frozen=True)
class Loop:
    """How every epoch of a run trains: fixed for the run."""
    epochs: int
    batches: int  # steps in an epoch
    log_every: int = 10  # steps between two train/loss values (and the only read-backs of the loss)
    progress: bool = False  # a tqdm bar per epoch
    scheduler: object = None  # a scheduler stepped after every step (interval: step)
    combine: Optional[Callable] = None  # (loss sum, correct, seen) -> the same summed over a distributed run


def train_epoch(step: TrainStep, loader, state: TrainState, loop: Loop, on_log=None) -> "TrainEpoch":
    """The rest of the epoch state.epoch, from batch state.batch + 1: iterate over it to train (see TrainEpoch)."""
    return TrainEpoch(step, loader, state, loop, on_log)


class TrainEpoch:
    """Iterating trains one batch a step, keeping state.batch and state.totals current, and yields the batch's
    number: between two steps the caller may checkpoint the state or stop. stats() once it is exhausted.

    on_log(global step, mean loss since the last call) runs every loop.log_every batches and after the last one; the
    loss is read back from the device only then, so the other steps never wait for it. A non-finite loss raises
    NonFiniteLoss there (naming its batch), before anything else sees the weights; check_finite() does the same at
    once (call it before saving anything mid-epoch).
    """

    def __init__(self, step: TrainStep, loader, state: TrainState, loop: Loop, on_log=None):
        self.step, self.loader, self.state, self.loop, self.on_log = step, loader, state, loop, on_log
        self.device = step.device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # the first non-finite batch
        self.start, self.seen_before = None, 0

    def __iter__(self):
        step, state, loop, device = self.step, self.state, self.loop, self.device
        step.model.train()
        self.start = time.perf_counter()
        totals = state.totals = state.totals or EpochTotals.zeros(device)
        self.seen_before = totals.seen  # a resumed epoch's images before the checkpoint: not timed here
        window, window_steps = torch.zeros((), device=device), 0
        bar = tqdm(self.loader, desc=f"epoch {state.epoch}/{loop.epochs}", initial=state.batch, total=loop.batches,
                   leave=False, disable=not loop.progress, unit="batch", dynamic_ncols=True)
        try:
            for i, (images, targets) in enumerate(bar, state.batch + 1):
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                loss, right = step(images, targets)
                if loop.scheduler is not None:
                    loop.scheduler.step()
                if loss is None:  # not applied: its loss or gradients were not finite (nonfinite=skip)
                    totals.skipped += 1
                else:
                    bad = (self.first_bad < 0) & ~torch.isfinite(loss)
                    self.first_bad = torch.where(bad, i, self.first_bad)
                    totals.loss += loss * len(targets)
                    totals.correct += right
                    totals.seen += len(targets)
                    window += loss
                    window_steps += 1
                if i % loop.log_every == 0 or i == loop.batches:
                    self.check_finite()
                    mean = (window / max(window_steps, 1)).item()
                    window.zero_()
                    window_steps = 0
                    bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
                    if self.on_log is not None:
                        self.on_log((state.epoch - 1) * loop.batches + i, mean)
                state.batch = i
                yield i
        finally:
            bar.close()

    def check_finite(self) -> None:
        """Raise NonFiniteLoss if a step of this epoch so far had a non-finite loss."""
        if self.first_bad.item() >= 0:
            raise NonFiniteLoss(self.first_bad.item())

    def stats(self) -> EpochStats:
        """The whole epoch's mean loss and accuracy (over every process of a distributed run)."""
        totals = self.state.totals
        loss, correct = totals.loss.clone(), totals.correct.clone()
        seen = torch.tensor(totals.seen, device=self.device)
        if self.loop.combine is not None:
            loss, correct, seen = self.loop.combine(loss, correct, seen)
        seen = int(seen.item())
        mean_loss, acc = loss.item() / max(seen, 1), correct.item() / max(seen, 1)
        timed = round(seen * (totals.seen - self.seen_before) / max(totals.seen, 1))  # every process alike
        return EpochStats(mean_loss, acc, time.perf_counter() - self.start, seen, totals.skipped, timed)


@torch.no_grad()
def evaluate(model, loader, loss_fn, numerics: Numerics) -> EpochStats:
    """Mean loss and accuracy over `loader`, in eval mode (dropout off, batchnorm running statistics)."""
    model.eval()
    device = numerics.device
    start = time.perf_counter()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with numerics.autocast():
            logits = model(numerics.layout(images))
            total_loss += loss_fn(logits, targets).float() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
    return EpochStats(total_loss.item() / seen, correct.item() / seen, time.perf_counter() - start, seen)

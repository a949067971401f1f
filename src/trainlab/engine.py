"""The training loop: one epoch of training, one pass of evaluation, the device and the seeds.

Knows nothing of Hydra, configs or files: it gets built objects and plain values, and returns plain numbers.
"""
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from trainlab.errors import TrainlabError


@dataclass
class EpochStats:
    loss: float
    acc: float  # fraction correct
    seconds: float
    images: int
    skipped: int = 0  # steps not applied: their loss or gradients were not finite


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


def seconds_since_launch():
    """Seconds since this process started (Linux's /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def use_channels_last(setting, device: torch.device, precision: str) -> bool:
    """trainer.channels_last; null: on for the CPU (oneDNN, measured 1.4x) and for bf16 on a GPU, off for fp32 on a
    GPU (measured 2.3x slower with Tudui on an H100)."""
    return setting if setting is not None else device.type == "cpu" or precision == "bf16"


def seed_everything(seed: int, deterministic: bool) -> None:
    """Same seed, same device, same numbers: every generator a run draws from starts from `seed`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # benchmark mode picks kernels by timing: not repeatable


WARM_UP_STEPS = 3  # eager steps before a CUDA graph is recorded


class TrainStep:
    """One optimizer step on a batch: forward, loss, backward, update; -> (loss, number correct), left on the device.

    precision 'bf16' runs the forward pass under bfloat16 autocast; channels_last stores images and conv weights as
    NHWC, the layout tensor cores read fastest. cuda_graph records the whole step of a full batch once as a CUDA graph
    and replays it: one launch per step instead of dozens, which is what bounds small batches on a fast GPU. The
    learning rate is a constant inside a graph, so the graph is recorded again whenever the rate has changed.
    """

    def __init__(self, model, loss_fn, optimizer, device, precision="fp32", channels_last=False, cuda_graph=False):
        self.model, self.loss_fn, self.optimizer, self.device = model, loss_fn, optimizer, device
        self.autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.cuda_graph = cuda_graph and device.type == "cuda"
        self.graph, self.graph_lr, self.eager_steps = None, None, 0
        if self.cuda_graph:
            for group in optimizer.param_groups:
                if "capturable" in group:
                    group["capturable"] = True  # Adam's step counter on the device, so a graph can advance it

    def _step(self, images, targets, skip_nonfinite=False):
        with torch.autocast(**self.autocast):
            logits = self.model(images)
            loss = self.loss_fn(logits, targets)
        loss.backward()
        if skip_nonfinite and not _all_finite(loss, self.optimizer):  # reads back every step: only when asked
            self.optimizer.zero_grad(set_to_none=True)
            return None, None
        self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) == targets).sum()

    def __call__(self, images, targets, skip_nonfinite=False):
        """-> (loss, number correct) on the device, or (None, None) for a step skipped as non-finite."""
        images = images.contiguous(memory_format=self.memory_format)
        if skip_nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
            return self._step(images, targets, skip_nonfinite=True)
        if self.cuda_graph:
            if self.eager_steps < WARM_UP_STEPS:
                return self._warm_up(images, targets)
            if self.graph is None or images.shape == self.static_images.shape:  # the batch size it was recorded for
                lr = self.optimizer.param_groups[0]["lr"]
                if self.graph is None or lr != self.graph_lr:
                    self._record(images, targets, lr)
                self.static_images.copy_(images)
                self.static_targets.copy_(targets)
                self.graph.replay()
                return self.static_loss, self.static_correct  # overwritten by the next replay: use before then
        self.optimizer.zero_grad(set_to_none=True)
        return self._step(images, targets)

    def _warm_up(self, images, targets):
        """Eager steps on a side stream before recording (cuDNN and cuBLAS pick and allocate their kernels here)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.optimizer.zero_grad(set_to_none=True)
            result = self._step(images, targets)
        torch.cuda.current_stream().wait_stream(stream)
        self.eager_steps += 1
        return result

    def _record(self, images, targets, lr):
        self.static_images, self.static_targets = images.clone(), targets.clone()
        self.graph, self.graph_lr = torch.cuda.CUDAGraph(), lr
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss, self.static_correct = self._step(self.static_images, self.static_targets)


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


def _raise_if_bad(first_bad: torch.Tensor) -> None:
    if first_bad.item() >= 0:
        raise NonFiniteLoss(first_bad.item())


def _all_finite(loss, optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return bool(torch.isfinite(loss).item()) and all(bool(torch.isfinite(g).all().item()) for g in grads)


def train_epoch(step: TrainStep, loader, device, *, batches: int, first_batch: int = 0, totals=None,
                scheduler=None, log_every=10, on_log=None, after_step=None, skip_nonfinite=False, progress=False,
                desc="", combine=None) -> EpochStats:
    """Batches first_batch+1 .. `batches` of an epoch, a TrainStep each (and a per-step scheduler after each).

    on_log(batch, mean loss since the last call) runs every `log_every` batches and after the last one; the loss is
    read back from the device only then, so the other steps never wait for it. A non-finite loss raises NonFiniteLoss
    there (naming its batch), before anything else sees the weights; with skip_nonfinite such steps are skipped and
    counted instead. after_step(batch, totals, check) runs after every step (check() raises NonFiniteLoss if a step so
    far was not finite: call it before saving anything); returning True stops the epoch early (-> None).
    combine(loss sum, correct, seen) sums the epoch's totals over the processes of a distributed run.
    """
    step.model.train()
    start = time.perf_counter()
    totals = totals or EpochTotals.zeros(device)
    window, window_steps = torch.zeros((), device=device), 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    bar = tqdm(loader, desc=desc, initial=first_batch, total=batches, leave=False, disable=not progress,
               unit="batch", dynamic_ncols=True)
    for i, (images, targets) in enumerate(bar, first_batch + 1):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss, right = step(images, targets, skip_nonfinite=skip_nonfinite)
        if scheduler is not None:
            scheduler.step()
        if loss is None:  # skipped
            totals.skipped += 1
        else:
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), i, first_bad)
            totals.loss += loss * len(targets)
            totals.correct += right
            totals.seen += len(targets)
            window += loss
            window_steps += 1
        if i % log_every == 0 or i == batches:
            _raise_if_bad(first_bad)
            mean = (window / max(window_steps, 1)).item()
            window.zero_()
            window_steps = 0
            bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
            if on_log is not None:
                on_log(i, mean)
        if after_step is not None and after_step(i, totals, lambda: _raise_if_bad(first_bad)):
            bar.close()
            return None
    bar.close()
    loss, correct, seen = totals.loss.clone(), totals.correct.clone(), torch.tensor(totals.seen, device=device)
    if combine is not None:
        loss, correct, seen = combine(loss, correct, seen)
    seen = int(seen.item())
    return EpochStats(loss.item() / max(seen, 1), correct.item() / max(seen, 1), time.perf_counter() - start, seen,
                      totals.skipped)


@torch.no_grad()
def evaluate(model, loader, loss_fn, device, precision="fp32", channels_last=False) -> EpochStats:
    """Mean loss and accuracy over `loader`, in eval mode (dropout off, batchnorm running statistics)."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    start = time.perf_counter()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images.contiguous(memory_format=memory_format))
            total_loss += loss_fn(logits, targets).float() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
    return EpochStats(total_loss.item() / seen, correct.item() / seen, time.perf_counter() - start, seen)

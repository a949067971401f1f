"""The training loop: one epoch of training, one pass of evaluation, the device and the seeds.

Knows nothing of Hydra, configs or files: it gets built objects and plain values, and returns plain numbers.
"""
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


def resolve_device(name: str) -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainlabError(f"trainer.device '{name}' is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainlabError(f"trainer.device={name} but no GPU is visible: use trainer.device=auto or cpu")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    """Same seed, same device, same numbers: every generator a run draws from starts from `seed`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # benchmark mode picks kernels by timing: not repeatable


def train_epoch(model, loader, loss_fn, optimizer, device, *, scheduler=None, log_every=10, on_log=None,
                progress=False, desc="") -> EpochStats:
    """One pass over `loader`, stepping the optimizer (and a per-step scheduler) after every batch.

    on_log(batch number, mean loss since the last call) runs every `log_every` batches and after the last one; the
    loss is read back from the device only then, so the other steps never wait for it.
    """
    model.train()
    start = time.perf_counter()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    window, window_steps, seen = torch.zeros((), device=device), 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch", dynamic_ncols=True)
    for i, (images, targets) in enumerate(bar, 1):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss = loss.detach()
        total_loss += loss * len(targets)
        correct += (logits.detach().argmax(1) == targets).sum()
        seen += len(targets)
        window += loss
        window_steps += 1
        if i % log_every == 0 or i == len(loader):
            mean = (window / window_steps).item()
            window.zero_()
            window_steps = 0
            bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
            if on_log is not None:
                on_log(i, mean)
    bar.close()
    return EpochStats(total_loss.item() / seen, correct.item() / seen, time.perf_counter() - start, seen)


@torch.no_grad()
def evaluate(model, loader, loss_fn, device) -> EpochStats:
    """Mean loss and accuracy over `loader`, in eval mode (dropout off, batchnorm running statistics)."""
    model.eval()
    start = time.perf_counter()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)
        total_loss += loss_fn(logits, targets) * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
    return EpochStats(total_loss.item() / seen, correct.item() / seen, time.perf_counter() - start, seen)

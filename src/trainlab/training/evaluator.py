"""The one forward path that scores images: validation and the test during a run, src/evaluate.py's confusion matrix
and src/predict.py's classes all go through an Evaluator, in the run's numerics, so each sees what the others saw."""
import time
from dataclasses import dataclass
from typing import Optional

import torch

from trainlab import distributed
from trainlab.training.numerics import Numerics


@dataclass
class Scores:
    """A pass over a split (or an epoch of training): mean loss, accuracy, and how long it took."""
    loss: float
    acc: float  # fraction correct
    seconds: float
    images: int
    skipped: int = 0  # training only: steps not applied, their loss or gradients were not finite
    timed: Optional[int] = None  # the images trained in `seconds`: fewer than `images` in an epoch resumed part-way

    @property
    def images_per_s(self) -> float:
        return (self.images if self.timed is None else self.timed) / self.seconds

    def as_dict(self) -> dict:
        return {"loss": self.loss, "acc": self.acc}


def correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How many of a batch are classified right, on the device: against the class index, or, for soft targets
    (B, classes) such as mixup makes, against the class they weigh most."""
    hard = targets.argmax(1) if targets.ndim == 2 else targets
    return (logits.argmax(1) == hard).sum()


TTA = ("none", "flip", "flip_translate")  # trainer.tta: the views of each image whose logits are averaged


class Evaluator:
    """`model` in eval mode (dropout off, batchnorm's running statistics), no gradients, in `numerics`; with test-time
    augmentation (`tta`, one of TTA), each image's logits are the mean over its views, for every caller alike.

    A data-parallel run's model (DistributedDataParallel) is scored in shares: each process's loaders hold every
    processes-th image (trainlab/data/build.py), and `score` sums their counts over the processes, so each gets the
    whole split's figures, as one process would, for a processes-th of the work. The plain module scores (no
    collective in its forward: the shares may differ by a batch), with the first process's batchnorm statistics."""

    def __init__(self, model: torch.nn.Module, numerics: Numerics, loss_fn=None, tta: str = "none"):
        self.shared = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        self.model = model.module if self.shared else model
        self.numerics, self.loss_fn, self.device, self.tta = numerics, loss_fn, numerics.device, tta

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        images = self.numerics.layout(images.to(self.device, non_blocking=True))
        with self.numerics.autocast():
            if self.tta == "none":
                return self.model(images)
            return views_mean(self.model, images, translate=self.tta == "flip_translate")

    def batches(self, loader):
        """(logits, targets) of each batch of `loader`, on the device."""
        for images, targets in loader:
            yield self.logits(images), targets.to(self.device, non_blocking=True)

    @torch.no_grad()
    def score(self, loader) -> Scores:
        """Mean loss and accuracy over `loader` (over the processes' shares, in a data-parallel run)."""
        start = time.perf_counter()
        if self.shared:  # the statistics the first process's checkpoint keeps (each process's own drift apart)
            distributed.same_as_first(*self.model.buffers())
        total_loss = torch.zeros((), device=self.device)
        right, seen = (torch.zeros((), dtype=torch.long, device=self.device) for _ in range(2))
        for logits, targets in self.batches(loader):
            with self.numerics.autocast():
                total_loss += self.loss_fn(logits, targets).float() * len(targets)
            right += correct(logits, targets)
            seen += len(targets)
        if self.shared:
            distributed.all_sum(total_loss, right, seen)
        seen = seen.item()
        return Scores(total_loss.item() / seen, right.item() / seen, time.perf_counter() - start, seen)

    @torch.no_grad()
    def confusion(self, loader, classes: int) -> torch.Tensor:
        """(classes, classes) counts: row the true class, column the predicted one."""
        counts = torch.zeros(classes * classes, dtype=torch.long, device=self.device)
        for logits, targets in self.batches(loader):
            counts += torch.bincount(targets * classes + logits.argmax(1), minlength=classes * classes)
        return counts.view(classes, classes).cpu()

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's class probabilities: softmax of the logits, unless the model ends in a softmax of its own (a
        second one would flatten its probabilities)."""
        out = self.logits(images).float()
        last = list(self.model.modules())[-1]
        return out if isinstance(last, torch.nn.Softmax) else out.softmax(dim=1)


def views_mean(model, images: torch.Tensor, translate: bool) -> torch.Tensor:
    """The mean logits over an image and its mirror image (2 forward passes); with `translate`, half of that and half
    the same mean for the image moved one pixel up-left and one down-right, its edge reflected (6 passes), weighted as
    airbench94 weights its views (github.com/KellerJordan/cifar10-airbench)."""
    def mirrored(x):
        return 0.5 * model(x) + 0.5 * model(x.flip(-1))

    logits = mirrored(images)
    if not translate:
        return logits
    h, w = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
    moved = 0.5 * mirrored(padded[..., :h, :w]) + 0.5 * mirrored(padded[..., 2:, 2:])
    return 0.5 * logits + 0.5 * moved

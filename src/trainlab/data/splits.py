"""The three splits and their roles: train fits the weights, validation makes every choice (the best checkpoint,
early stopping, a search's objective), test is scored once, at the end, with the weights so chosen.

A data set without a validation split of its own gives up `data.val_split` of its training images to one, the
same share of every class, drawn from `data.split_seed` alone: runs with other trainer.seed values are scored on the
same images. Both data paths take their splits from here, so they hold the same images.
"""
import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import Dataset, Subset

from trainlab.errors import TrainlabError


@dataclass
class Sources:
    """What a data set offers before splitting: its training images twice (through the train pipeline, and through
    the test pipeline for the validation images drawn from them), and its own validation and test sets if any."""
    train: Dataset
    train_for_eval: Dataset
    val: Optional[Dataset]
    test: Optional[Dataset]
    classes: list


def split(sources: Sources, val_split: float, split_seed: int) -> tuple:
    """-> (train, val or None, test or None): the source's own validation set, else val_split of train held out."""
    if sources.val is not None or not val_split:
        return sources.train, sources.val, sources.test
    kept, held = hold_out(targets_of(sources.train), val_split, split_seed)
    if not held:  # every class has one image: each keeps it to train on
        raise TrainlabError(f"data.val_split={val_split} holds out no image: no class of the {len(kept)} training "
                            "images has two (one to train on, one to validate on); add images, or set "
                            "data.val_split=0 to train on all and choose nothing")
    return Subset(sources.train, kept), Subset(sources.train_for_eval, held), sources.test


def hold_out(targets: list, fraction: float, seed: int) -> tuple:
    """Stratified: round(fraction x n) of each class's n images (at least one where a class has two or more), chosen
    by `seed` -> (kept indices, held-out indices), each in ascending order."""
    generator = torch.Generator().manual_seed(seed)
    by_class = {}
    for index, label in enumerate(targets):
        by_class.setdefault(int(label), []).append(index)
    held = []
    for label in sorted(by_class):
        members = by_class[label]
        count = round(fraction * len(members))
        if count == 0 and len(members) > 1:
            count = 1  # a small class still appears in validation
        count = min(count, len(members) - 1)  # and keeps an image to train on
        order = torch.randperm(len(members), generator=generator).tolist()
        held += [members[j] for j in order[:count]]
    held_set = set(held)
    return [i for i in range(len(targets)) if i not in held_set], sorted(held)


def targets_of(dataset) -> list:
    """The class index of every item, without decoding an image."""
    if isinstance(dataset, Subset):
        inner = targets_of(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    targets = dataset.targets
    return targets.tolist() if torch.is_tensor(targets) else list(targets)


def with_transform(dataset, transform):
    """The same images through another pipeline: a shallow copy, so the decoded arrays (CIFAR-10's 150 MB) are
    shared, not loaded twice."""
    twin = copy.copy(dataset)
    twin.transform = transform
    return twin


def sizes_text(train, val, test) -> str:
    """'45,000 train / 5,000 val / 10,000 test images' (a missing split says 'no val' or 'no test')."""
    parts = [f"{len(train):,} train"]
    parts += [f"{len(s):,} {name}" if s is not None else f"no {name}" for name, s in (("val", val), ("test", test))]
    return " / ".join(parts) + " images"

"""Data sets by name -> train, validation and test sets (splits.py says which images each holds), with what the
model needs to know: class names and image shape."""
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol
from urllib.error import URLError

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from trainlab.errors import TrainlabError, one_line, shape_text
from trainlab.runs.folder import missing_folders, remove_if_empty
from trainlab.data.image_folder import folder_sources
from trainlab.data.splits import Sources, split, with_transform

log = logging.getLogger("trainlab")


@dataclass(frozen=True)
class TorchvisionSet:
    """A data set torchvision fetches: its class there, the folder under data.root its files sit in (what the
    resident cache fingerprints), and what to fetch by hand when offline."""
    name: str
    folder: str
    manual: str


TORCHVISION_SETS = {
    "cifar10": TorchvisionSet("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz "
                              "(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) in {root}"),
    "mnist": TorchvisionSet("MNIST", "MNIST/raw",
                            "the four MNIST .gz files (train/t10k images and labels) in {root}/MNIST/raw"),
    "fashion_mnist": TorchvisionSet("FashionMNIST", "FashionMNIST/raw",
                                    "the four Fashion-MNIST .gz files in {root}/FashionMNIST/raw"),
}


@dataclass
class DataSplits:
    train: Dataset
    val: Optional[Dataset]  # None: data.val_split=0 and no validation set of its own
    test: Optional[Dataset]  # None: a folder with no test folder
    classes: list
    image_shape: tuple  # (C, H, W) of one training image after the train pipeline


@dataclass
class Loaders:
    train: "TrainLoader"
    val: Optional[Iterable]  # batches of (images, labels), in order; None where the split is
    test: Optional[Iterable]


def build_data(cfg, train_tf, test_tf) -> DataSplits:
    """cfg.data and the two pipelines -> DataSplits, subsets applied."""
    sources = build_datasets(cfg, train_tf, test_tf)
    train, val, test = (subset(s, size) for s, size in zip(split(sources, cfg.val_split, cfg.split_seed),
                                                             (cfg.subset, cfg.val_subset, cfg.test_subset)))
    try:
        image = first_image(train)
    except (RuntimeError, ValueError, TypeError) as e:
        raise TrainlabError(f"transform.train cannot process a {cfg.name} image: {e}") from None
    return DataSplits(train, val, test, sources.classes, tuple(image.shape))


def subset(dataset, size):
    """data.subset and the like: a fixed random `size` of the split's items (all where size is null)."""
    return Subset(dataset, subset_indices(len(dataset), size)) if size and dataset is not None else dataset


def first_image(dataset):
    """The first item's image that could be decoded (an undecodable file is None with data.bad_images=skip)."""
    return next(item[0] for item in (dataset[i] for i in range(len(dataset))) if item is not None)


def build_datasets(cfg, train_tf, test_tf) -> Sources:
    """-> the data set's Sources, whole, each item (image after its pipeline, label)."""
    if cfg.name in TORCHVISION_SETS:
        return _torchvision_set(cfg, train_tf, test_tf)
    if cfg.name == "folder":
        return folder_sources(cfg, train_tf, test_tf)
    if cfg.name == "shapes":
        from trainlab.data.shapes import ShapesDataset

        train = ShapesDataset(cfg.num_train, cfg.image_size, 0, "train", train_tf)
        return Sources(train, with_transform(train, test_tf), None,
                       ShapesDataset(cfg.num_test, cfg.image_size, 0, "test", test_tf), list(train.classes))
    names = ", ".join([*TORCHVISION_SETS, "folder", "shapes"])
    raise TrainlabError(f"data.name '{cfg.name}' is not a data set trainlab knows: use one of {names}")


def subset_indices(length: int, size) -> list:
    """A fixed random choice of `size` of `length` items (the same on every run and both data paths), or all."""
    if size is None or size >= length:
        return list(range(length))
    return sorted(torch.randperm(length, generator=torch.Generator().manual_seed(0))[:size].tolist())


def build_loaders(cfg, splits: DataSplits, seed: int, shard: tuple = (0, 1)) -> Loaders:
    """-> the splits' loaders. The training order and each image's random steps follow (seed, epoch, index)
    alone, whatever the number of workers: `train_loader.start(epoch, batch)` picks up mid-epoch exactly."""
    # Each loader draws its workers' base seed from a generator of its own, not from the global one that dropout
    # uses, so starting an epoch (or resuming one) leaves the training's random stream as it was.
    count = worker_processes(cfg.num_workers)
    workers = dict(num_workers=count, persistent_workers=count > 0, pin_memory=cfg.pin_memory, collate_fn=collate)
    sampler = EpochSampler(len(splits.train), cfg.batch_size, cfg.shuffle, cfg.drop_last, seed, shard)
    train = DataLoader(SeededItems(splits.train, seed), batch_size=cfg.batch_size // shard[1], sampler=sampler,
                       drop_last=cfg.drop_last, generator=torch.Generator().manual_seed(seed), **workers)

    def in_order(split):  # this process's share (the Evaluator sums the shares' scores)
        share = split if split is None or shard[1] == 1 else Subset(split, range(len(split))[every_nth(shard)])
        return None if split is None else DataLoader(share, batch_size=cfg.eval_batch_size,
                                                     generator=torch.Generator().manual_seed(seed), **workers)

    return Loaders(SampledLoader(train), in_order(splits.val), in_order(splits.test))


def worker_processes(wanted: int, asked: bool = True) -> int:
    """`wanted`, or 0 inside a job that a parallel launcher started in a worker process of its own, which may not
    start processes itself (each such job has only its share of the cores anyway). Said only where the user `asked`
    for them (data.num_workers), not for trainlab's own choice."""
    import multiprocessing

    if wanted and multiprocessing.current_process().name != "MainProcess":
        if asked:
            log.info(f"data: decoding in this process: a launcher's worker process cannot start "
                     f"data.num_workers={wanted} workers")
        return 0
    return wanted


def stream_seed(*keys) -> int:
    """A 63-bit seed that depends on `keys` alone (not on Python's hash randomisation or on any earlier draw)."""
    return int.from_bytes(hashlib.blake2b(repr(keys).encode(), digest_size=8).digest(), "little") >> 1


class TrainLoader(Protocol):
    """What the training loop asks of a training loader, on either data path (SampledLoader, ResidentLoader)."""
    batches: int  # in an epoch

    def start(self, epoch: int, batch: int = 0) -> None:
        """Make the next iteration epoch `epoch` (1-based) from batch `batch` + 1 on."""

    def __iter__(self) -> Iterator[tuple]:
        """(images, labels) batches."""


def every_nth(shard: tuple) -> slice:
    """A data-parallel process's share of what the processes split (each batch, an evaluated split, the whitening's
    images), shard = (rank, processes): every processes-th item, from its rank on."""
    return slice(shard[0], None, shard[1])


class BatchPlan:
    """Which images each training batch takes, on both data paths: the epoch's order follows (seed, epoch) alone, so
    a run resumed at (epoch, batch) picks up exactly; with shard (rank, processes), this process takes every
    processes-th image of each batch of batch_size."""

    def __init__(self, length: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int, shard=(0, 1)):
        self.length, self.batch_size, self.shuffle, self.seed = length, batch_size, shuffle, seed
        self.mine = every_nth(shard)  # this process's images of each batch
        self.batches = length // batch_size if drop_last else -(-length // batch_size)  # per epoch
        if self.batches == 0:
            raise TrainlabError(f"no training batch: {length} images with data.batch_size={batch_size} and "
                                "data.drop_last=true; lower the batch size or set data.drop_last=false")
        self.epoch, self.first_batch = 1, 0

    def start(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.first_batch = epoch, batch

    def order(self, generator: torch.Generator, device=None) -> torch.Tensor:
        """The epoch's order of all images, drawn from `generator` (reseeded here) on its device."""
        if not self.shuffle:
            return torch.arange(self.length, device=device)
        generator.manual_seed(stream_seed(self.seed, "order", self.epoch))
        return torch.randperm(self.length, device=device, generator=generator)

    def batches_left(self, order: torch.Tensor):
        """(batch number, this process's indices) for each batch of the epoch from the start position on."""
        for batch in range(self.first_batch, self.batches):
            yield batch, order[batch * self.batch_size:(batch + 1) * self.batch_size][self.mine]

    def partners(self, order: torch.Tensor, batch: int) -> tuple:
        """The image before each of this process's in batch `batch` (before the first, the batch's last), which a mix
        pairs it with (another process's, when the batch is shared) -> (their indices, their places in the batch)."""
        whole = order[batch * self.batch_size:(batch + 1) * self.batch_size]
        places = (torch.arange(len(whole), device=whole.device)[self.mine] - 1) % len(whole)
        return whole[places], places

    def whole(self, batch: int) -> int:
        """The size of batch `batch` (0-based) over all processes: batch_size, or what the epoch's last one holds."""
        return min(self.batch_size, self.length - batch * self.batch_size)


class EpochSampler(Sampler):
    """The DataLoader path's BatchPlan: one epoch's (epoch, index) keys in the epoch's order."""

    def __init__(self, length: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int, shard=(0, 1)):
        self.plan = BatchPlan(length, batch_size, shuffle, drop_last, seed, shard)

    def __len__(self):
        return len(self._keys())

    def __iter__(self):
        return iter(self._keys())

    def _keys(self):
        plan = self.plan
        order = plan.order(torch.Generator())
        return [(plan.epoch, i) for _, chosen in plan.batches_left(order) for i in chosen.tolist()]


class SampledLoader:
    """The DataLoader path as a TrainLoader: the DataLoader, positioned through its EpochSampler's plan."""

    def __init__(self, loader: DataLoader):
        self.loader, self.plan = loader, loader.sampler.plan
        self.batches = self.plan.batches

    def start(self, epoch: int, batch: int = 0) -> None:
        self.plan.start(epoch, batch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


class SeededItems(Dataset):
    """Items keyed (epoch, index); each item's random transform steps draw from a seed of (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        state = torch.random.get_rng_state()  # the training process's own stream stays untouched
        # the CPU generator alone, which the transform steps draw from: torch.manual_seed also seeds every
        # accelerator's generator, and cost more per image than decoding it
        torch.default_generator.manual_seed(stream_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            torch.random.set_rng_state(state)


def collate(batch):
    """default_collate, leaving out images that could not be decoded (None), with one clear line when the images of
    a batch differ in size."""
    batch = [item for item in batch if item is not None]
    check_same_size([image.shape for image, _ in batch])
    return default_collate(batch)


def check_same_size(shapes) -> None:
    """One clear line when images of several sizes would have to share a batch."""
    sizes = sorted({shape_text(shape) for shape in shapes})
    if len(sizes) > 1:
        raise TrainlabError(
            f"images differ in size ({', '.join(sizes[:3])}): choose a transform that gives them one size, "
            "e.g. transform=resize, or add {type: resize, size: [H, W]} to the pipeline")


def _torchvision_set(cfg, train_tf, test_tf):
    import torchvision

    known = TORCHVISION_SETS[cfg.name]
    dataset = getattr(torchvision.datasets, known.name)
    root = Path(cfg.root).expanduser()
    made = missing_folders(root)  # the download makes them; a failed one should not leave them behind
    try:
        train = dataset(root, train=True, transform=train_tf, download=cfg.download)
        test = dataset(root, train=False, transform=test_tf, download=cfg.download)
    except (RuntimeError, URLError, OSError) as e:
        remove_if_empty(made)
        how = "connect to the internet once" if cfg.download else "set data.download=true while online"
        reason = one_line(e, 200)
        raise TrainlabError(
            f"{cfg.name} is not in {root.resolve()} and could not be fetched ({reason}): {how}, "
            f"or put {known.manual.format(root=root)}; or train offline: data=shapes (generated), or your own images with "
            "data=folder data.root=<folder>") from None
    return Sources(train, with_transform(train, test_tf), None, test, list(train.classes))

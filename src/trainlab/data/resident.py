"""The device-resident data path: decode a data set once into a uint8 tensor, cache it on disk, keep it on the training
device, and form batches by indexing a shuffled permutation there, the random steps run batched on the device.

For data sets that fit in memory (CIFAR-10, MNIST, shapes, small image folders) this removes the per-image Python work
that bounds the DataLoader path: decoding, PIL conversion and collation, every epoch.
"""
import hashlib
import json
import logging
import os
import secrets
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from trainlab import __version__
from trainlab.runs.checkpoint import DamagedFile, FileLock, read_record, save_checkpoint
from trainlab.runs.folder import temporary_name
from trainlab.data.datasets import (TORCHVISION_SETS, BatchPlan, every_nth, DataSplits, Loaders, build_datasets, check_same_size,
                           first_image, stream_seed, subset_indices, worker_processes)
from trainlab.data.image_folder import folder_classes, walk_folder
from trainlab.errors import TrainlabError, one_line, printable
from trainlab.data.splits import split
from trainlab.data.transforms import BatchedSteps, build_pipeline, split_for_device

log = logging.getLogger("trainlab")

MEMORY_SHARE = 0.5  # resident images may take up to this share of the device's free memory
SPLITS = ("train", "val", "test")


class NotResident(Exception):
    """The data cannot take the resident path (the reason says why); the DataLoader path can still run."""


@dataclass
class ResidentSplit:
    images: torch.Tensor  # (N, C, H, W) uint8 on the training device: the baked part of the pipeline, applied once
    targets: torch.Tensor  # (N,) int64 on the device

    def __len__(self):
        return len(self.targets)


class ResidentLoader:
    """A TrainLoader: batches of (images, labels) already on the device, by its BatchPlan; each batch's random steps
    draw from (seed, epoch, batch) alone, so `start(epoch, batch)` picks up mid-epoch exactly, and each image of a
    process's share gets what it gets in one process, a mix's partner included (the image before it in the whole
    batch, another process's: every image is resident, so it is made here again, with its own draws)."""

    def __init__(self, split: ResidentSplit, batch_size: int, shuffle: bool, drop_last: bool, steps: BatchedSteps,
                 seed: int, shard: tuple = (0, 1)):
        self.split, self.steps, self.seed = split, steps, seed
        self.plan = BatchPlan(len(split), batch_size, shuffle, drop_last, seed, shard)
        self.batches = self.plan.batches

    def start(self, epoch: int, batch: int = 0) -> None:
        self.plan.start(epoch, batch)

    def __len__(self):
        return self.batches - self.plan.first_batch

    def __iter__(self):
        generator, epoch = self.steps.generator, self.plan.epoch
        order = self.plan.order(generator, self.split.targets.device)
        shared = self.steps.mixes and self.plan.mine.step > 1
        for batch, index in self.plan.batches_left(order):
            seed, whole = stream_seed(self.seed, epoch, batch), self.plan.whole(batch)
            generator.manual_seed(seed)
            images = self.steps(self.split.images[index], index, epoch, (whole, self.plan.mine))
            partners = None
            if shared:  # the same draws again, the partners' taken: the stream then stands where one process's does
                generator.manual_seed(seed)
                chosen, places = self.plan.partners(order, batch)
                partners = (self.steps(self.split.images[chosen], chosen, epoch, (whole, places)),
                            self.split.targets[chosen])
            yield self.steps.mix(images, self.split.targets[index], partners)


def build_resident(data_cfg, steps: dict, device: torch.device, seed: int, progress: bool, shard=(0, 1)) -> tuple:
    """Checked transform steps (train and test) -> (DataSplits, Loaders) on the resident path; NotResident says why
    it cannot be taken. Validation images go through the test pipeline."""
    try:
        bake_train, tail_train = split_for_device(steps["train"], "transform.train")
        bake_test, tail_test = split_for_device(steps["test"], "transform.test")
    except ValueError as e:
        raise NotResident(str(e)) from None
    decoded, classes = _decoded(data_cfg, bake_train, bake_test, device, progress)
    train, val, test = (_subset(decoded.get(name), data_cfg[key])
                        for name, key in (("train", "subset"), ("val", "val_subset"), ("test", "test_subset")))
    generator = torch.Generator(device=device).manual_seed(seed)
    train_steps = BatchedSteps(tail_train, generator, seed, len(classes))
    test_steps = BatchedSteps(tail_test, generator, seed)
    image_shape = tuple(train_steps(train.images[:1]).shape[1:])
    train_loader = ResidentLoader(train, data_cfg.batch_size, data_cfg.shuffle, data_cfg.drop_last, train_steps, seed,
                                  shard)

    def in_order(split_):  # this process's share, views of its images (the Evaluator sums the shares' scores)
        mine = every_nth(shard)
        return None if split_ is None else ResidentLoader(ResidentSplit(split_.images[mine], split_.targets[mine]),
                                                          data_cfg.eval_batch_size, False, False, test_steps, seed)

    return DataSplits(train, val, test, classes, image_shape), Loaders(train_loader, in_order(val), in_order(test))


def _subset(split: ResidentSplit, size) -> ResidentSplit:
    if not size or split is None:
        return split
    index = torch.tensor(subset_indices(len(split), size), device=split.targets.device)
    return ResidentSplit(split.images[index], split.targets[index])


def _decoded(data_cfg, bake_train: list, bake_test: list, device, progress) -> tuple:
    """-> ({split name: ResidentSplit}, classes): the splits there are (train, val, test) as uint8 tensors on `device`,
    from the cache when it matches the source, the splits' settings and the baked steps, else decoded (and the cache
    written). One process decodes: another building the same cache waits for it (a lock file beside the cache), then
    reads its cache. A cache folder that cannot be written is warned of and done without: the cache only saves time."""
    cache = _cache_path(data_cfg, bake_train, bake_test)
    lock, unwritable, key = None, None, None
    if cache is not None:
        key = cache_key()
        if key is None:
            log.warning(f"warning: data: no cache: its key ({user_cache() / KEY_FILE}) cannot be made or read; "
                        "decoding without one")
            cache = None
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(cache.with_name(cache.name + ".lock"),
                            waiting=f"data: another process is decoding into {cache}; waiting for it")
        except OSError as e:  # a cache there is still read: it was written whole
            unwritable = e.strerror or str(e)
    with lock or nullcontext():
        return _cached_or_decoded(cache, key, data_cfg, bake_train, bake_test, device, progress, unwritable)


def _cached_or_decoded(cache, key, data_cfg, bake_train: list, bake_test: list, device, progress,
                       unwritable: str = None) -> tuple:
    if cache is not None and cache.is_file() and not cache.is_symlink():
        try:
            # read, not mapped: a cache cut short while mapped killed the process with SIGBUS. For CIFAR-10 on the CPU
            # reading costs 0.11 s and the checksum 0.05 s at start-up, but the mapped pages cost more on first touch
            saved = read_record(cache, checked=True, key=key)
            classes = folder_classes(data_cfg)
            if classes is not None and list(saved["classes"]) != classes:
                raise DamagedFile(f"{cache} holds classes {printable(saved['classes'][:5])}, the folder "
                                  f"{printable(classes[:5])}")
            log.info(f"data: decoded images from {cache}")
            return ({k: ResidentSplit(saved[k].to(device), saved[k + "_targets"].to(device)) for k in SPLITS
                     if k in saved}, saved["classes"])
        except DamagedFile as e:  # a damaged cache, or one this user's trainlab did not write, is rebuilt
            log.warning(f"warning: data: cache {e}; decoding again")
        except Exception as e:
            log.warning(f"warning: data: cache {cache} unreadable ({one_line(e, 100)}); decoding again")
    sources = build_datasets(data_cfg, build_pipeline(bake_train, "decode"), build_pipeline(bake_test, "decode"))
    sets = dict(zip(SPLITS, split(sources, data_cfg.val_split, data_cfg.split_seed)))
    sets = {name: dataset for name, dataset in sets.items() if dataset is not None}
    _check_fits(data_cfg, sets.values(), device)
    splits = {name: _decode(dataset, f"decoding {data_cfg.name} {name}", progress) for name, dataset in sets.items()}
    if cache is not None and unwritable:
        log.warning(f"warning: data: the cache folder {cache.parent} cannot be written ({unwritable}); decoding "
                    "without a cache: free that path or make it writable to cache")
    elif cache is not None:
        saved = {"classes": list(sources.classes)}
        for name, (images, targets) in splits.items():
            saved.update({name: images, name + "_targets": targets})
        try:
            save_checkpoint(cache, saved, key=key)
            log.info(f"data: decoded images cached in {cache}")
        except OSError as e:  # a full disk, a read-only folder
            log.warning(f"warning: data: the cache {cache} cannot be written ({e.strerror or e}); training without it")
    return ({name: ResidentSplit(images.to(device), targets.to(device)) for name, (images, targets) in splits.items()},
            sources.classes)


def _decode(dataset, desc: str, progress: bool) -> tuple:
    """Every item of `dataset` (uint8 tensors, one size) -> ((N, C, H, W) uint8, (N,) int64), in parallel workers."""
    from tqdm import tqdm

    workers = worker_processes(min(8, os.cpu_count() or 1), asked=False)
    loader = DataLoader(dataset, batch_size=256, num_workers=workers, collate_fn=_stack)
    images, targets = [], []
    try:
        for batch, labels in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
            if isinstance(batch, list):  # the sizes differed: reported here, by this process, as one line
                check_same_size(batch)
            images.append(batch)
            targets.append(labels)
    except RuntimeError as e:  # torch's word for a worker that died (killed, out of memory), not one that raised
        if "DataLoader worker" not in str(e):
            raise
        raise TrainlabError(f"{desc}: a decoding process died ({one_line(e, 120)}), most often for want of "
                            "memory: free some, then run the same command again; trainer.data_path=loader decodes "
                            "as it trains instead") from None
    check_same_size([b.shape[1:] for b in images])
    return torch.cat(images), torch.cat(targets)


def _stack(items):
    """A worker's batch as one tensor (one shared buffer, not one per image), or its images' shapes if they differ."""
    items = [item for item in items if item is not None]  # files that could not be decoded, skipped
    images, labels = [image for image, _ in items], torch.tensor([label for _, label in items], dtype=torch.long)
    if len({image.shape for image in images}) > 1:
        return [tuple(image.shape) for image in images], labels
    return torch.stack(images), labels


def _check_fits(data_cfg, datasets, device) -> None:
    datasets = list(datasets)
    sample = first_image(datasets[0])
    needed = sum(map(len, datasets)) * sample.numel()  # one byte per uint8 value
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > MEMORY_SHARE * free:
        raise NotResident(f"{data_cfg.name} needs {needed / 2**30:.1f} GiB decoded, more than {MEMORY_SHARE:.0%} of "
                          f"the {free / 2**30:.1f} GiB free on {device}")


def _cache_path(data_cfg, bake_train: list, bake_test: list):
    """<root>/.trainlab-cache/<name>-<fingerprint>.pt (or ~/.cache/trainlab when root is read-only); None for a
    generated data set, which is drawn faster than it would load. The fingerprint covers the source files (see
    source_stats), the settings that choose the images and the baked steps, so any change of those rebuilds it."""
    stats = source_stats(data_cfg)
    if not stats:
        return None
    root = Path(data_cfg.root).expanduser().resolve()
    choice = {k: data_cfg.get(k)  # bad_images: a cache that left a file out must not serve a run that would fail on it
              for k in ("name", "train_dir", "val_dir", "test_dir", "split", "val_split", "split_seed", "bad_images",
                        "max_pixels")}
    key = json.dumps([__version__, choice, bake_train, bake_test, stats], sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = root / CACHE_FOLDER
    if folder.is_symlink():  # it could point anywhere: this user's own cache folder instead
        log.warning(f"warning: data: {printable(folder)} is a symbolic link, not followed; caching in "
                    f"{user_cache()} instead")
    if folder.is_symlink() or not os.access(root, os.W_OK):
        folder = user_cache()
    return folder / f"{data_cfg.name}-{digest}.pt"


CACHE_FOLDER = ".trainlab-cache"
KEY_FILE = "cache.key"


def user_cache() -> Path:
    """This user's cache folder: ~/.cache/trainlab (or $XDG_CACHE_HOME/trainlab)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trainlab"


def cache_key():
    """This user's key for the caches' checksums, made on first use (user_cache()/cache.key, readable by the user
    alone): a cache in a data folder someone else handed over, or wrote into, does not match it and is decoded again,
    so the images and labels a run trains on come from the files themselves. None where it cannot be kept."""
    path = user_cache() / KEY_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            made = temporary_name(path)
            with os.fdopen(os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as f:
                f.write(secrets.token_bytes(32))
            try:
                os.link(made, path)  # whole or not at all; another process's key, made at the same time, wins
            except FileExistsError:
                pass
            finally:
                os.unlink(made)
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            key = f.read()
        return key if len(key) == 32 else None
    except OSError:
        return None


def files_fingerprint(cfg):
    """A digest of the data's file names (source_stats without the folders' times), which with the run's settings
    decide its train, validation and test splits: a run resumed on other files would be split otherwise (images it
    trained on could become validation images). None for a generated data set."""
    names = [entry for entry in source_stats(cfg) if "/ " not in entry]  # a folder's entry: "path/ <its time>"
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16] if names else None


def source_stats(cfg) -> list:
    """What the resident cache's fingerprint covers: every file name and the time each folder last changed (a file
    added, removed or renamed), as image_folder.walk_folder lists them; [] when the data is generated. No per-file stat:
    60,000 of them cost half a second of every start, and an image edited in place under the same name is rare enough
    to leave to `rm -r .trainlab-cache`."""
    if cfg.name in TORCHVISION_SETS:
        top = os.path.join(os.path.expanduser(cfg.root), TORCHVISION_SETS[cfg.name].folder)
    elif cfg.name == "folder":
        top = os.path.expanduser(cfg.root)
    else:
        return []
    if not os.path.isdir(top):
        return []  # not there yet: building the data set says why, or downloads it
    stats, skip = [], len(top) + 1
    for folder, files in walk_folder(top):  # the folders and files the data set lists: the cache's own left out
        if folder != top:  # the top folder changes when the cache folder appears in it
            stats.append(f"{folder[skip:]}/ {os.stat(folder).st_mtime_ns}")
        prefix = folder[skip:] + "/" if folder != top else ""
        stats += (prefix + name for name in files)
    return sorted(stats)

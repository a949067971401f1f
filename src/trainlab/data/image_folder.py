"""data=folder: any image folder in ImageFolder layout, listed by trainlab itself (hidden folders such as
.trainlab-cache are never classes; symlinks resolved, a file counted once, a loop left out), its image size learned,
and its files read as RGB images, an undecodable one named or skipped."""
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

from torch.utils.data import Dataset, Subset

from trainlab.errors import TrainlabError, printable
from trainlab.data.splits import Sources, hold_out, with_transform

log = logging.getLogger("trainlab")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
MIXED_SIZES_SIDE = 64  # data=folder's square side for images of many sizes (photos): small enough to train fast
SIZE_SAMPLE = 200  # image headers read to learn a folder's image size: about 0.1 s


def settle_image_size(cfg) -> Optional[str]:
    """The run's config, where data.image_size=null (data=folder's default): the images' own side when the files
    sampled evenly across the class folders are all one square size (CIFAR-10's 32x32: resizing them would cost
    time and teach nothing), else MIXED_SIZES_SIDE. Sets data.image_size -> what the run should say about resizing,
    or None when nothing is resized. An image of another size that the sample missed is resized like the rest."""
    from PIL import Image

    resizes = any("resize" in str(step.get("type")) for step in cfg.transform.train)
    cfg = cfg.data
    if cfg.name != "folder" or (cfg.image_size is not None and not resizes):
        return None
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise TrainlabError(f"data.root {root} is not a folder: point data.root at your images")
    files = sorted(os.path.join(folder, name) for folder, names in walk_folder(root)  # 60,000 files: 0.3 s
                   for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    sample = files[::max(1, len(files) // SIZE_SAMPLE)]
    sizes = {}
    for f in sample:
        try:
            if cfg.bad_images == "skip":  # a file the run will leave out must not choose the size: decoded whole
                size = read_image(f, "RGB", cfg.max_pixels).size
            else:
                with warnings.catch_warnings():  # an image past PIL's limit is data.bad_images' business too
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(f) as image:  # reads the header only
                        size = image.size
            sizes[size] = sizes.get(size, 0) + 1
        except (BadImage, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # a file that cannot be decoded is data.bad_images' business
    common = max(sizes, key=sizes.get) if sizes else None
    if cfg.image_size is None:
        one_square = len(sizes) == 1 and common[0] == common[1]
        cfg.image_size = common[0] if one_square else MIXED_SIZES_SIDE
        if one_square or not resizes:
            return None
        shown = ", ".join(f"{w}x{h}" for w, h in list(sizes)[:3]) + (", ..." if len(sizes) > 3 else "")
        return (f"images of {len(sizes)} sizes ({shown}): each is resized to {cfg.image_size}x{cfg.image_size} "
                f"(data.image_size=null; set it to choose another size)")
    if sizes and set(sizes) != {(cfg.image_size, cfg.image_size)}:
        w, h = common
        return (f"images are resized to {cfg.image_size}x{cfg.image_size} (data.image_size={cfg.image_size}); most "
                f"are {w}x{h}" + (" (data.image_size=null keeps their own size)" if len(sizes) == 1 and w == h else ""))
    return None


def folder_sources(cfg, train_tf, test_tf) -> Sources:
    """data=folder's Sources: root/<train_dir>/<class>/*, and val and test folders beside it where they exist; or
    root's class folders split by data.split."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise TrainlabError(f"data.root {root} is not a folder: point data.root at your images")

    def image_folder(path, transform, training=False):
        samples, classes = list_images(path)
        if training and len(classes) < 2:
            raise TrainlabError(
                f"{path} holds one class folder, {classes[0]} ({len(samples)} images): a classifier needs at least 2 "
                f"classes; add a folder of images for each other class beside {classes[0]}")
        return ImageFiles(samples, classes, transform, cfg.bad_images, cfg.max_pixels)

    if cfg.split is not None:  # root holds the class folders: data.split of each class is the test split
        whole = image_folder(root, train_tf, training=True)
        kept, held = hold_out(whole.targets, cfg.split, seed=0)  # fixed: the test images never change
        for_eval = with_transform(whole, test_tf)
        return Sources(Subset(whole, kept), Subset(for_eval, kept), None, Subset(for_eval, held), whole.classes)
    train_path = root / cfg.train_dir
    if not train_path.is_dir():
        raise TrainlabError(
            f"{train_path} is missing: data=folder reads class folders from {root}/{cfg.train_dir} (and "
            f"{cfg.val_dir} and {cfg.test_dir} beside it, where they exist); set data.train_dir, or data.split=0.2 "
            f"to split {root} itself")
    if cfg.val_dir and cfg.val_dir == cfg.test_dir:
        raise TrainlabError(
            f"data.val_dir and data.test_dir are both '{cfg.val_dir}': the test split must hold images no choice was "
            f"made on; set data.val_dir=null to hold out data.val_split of {cfg.train_dir} instead")
    train = image_folder(train_path, train_tf, training=True)
    found = {}
    for key in ("val_dir", "test_dir"):
        path = root / cfg[key] if cfg[key] else None
        if path is not None and path.is_dir():
            found[key] = image_folder(path, test_tf)
            if found[key].classes != train.classes:
                raise TrainlabError(f"{train_path} has classes {train.classes} but {path} has "
                                    f"{found[key].classes}: both need the same class folders")
    return Sources(train, with_transform(train, test_tf), found.get("val_dir"), found.get("test_dir"), train.classes)


def folder_classes(cfg):
    """data=folder's class names as the folder holds them now (its train folder's, or root's with data.split), without
    listing the images; None for another data set."""
    if cfg.name != "folder":
        return None
    path = Path(cfg.root).expanduser() / ("" if cfg.split is not None else cfg.train_dir)
    try:
        return _class_folders(path)
    except OSError:
        return None


def _class_folders(path) -> list:
    here = os.path.realpath(path)
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".")
                      and not (e.is_symlink() and _loop(e.path, os.path.realpath(e.path), here, (here,))))


def list_images(path: Path) -> tuple:
    """A folder of class folders -> ([(image path, label), ...], classes), in ImageFolder's order, both data paths
    alike. Hidden folders (.trainlab-cache, .ipynb_checkpoints) and files are not classes or images, as for every
    image tool; symlinks are followed as walk_folder says."""
    classes = _class_folders(path)
    if not classes:
        raise TrainlabError(f"{path} holds no class folder: each class needs a folder of images, {path}/<class>/*.jpg")
    samples, empty = [], []
    for label, name in enumerate(classes):
        found = [os.path.join(folder, f) for folder, names in sorted(walk_folder(os.path.join(path, name)))
                 for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS)]
        samples += [(f, label) for f in found]
        empty += [] if found else [name]
    if empty:
        raise TrainlabError(f"{path}: no image in the class folder(s) {', '.join(empty)}: each class needs a folder of "
                            f"images ({', '.join(IMAGE_EXTENSIONS)}); add some or remove the folder")
    return samples, classes


_LOOPS_TOLD = set()  # each loop said once per process, however often a folder is walked


def walk_folder(top: str) -> list:
    """[(folder, [file names])] for `top` and every folder under it, hidden ones left out, symlinks followed: a folder
    or file reached twice is listed once (a file where it is, a folder where the walk first meets it); a symlink back
    to a folder above it (a loop) is left out with a warning. Left out, not refused, as find -L, du -L and ripgrep -L
    do: a loop leads only to folders this walk lists anyway, so no image is lost (followed, it listed one class 41
    times)."""
    start = os.path.realpath(top)
    seen, pending, walked = {start}, [(str(top), (start,))], []
    while pending:
        folder, above = pending.pop()  # above: the real paths from top down to this folder
        here, files, linked, folders = above[-1], [], [], []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if not entry.is_symlink():  # most entries: no system call beyond the listing (60,000 files: 0.1 s)
                    if entry.is_dir():
                        folders.append((entry.name, entry.path, os.path.join(here, entry.name)))
                    else:
                        files.append(entry.name)
                    continue
                real = os.path.realpath(entry.path)
                if not entry.is_dir():
                    linked.append((entry.name, real))
                elif not _loop(entry.path, real, here, above):
                    folders.append((entry.name, entry.path, real))
        walked.append((folder, here, files, sorted(linked)))
        below = []
        for _, path, real in sorted(folders):
            if real not in seen:
                seen.add(real)
                below.append((path, above + (real,)))
        pending += reversed(below)  # popped in name order
    return _files_once(walked)


def _loop(link: str, real: str, here: str, above: tuple) -> bool:
    """Whether the symlink `link` in the folder `here` (real path; `above`: those the walk came down through) leads
    back to a folder above it, which is said once per process."""
    if real not in above and not here.startswith(real + os.sep):
        return False
    if link not in _LOOPS_TOLD:
        _LOOPS_TOLD.add(link)
        log.warning(f"warning: left out the symlink {printable(link)}: it points back to {printable(real)}, a folder "
                    "above it (a loop); the images there are counted once, where they are")
    return True


def _files_once(walked: list) -> list:
    """walk_folder's folders, each symlinked file kept unless the file it points to is listed already."""
    if not any(linked for *_, linked in walked):
        return [(folder, files) for folder, _, files, _ in walked]
    listed = {here: set(files) for _, here, files, _ in walked}
    kept = []
    for folder, _, files, linked in walked:
        for name, real in linked:
            where, file = os.path.split(real)
            if file not in listed.get(where, ()):
                listed.setdefault(where, set()).add(file)
                files = files + [name]
        kept.append((folder, files))
    return kept


class BadImage(Exception):
    """A file that cannot be read as an image: `problem` says why, `fix` what to do."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def read_image(path, mode: str, max_pixels: int):
    """An image file -> a PIL image in `mode` (RGB or L: grey, palette, RGBA and GIF files are converted). Its size
    is read from the header first: more than `max_pixels` pixels (data.max_pixels) is refused before decoding, as is
    what PIL calls a decompression bomb (a small file that decodes to gigabytes). BadImage says why a file cannot be
    read."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # PIL warns past Image.MAX_IMAGE_PIXELS: data.max_pixels decides instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as file:  # the header only; past twice PIL's limit it refuses by itself
                width, height = file.size
                if width * height > max_pixels:
                    raise BadImage(f"has {width}x{height} = {width * height:,} pixels, more than data.max_pixels="
                                   f"{max_pixels:,}", "shrink the image, or raise data.max_pixels")
                return eight_bit(file).convert(mode)
    except Image.DecompressionBombError as e:
        raise BadImage(f"is too large to decode safely ({str(e).rstrip('.')})", "shrink the image") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise BadImage(f"cannot be decoded ({e})", "remove or replace the file") from None


# TIFF's tags for the largest value a sample may take (MaxSampleValue, SMaxSampleValue): where the file says its range
MAX_SAMPLE_TAGS = (281, 341)


def eight_bit(image):
    """An image of more than 8 bits a channel (16-bit PNG and TIFF, 32-bit integer and float TIFF: PIL modes I;16*, I,
    F) -> the same picture as 8-bit grey, scaled by its range: the type's for 16 bits, the one the file gives, else
    the smallest of 0-1 (floats), 0-255 and 0-65535 that holds its values. convert("RGB") would clip instead (a 16-bit
    image all white, a float one all black). Other modes as they are; BadImage where no such range holds the values."""
    import numpy as np
    from PIL import Image

    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    given = next((image.tag_v2.get(t) for t in MAX_SAMPLE_TAGS if getattr(image, "tag_v2", {}).get(t)), None)
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif isinstance(given, (int, float)) and given > 0:
        top = float(given)
    else:
        top = next((t for t in ((1.0,) if image.mode == "F" else ()) + (255.0, 65535.0) if high <= t), None)
    if top is None or low < 0 or not np.isfinite(values).all():
        raise BadImage(f"is a mode-{image.mode} image with values from {low:g} to {high:g}, which no 8-bit range maps "
                       f"without losing them", "save it as 8 bits a channel (or scale its values to 0-65535)")
    return Image.fromarray(np.round(values.clip(0, top) * (255.0 / top)).astype(np.uint8), mode="L")


class ImageFiles(Dataset):
    """(path, label) pairs read as RGB images (read_image). A file that cannot be decoded, or has more pixels than
    data.max_pixels, stops the run naming it (bad_images=fail) or is left out of its batch with a warning (skip)."""

    def __init__(self, samples: list, classes: list, transform, bad_images: str, max_pixels: int):
        self.samples, self.classes, self.transform, self.bad_images = samples, classes, transform, bad_images
        self.max_pixels = max_pixels
        self.targets = [label for _, label in samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            image = read_image(path, "RGB", self.max_pixels)
        except BadImage as e:
            return self._bad(path, e.problem, e.fix)
        return (self.transform(image) if self.transform is not None else image), label

    def _bad(self, path, problem: str, fix: str) -> None:
        if self.bad_images == "skip":
            log.warning(f"warning: skipped {printable(path)}: {printable(problem)}")
            return None
        raise TrainlabError(f"{printable(path)} {printable(problem)}: {fix}, or set data.bad_images=skip") from None

"""A checkpoint's accuracy on its run's test split (or, with split=val, its validation split) (src/evaluate.py): each
class's, and a confusion matrix in TensorBoard; evaluated in the run's own numerics, so the same device gives the
accuracy the run logged."""
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from trainlab.data.datasets import build_data, build_loaders
from trainlab.errors import TrainlabError, printable, shape_text
from trainlab.inference.predict import Trained, check_required, load_trained
from trainlab.runs.folder import CLASS_ACC, CONFUSION_MATRIX, EVALUATE, EVALUATE_ACC, link_refusal, run_of
from trainlab.data.splits import sizes_text
from trainlab.runs.tensorboard import RunWriter
from trainlab.data.transforms import build_transforms, check_transforms

log = logging.getLogger("trainlab")

SPLITS = {"test": "test", "val": "validation"}


def evaluate_checkpoint(cfg: DictConfig) -> float:
    """cfg: checkpoint, split (test or val), data.root (null: the checkpoint's own), log_dir (null: <run
    folder>/evaluate) -> accuracy on that split of the run's data (the same images the run used); per-class accuracy
    logged, scalars and the confusion matrix in TensorBoard at step = the checkpoint's epoch."""
    if cfg.split not in SPLITS:
        raise TrainlabError(f"split={cfg.split} is not a split a checkpoint is scored on: use test or val")
    check_required(cfg)
    trained = load_trained(cfg.checkpoint)
    run_cfg, data = run_data(trained, cfg.data.max_pixels, cfg.data.root)
    if list(data.classes) != trained.classes:
        raise TrainlabError(f"the checkpoint knows classes {trained.classes[:5]}, data.root={run_cfg.data.root} "
                            f"has {list(data.classes)[:5]}: evaluate on data with the same class folders")
    if tuple(data.image_shape) != trained.image_shape:
        raise TrainlabError(f"the data's images come out {shape_text(data.image_shape)}, the model takes "
                            f"{shape_text(trained.image_shape)}: evaluate on images the checkpoint's pipeline can take")
    loader = getattr(build_loaders(run_cfg.data, data, run_cfg.trainer.seed), cfg.split)
    if loader is None:
        other = "val" if cfg.split == "test" else "test"
        sizes = sizes_text(data.train, data.val, data.test)
        raise TrainlabError(f"the run's data has no {SPLITS[cfg.split]} split ({sizes}): evaluate split={other}, or "
                            "give data.root a folder that has one")
    log.info(f"{trained.describe()} · data {printable(run_cfg.data.name)}: {len(loader.dataset):,} {cfg.split} images")
    confusion = confusion_matrix(trained, loader)
    acc, per_class = accuracies(confusion)
    log.info(f"accuracy {acc:.2%} ({confusion.trace()}/{confusion.sum()})")
    width = max(len(printable(name)) for name in trained.classes)
    for i, name in enumerate(trained.classes):
        images = confusion[i].sum()
        shown = f"{per_class[i]:7.2%} ({confusion[i, i]}/{images})" if images else "no test images"
        log.info(f"  {printable(name):<{width}}  {shown}")
    log_dir = Path(cfg.log_dir) if cfg.log_dir is not None else (run_of(trained.path) or trained.path.parent) / EVALUATE
    if cfg.log_dir is None and log_dir.is_symlink():  # the run folder may be someone else's: no write through a link
        raise TrainlabError(link_refusal(log_dir, "log_dir=..."))
    tags = write_tensorboard(log_dir, confusion, trained.classes, acc, per_class, trained.epoch or 0, cfg.split)
    log.info(f"TensorBoard: {', '.join(tags[:-1])} and {tags[-1]} in {log_dir}")
    return acc


def run_data(trained: Trained, max_pixels: int, root=None) -> tuple:
    """The data of the run that wrote `trained` (or the same classes under `root`), built as that run built it ->
    (the run's config as used here, DataSplits). What this command allows, not what the checkpoint (perhaps someone
    else's) asks: no download into its data.root, and this command's pixel budget."""
    run_cfg = OmegaConf.create(trained.config)
    if root is not None:
        run_cfg.data.root = str(root)
    run_cfg.data.download, run_cfg.data.max_pixels = False, max_pixels
    check_folder_layout(run_cfg.data, root is not None)
    return run_cfg, build_data(run_cfg.data, *build_transforms(check_transforms(run_cfg.transform)))


def check_folder_layout(data: DictConfig, given: bool) -> None:
    """A folder run's data.root must be laid out as the run's was: one clear line, in the terms evaluate takes, where
    its class folders are not in data.train_dir (data=folder's own line would say to set data.train_dir)."""
    if data.name != "folder" or data.split is not None:
        return
    root = Path(data.root).expanduser()
    if not root.is_dir() or (root / data.train_dir).is_dir():
        return  # data=folder's own line, or nothing to say
    found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    beside = " and ".join(f"{name}/" for name in (data.val_dir, data.test_dir) if name)
    raise TrainlabError(
        f"data.root={data.root} holds {', '.join(found[:5]) or 'no folder'} but no {data.train_dir}/: evaluate reads "
        f"a folder as the run did, the class folders in {data.train_dir}/ (the run's classes)"
        + (f", {beside} beside it where they exist" if beside else "") + "; give data.root a folder laid out so"
        + (", or leave data.root out to evaluate on the run's own data" if given else ""))


def confusion_matrix(trained: Trained, loader) -> np.ndarray:
    """-> (classes, classes) counts: row the true class, column the predicted one, by the run's Evaluator."""
    return trained.evaluator.confusion(loader, len(trained.classes)).numpy()


def accuracies(confusion: np.ndarray) -> tuple:
    """-> (overall accuracy, [accuracy of each class]); a class with no test images gets NaN."""
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore"):
        per_class = np.diag(confusion) / support
    return float(np.trace(confusion) / max(confusion.sum(), 1)), [float(a) for a in per_class]


def write_tensorboard(log_dir: Path, confusion: np.ndarray, classes: list, acc: float, per_class: list,
                      step: int, split: str = "test") -> list:
    """The accuracy as one scalar, and each class's as one chart beside the confusion matrix (a card per class would
    bury the run's own charts), under the split's group (test/, val/) -> the tags written."""
    tags = [tag.format(split=split) for tag in (EVALUATE_ACC, CLASS_ACC, CONFUSION_MATRIX)]
    writer = RunWriter(log_dir)
    try:
        writer.scalars({tags[0]: acc}, step)
        title = f"{split} split: {acc:.1%} ({int(np.trace(confusion))}/{int(confusion.sum())})"
        writer.image(tags[1], draw_class_accuracy(confusion, classes, per_class, title), step)
        writer.image(tags[2], draw_confusion(confusion, classes), step)
    finally:
        writer.close()
    return tags


def draw_class_accuracy(confusion: np.ndarray, classes: list, per_class: list, title: str = "") -> torch.Tensor:
    """-> (3, H, W) uint8 picture: a bar per class, its accuracy written beside it with the count it comes from."""
    from matplotlib.figure import Figure  # matplotlib only here; no pyplot, no display

    n = len(classes)
    figure = Figure(figsize=(7, min(1.5 + 0.3 * n, 20)), dpi=100)  # inches: a line a class, up to a screen
    axes = figure.add_subplot()
    rows = range(n)
    shown = [0.0 if np.isnan(a) else a for a in per_class]
    axes.barh(rows, shown, color="tab:blue")
    axes.set_yticks(rows, classes)
    axes.invert_yaxis()  # the first class on top, as in the confusion matrix
    axes.set_xlim(0, 1.3)  # room for the labels right of a full bar
    axes.set_xticks([0, 0.25, 0.5, 0.75, 1], ["0%", "25%", "50%", "75%", "100%"])
    axes.set_xlabel("accuracy")
    axes.set_title(title)
    for row, a in zip(rows, per_class):
        images = int(confusion[row].sum())
        text = f"{a:.1%} ({int(confusion[row, row])}/{images})" if images else "no images"
        axes.text(0.01 if np.isnan(a) else a + 0.01, row, text, va="center", fontsize=8)
    return _picture(figure)


def draw_confusion(confusion: np.ndarray, classes: list) -> torch.Tensor:
    """-> (3, H, W) uint8 picture of the matrix: each row shaded by its share of that class's images, so a class
    taken for another stands out however many images it has; the counts written in the cells."""
    from matplotlib.figure import Figure

    n = len(classes)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = min(3 + 0.5 * n, 20)  # inches: room for the labels, without growing past a screen for 100 classes
    figure = Figure(figsize=(side, side), dpi=100)
    axes = figure.add_subplot()
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(n), classes, rotation=45, ha="right")
    axes.set_yticks(range(n), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if n <= 30:  # beyond that the numbers no longer fit their cells
        for (row, column), count in np.ndenumerate(confusion):
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    return _picture(figure)


def _picture(figure) -> torch.Tensor:
    """A matplotlib figure drawn off screen -> (3, H, W) uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    figure.tight_layout()
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)

"""Use a trained model: the most likely classes of new images (src/predict.py), and a checkpoint's accuracy on a data
set's test split with a confusion matrix in TensorBoard (src/evaluate.py).

Both rebuild everything from the checkpoint alone: the model from its config's blocks, the pipeline from its
transform.test steps, the names from its classes; so a checkpoint copied to another machine works the same there.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from trainlab.checkpoint import BEST, load_checkpoint
from trainlab.data import IMAGE_EXTENSIONS, build_data, build_loaders
from trainlab.engine import resolve_device
from trainlab.errors import TrainlabError, one_line
from trainlab.models import build_model
from trainlab.step import Numerics
from trainlab.tensorboard import RunWriter
from trainlab.transforms import build_pipeline, build_transforms, check_transforms

log = logging.getLogger("trainlab")

NEEDED = ("model", "config", "classes", "image_shape")  # what prediction reads from the checkpoints run.py writes


@dataclass
class Trained:
    """A checkpoint's model, in eval mode on the device, with what it was trained on."""
    path: Path
    model: torch.nn.Sequential
    config: dict  # the composed config of the run that wrote it, resolved
    classes: list
    image_shape: tuple  # (C, H, W) the model takes
    epoch: int  # epochs done when it was written
    test_acc: float  # the run's test accuracy then (None: written mid-epoch, before any evaluation)
    device: torch.device

    def describe(self) -> str:
        when = f"epoch {self.epoch}" + (f", test acc {self.test_acc:.2%}" if self.test_acc is not None else "")
        return f"model {self.config['model']['name']} from {self.path} ({when}) · device {self.device}"


def load_trained(path) -> Trained:
    """A checkpoint file, or a run folder (its checkpoints/best.pt) -> Trained."""
    path = _checkpoint_file(Path(path).expanduser())
    state = load_checkpoint(path)
    missing = [key for key in NEEDED if not isinstance(state, dict) or key not in state]
    if missing:
        raise TrainlabError(f"{path} is a torch file but not a trainlab checkpoint (it holds no {missing[0]}): "
                            f"give checkpoints/{BEST} or last.pt from a run folder")
    classes, shape = list(state["classes"]), tuple(state["image_shape"])
    model = build_model(OmegaConf.create(state["config"]["model"]), shape, len(classes))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        reason = one_line(e, 200)
        raise TrainlabError(f"{path}: the weights do not fit the model its config describes ({reason})") from None
    device = resolve_device("auto")
    return Trained(path, model.to(device).eval(), state["config"], classes, shape, state.get("epoch"),
                   state.get("test_acc"), device)


def _checkpoint_file(path: Path) -> Path:
    if not path.is_dir():
        return path  # a missing file is reported by load_checkpoint
    for candidate in (path / "checkpoints" / BEST, path / BEST):
        if candidate.is_file():
            return candidate
    raise TrainlabError(f"{path} is a folder without checkpoints/{BEST}: give a run folder or a .pt file")


def check_required(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise TrainlabError(f"{missing[0]} is not set: add {missing[0]}=... to the command")


def predict(cfg: DictConfig) -> list:
    """cfg: checkpoint, image (a file, a folder, or a list of them), top_k -> [(path, [(class, probability), ...])],
    each image's top_k classes, most probable first; each image's block is logged as it is done."""
    check_required(cfg)
    top_k = cfg.top_k
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise TrainlabError(f"top_k={top_k} cannot work: it must be an integer, at least 1")
    images = OmegaConf.to_container(cfg.image) if OmegaConf.is_list(cfg.image) else [cfg.image]
    files = [file for image in images for file in image_files(image)]  # every path checked before any work
    trained = load_trained(cfg.checkpoint)
    log.info(trained.describe())
    prepare = ImagePreparer(trained)
    k = min(top_k, len(trained.classes))
    results = []
    for file in files:
        ranked = top_classes(trained, prepare(file), k)
        log.info(f"{file}\n" + "\n".join(f"  {p:.4f}  {name}" for name, p in ranked))
        results.append((file, ranked))
    return results


def image_files(target) -> list:
    """An image file as given, or every image file under a folder (recursively, sorted)."""
    path = Path(str(target)).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise TrainlabError(f"{path} holds no image files ({' '.join(IMAGE_EXTENSIONS)}): give another folder")
        return found
    if not path.is_file():
        raise TrainlabError(f"image {path} does not exist: give image=FILE or image=FOLDER")
    return [path]


class ImagePreparer:
    """An image file -> the (1, C, H, W) batch the model takes: decoded in the model's mode (RGB or grey), through
    the checkpoint's transform.test; resized to the model's size first where that pipeline does not bring it there
    (the tutorial's to_tensor keeps each photo's own size)."""

    def __init__(self, trained: Trained):
        self.shape, self.path = trained.image_shape, trained.path
        self.mode = "L" if self.shape[0] == 1 else "RGB"
        self.pipeline = build_pipeline(trained.config["transform"]["test"], "transform.test")
        self.told = False

    def __call__(self, path: Path) -> torch.Tensor:
        from PIL import Image

        image = open_image(path, self.mode)
        x = self.pipeline(image)
        if tuple(x.shape) != self.shape:
            height, width = self.shape[1:]
            if not self.told:  # once: a folder of photos would repeat it for every one
                log.info(f"note: transform.test of {self.path} gives {_size(x.shape)} for {path.name}, the model "
                         f"takes {_size(self.shape)}: such images are resized to {height}x{width} first")
                self.told = True
            x = self.pipeline(image.resize((width, height), Image.Resampling.BILINEAR))
            if tuple(x.shape) != self.shape:
                raise TrainlabError(f"transform.test of {self.path} gives {_size(x.shape)} even for a {height}x{width}"
                                    f" image, the model takes {_size(self.shape)}: the checkpoint cannot predict")
        return x.unsqueeze(0)


def open_image(path: Path, mode: str):
    from PIL import Image

    try:
        with Image.open(path) as file:
            return file.convert(mode)  # grey, palette (GIF) and RGBA files alike
    except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError, truncated files: OSErrors
        raise TrainlabError(f"{path} cannot be decoded ({e}): give an image file, or move it out of the way") from None


def _size(shape) -> str:
    return "x".join(map(str, shape))


@torch.no_grad()
def top_classes(trained: Trained, batch: torch.Tensor, k: int) -> list:
    """-> [(class, probability)] of the batch's one image, the k most probable, most probable first."""
    out = trained.model(batch.to(trained.device)).float()
    # A model may end in a softmax block itself; a second softmax would flatten its probabilities.
    probabilities = out if isinstance(trained.model[-1], torch.nn.Softmax) else out.softmax(dim=1)
    values, indices = probabilities[0].topk(k)
    return [(trained.classes[i], p) for i, p in zip(indices.tolist(), values.tolist())]


def evaluate_checkpoint(cfg: DictConfig) -> float:
    """cfg: checkpoint, data.root (null: the checkpoint's own), log_dir (null: <run folder>/evaluate) -> accuracy on
    the test split the run was tested on; per-class accuracy logged, scalars and the confusion matrix in TensorBoard
    at step = the checkpoint's epoch."""
    check_required(cfg)
    trained = load_trained(cfg.checkpoint)
    run_cfg = OmegaConf.create(trained.config)
    if cfg.data.root is not None:
        run_cfg.data.root = str(cfg.data.root)
    data = build_data(run_cfg.data, *build_transforms(check_transforms(run_cfg.transform)))
    if list(data.classes) != trained.classes:
        raise TrainlabError(f"the checkpoint knows classes {trained.classes[:5]}, data.root={run_cfg.data.root} "
                            f"has {list(data.classes)[:5]}: evaluate on data with the same class folders")
    if tuple(data.image_shape) != trained.image_shape:
        raise TrainlabError(f"the data's images come out {_size(data.image_shape)}, the model takes "
                            f"{_size(trained.image_shape)}: evaluate on images the checkpoint's pipeline can take")
    _, test_loader = build_loaders(run_cfg.data, data, run_cfg.trainer.seed)
    log.info(f"{trained.describe()} · data {run_cfg.data.name}: {len(data.test):,} test images")
    confusion = confusion_matrix(trained, test_loader, run_cfg.trainer)
    acc, per_class = accuracies(confusion)
    log.info(f"accuracy {acc:.2%} ({confusion.trace()}/{confusion.sum()})")
    width = max(map(len, trained.classes))
    for i, name in enumerate(trained.classes):
        images = confusion[i].sum()
        shown = f"{per_class[i]:7.2%} ({confusion[i, i]}/{images})" if images else "no test images"
        log.info(f"  {name:<{width}}  {shown}")
    log_dir = Path(cfg.log_dir) if cfg.log_dir is not None else _run_folder(trained.path) / "evaluate"
    write_tensorboard(log_dir, confusion, trained.classes, acc, per_class, trained.epoch or 0)
    log.info(f"TensorBoard: eval/acc, eval/acc/<class> and eval/confusion_matrix in {log_dir}")
    return acc


def _run_folder(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


@torch.no_grad()
def confusion_matrix(trained: Trained, loader, trainer: DictConfig) -> np.ndarray:
    """-> (classes, classes) counts: row the true class, column the predicted one. Evaluated in the run's precision
    and memory layout, so the same device gives the accuracy the run logged, to the image."""
    numerics = Numerics.choose(trained.device, trainer.precision, trainer.channels_last)  # as the run chose
    model, device, n = trained.model.to(memory_format=numerics.memory_format), trained.device, len(trained.classes)
    counts = torch.zeros(n * n, dtype=torch.long, device=device)
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with numerics.autocast():
            logits = model(numerics.layout(images))
        counts += torch.bincount(targets * n + logits.argmax(1), minlength=n * n)
    return counts.view(n, n).cpu().numpy()


def accuracies(confusion: np.ndarray) -> tuple:
    """-> (overall accuracy, [accuracy of each class]); a class with no test images gets NaN."""
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore"):
        per_class = np.diag(confusion) / support
    return float(np.trace(confusion) / max(confusion.sum(), 1)), [float(a) for a in per_class]


def write_tensorboard(log_dir: Path, confusion: np.ndarray, classes: list, acc: float, per_class: list,
                      step: int) -> None:
    writer = RunWriter(log_dir)
    try:
        values = {f"eval/acc/{name}": a for name, a in zip(classes, per_class) if not np.isnan(a)}
        writer.scalars({"eval/acc": acc, **values}, step)
        writer.image("eval/confusion_matrix", draw_confusion(confusion, classes), step)
    finally:
        writer.close()


def draw_confusion(confusion: np.ndarray, classes: list) -> torch.Tensor:
    """-> (3, H, W) uint8 picture of the matrix: each row shaded by its share of that class's images, so a class
    taken for another stands out however many images it has; the counts written in the cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib only here; no pyplot, no display
    from matplotlib.figure import Figure

    n = len(classes)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = min(3 + 0.5 * n, 20)  # inches: room for the labels, without growing past a screen for 100 classes
    figure = Figure(figsize=(side, side), dpi=100)
    canvas = FigureCanvasAgg(figure)
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
    figure.tight_layout()
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)

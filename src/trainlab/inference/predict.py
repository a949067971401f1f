"""Use a trained model: a checkpoint loaded as a model on the device with the run's Evaluator (load_trained, which
score.py and export.py use too), and the most likely classes of new images (src/predict.py), from a checkpoint or from
an ONNX export (trainlab.inference.exported).

Everything is rebuilt from the checkpoint alone: the model from its config's blocks, the pipeline from its
transform.test steps, the names from its classes; so a checkpoint copied to another machine works the same there.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab.runs.checkpoint import CHECKPOINT_KEYS, load_checkpoint
from trainlab.data.image_folder import IMAGE_EXTENSIONS, BadImage, read_image
from trainlab.training.device import resolve_device
from trainlab.training.evaluator import Evaluator
from trainlab.training.numerics import Numerics
from trainlab.errors import TrainlabError, one_line, printable, shape_text
from trainlab.inference.exported import NOT_READ, load_exported
from trainlab.models.build import build_model
from trainlab.runs.folder import BEST, CHECKPOINTS
from trainlab.data.transforms import build_pipeline

log = logging.getLogger("trainlab")

@dataclass
class Trained:
    """A checkpoint's model, in eval mode on the device, with what it was trained on, and the Evaluator that scores
    with it in the run's numerics (precision and layout), so the same device gives what the run logged."""
    path: Path
    model: torch.nn.Module
    config: dict  # the composed config of the run that wrote it, resolved
    classes: list
    image_shape: tuple  # (C, H, W) the model takes
    epoch: int  # epochs done when it was written
    val: dict  # that epoch's validation {"loss", "acc"} (None: no validation split, or written mid-epoch)
    test: dict  # the test split's {"loss", "acc"} with these weights, once the run has scored it; else None
    device: torch.device
    evaluator: Evaluator

    def describe(self, device: bool = True) -> str:
        when = f"epoch {self.epoch}"
        when += f", val acc {self.val['acc']:.2%}" if self.val else ""
        when += f", test acc {self.test['acc']:.2%}" if self.test else ""
        name, path = printable(self.config["model"]["name"]), printable(self.path)
        return f"model {name} from {path} ({when})" + (f" · device {self.device}" if device else "")


def load_trained(path) -> Trained:
    """A checkpoint file, or a run folder (its checkpoints/best.pt) -> Trained."""
    path = _checkpoint_file(Path(path).expanduser())
    state = load_checkpoint(path)
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
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
    trainer = state["config"].get("trainer", {})
    numerics = Numerics.choose(device, trainer.get("precision", "fp32"), trainer.get("channels_last"))  # as the run's
    model = model.to(device, memory_format=numerics.memory_format).eval()
    test = state.get("test")
    if test is not None and test.get("epoch") != state.get("epoch"):
        test = None  # last.pt of a run whose best epoch came earlier: these weights were not the ones tested
    return Trained(path, model, state["config"], classes, shape, state.get("epoch"), state.get("val"), test, device,
                   Evaluator(model, numerics, tta=trainer.get("tta", "none")))


def _checkpoint_file(path: Path) -> Path:
    if not path.is_dir():
        return path  # a missing file is reported by load_checkpoint
    for candidate in (path / CHECKPOINTS / BEST, path / BEST):
        if candidate.is_file():
            return candidate
    raise TrainlabError(f"{path} is a folder without checkpoints/{BEST}: give a run folder or a .pt file")


def load_for_prediction(path):
    """A checkpoint or run folder (load_trained), or an ONNX export with its preprocessing.json beside it
    (load_exported): both give predict the same fields (path, classes, image_shape, config's transform.test,
    describe(), evaluator.probabilities). A TorchScript file or a torch.export program is refused unread."""
    suffix = Path(str(path)).suffix.lower()
    if suffix in NOT_READ:
        raise TrainlabError(f"checkpoint={printable(path)} is {NOT_READ[suffix]}: predict reads only trainlab "
                            "checkpoints (a .pt file or a run folder) and ONNX exports (model.onnx with its "
                            "preprocessing.json), because loading a TorchScript file or a torch.export program can "
                            "run code from whoever made it; export the checkpoint with format=onnx to predict from an "
                            "export")
    return load_exported(path) if suffix == ".onnx" else load_trained(path)


def check_required(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise TrainlabError(f"{missing[0]} is not set: add {missing[0]}=... to the command")


def check_max_pixels(max_pixels) -> int:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise TrainlabError(f"data.max_pixels={printable(max_pixels)} cannot work: it must be an integer, at least 1")
    return max_pixels


def predict(cfg: DictConfig) -> list:
    """cfg: checkpoint (a checkpoint, a run folder or an ONNX export), image (a file, a folder, or a list of them),
    top_k -> [(path, [(class, probability), ...])], each image's top_k classes, most probable first; each image's
    block is logged as it is done."""
    check_required(cfg)
    top_k = cfg.top_k
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise TrainlabError(f"top_k={printable(top_k)} cannot work: it must be an integer, at least 1")
    max_pixels = check_max_pixels(cfg.data.max_pixels)
    files = given_images(cfg.image)  # every path checked before any work
    trained = load_for_prediction(cfg.checkpoint)
    log.info(trained.describe())
    prepare = ImagePreparer(trained, max_pixels)
    k = min(top_k, len(trained.classes))
    results, unread = [], []
    for file in files:  # every image that can be read is predicted; the others are named, then the exit says so
        try:
            ranked = top_classes(trained, prepare(file), k)
        except TrainlabError as e:
            if len(files) == 1:
                raise
            log.warning(f"warning: skipped {one_line(e)}")
            unread.append(file)
            continue
        log.info(f"{printable(file)}\n" + "\n".join(f"  {p:.4f}  {printable(name)}" for name, p in ranked))
        results.append((file, ranked))
    if unread:
        names = ", ".join(printable(f.name) for f in unread[:3]) + (", ..." if len(unread) > 3 else "")
        raise TrainlabError(f"{len(unread)} of {len(files)} images could not be read ({names}; each is named above "
                            f"with why); the other {len(files) - len(unread)} were predicted")
    return results


def given_images(image) -> list:
    """image=: a file, a folder or a list of them -> the image files, each path checked."""
    images = OmegaConf.to_container(image) if OmegaConf.is_list(image) else [image]
    return [file for each in images for file in image_files(each)]


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

    def __init__(self, trained, max_pixels: int):  # a Trained, or an Exported: the same fields
        self.shape, self.path, self.max_pixels = trained.image_shape, trained.path, max_pixels
        self.mode = "L" if self.shape[0] == 1 else "RGB"
        self.pipeline = build_pipeline(trained.config["transform"]["test"], "transform.test")
        self.told = False

    def __call__(self, path: Path) -> torch.Tensor:
        from PIL import Image

        image = open_image(path, self.mode, self.max_pixels)
        x = self.pipeline(image)
        if tuple(x.shape) != self.shape:
            height, width = self.shape[1:]
            if not self.told:  # once: a folder of photos would repeat it for every one
                log.info(f"note: transform.test of {self.path} gives {shape_text(x.shape)} for {printable(path.name)}, the model "
                         f"takes {shape_text(self.shape)}: such images are resized to {height}x{width} first")
                self.told = True
            x = self.pipeline(image.resize((width, height), Image.Resampling.BILINEAR))
            if tuple(x.shape) != self.shape:
                raise TrainlabError(f"transform.test of {self.path} gives {shape_text(x.shape)} even for a "
                                    f"{height}x{width} image, the model takes {shape_text(self.shape)}: the checkpoint "
                                    "cannot predict")
        return x.unsqueeze(0)


def open_image(path: Path, mode: str, max_pixels: int):
    try:
        return read_image(path, mode, max_pixels)
    except BadImage as e:
        raise TrainlabError(f"{printable(path)} {printable(e.problem)}: {e.fix}") from None


def top_classes(trained, batch: torch.Tensor, k: int) -> list:
    """-> [(class, probability)] of the batch's one image, the k most probable, most probable first."""
    values, indices = trained.evaluator.probabilities(batch)[0].topk(k)
    return [(trained.classes[i], p) for i, p in zip(indices.tolist(), values.tolist())]

"""A trained checkpoint as a file another runtime loads (src/export.py): ONNX for onnxruntime, TorchScript, or
torch.export's ExportedProgram, the batch size free in each, with preprocessing.json beside it (what to feed the model
and what its outputs mean).

The command checks its own work: the file is loaded back by its runtime and run on real images (up to 8 of the run's
own data, or image=) at two batch sizes, its logits within `tolerance` of PyTorch's; only then are the files moved
into the output folder, and never over a file that is there.
"""
import json
import logging
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from trainlab import __version__
from trainlab.data.transforms import check_pipeline, normalization
from trainlab.errors import TrainlabError, one_line, printable, shape_text
from trainlab.inference.exported import INPUT_NAME, LOGITS, PREPROCESSING, PROBABILITIES, OnnxEvaluator, onnx_session
from trainlab.inference.predict import (ImagePreparer, Trained, check_max_pixels, check_required, given_images,
                                        load_trained)
from trainlab.inference.score import run_data
from trainlab.launch import script
from trainlab.runs.folder import (EXPORT, link_refusal, missing_folders, remove_if_empty, run_of, shown_path,
                                 temporary_name)

log = logging.getLogger("trainlab")

CHECK_IMAGES = 8  # real images the export is checked on: the batch sizes checked are 1 and this
SCAN = 256  # of the run's data, the items looked at for images of the model's size (a folder of photos may vary)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    file: str  # the model file's name in the output folder
    runtime: str  # what loads it back, as the log names it
    write: Callable  # (model on the CPU, example batch, path, output name) -> None
    load: Callable  # (path, classes, softmax) -> a function from an image batch to its logits
    hint: str  # how to load it, for the last line


def dynamic_batch() -> tuple:
    """The forward's one argument, (B, C, H, W), with B free (torch.export's Dim; the ONNX exporter takes it too)."""
    return ({0: torch.export.Dim("batch")},)


def write_onnx(model, example, path: Path, output: str) -> None:
    # dynamo=True: torch.export's graph, translated by onnxscript (the TorchScript-based exporter is deprecated);
    # external_data=False: the weights inside model.onnx, one file to copy (protobuf caps that at 2 GB)
    torch.onnx.export(model, (example,), str(path), dynamo=True, verbose=False, external_data=False,
                      input_names=[INPUT_NAME], output_names=[output], dynamic_shapes=dynamic_batch())


def load_onnx(path: Path, classes: int, softmax: bool):
    return OnnxEvaluator(onnx_session(path), path, classes, softmax).logits


def write_torchscript(model, example, path: Path, output: str) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit", FutureWarning)  # deprecated in favour of torch.export
        # traced: any nn.Module whose forward is tensor code; a batch size baked into it shows in the check at batch 1
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))


def load_torchscript(path: Path, classes: int, softmax: bool):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def write_program(model, example, path: Path, output: str) -> None:
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dynamic_batch()), str(path))


def load_program(path: Path, classes: int, softmax: bool):
    return torch.export.load(str(path)).module()


FORMATS = {
    "onnx": ExportFormat("onnx", "model.onnx", "onnxruntime", write_onnx, load_onnx,
                         "predict from it: python {predict} checkpoint={path} image=..."),
    "torchscript": ExportFormat("torchscript", "model.ts", "torch.jit.load", write_torchscript, load_torchscript,
                                "load it: torch.jit.load('{path}')"),
    "exported_program": ExportFormat("exported_program", "model.pt2", "torch.export.load", write_program,
                                     load_program, "load it: torch.export.load('{path}').module()"),
}


def export_checkpoint(cfg: DictConfig) -> Path:
    """cfg: checkpoint, format, out (null: <run folder>/export/<format>), image (null: the run's own data), tolerance ->
    the model file written, with preprocessing.json beside it; both written only once the export is checked."""
    check_required(cfg)
    form = export_format(cfg.format)
    tolerance, max_pixels = check_tolerance(cfg.tolerance), check_max_pixels(cfg.data.max_pixels)
    files = None if cfg.image is None else given_images(cfg.image)[:CHECK_IMAGES]  # paths checked before any work
    trained = load_trained(cfg.checkpoint)
    out = output_folder(cfg.out, trained.path, cfg.format)
    names = [form.file, PREPROCESSING]
    for name in names:  # before anything is written, and before the minutes an export can take
        if os.path.lexists(out / name):
            raise TrainlabError(exists(out / name))
    log.info(trained.describe(device=False))
    images, source = check_images(trained, files, max_pixels)
    model = trained.model.to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()
    output = PROBABILITIES if ends_in_softmax(model) else LOGITS
    example = images if len(images) > 1 else images.repeat(2, 1, 1, 1)  # a batch of 1 would fix the size at 1
    with staged(out) as staging:
        write_model(form, model, example, staging / form.file, output, trained.path)
        difference = check_export(form, staging / form.file, model, images[:1], example, tolerance, source, output,
                                  len(trained.classes))
        record = preprocessing(trained, form, output, {"max_abs_difference": difference, "tolerance": tolerance,
                                                       "images": source})
        (staging / PREPROCESSING).write_text(json_text(record))
        place(staging, out, names)
    shown = printable(shown_path(out / form.file))
    log.info(f"wrote {shown} ({(out / form.file).stat().st_size / 1e6:.2f} MB) and {PREPROCESSING} beside it; "
             + form.hint.format(path=shown, predict=script("predict.py")))
    return out / form.file


def export_format(name) -> ExportFormat:
    """format= -> its ExportFormat; for onnx, the packages it needs imported now, before any work."""
    if name not in FORMATS:
        raise TrainlabError(f"format={printable(name)} is not a format trainlab exports: use {', '.join(FORMATS)}")
    if name == "onnx":
        try:
            import onnx  # noqa: F401 (the exporter's model format)
            import onnxruntime  # noqa: F401 (the check runs the file in it)
            import onnxscript  # noqa: F401 (the exporter's translation of each op)
        except ImportError as e:
            raise TrainlabError(f"format=onnx needs onnx, onnxscript and onnxruntime ({e.name} is not installed): "
                                "pip install -e .") from None
    return FORMATS[name]


def check_tolerance(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise TrainlabError(f"tolerance={printable(value)} cannot work: it must be a number, at least 0 (the largest "
                            "difference of a logit allowed, e.g. 1e-4)")
    return float(value)


def output_folder(out, checkpoint: Path, form: str) -> Path:
    """out=, or export/<format>/ in the checkpoint's run folder (beside a .pt kept elsewhere), a folder a format so
    each has its preprocessing.json; never through a link there."""
    base = (run_of(checkpoint) or checkpoint.parent) / EXPORT
    folder = Path(str(out)).expanduser() if out is not None else base / form
    for link in (base, folder) if out is None else ():  # the run folder may be someone else's: no write through a link
        if link.is_symlink():
            raise TrainlabError(link_refusal(link, "out=..."))
    if folder.exists() and not folder.is_dir():
        raise TrainlabError(f"out={printable(folder)} is a file: give out= a folder")
    return folder


def exists(path: Path) -> str:
    return (f"{printable(path)} exists already: export never writes over a file; give out=ANOTHER_FOLDER, or move "
            "that export away first")


def ends_in_softmax(model: torch.nn.Module) -> bool:
    """Whether the model's outputs are probabilities already (its last module a softmax, as the Evaluator asks)."""
    return isinstance(list(model.modules())[-1], torch.nn.Softmax)


def check_images(trained: Trained, files, max_pixels: int) -> tuple:
    """-> (a real (B, C, H, W) batch, B <= CHECK_IMAGES, what it is in words): image='s files through the
    checkpoint's transform.test (as predict prepares them), or the run's own data as the run built it."""
    if files is not None:
        prepare = ImagePreparer(trained, max_pixels)
        return torch.cat([prepare(file) for file in files]), f"{len(files)} image{'s'[:len(files) > 1]} of image="
    try:
        _, data = run_data(trained, max_pixels)
    except TrainlabError as e:
        raise TrainlabError(f"the run's data cannot be read here to check the export on ({one_line(e, 160)}): give "
                            "image=FOLDER, a few images the model takes, to check it on those") from None
    name, split = next(((n, s) for n, s in (("test", data.test), ("val", data.val)) if s is not None and len(s)),
                       ("train", data.train))
    images = []
    for i in range(min(len(split), SCAN)):
        item = split[i]  # None: an image data.bad_images=skip passes over
        if item is not None and tuple(item[0].shape) == trained.image_shape:
            images.append(item[0])
        if len(images) == CHECK_IMAGES:
            break
    if not images:
        raise TrainlabError(f"none of the first {SCAN} {name} images of the run's data comes out "
                            f"{shape_text(trained.image_shape)} as the model takes: give image=FOLDER, a few images "
                            "to check the export on (resized as predict resizes them)")
    return torch.stack(images), f"{len(images)} {name} images of the run's data"


@contextmanager
def staged(out: Path):
    """A new folder inside `out` to write the export into, removed at the end whatever happens; `out` too (with the
    parents made for it) where it ends empty."""
    made = missing_folders(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = temporary_name(out / ".export")
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        remove_if_empty(made)


def write_model(form: ExportFormat, model, example: torch.Tensor, path: Path, output: str, checkpoint: Path) -> None:
    """The exporter's failure (an op it cannot translate, a batch size the model fixes) as one line."""
    try:
        with torch.no_grad(), quiet("onnxscript", "onnx_ir"):  # their optimiser logs each pass at INFO
            form.write(model, example, path, output)
    except Exception as e:  # noqa: BLE001 (each exporter raises its own types)
        others = " or ".join(f"format={name}" for name in FORMATS if name != form.name)
        raise TrainlabError(f"format={form.name} cannot export the model of {printable(checkpoint)} "
                            f"({exporter_reason(e)}): try {others}; HYDRA_FULL_ERROR=1 shows the exporter's report"
                            ) from e


@contextmanager
def quiet(*loggers: str):
    """Those loggers' INFO lines left out for a while (Hydra's logging shows INFO from every logger)."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


ESCAPES = re.compile(r"\x1b\[[0-9;]*m")  # the ONNX exporter colours its report


def exporter_reason(error: Exception) -> str:
    """An exporter's error -> its gist: the ONNX exporter's first '<class ...>: why' line of its summary (the op it
    has no translation for), else the message's first line."""
    text = ESCAPES.sub("", str(error))
    summary = [line for line in text.partition("## Exception summary")[2].splitlines() if line.startswith("<class ")]
    first = summary[0].split(">: ", 1)[-1] if summary else next((line for line in text.splitlines() if line.strip()),
                                                               type(error).__name__)
    return one_line(first, 240)


def check_export(form: ExportFormat, path: Path, model, one: torch.Tensor, example: torch.Tensor, tolerance: float,
                 source: str, output: str, classes: int) -> float:
    """The file loaded back by its runtime, its logits against PyTorch's on one image and on the example batch (at
    least 2: the batch size is free) -> the largest difference; one line where it is over."""
    try:
        exported = form.load(path, classes, output == PROBABILITIES)
    except TrainlabError:
        raise
    except Exception as e:  # noqa: BLE001 (each runtime raises its own types)
        raise TrainlabError(f"{form.runtime} cannot load the {form.file} just exported ({one_line(e, 200)})") from e
    worst = 0.0
    for batch in (one, example):
        want = logits_of(model, batch, "PyTorch")
        got = logits_of(exported, batch, f"{form.runtime}, exported as {form.file}")
        difference = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
        if not difference <= tolerance:  # NaN too
            raise TrainlabError(f"format={form.name}: {form.runtime}'s logits differ from PyTorch's by up to "
                                f"{difference:.3g} on a batch of {len(batch)} of {source}, more than tolerance="
                                f"{tolerance:g}: nothing was written; try another format, or a larger tolerance=")
        worst = max(worst, difference)
    log.info(f"export format={form.name}: {form.runtime}'s logits match PyTorch's to {worst:.2e} (tolerance "
             f"{tolerance:g}) on {source}, at batch 1 and {len(example)}")
    return worst


def logits_of(model, batch: torch.Tensor, where: str) -> torch.Tensor:
    """A model's (PyTorch's, or an exported one's) logits of `batch`; its failure as one line."""
    try:
        with torch.no_grad():
            return torch.as_tensor(model(batch)).float()
    except TrainlabError:
        raise
    except Exception as e:  # noqa: BLE001 (each runtime raises its own types)
        raise TrainlabError(f"the model fails on a batch of {len(batch)} in {where} ({one_line(e, 200)}): a model "
                            "that fixes its batch size cannot be exported with a free one") from e


def preprocessing(trained: Trained, form: ExportFormat, output: str, checked: dict) -> dict:
    """preprocessing.json: what to feed the model and what its outputs mean, from the checkpoint alone."""
    steps = trained.config["transform"]["test"]
    stats = normalization(check_pipeline(steps, "transform.test"))
    run = run_of(trained.path)
    return {
        "format": form.name,
        "model_file": form.file,
        "model": trained.config["model"]["name"],
        "input": {"name": INPUT_NAME, "shape": list(trained.image_shape), "dtype": "float32",
                  "layout": "(batch, channels, height, width), any batch size"},
        "output": {"name": output, "shape": ["batch", len(trained.classes)]},
        "classes": list(trained.classes),
        "transform_test": steps,  # as the checkpoint's config writes them: applied to each image, in order
        "mean": list(stats[0]) if stats else None,  # its normalize step's statistics, null without one
        "std": list(stats[1]) if stats else None,
        "epoch": trained.epoch,
        "val_acc": trained.val["acc"] if trained.val else None,
        "test_acc": trained.test["acc"] if trained.test else None,
        "checkpoint": f"{run.name}/{trained.path.parent.name}/{trained.path.name}" if run else trained.path.name,
        "checked": checked,
        "trainlab_version": __version__,
    }


def json_text(record: dict) -> str:
    return json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def place(staging: Path, out: Path, names: list) -> None:
    """Move the checked files from `staging` into `out`, never over a file: a hard link fails where the name is taken,
    however it came to be taken since the start; where one of them fails, none of them stays."""
    placed = []
    try:
        for name in names:
            try:
                os.link(staging / name, out / name)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links
                if os.path.lexists(out / name):
                    raise FileExistsError(out / name) from None
                os.rename(staging / name, out / name)
            placed.append(out / name)
    except FileExistsError:
        for path in placed:
            path.unlink()
        raise TrainlabError(exists(out / name)) from None

"""An exported model read back for prediction: model.onnx run by onnxruntime on the CPU, with what the model needs to
know from the preprocessing.json that src/export.py writes beside it (classes, input shape, transform.test steps).

The JSON may come from someone else, so it is data: parsed only, every value's type checked, its transform steps
through the same checks as a checkpoint's transform.test (a step is one of trainlab's named steps, nothing is
imported or built from a string). Only ONNX is read: loading a TorchScript file or a torch.export program can run
code that whoever made it put there.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from trainlab.errors import TrainlabError, one_line, printable, shape_text

PREPROCESSING = "preprocessing.json"
INPUT_NAME = "image"  # (B, C, H, W) float32, through transform.test: what every export takes
LOGITS, PROBABILITIES = "logits", "probabilities"  # the output's name: probabilities where the model ends in a softmax
NOT_READ = {".pt2": "a torch.export program", ".ts": "a TorchScript file"}
MAX_SIDE = 4096  # the largest input side a JSON may give: each image resized to 4096x4096 takes 200 MB already
MAX_JSON_BYTES = 16_000_000  # ample for 100,000 class names


@dataclass
class Exported:
    """An ONNX export as predict reads it: the fields of a checkpoint's Trained that predict uses."""
    path: Path
    classes: list
    image_shape: tuple  # (C, H, W) the model takes
    config: dict  # {"model": {"name"}, "transform": {"test": steps}}: the part of a run's config predict reads
    record: dict  # preprocessing.json, checked
    evaluator: "OnnxEvaluator"

    def describe(self) -> str:
        epoch, val, test = (self.record.get(key) for key in ("epoch", "val_acc", "test_acc"))
        when = f"epoch {epoch}" if epoch is not None else "an export"
        when += f", val acc {val:.2%}" if val is not None else ""
        when += f", test acc {test:.2%}" if test is not None else ""
        name, path = printable(self.config["model"]["name"]), printable(self.path)
        return f"model {name} from {path} ({when}) · onnxruntime cpu"


class OnnxEvaluator:
    """An onnxruntime session on the CPU with an Evaluator's logits() and probabilities()."""

    def __init__(self, session, path: Path, classes: int, softmax: bool):
        self.session, self.path, self.classes, self.softmax = session, path, classes, softmax
        self.input, self.output = session.get_inputs()[0].name, session.get_outputs()[0].name

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.detach().to("cpu", torch.float32).contiguous().numpy()
        try:
            out = self.session.run([self.output], {self.input: batch})[0]
        except Exception as e:  # noqa: BLE001 (onnxruntime's own error types)
            raise TrainlabError(f"{printable(self.path)} fails on a {shape_text(batch.shape)} batch ("
                                f"{one_line(e, 200)}): export the checkpoint again") from None
        if tuple(out.shape) != (len(batch), self.classes):
            raise TrainlabError(f"{printable(self.path)} gives {shape_text(out.shape)} for {len(batch)} images, not a "
                                f"score for each of the {self.classes} classes its {PREPROCESSING} names: export the "
                                "checkpoint again")
        return torch.from_numpy(out.copy())

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        out = self.logits(images).float()
        return out if self.softmax else out.softmax(dim=1)


def load_exported(path) -> Exported:
    """model.onnx with its preprocessing.json beside it -> Exported, checked against each other."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrainlabError(f"checkpoint {printable(path)} does not exist")
    record = read_preprocessing(path.parent / PREPROCESSING, path)
    session = onnx_session(path)
    check_session(session, path, record)
    config = {"model": {"name": record["model"]}, "transform": {"test": record["transform_test"]}}
    evaluator = OnnxEvaluator(session, path, len(record["classes"]), record["output"]["name"] == PROBABILITIES)
    return Exported(path, record["classes"], tuple(record["input"]["shape"]), config, record, evaluator)


def onnx_session(path: Path):
    """onnxruntime's session over `path` on the CPU; one line where onnxruntime is missing or cannot read it."""
    try:
        import onnxruntime
    except ImportError:
        raise TrainlabError(f"{printable(path)} is an ONNX model: reading it needs onnxruntime, which is not "
                            "installed: pip install -e . (or pip install onnxruntime)") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about graph optimisations, not the user's
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 (onnxruntime's own error types)
        raise TrainlabError(f"{printable(path)} is not an ONNX model onnxruntime can run ({one_line(e, 200)}): "
                            "export the checkpoint again (python src/export.py checkpoint=... format=onnx)") from None


def check_session(session, path: Path, record: dict) -> None:
    """The model takes one float (B, C, H, W) input and gives one output, as its preprocessing.json says."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = tuple(record["input"]["shape"])
    problem = None
    if len(inputs) != 1 or len(outputs) < 1:
        problem = f"takes {len(inputs)} inputs and gives {len(outputs)} outputs, not one image batch and its scores"
    elif inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        problem = f"takes a {inputs[0].type} of {len(inputs[0].shape)} dimensions, not a float image batch"
    elif any(isinstance(got, int) and got != want for got, want in zip(inputs[0].shape[1:], shape)):
        problem = f"takes {shape_text(inputs[0].shape[1:])} images, its {PREPROCESSING} says {shape_text(shape)}"
    elif isinstance(outputs[0].shape[-1], int) and outputs[0].shape[-1] != len(record["classes"]):
        problem = f"gives {outputs[0].shape[-1]} scores, its {PREPROCESSING} names {len(record['classes'])} classes"
    if problem:
        raise TrainlabError(f"{printable(path)} {problem}: give the {PREPROCESSING} that was exported with it")


def read_preprocessing(path: Path, model: Path) -> dict:
    """preprocessing.json -> its record, every value's type checked; one line naming the key that is wrong."""
    if not path.is_file():
        raise TrainlabError(f"{printable(path)} is missing: predict reads an ONNX model's classes, input shape and "
                            f"transform.test from the {PREPROCESSING} src/export.py wrote beside it; put that file "
                            f"beside {printable(model.name)}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise TrainlabError(f"{printable(path)} is larger than {MAX_JSON_BYTES:,} bytes: not a {PREPROCESSING} of "
                            "src/export.py's")
    try:
        record = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise TrainlabError(f"{printable(path)} cannot be read as JSON ({one_line(e, 120)}): export the checkpoint "
                            "again") from None
    check_record(record, path)
    return record


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def check_record(record, path: Path) -> None:
    """The keys predict reads, each of the type src/export.py writes; then the transform steps as a checkpoint's."""
    from trainlab.data.transforms import check_pipeline

    def wrong(key: str, takes: str):
        raise TrainlabError(f"{printable(path)}: {key} must be {takes}; export the checkpoint again")

    if not isinstance(record, dict):
        wrong("the file", "a JSON object")
    if record.get("format") != "onnx":
        wrong("format", '"onnx" (predict reads ONNX exports only)')
    classes = record.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        wrong("classes", "a list of class names")
    if not isinstance(record.get("model"), str):
        wrong("model", "the model's name")
    put = record.get("input")
    shape = put.get("shape") if isinstance(put, dict) else None
    if not (isinstance(shape, list) and len(shape) == 3 and all(_count(v) for v in shape) and shape[0] in (1, 3)
            and max(shape[1:]) <= MAX_SIDE):
        wrong("input.shape", f"[channels (1 or 3), height, width], sides up to {MAX_SIDE}")
    output = record.get("output")
    if not isinstance(output, dict) or output.get("name") not in (LOGITS, PROBABILITIES):
        wrong("output.name", f'"{LOGITS}" or "{PROBABILITIES}"')
    if record.get("epoch") is not None and not _count(record["epoch"], 0):
        wrong("epoch", "a whole number or null")
    for key in ("val_acc", "test_acc"):
        value = record.get(key)
        if value is not None and not (_number(value) and 0 <= value <= 1):
            wrong(key, "a fraction from 0 to 1, or null")
    steps = record.get("transform_test")
    if not isinstance(steps, list) or not all(isinstance(s, dict) and all(_plain(v) for v in s.values())
                                              for s in steps):
        wrong("transform_test", "a list of steps, each an object of numbers, text or lists of numbers")
    check_pipeline(steps, f"transform_test of {printable(path)}")  # the checks a checkpoint's transform.test gets


def _count(value, least: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value) -> bool:
    """A step's value as a config writes one: a number, text, true/false, null, or a list of numbers."""
    return value is None or isinstance(value, (bool, str)) or _number(value) or (
        isinstance(value, list) and all(_number(v) for v in value))

"""Transform pipelines: a list of named steps from conf/transform/ -> a torchvision Compose, its order checked."""
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from omegaconf import OmegaConf
from torchvision import transforms as T

from trainlab.config import check_keys
from trainlab.errors import TrainlabError

PIL, TENSOR, ANY = "PIL image", "tensor", "any"


@dataclass(frozen=True)
class StepKind:
    make: Callable
    keys: dict = field(default_factory=dict)  # {key: type} the step takes; the first `required` must be set
    required: int = 0
    takes: str = ANY
    gives: Optional[str] = None  # None: the same kind as it takes


SIZE = (int, list)  # an int, or [height, width]
STEPS = {
    "to_tensor": StepKind(T.ToTensor, takes=PIL, gives=TENSOR),
    "normalize": StepKind(T.Normalize, {"mean": list, "std": list}, required=2, takes=TENSOR),
    "resize": StepKind(T.Resize, {"size": SIZE}, required=1),  # an int: the shorter side, keeping the aspect ratio
    "center_crop": StepKind(T.CenterCrop, {"size": SIZE}, required=1),
    "random_crop": StepKind(T.RandomCrop, {"size": SIZE, "padding": int}, required=1),
    "random_resized_crop": StepKind(T.RandomResizedCrop, {"size": SIZE, "scale": list}, required=1),
    "random_horizontal_flip": StepKind(T.RandomHorizontalFlip, {"p": float}),
    "random_vertical_flip": StepKind(T.RandomVerticalFlip, {"p": float}),
    "random_rotation": StepKind(T.RandomRotation, {"degrees": float}, required=1),
    "color_jitter": StepKind(T.ColorJitter, {"brightness": float, "contrast": float, "saturation": float, "hue": float}),
    "grayscale": StepKind(T.Grayscale, {"num_output_channels": int}),
    "pad": StepKind(T.Pad, {"padding": int}, required=1),
    "random_erasing": StepKind(T.RandomErasing, {"p": float, "scale": list}, takes=TENSOR),
}


class Pipeline(T.Compose):
    """A checked Compose that also knows its normalization, to undo it for the image grid."""

    def __init__(self, steps, normalization):
        super().__init__(steps)
        self.normalization = normalization  # (mean, std) of the last normalize step, or None


def build_pipeline(steps: Sequence, where: str) -> Pipeline:
    """Steps (each a mapping with `type` and its keys) -> Pipeline; `where` names it in errors (transform.train)."""
    built, kind, normalization = [], PIL, None
    for i, step in enumerate(steps):
        name = step.get("type")
        label = f"{where} step {i} ({name})"
        spec = STEPS.get(name)
        if spec is None:
            raise TrainlabError(f"{label}: unknown step; choose one of {', '.join(STEPS)}")
        given = check_keys(label, step, spec.keys, spec.required)
        if spec.takes != ANY and spec.takes != kind:
            fix = "put it after to_tensor" if spec.takes == TENSOR else "put it before to_tensor, or remove it"
            raise TrainlabError(f"{label}: needs a {spec.takes} but gets a {kind}: {fix}")
        kind = spec.gives or kind
        try:
            built.append(spec.make(**given))
        except (TypeError, ValueError) as e:
            raise TrainlabError(f"{label}: {e}") from None
        if name == "normalize":
            normalization = (given["mean"], given["std"])
    if kind != TENSOR:
        raise TrainlabError(f"{where} ends with a {kind}: add {{type: to_tensor}} so images can be batched")
    return Pipeline(built, normalization)


def build_transforms(cfg) -> tuple:
    """cfg.transform -> (train pipeline, test pipeline)."""
    steps = OmegaConf.to_container(cfg, resolve=True)  # plain values: `${data.mean}` filled in
    return build_pipeline(steps["train"], "transform.train"), build_pipeline(steps["test"], "transform.test")

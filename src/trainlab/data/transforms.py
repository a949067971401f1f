"""Transform pipelines: a list of named steps from conf/transform/ -> torchvision transforms, their order checked;
and the batched twin of the steps the device-resident path runs on the device.

torchvision is imported only when a per-image pipeline is built: importing it costs about a second of start-up that
the resident path never needs."""
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from trainlab.config.schema import check_keys
from trainlab.errors import TrainlabError

PIL, TENSOR, ANY = "PIL image", "tensor", "any"


@dataclass(frozen=True)
class StepKind:
    make: str  # the torchvision.transforms class
    keys: dict = field(default_factory=dict)  # {key: type} the step takes; the first `required` must be set
    required: int = 0
    takes: str = ANY
    gives: Optional[str] = None  # None: the same kind as it takes


SIZE = (int, list)  # an int, or [height, width]
STEPS = {
    "to_tensor": StepKind("ToTensor", takes=PIL, gives=TENSOR),  # uint8 -> float in [0, 1]
    "pil_to_tensor": StepKind("PILToTensor", takes=PIL, gives=TENSOR),  # uint8 kept: what the resident cache holds
    "normalize": StepKind("Normalize", {"mean": list, "std": list}, required=2, takes=TENSOR),
    "resize": StepKind("Resize", {"size": SIZE}, required=1),  # an int: the shorter side, keeping the aspect ratio
    "center_crop": StepKind("CenterCrop", {"size": SIZE}, required=1),
    # padding_mode: constant (zeros) or reflect (the edge mirrored, as airbench94's translate)
    "random_crop": StepKind("RandomCrop", {"size": SIZE, "padding": int, "padding_mode": str}, required=1),
    "random_resized_crop": StepKind("RandomResizedCrop", {"size": SIZE, "scale": list}, required=1),
    # alternate: true flips each image in every other epoch, from a random start of its own, so every two epochs see
    # both sides (airbench94's scheme; the resident path only)
    "random_horizontal_flip": StepKind("RandomHorizontalFlip", {"p": float, "alternate": bool}),
    "random_vertical_flip": StepKind("RandomVerticalFlip", {"p": float}),
    "random_rotation": StepKind("RandomRotation", {"degrees": float}, required=1),
    "color_jitter": StepKind("ColorJitter",
                             {"brightness": float, "contrast": float, "saturation": float, "hue": float}),
    "grayscale": StepKind("Grayscale", {"num_output_channels": int}),
    "pad": StepKind("Pad", {"padding": int}, required=1),
    # automatic augmentation policies (torchvision's), on the DataLoader path: one random op a image at a random
    # strength (TrivialAugment), or num_ops ops at one magnitude of 0-30 (RandAugment)
    "trivial_augment": StepKind("TrivialAugmentWide", {"num_magnitude_bins": int}, takes=PIL),
    "rand_augment": StepKind("RandAugment", {"num_ops": int, "magnitude": int}, takes=PIL),
    "random_erasing": StepKind("RandomErasing", {"p": float, "scale": list}, takes=TENSOR),
    # batch steps, last in transform.train, the resident path only: each batch's images mixed in pairs with their
    # labels (soft targets), the mixing ratio drawn from Beta(alpha, alpha); with both listed, each batch takes one
    "mixup": StepKind("MixUp", {"alpha": float}, takes=TENSOR),  # a blend of the two images
    "cutmix": StepKind("CutMix", {"alpha": float}, takes=TENSOR),  # a box of the other image pasted in
}
MIXES = {"mixup": 0.2, "cutmix": 1.0}  # the batch steps, and their alpha where a step sets none


class Pipeline:
    """Per-image transforms applied in order, like torchvision's Compose."""

    def __init__(self, transforms: list):
        self.transforms = transforms

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image


def check_pipeline(steps: Sequence, where: str) -> list:
    """Steps (each a mapping with `type` and its keys) -> the same steps as plain dicts, each step's keys and the
    order checked; `where` names the pipeline in errors (transform.train)."""
    checked, kind = [], PIL
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
        if checked and checked[-1]["type"] in MIXES and name not in MIXES:
            raise TrainlabError(f"{label}: comes after {checked[-1]['type']}, which mixes whole batches: put mixup "
                                "and cutmix last")
        checked.append({"type": name, **given})
    if kind != TENSOR:
        raise TrainlabError(f"{where} ends with a {kind}: add {{type: to_tensor}} so images can be batched")
    return checked


def build_pipeline(steps: Sequence, where: str) -> Pipeline:
    """Checked steps -> Pipeline of torchvision transforms."""
    from torchvision import transforms

    built = []
    for i, step in enumerate(check_pipeline(steps, where)):
        kwargs = {k: v for k, v in step.items() if k != "type"}
        if kwargs.pop("alternate", False) or step["type"] in MIXES:
            what = "mixes whole batches" if step["type"] in MIXES else "with alternate: true"
            raise TrainlabError(f"{where} step {i} ({step['type']}) {what}: it runs on the resident path only (data "
                                "held on the device): set trainer.data_path=resident, or leave it out")
        try:
            built.append(getattr(transforms, STEPS[step["type"]].make)(**kwargs))
        except (TypeError, ValueError) as e:
            raise TrainlabError(f"{where} step {i} ({step['type']}): {e}") from None
    return Pipeline(built)


def check_transforms(cfg) -> dict:
    """cfg.transform -> {"train": steps, "test": steps}, plain and checked (`${data.mean}` filled in)."""
    steps = OmegaConf.to_container(cfg, resolve=True)
    checked = {split: check_pipeline(steps[split], f"transform.{split}") for split in ("train", "test")}
    mixing = [i for i, step in enumerate(checked["test"]) if step["type"] in MIXES]
    if mixing:
        raise TrainlabError(f"transform.test step {mixing[0]} ({checked['test'][mixing[0]]['type']}): mixing belongs "
                            "in transform.train; images are scored as they are")
    return checked


def build_transforms(steps: dict) -> tuple:
    """check_transforms' result -> (train pipeline, test pipeline)."""
    return build_pipeline(steps["train"], "transform.train"), build_pipeline(steps["test"], "transform.test")


def normalization(steps: list):
    """(mean, std) of a pipeline's last normalize step, to undo it for the image grid; None without one."""
    found = [(s["mean"], s["std"]) for s in steps if s["type"] == "normalize"]
    return found[-1] if found else None


# The device-resident path (trainlab.data.resident) bakes a pipeline's leading deterministic PIL steps into a cached uint8
# tensor once, and runs the rest batched on the training device. These are the steps that can be baked ...
BAKED = {"resize", "center_crop", "grayscale", "pad"}
# ... and these have a batched twin below, drawing independent randomness for every image of the batch.
TWINNED = {"to_tensor", "pil_to_tensor", "normalize", "random_crop", "random_horizontal_flip", "random_vertical_flip",
           *MIXES}


def split_for_device(steps: list, where: str) -> tuple:
    """-> (steps to bake into the cache, steps to run batched on the device); ValueError names a step that has no
    batched twin (the data then goes through the DataLoader)."""
    cut = 0
    while cut < len(steps) and steps[cut]["type"] in BAKED:
        cut += 1
    for i, step in enumerate(steps[cut:], cut):
        if step["type"] not in TWINNED:
            raise ValueError(f"{where} step {i} ({step['type']}) has no batched twin on the device")
    return steps[:cut] + [{"type": "pil_to_tensor"}], steps[cut:]


class BatchedSteps:
    """The device twin of a pipeline's tail: (B, C, H, W) uint8 in, what the per-image pipeline gives out. A call may
    say which images of the split these are and in which epoch (`index`, `epoch`): alternating flips need both."""

    def __init__(self, steps: list, generator: torch.Generator, seed: int = 0, classes: int = 0):
        self.generator, self.seed, self.classes = generator, seed, classes
        self.index, self.epoch, self.share = None, None, None
        self.ops = [getattr(self, "_" + step["type"])(**{k: v for k, v in step.items() if k != "type"})
                    for step in steps if step["type"] not in MIXES]
        self.mixes = [(step["type"], step.get("alpha", MIXES[step["type"]])) for step in steps if step["type"] in MIXES]

    def __call__(self, images: torch.Tensor, index: torch.Tensor = None, epoch: int = None,
                 share: tuple = None) -> torch.Tensor:
        """`share`: (whole, mine) where these images are the part `mine` (a slice, BatchPlan.mine) of a training batch
        of `whole`: each image then gets the draws it gets in one process (_per_image)."""
        self.index, self.epoch, self.share = index, epoch, share
        for op in self.ops:
            images = op(images)
        return images

    def _per_image(self, n: int, draw) -> torch.Tensor:
        """`draw(k)` -> k per-image random values; for n images, or for the whole batch with this process's share
        taken, so a data-parallel run augments each image as one process does (and consumes the stream alike)."""
        if self.share is None:
            return draw(n)
        whole, mine = self.share
        return draw(whole)[mine]

    def mix(self, images: torch.Tensor, targets: torch.Tensor, partners: tuple = None) -> tuple:
        """The batch steps, after the others: (images, labels) -> (mixed images, soft targets (B, classes)), each
        image paired with the one before it in the batch (as torchvision's MixUp and CutMix pair them), one ratio a
        batch. Every draw comes from the batch's generator, so a resumed epoch mixes its batches alike. `partners`:
        (images, labels) of those before them, where the batch is shared out (ResidentLoader); else rolled here."""
        if not self.mixes:
            return images, targets
        other, other_targets = partners if partners is not None else (images.roll(1, 0), targets.roll(1, 0))
        draw = torch.randint(2 ** 62, (1,), device=self.generator.device, generator=self.generator)
        rng = np.random.default_rng(int(draw))
        kind, alpha = self.mixes[int(rng.integers(len(self.mixes)))]
        share = float(rng.beta(alpha, alpha))
        if kind == "mixup":
            images = images * share + other * (1 - share)
        else:  # a box of 1 - share of the area, centred anywhere, cut to the image, then the share it left
            h, w = images.shape[-2:]
            cut_h, cut_w = int(h * (1 - share) ** 0.5), int(w * (1 - share) ** 0.5)
            y, x = int(rng.integers(h)), int(rng.integers(w))
            top, bottom = max(y - cut_h // 2, 0), min(y + cut_h - cut_h // 2, h)
            left, right = max(x - cut_w // 2, 0), min(x + cut_w - cut_w // 2, w)
            images = images.clone()
            images[..., top:bottom, left:right] = other[..., top:bottom, left:right]
            share = 1 - (bottom - top) * (right - left) / (h * w)
        soft = torch.nn.functional.one_hot(torch.stack([targets, other_targets]), self.classes).float()
        return images, soft[0] * share + soft[1] * (1 - share)

    def _to_tensor(self):
        return lambda x: x.float().div(255)  # ToTensor's own arithmetic, so both paths give the same floats

    def _pil_to_tensor(self):
        return lambda x: x

    def _normalize(self, mean, std):
        def normalize(x):
            m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            return x.sub(m).div(s)
        return normalize

    def _random_crop(self, size, padding=0, padding_mode="constant"):
        height, width = (size, size) if isinstance(size, int) else size
        if padding_mode not in ("constant", "reflect"):
            raise TrainlabError(f"random_crop: padding_mode must be constant or reflect, not {padding_mode!r}")

        def crop(x):
            x = torch.nn.functional.pad(x, (padding,) * 4, mode=padding_mode)  # constant: zeros, RandomCrop's fill
            n, c, h, w = x.shape
            top = self._per_image(n, lambda k: torch.randint(0, h - height + 1, (k, 1, 1, 1), device=x.device,
                                                             generator=self.generator))
            left = self._per_image(n, lambda k: torch.randint(0, w - width + 1, (k, 1, 1, 1), device=x.device,
                                                              generator=self.generator))
            rows = top + torch.arange(height, device=x.device).view(1, 1, -1, 1)  # (N, 1, height, 1)
            cols = left + torch.arange(width, device=x.device).view(1, 1, 1, -1)  # (N, 1, 1, width)
            batch = torch.arange(n, device=x.device).view(-1, 1, 1, 1)
            channel = torch.arange(c, device=x.device).view(1, -1, 1, 1)
            return x[batch, channel, rows, cols]
        return crop

    def _flip(self, p, dim):
        def flip(x):
            chosen = self._per_image(len(x), lambda k: torch.rand(k, device=x.device, generator=self.generator)) < p
            return torch.where(chosen.view(-1, 1, 1, 1), x.flip(dim), x)
        return flip

    def _random_horizontal_flip(self, p=0.5, alternate=False):
        return self._alternating_flip if alternate else self._flip(p, 3)

    def _alternating_flip(self, x):
        """Image i is flipped in epoch e when its own bit (a hash of i and the seed) differs from e's parity."""
        if self.index is None:  # scoring: a fixed view
            return x
        mixed = (self.index.to(torch.int64) + self.seed * 40503) * 2654435761 % (2 ** 31)
        flipped = ((mixed >> 16) & 1) != (self.epoch % 2)
        return torch.where(flipped.view(-1, 1, 1, 1), x.flip(3), x)

    def _random_vertical_flip(self, p=0.5):
        return self._flip(p, 2)

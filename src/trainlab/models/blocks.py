"""Model blocks from conf/model/ -> nn.Sequential, with each block's input size inferred from the one before; the
summary table of any nn.Module."""
import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
from omegaconf import OmegaConf
from torch import nn

from trainlab.config.schema import check_keys
from trainlab.errors import TrainlabError, shape_text
from trainlab.models.whitening import Whiten, whiten_block


@dataclass(frozen=True)
class BlockKind:
    make: Callable  # (input shape without batch, **keys) -> nn.Module
    keys: dict = field(default_factory=dict)  # {key: type}; the first `required` must be set
    required: int = 0
    needs: str = "any"  # "image": (C, H, W) input; "flat": (F,) input


def _conv(shape, out_channels, kernel_size, stride=1, padding=0, bias=True, groups=1, dilation=1, init="default"):
    """init: default (PyTorch's), or dirac: as default, then the first filters set to pass their input channel
    through unchanged (an identity start, as airbench94's convs have it)."""
    if isinstance(padding, str) and padding not in ("same", "valid"):
        raise TrainlabError(f"conv: padding must be a number, same or valid, not {padding!r}")
    if padding == "same" and stride != 1:  # torch pads `same` only for stride 1
        raise TrainlabError("conv: padding: same needs stride 1; give the padding as a number for a strided conv")
    if init not in ("default", "dirac"):
        raise TrainlabError(f"conv: init must be default or dirac, not {init!r}")
    conv = nn.Conv2d(shape[0], out_channels, kernel_size, stride=stride, padding=padding, bias=bias, groups=groups,
                     dilation=dilation)
    if init == "dirac":
        with torch.no_grad():
            nn.init.dirac_(conv.weight[:conv.weight.size(1)])
    return conv


def _linear(shape, out_features, bias=True):
    return nn.Linear(shape[0], out_features, bias=bias)


def _batchnorm(shape, momentum=0.1, eps=1e-5, frozen_scale=False):
    """momentum in PyTorch's sense: the weight of each batch's statistics in the running ones (0.1; 1 less what some
    scripts call momentum). frozen_scale: the scale stays 1 and only the shift trains, as airbench's network has it."""
    norm = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(shape[0], eps=eps, momentum=momentum)
    norm.weight.requires_grad_(not frozen_scale)
    return norm


class Scale(nn.Module):
    """Its input times a fixed factor: a temperature on the logits (airbench divides them by 8: factor 0.125)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class Residual(nn.Module):
    """The inner blocks' output added to the input: `blocks(x) + shortcut(x)`, the shortcut the identity where the
    shapes agree, else a 1x1 conv of the stride that brings the input to the output's shape (and a batchnorm when the
    inner blocks use one), as in ResNet."""

    def __init__(self, blocks: nn.Sequential, shortcut: nn.Module):
        super().__init__()
        self.blocks, self.shortcut = blocks, shortcut

    def forward(self, x):
        return self.blocks(x) + self.shortcut(x)


def _residual(shape, blocks, label="residual", num_classes=None):
    inner, out = _build_blocks(blocks, shape, num_classes, f"{label}.")
    if out == tuple(shape):
        return Residual(nn.Sequential(*inner), nn.Identity())
    if len(shape) != 3 or len(out) != 3 or shape[1] % out[1] or shape[2] % out[2]:
        raise TrainlabError(f"{label}: its blocks turn {shape_text(shape)} into {shape_text(out)}, which a 1x1 "
                            "conv on the shortcut cannot match: keep images as images, and shrink them by whole "
                            "factors")
    stride = shape[1] // out[1]
    projection = [nn.Conv2d(shape[0], out[0], 1, stride=stride, bias=False)]
    if any(isinstance(m, nn.BatchNorm2d) for m in inner):
        projection.append(nn.BatchNorm2d(out[0]))
    return Residual(nn.Sequential(*inner), nn.Sequential(*projection))


def _layernorm(shape):
    return nn.LayerNorm(list(shape))  # over every feature of a sample: all of C x H x W for an image


POOL = {"kernel_size": int, "stride": int, "padding": int}
CONV = {"out_channels": int, "kernel_size": int, "stride": int, "padding": (int, str), "bias": bool, "groups": int,
        "dilation": int, "init": str}
BLOCKS = {
    "conv": BlockKind(_conv, CONV, required=2, needs="image"),
    "maxpool": BlockKind(lambda s, **k: nn.MaxPool2d(**k), {**POOL, "ceil_mode": bool}, 1, "image"),
    "avgpool": BlockKind(lambda s, **k: nn.AvgPool2d(**k), POOL, 1, "image"),
    "adaptive_avgpool": BlockKind(lambda s, output_size=1: nn.AdaptiveAvgPool2d(output_size), {"output_size": int},
                                  needs="image"),  # to output_size x output_size whatever the input's size
    "relu": BlockKind(lambda s: nn.ReLU()),
    "leaky_relu": BlockKind(lambda s, **k: nn.LeakyReLU(**k), {"negative_slope": float}),
    "silu": BlockKind(lambda s: nn.SiLU()),
    "tanh": BlockKind(lambda s: nn.Tanh()),
    "hardswish": BlockKind(lambda s: nn.Hardswish()),
    "sigmoid": BlockKind(lambda s: nn.Sigmoid()),
    "hardsigmoid": BlockKind(lambda s: nn.Hardsigmoid()),
    "gelu": BlockKind(lambda s: nn.GELU()),
    "identity": BlockKind(lambda s: nn.Identity()),
    "softmax": BlockKind(lambda s, dim=1: nn.Softmax(dim=dim), {"dim": int}),  # dim 1: over channels or features
    "batchnorm": BlockKind(_batchnorm, {"momentum": float, "eps": float, "frozen_scale": bool}),
    "scale": BlockKind(lambda s, factor: Scale(factor), {"factor": float}, required=1),  # e.g. on the logits
    "layernorm": BlockKind(_layernorm),
    "dropout": BlockKind(lambda s, **k: nn.Dropout(**k), {"p": float}),
    "dropout2d": BlockKind(lambda s, **k: nn.Dropout2d(**k), {"p": float}, needs="image"),  # whole channels
    "flatten": BlockKind(lambda s: nn.Flatten()),
    "linear": BlockKind(_linear, {"out_features": int, "bias": bool}, required=1, needs="flat"),
    # a first conv fitted to the training images' patches (trainlab/models/whitening.py)
    "whiten": BlockKind(whiten_block, {"kernel_size": int, "eps": float, "trainable": bool, "bias_epochs": int},
                        required=1, needs="image"),
    "residual": BlockKind(_residual, {"blocks": list}, required=1),
}


def check_blocks(cfg) -> list:
    """cfg.model -> [(label, kind, keys)], every block's type and keys checked (a residual's inner blocks too); needs
    no data, so runs first."""
    return _check_blocks(OmegaConf.to_container(cfg.blocks, resolve=True), "model block ")


def _check_blocks(blocks: list, prefix: str, top: bool = True) -> list:
    last_linear = max((i for i, b in enumerate(blocks) if isinstance(b, dict) and b.get("type") == "linear"),
                      default=None) if top else None
    checked = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise TrainlabError(f"{prefix}{i}: a block is a mapping with a type, e.g. {{type: relu}}, not {block!r}")
        label = f"{prefix}{i} ({block.get('type')})"
        kind = BLOCKS.get(block.get("type"))
        if kind is None:
            raise TrainlabError(f"{label}: unknown block type; choose one of {', '.join(BLOCKS)}")
        required = 0 if i == last_linear else kind.required  # the classifier's width defaults to the class count
        keys = check_keys(label, block, kind.keys, required)
        if kind.make is _residual:
            _check_blocks(keys["blocks"], f"{prefix}{i}.", top=False)
        checked.append((label, kind, keys))
    return checked


def build_blocks_model(cfg, image_shape: tuple, num_classes: int) -> nn.Sequential:
    """cfg.model, the (C, H, W) of the data and its class count -> the network, its sizes checked block by block."""
    layers, shape = _build_blocks(OmegaConf.to_container(cfg.blocks, resolve=True), tuple(image_shape), num_classes,
                                  "model block ")
    if shape != (num_classes,):
        raise TrainlabError(
            f"model {cfg.name} ends with output shape {shape}, but the data has {num_classes} classes: "
            "end the blocks with {type: linear} (its width defaults to the number of classes)")
    return nn.Sequential(*layers)


def _build_blocks(blocks: list, shape: tuple, num_classes, prefix: str) -> tuple:
    """Blocks -> ([layers], the output shape), each block's input the shape the one before gives."""
    layers = []
    for label, kind, keys in _check_blocks(blocks, prefix, top=num_classes is not None and prefix == "model block "):
        if kind.make is _linear:
            keys.setdefault("out_features", num_classes)
        if kind.make is _residual:
            keys.update(label=label.split(" (")[0], num_classes=None)
        if kind.needs == "image" and len(shape) != 3:
            raise TrainlabError(f"{label} needs image-shaped input (C, H, W) but gets {shape}: move it before flatten")
        if kind.needs == "flat" and len(shape) != 1:
            raise TrainlabError(f"{label} needs flat input but gets {shape}: put a {{type: flatten}} block before it")
        layer = kind.make(shape, **keys)
        shape = _output_shape(layer, shape, label)
        layers.append(layer)
    return layers, shape


def _output_shape(layer: nn.Module, shape: tuple, label: str) -> tuple:
    """Run a zero batch of two through one layer (eval mode, no grad) to learn its output shape."""
    layer.eval()
    try:
        with torch.no_grad():
            out = layer(torch.zeros(2, *shape))
    except RuntimeError as e:
        reason = str(e).splitlines()[0]
        raise TrainlabError(f"{label} cannot take input of shape {shape} ({reason}): "
                            "use larger images or fewer pooling blocks, or change this block") from None
    layer.train()
    return tuple(out.shape[1:])


class _Outputs:
    """Forward hooks that note each block as it starts (its row's place: a residual's row above its inner blocks')
    and its output shape as it ends: [name, depth, block, output shape]."""

    def __init__(self):
        self.rows, self.handles = [], []

    def watch(self, block: nn.Module, name: str, depth: int) -> None:
        row = [name, depth, block, ()]
        self.handles += [block.register_forward_pre_hook(functools.partial(self._start, row)),
                         block.register_forward_hook(functools.partial(self._end, row))]
        if isinstance(block, Residual):  # its inner blocks indented below it, then its shortcut
            for inner, child in block.blocks.named_children():
                self.watch(child, f"{name}.{inner}", depth + 1)
            for inner, child in block.shortcut.named_children():  # a projection's conv (and batchnorm)
                self.watch(child, f"{name}.shortcut.{inner}", depth + 1)

    def _start(self, row, block, inputs):
        self.rows.append(row)

    @staticmethod
    def _end(row, block, inputs, output):
        row[3] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def summary_table(model: nn.Module, image_shape: tuple) -> str:
    """A table of the model's top-level blocks (its children, in the order they run on a zero batch; a residual's
    inner blocks indented below it) with each one's output shape and parameter count, and the total: any nn.Module,
    not only a Sequential."""
    outputs = _Outputs()
    for name, child in model.named_children():
        outputs.watch(child, name, 0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *image_shape, device=next(model.parameters(), torch.zeros(())).device))
    finally:
        outputs.remove()
        model.train(was_training)
    rows = [(name, "  " * depth + _describe(block), shape_text(shape), f"{_parameters(block):,}")
            for name, depth, block, shape in outputs.rows]
    total = sum(p.numel() for p in model.parameters())
    header = ("#", "block", "output", "params")
    rows = [header, ("", "input", shape_text(image_shape), "")] + rows + [("", "total", "", f"{total:,}")]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}" for r in rows]
    return "\n".join(lines)


def _parameters(block: nn.Module) -> int:
    return sum(p.numel() for p in block.parameters())


def _describe(layer: nn.Module) -> str:
    """A short name with the settings that matter: `conv 3->32 k5 s1 p2`, `linear 1024->64`."""
    if isinstance(layer, Whiten):
        return (f"whiten {layer.in_channels}->{layer.out_channels} k{layer.kernel_size[0]}"
                + ("" if layer.weight.requires_grad else " fixed"))
    if isinstance(layer, nn.Conv2d):
        padding = layer.padding if isinstance(layer.padding, str) else f"p{layer.padding[0]}"  # same, valid
        extra = f" g{layer.groups}" if layer.groups > 1 else ""
        extra += f" d{layer.dilation[0]}" if layer.dilation[0] > 1 else ""
        extra += " no bias" if layer.bias is None else ""
        return (f"conv {layer.in_channels}->{layer.out_channels} k{layer.kernel_size[0]} s{layer.stride[0]} "
                f"{padding}{extra}")
    if isinstance(layer, Residual):
        return "residual" + (" + projection" if not isinstance(layer.shortcut, nn.Identity) else "")
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return f"adaptive_avgpool {layer.output_size}"
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        kind = "maxpool" if isinstance(layer, nn.MaxPool2d) else "avgpool"
        return f"{kind} k{layer.kernel_size} s{layer.stride} p{layer.padding}"
    if isinstance(layer, nn.Linear):
        return f"linear {layer.in_features}->{layer.out_features}"
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"batchnorm {layer.num_features}" + (" scale 1" if not layer.weight.requires_grad else "")
    if isinstance(layer, Scale):
        return f"scale x{layer.factor:g}"
    if isinstance(layer, nn.Dropout):
        return f"dropout p{layer.p}"
    return type(layer).__name__.lower()

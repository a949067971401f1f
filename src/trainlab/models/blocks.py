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


@dataclass(frozen=True)
class BlockKind:
    make: Callable  # (input shape without batch, **keys) -> nn.Module
    keys: dict = field(default_factory=dict)  # {key: type}; the first `required` must be set
    required: int = 0
    needs: str = "any"  # "image": (C, H, W) input; "flat": (F,) input


def _conv(shape, out_channels, kernel_size, stride=1, padding=0):
    return nn.Conv2d(shape[0], out_channels, kernel_size, stride=stride, padding=padding)


def _linear(shape, out_features):
    return nn.Linear(shape[0], out_features)


def _batchnorm(shape):
    return nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])


POOL = {"kernel_size": int, "stride": int, "padding": int}
BLOCKS = {
    "conv": BlockKind(_conv, {"out_channels": int, **POOL}, required=2, needs="image"),
    "maxpool": BlockKind(lambda s, **k: nn.MaxPool2d(**k), POOL, 1, "image"),
    "avgpool": BlockKind(lambda s, **k: nn.AvgPool2d(**k), POOL, 1, "image"),
    "relu": BlockKind(lambda s: nn.ReLU()),
    "sigmoid": BlockKind(lambda s: nn.Sigmoid()),
    "hardsigmoid": BlockKind(lambda s: nn.Hardsigmoid()),
    "gelu": BlockKind(lambda s: nn.GELU()),
    "softmax": BlockKind(lambda s, dim=1: nn.Softmax(dim=dim), {"dim": int}),  # dim 1: over channels or features
    "batchnorm": BlockKind(_batchnorm),
    "dropout": BlockKind(lambda s, **k: nn.Dropout(**k), {"p": float}),
    "flatten": BlockKind(lambda s: nn.Flatten()),
    "linear": BlockKind(_linear, {"out_features": int}, required=1, needs="flat"),
}


def check_blocks(cfg) -> list:
    """cfg.model -> [(label, kind, keys)], every block's type and keys checked; needs no data, so runs first."""
    blocks = OmegaConf.to_container(cfg.blocks, resolve=True)
    last_linear = max((i for i, b in enumerate(blocks) if b.get("type") == "linear"), default=None)
    checked = []
    for i, block in enumerate(blocks):
        label = f"model block {i} ({block.get('type')})"
        kind = BLOCKS.get(block.get("type"))
        if kind is None:
            raise TrainlabError(f"{label}: unknown block type; choose one of {', '.join(BLOCKS)}")
        required = 0 if i == last_linear else kind.required  # the classifier's width defaults to the class count
        checked.append((label, kind, check_keys(label, block, kind.keys, required)))
    return checked


def build_model(cfg, image_shape: tuple, num_classes: int) -> nn.Sequential:
    """cfg.model, the (C, H, W) of the data and its class count -> the network, its sizes checked block by block."""
    layers, shape = [], tuple(image_shape)
    for label, kind, keys in check_blocks(cfg):
        if kind.make is _linear:
            keys.setdefault("out_features", num_classes)
        if kind.needs == "image" and len(shape) != 3:
            raise TrainlabError(f"{label} needs image-shaped input (C, H, W) but gets {shape}: move it before flatten")
        if kind.needs == "flat" and len(shape) != 1:
            raise TrainlabError(f"{label} needs flat input but gets {shape}: put a {{type: flatten}} block before it")
        layer = kind.make(shape, **keys)
        shape = _output_shape(layer, shape, label)
        layers.append(layer)
    if shape != (num_classes,):
        raise TrainlabError(
            f"model {cfg.name} ends with output shape {shape}, but the data has {num_classes} classes: "
            "end the blocks with {type: linear} (its width defaults to the number of classes)")
    return nn.Sequential(*layers)


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
    """A forward hook that notes each top-level block's output as it runs: (name, block, output shape)."""

    def __init__(self):
        self.seen = []

    def hook(self, name: str):
        return functools.partial(self._note, name)

    def _note(self, name, block, inputs, output):
        shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
        self.seen.append((name, block, shape))


def summary_table(model: nn.Module, image_shape: tuple) -> str:
    """A table of the model's top-level blocks (its children, in the order they run on a zero batch) with each one's
    output shape and parameter count, and the total: any nn.Module, not only a Sequential."""
    outputs = _Outputs()
    handles = [child.register_forward_hook(outputs.hook(name)) for name, child in model.named_children()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *image_shape, device=next(model.parameters(), torch.zeros(())).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    rows = [(name, _describe(block), shape_text(shape), f"{sum(p.numel() for p in block.parameters()):,}")
            for name, block, shape in outputs.seen]
    total = sum(p.numel() for p in model.parameters())
    header = ("#", "block", "output", "params")
    rows = [header, ("", "input", shape_text(image_shape), "")] + rows + [("", "total", "", f"{total:,}")]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}" for r in rows]
    return "\n".join(lines)


def _describe(layer: nn.Module) -> str:
    """A short name with the settings that matter: `conv 3->32 k5 s1 p2`, `linear 1024->64`."""
    if isinstance(layer, nn.Conv2d):
        return (f"conv {layer.in_channels}->{layer.out_channels} k{layer.kernel_size[0]} "
                f"s{layer.stride[0]} p{layer.padding[0]}")
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        kind = "maxpool" if isinstance(layer, nn.MaxPool2d) else "avgpool"
        return f"{kind} k{layer.kernel_size} s{layer.stride} p{layer.padding}"
    if isinstance(layer, nn.Linear):
        return f"linear {layer.in_features}->{layer.out_features}"
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"batchnorm {layer.num_features}"
    if isinstance(layer, nn.Dropout):
        return f"dropout p{layer.p}"
    return type(layer).__name__.lower()

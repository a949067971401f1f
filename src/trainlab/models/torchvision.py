"""Any classification network torchvision builds, by name (`model=torchvision model.arch=resnet18`): the name checked
against torchvision's own list, never imported or evaluated from the string; the classifier sized to the data's
classes, the first conv to its channels, and with model.small_input a stem for 32x32 images, as CIFAR ResNets have.
torchvision is imported only when such a model is chosen (a second of start-up)."""
import difflib

import torch
from torch import nn

from trainlab.errors import TrainlabError, shape_text

SHOWN = ("resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16")  # examples in the error line


def classifier_names() -> list:
    """The classification builders torchvision lists (not its detection, segmentation or video ones)."""
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def check_arch(arch) -> None:
    names = classifier_names()
    if arch not in names:
        raise unknown_arch(arch, names, "a classification model torchvision builds", SHOWN,
                           "torchvision.models.list_models()")


def unknown_arch(arch, names: list, what: str, shown, listed_by: str) -> TrainlabError:
    """model.arch names none of a library's `names`: the line, with the closest name where one is close."""
    close = difflib.get_close_matches(str(arch), names, n=1, cutoff=0.75)
    hint = f": did you mean model.arch={close[0]}?" if close else ""
    return TrainlabError(f"model.arch={arch} is not {what}{hint}; e.g. {', '.join(shown)} (all {len(names)}: "
                         f"{listed_by})")


def build_torchvision(cfg, image_shape: tuple, num_classes: int) -> nn.Module:
    """cfg.model (arch, small_input), the data's (C, H, W) and class count -> the network, randomly initialised."""
    import torchvision.models

    check_arch(cfg.arch)
    model = torchvision.models.get_model(cfg.arch, weights=None, num_classes=num_classes)
    if cfg.get("small_input"):
        _small_stem(model, cfg.arch, image_shape[0])
    _fit_channels(model, image_shape[0])
    check_input(model, cfg.arch, image_shape, num_classes)
    return model


def _small_stem(model: nn.Module, arch: str, channels: int) -> None:
    """A 3x3 stride-1 first conv and no first max-pool: a 32x32 image keeps its detail for the first stage."""
    if not (isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool")):
        raise TrainlabError(f"model.small_input=true is for torchvision's ResNets (resnet*, resnext*, wide_resnet*), "
                            f"not {arch}: resize the images for it instead (e.g. data.image_size=224, transform=resize)")
    model.conv1 = nn.Conv2d(channels, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


def _fit_channels(model: nn.Module, channels: int) -> None:
    """The first conv takes the data's channels (1 for MNIST) where it was made for another number."""
    name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if first.in_channels == channels:
        return
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Conv2d(
        channels, first.out_channels, first.kernel_size, first.stride, first.padding, first.dilation, first.groups,
        first.bias is not None))


def check_input(model: nn.Module, arch: str, image_shape: tuple, num_classes: int) -> None:
    """A zero batch through the network: images it cannot take are one line now, not a traceback mid-run."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *image_shape))
    except (RuntimeError, AssertionError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainlabError(f"model {arch} cannot take {shape_text(image_shape)} images ({reason}): resize them to "
                            "what it was made for (e.g. data.image_size=224 with transform=resize)") from None
    finally:
        model.train()
    if tuple(out.shape) != (2, num_classes):
        raise TrainlabError(f"model {arch} gives {shape_text(out.shape[1:])} per image, not {num_classes} class "
                            "scores: choose a classification model")

"""timm's architectures by name (`model=timm model.arch=convnext_atto`), with timm installed as an extra
(`pip install -e .[timm]`) and imported only when chosen: the name checked against timm's own list, never imported or
evaluated from the string; the classifier sized to the data's classes and the first conv to its channels by timm
itself (num_classes, in_chans)."""
from torch import nn

from trainlab.errors import TrainlabError, one_line
from trainlab.models.torchvision import check_input, unknown_arch

SHOWN = ("resnet18", "convnext_atto", "efficientnet_b0")  # examples in the error line
EXTRA = "timm is not installed: pip install -e .[timm] (model=timm is an optional extra)"


def _timm():
    try:
        import timm
    except ImportError:
        raise TrainlabError(EXTRA) from None
    return timm


def check_timm_arch(arch) -> None:
    """A name timm lists, with or without its pretrained tag (resnet18 or resnet18.a1_in1k)."""
    timm = _timm()
    if not timm.is_model(str(arch)):
        raise unknown_arch(arch, timm.list_models(), "an architecture timm builds", SHOWN, "timm.list_models()")


def build_timm(cfg, image_shape: tuple, num_classes: int, pretrained: bool = False) -> nn.Module:
    """cfg.model (arch, and model.pretrained where `pretrained` allows it: a new run's), the data's (C, H, W) and class
    count -> the network. With pretrained weights, timm fetches them (Hugging Face Hub; safetensors, or torch.load
    with weights_only) and leaves the classifier as initialised where the classes differ."""
    timm = _timm()
    check_timm_arch(cfg.arch)
    pretrained = pretrained and bool(cfg.get("pretrained"))
    try:
        model = timm.create_model(cfg.arch, pretrained=pretrained, num_classes=num_classes, in_chans=image_shape[0])
    except (OSError, RuntimeError, ValueError) as e:  # offline, a hub that refuses, weights timm cannot adapt
        if pretrained:
            raise TrainlabError(f"model.pretrained=true could not fetch timm's weights for {cfg.arch} "
                                f"({one_line(e, 120)}): download them where the internet is and give "
                                "model.pretrained=false model.weights=FILE") from None
        raise TrainlabError(f"timm cannot build {cfg.arch} for {num_classes} classes and {image_shape[0]} channels "
                            f"({one_line(e, 120)})") from None
    check_input(model, cfg.arch, image_shape, num_classes)
    return model

"""conf/model/'s choice -> the network: blocks (trainlab/models/blocks.py), a torchvision classifier by name
(trainlab/models/torchvision.py) or a timm one (trainlab/models/timm.py); then the weights it starts from and what of it
is frozen (trainlab/models/weights.py)."""
from torch import nn

from trainlab.errors import TrainlabError
from trainlab.models.blocks import build_blocks_model, check_blocks
from trainlab.models.timm import build_timm, check_timm_arch
from trainlab.models.torchvision import build_torchvision, check_arch
from trainlab.models.weights import freeze, load_weights, pretrained_file

LIBRARIES = ("torchvision", "timm")


def check_model(cfg) -> None:
    """cfg.model's keys and names, checked before any data is read."""
    if (cfg.get("blocks") is None) == (cfg.get("arch") is None):
        raise TrainlabError(f"model {cfg.get('name')} needs either blocks (a list of blocks) or arch (a torchvision "
                            "classifier's name), not both and not neither")
    if cfg.get("pretrained") and cfg.get("weights"):
        raise TrainlabError("model.pretrained=true and model.weights both name the weights to start from: keep one")
    if cfg.get("arch") is None:
        for key, why in (("small_input", "sets its own first conv"), ("pretrained", "has no library weights: give "
                                                                                   "model.weights=FILE")):
            if cfg.get(key):
                raise TrainlabError(f"model.{key} is for model=torchvision or model=timm; a model of blocks {why}")
        check_blocks(cfg)
    elif cfg.get("library") == "timm":
        if cfg.get("small_input"):
            raise TrainlabError("model.small_input is for torchvision's ResNets; with timm, resize the images or "
                                "choose an architecture made for small ones")
        check_timm_arch(cfg.arch)
    else:
        check_arch(cfg.arch)


def build_model(cfg, image_shape: tuple, num_classes: int, train: bool = False, new: bool = False) -> nn.Module:
    """cfg.model, the (C, H, W) of the data and its class count -> the network, its sizes checked. To `train`: its
    model.freeze applied, and for a `new` run (not one resumed from its checkpoint) model.weights or model.pretrained
    loaded first."""
    check_model(cfg)
    if cfg.get("arch") is None:
        model = build_blocks_model(cfg, image_shape, num_classes)
    elif cfg.get("library") == "timm":
        model = build_timm(cfg, tuple(image_shape), num_classes, pretrained=train and new)
    else:
        model = build_torchvision(cfg, tuple(image_shape), num_classes)
        if train and new and cfg.get("pretrained"):
            load_weights(model, pretrained_file(cfg.arch))
    if train and new and cfg.get("weights"):
        load_weights(model, cfg.weights)
    if train and cfg.get("freeze"):
        freeze(model, list(cfg.freeze))
    return model

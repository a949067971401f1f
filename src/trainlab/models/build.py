"""conf/model/'s choice -> the network: blocks (trainlab/models/blocks.py) or a torchvision classifier by name
(trainlab/models/torchvision.py)."""
from torch import nn

from trainlab.errors import TrainlabError
from trainlab.models.blocks import build_blocks_model, check_blocks
from trainlab.models.torchvision import build_torchvision, check_arch
from trainlab.models.weights import freeze, load_weights


def check_model(cfg) -> None:
    """cfg.model's keys and names, checked before any data is read."""
    if (cfg.get("blocks") is None) == (cfg.get("arch") is None):
        raise TrainlabError(f"model {cfg.get('name')} needs either blocks (a list of blocks) or arch (a torchvision "
                            "classifier's name), not both and not neither")
    if cfg.get("arch") is not None:
        check_arch(cfg.arch)
    else:
        if cfg.get("small_input"):
            raise TrainlabError("model.small_input is for torchvision ResNets (model=torchvision); a model of blocks "
                                "sets its own first conv")
        check_blocks(cfg)


def build_model(cfg, image_shape: tuple, num_classes: int, train: bool = False, new: bool = False) -> nn.Module:
    """cfg.model, the (C, H, W) of the data and its class count -> the network, its sizes checked. To `train`: its
    model.freeze applied, and for a `new` run (not one resumed from its checkpoint) model.weights loaded first."""
    check_model(cfg)
    if cfg.get("arch") is not None:
        model = build_torchvision(cfg, tuple(image_shape), num_classes)
    else:
        model = build_blocks_model(cfg, image_shape, num_classes)
    if train and new and cfg.get("weights"):
        load_weights(model, cfg.weights)
    if train and cfg.get("freeze"):
        freeze(model, list(cfg.freeze))
    return model

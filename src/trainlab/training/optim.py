"""Optimizer and loss from conf/: instantiated by `_target_`, on the allow-list only (trainlab/config/build.py); the
optimizer over parameter groups, each with its own settings (optimizer.groups, model.head_lr_scale)."""
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainlab.config.build import build, build_partial
from trainlab.config.schema import check_keys
from trainlab.errors import TrainlabError
from trainlab.models.weights import head_parameters

# What a group's `select` names: kinds of parameter, or else a module's name (layer4, 0, 3.blocks)
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
KINDS = {
    "norm": "the weights and biases of normalization layers (batchnorm, layernorm, groupnorm)",
    "bias": "every bias (norm layers' included)",
    "head": "the last linear layer's weight and bias",
}
GROUP_KEYS = {"select": str, "lr_scale": float, "weight_decay": float, "weight_decay_scale": float,
              "momentum": float, "orthogonalize": bool}
OWN_SETTINGS = ("momentum", "orthogonalize")  # a group's own value of a setting only some optimizers have


def build_optimizer(cfg: DictConfig, model: nn.Module, head_lr_scale=None) -> torch.optim.Optimizer:
    """conf/optimizer's choice over the model's parameter groups (param_groups)."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    groups = settings.pop("groups", None) or []
    if head_lr_scale is not None:  # model.head_lr_scale: fine-tuning's usual group, ahead of the optimizer's own
        groups = [{"select": "head", "lr_scale": head_lr_scale}] + groups
    optimizer = build_partial(OmegaConf.create(settings), "optimizer",
                              param_groups(model, settings.get("lr"), settings.get("weight_decay"), groups))
    takes = [k for k in GROUP_KEYS if k not in OWN_SETTINGS or k in optimizer.defaults]
    for i, group in enumerate(groups):  # SGD's momentum, Muon's orthogonalize: refused where they would do nothing
        unknown = sorted(set(group) - set(takes))
        if unknown:
            raise TrainlabError(f"optimizer.groups[{i}]: {unknown[0]} is not a setting of {type(optimizer).__name__};"
                                f" a group takes {', '.join(takes)}")
    return optimizer


def param_groups(model: nn.Module, lr: float, weight_decay=None, groups=()) -> list:
    """The groups the optimizer updates: each of `groups` (optimizer.groups: {select, lr_scale, weight_decay or
    weight_decay_scale, and momentum or orthogonalize where the optimizer has them}) takes the trainable parameters
    its `select` names that no group before it took, at lr x lr_scale and its own settings; the rest form the first
    group, at the optimizer's own settings (its rate is the run's `lr` in the logs). A group that selects nothing is
    left out, so a frozen backbone leaves the head alone."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    taken, built = set(), []
    for i, group in enumerate(groups):
        label = f"optimizer.groups[{i}]"
        keys = check_keys(label, group, GROUP_KEYS, required=1)
        names = selected(model, keys["select"], label) - taken
        taken |= names
        settings = {"params": [p for n, p in trainable if n in names]}
        if "lr_scale" in keys:
            settings["lr"] = lr * keys["lr_scale"]
        if "weight_decay" in keys and "weight_decay_scale" in keys:
            raise TrainlabError(f"{label}: give weight_decay or weight_decay_scale, not both")
        settings.update({key: keys[key] for key in OWN_SETTINGS if key in keys})
        if "weight_decay" in keys:
            settings["weight_decay"] = keys["weight_decay"]
        elif "weight_decay_scale" in keys:
            settings["weight_decay"] = (weight_decay or 0.0) * keys["weight_decay_scale"]
        built.append(settings)
    rest = {"params": [p for n, p in trainable if n not in taken]}
    return [group for group in [rest] + built if group["params"]]


def selected(model: nn.Module, select: str, label: str) -> set:
    """The names of the parameters `select` names: a kind of KINDS, or a module (its name, or a prefix of names)."""
    if select == "head":
        return head_parameters(model)
    if select in ("norm", "bias"):
        names = {f"{m}.{n}" if m else n for m, module in model.named_modules() if isinstance(module, NORMS)
                 for n, _ in module.named_parameters(recurse=False)}
        if select == "bias":
            names |= {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"}
        return names
    names = {n for n, _ in model.named_parameters() if n == select or n.startswith(select + ".")}
    if not names:
        kinds = "; ".join(f"{k}: {v}" for k, v in KINDS.items())
        raise TrainlabError(f"{label}: select: {select!r} names no parameter of the model; name a module (its "
                            f"parameters begin {', '.join(n for n, _ in list(model.named_parameters())[:3])}) or a "
                            f"kind ({kinds})")
    return names


def build_loss(cfg: DictConfig) -> nn.Module:
    return build(cfg, "loss")

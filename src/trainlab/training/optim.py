"""Optimizer and loss from conf/: instantiated by `_target_`, on the allow-list only (trainlab/config/build.py)."""
import torch
from omegaconf import DictConfig
from torch import nn

from trainlab.config.build import build, build_partial
from trainlab.models.weights import head_parameters


def build_optimizer(cfg: DictConfig, model: nn.Module, head_lr_scale=None) -> torch.optim.Optimizer:
    """conf/optimizer's choice over the model's parameter groups (param_groups)."""
    return build_partial(cfg, "optimizer", param_groups(model, cfg.get("lr"), head_lr_scale))


def param_groups(model: nn.Module, lr: float, head_lr_scale=None) -> list:
    """The groups the optimizer updates, each with its own settings: every trainable parameter in one group, or with
    model.head_lr_scale the head's (last linear layer's) in a second group at lr x that scale, as fine-tuning wants (a
    new head learns fast, pretrained layers slowly). The first group's rate is the run's `lr` in the logs."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if head_lr_scale is None:
        return [{"params": [p for _, p in trainable]}]
    head = head_parameters(model)
    groups = [{"params": [p for n, p in trainable if n not in head]},
              {"params": [p for n, p in trainable if n in head], "lr": lr * head_lr_scale}]
    return [group for group in groups if group["params"]]  # a frozen backbone leaves the head alone


def build_loss(cfg: DictConfig) -> nn.Module:
    return build(cfg, "loss")

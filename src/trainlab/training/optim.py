"""Optimizer and loss from conf/: instantiated by `_target_`, on the allow-list only (trainlab/config/build.py)."""
import torch
from omegaconf import DictConfig
from torch import nn

from trainlab.config.build import build, build_partial


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """conf/optimizer's choice over the model's parameter groups (param_groups)."""
    return build_partial(cfg, "optimizer", param_groups(model))


def param_groups(model: nn.Module) -> list:
    """The groups the optimizer updates, each with its own settings where a recipe wants them (no weight decay on
    biases and norms, say): today one group of every trainable parameter."""
    return [{"params": [p for p in model.parameters() if p.requires_grad]}]


def build_loss(cfg: DictConfig) -> nn.Module:
    return build(cfg, "loss")

"""Optimizer, learning-rate scheduler and loss from conf/: instantiated by `_target_`, on the allow-list only."""
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainlab.allowlist import check_config
from trainlab.errors import TrainlabError, one_line


def build_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    return _instantiate(_partial(cfg), "optimizer", params)


def _partial(cfg: DictConfig) -> DictConfig:
    """An optimizer or scheduler takes what only the run has (the parameters, the optimizer): built as a partial,
    whether or not its file says `_partial_: true`."""
    return cfg if cfg.get("_partial_") else OmegaConf.create({**OmegaConf.to_container(cfg, resolve=True),
                                                              "_partial_": True})


def build_scheduler(cfg: DictConfig, optimizer, total_steps: int):
    """-> (scheduler or None, interval): interval 'epoch' or 'step' says when train.run steps it."""
    if "_target_" not in cfg:
        return None, "epoch"
    settings = OmegaConf.to_container(cfg, resolve=True)
    interval = settings.pop("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise TrainlabError(f"scheduler.interval is '{interval}': use epoch or step")
    if "total_steps" in settings and settings["total_steps"] is None:
        settings["total_steps"] = total_steps
    return _instantiate(_partial(OmegaConf.create(settings)), "scheduler", optimizer), interval


def build_loss(cfg: DictConfig) -> nn.Module:
    return _instantiate(cfg, "loss")


class SoftmaxMSELoss(nn.Module):
    """Mean squared error between softmax(logits) and one-hot class targets: MSELoss made to fit classification."""

    distance = staticmethod(nn.functional.mse_loss)

    def forward(self, logits, target):
        one_hot = nn.functional.one_hot(target, logits.shape[1]).to(logits.dtype)
        return self.distance(logits.softmax(dim=1), one_hot)


class SoftmaxL1Loss(SoftmaxMSELoss):
    """Mean absolute error between softmax(logits) and one-hot class targets."""

    distance = staticmethod(nn.functional.l1_loss)


def _instantiate(cfg: DictConfig, group: str, *args):
    """Build cfg's `_target_`; a partial (`_partial_: true`) is then called with args. Checked here too, not only
    when Hydra composes: the config may come from a checkpoint or a notebook."""
    check_config(cfg, group)
    target = cfg.get("_target_")
    try:
        made = instantiate(cfg)
        return made(*args) if args else made
    except Exception as e:  # Hydra wraps the constructor's own error; its message names the bad argument
        reason = one_line(e.__cause__ or e)
        raise TrainlabError(f"{group} ({target}) could not be built: {reason}") from None

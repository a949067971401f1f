"""The learning-rate schedule: any scheduler of conf/scheduler/, stepped after every step or at every epoch's end
(its `interval`), with an optional linear warm-up in front (scheduler.warmup_steps), and its rules for a resume.

The rate is written into the optimizer's groups in place: where a group's rate is a tensor (a CUDA-graph step makes
it one), the tensor's value is set, so a recorded graph reads each new rate rather than baking one in."""

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab.errors import TrainlabError
from trainlab.config.build import build_partial

INTERVALS = ("epoch", "step")


class Schedule:
    """`scheduler` (None: a constant rate) stepped per `interval`; for the first `warmup_steps` steps the rate it
    gives is scaled by step/warmup_steps (1/W at the first step, the full rate from step W on). The scheduler itself
    never sees the scaled rate: it goes on from its own."""

    def __init__(self, optimizer, scheduler=None, interval: str = "epoch", warmup_steps: int = 0):
        self.optimizer, self.scheduler, self.interval, self.warmup_steps = optimizer, scheduler, interval, warmup_steps
        self.base = [float(group["lr"]) for group in optimizer.param_groups]  # the rate without a scheduler
        self.steps = 0  # steps trained: what the warm-up counts
        self._warm()

    @property
    def lr(self) -> float:
        """The first group's rate now: what the next step uses."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def per_step(self) -> bool:
        """Whether the rate changes between the steps of an epoch."""
        return self.scheduler is not None and self.interval == "step" or self.warmup_steps > 0

    def after_step(self) -> None:
        """A step hook: after every step of training (one skipped as not finite included)."""
        self.steps += 1
        if self.interval == "step":
            self._step_scheduler()
        self._warm()

    def end_epoch(self) -> None:
        if self.interval == "epoch":
            self._step_scheduler()
            self._warm()

    def _step_scheduler(self) -> None:
        if self.scheduler is None:
            return
        if self.warmup_steps:
            self._set(self.scheduler.get_last_lr())  # from its own rate, not the warm-up's
        self.scheduler.step()

    def _warm(self) -> None:
        if self.steps < self.warmup_steps:
            scale = (self.steps + 1) / self.warmup_steps
            own = self.scheduler.get_last_lr() if self.scheduler is not None else self.base
            self._set([lr * scale for lr in own])
        elif self.steps == self.warmup_steps and self.warmup_steps:
            self._set(self.scheduler.get_last_lr() if self.scheduler is not None else self.base)

    def _set(self, rates: list) -> None:
        for group, rate in zip(self.optimizer.param_groups, rates):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict() if self.scheduler is not None else None, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["steps"]
        self._warm()


class PiecewiseLinearLR(torch.optim.lr_scheduler.LRScheduler):
    """Each group's rate times a factor drawn straight between `points`, [[fraction of total_steps, factor], ...]
    from fraction 0 to 1: [[0, 0.2], [0.23, 1], [1, 0.07]] rises from 0.2x to the full rate over the first 23% of
    the steps, then falls to 0.07x at the end (airbench94's schedule). Stepped every step (interval: step)."""

    def __init__(self, optimizer, points, total_steps: int, last_epoch: int = -1):
        try:
            self.points = [(float(f), float(v)) for f, v in points]
        except (TypeError, ValueError):
            self.points = None
        fractions = [f for f, _ in self.points or []]
        if not fractions or fractions[0] != 0 or fractions[-1] != 1 or fractions != sorted(fractions):
            raise ValueError(f"points {points}: give [[fraction of the run, factor], ...], the fractions rising from "
                             "0 to 1")
        self.total_steps = total_steps
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        at = min(step / self.total_steps, 1.0)
        for (f0, v0), (f1, v1) in zip(self.points, self.points[1:]):
            if at <= f1:
                return v0 if f1 == f0 else v0 + (v1 - v0) * (at - f0) / (f1 - f0)
        return self.points[-1][1]

    def get_lr(self):
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


def build_schedule(cfg: DictConfig, optimizer, total_steps: int) -> Schedule:
    """conf/scheduler's choice -> the Schedule; a one-cycle total_steps of null spans the whole run (`total_steps`)."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    interval, warmup = settings.pop("interval", "epoch"), settings.pop("warmup_steps", 0) or 0
    if interval not in INTERVALS:
        raise TrainlabError(f"scheduler.interval is '{interval}': use epoch or step")
    if "_target_" not in settings:
        return Schedule(optimizer, None, interval, warmup)
    if settings.get("total_steps", 0) is None:
        settings["total_steps"] = total_steps
    base, rates = optimizer.defaults.get("lr"), [float(group["lr"]) for group in optimizer.param_groups]
    if isinstance(settings.get("max_lr"), (int, float)) and base and any(rate != base for rate in rates):
        # one-cycle's one peak would give every group the same rate: each group peaks in its own proportion
        # (model.head_lr_scale's head at that many times the rest)
        settings["max_lr"] = [settings["max_lr"] * rate / base for rate in rates]
        settings["_convert_"] = "all"  # as a Python list: OneCycleLR takes no other sequence
    scheduler = build_partial(OmegaConf.create(settings), "scheduler", optimizer)
    return Schedule(optimizer, scheduler, interval, warmup)


def laid_out_over_epochs(config: dict) -> bool:
    """Whether the run's schedule spans trainer.epochs (cosine's T_max follows it; one-cycle spans the whole run)."""
    scheduler, epochs = config.get("scheduler", {}), config["trainer"]["epochs"]
    return scheduler.get("T_max") == epochs or ("total_steps" in scheduler and scheduler["total_steps"] is None)


def check_resume(saved: dict, current: dict) -> None:
    """A resume with another trainer.epochs: a one-cycle schedule laid out over the run cannot be stretched."""
    scheduler = current.get("scheduler", {})
    before, now = saved["trainer"]["epochs"], current["trainer"]["epochs"]
    if before != now and "total_steps" in scheduler and scheduler["total_steps"] is None:
        raise TrainlabError(f"trainer.epochs {before} -> {now}: the one-cycle schedule was laid out over {before} "
                            "epochs and cannot be stretched; start a new run to train longer")


def longer_hint(config: dict) -> str:
    """How to train a finished run longer: raise trainer.epochs, unless its schedule was laid out over them."""
    if laid_out_over_epochs(config):
        return f"its schedule was laid out over {config['trainer']['epochs']} epochs: start a new run to train longer"
    return "raise trainer.epochs to train on"

"""Weight averaging (trainer.average): a running average of the weights, updated every few steps, either kept beside
the model and scored in its place (ema), or written back into the model at each update (lookahead: the optimizer
goes on from the average, as airbench94 does: github.com/KellerJordan/cifar10-airbench, legacy/airbench94.py).

Under ema, a checkpoint's `model` is the average (the weights that were scored: what evaluate.py, predict.py and
export.py load), and the model's own weights ride in its `average` part, so a resumed run goes on from both.

The average covers every floating-point entry of the model's state_dict (parameters and batchnorm's running
statistics). Its decay at update step s of S is `decay` x (s / S) ** `ramp`: ramp 0 keeps it constant, ramp 3 (the
record's) lets the early average follow the weights closely. A checkpointed part: a resumed run goes on from the same
average."""
from contextlib import contextmanager, nullcontext

import torch

KINDS = ("none", "ema", "lookahead")


class WeightAverage:
    """A step hook (after_step) over `model` (the plain module whose state_dict checkpoints hold), for a run of
    `total_steps` steps. With lookahead, the run's last step leaves the model at the average itself."""

    def __init__(self, model: torch.nn.Module, kind: str, every: int, decay: float, ramp: float, total_steps: int):
        self.model, self.kind, self.every, self.decay, self.ramp = model, kind, every, decay, ramp
        self.total_steps, self.steps = total_steps, 0
        self.own = None  # the model's own weights while applied() has put the average in their place
        self.average = {k: v.detach().clone() for k, v in self._weights().items()}

    def _weights(self) -> dict:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    def decay_at(self, step: int) -> float:
        return self.decay * min(step / self.total_steps, 1.0) ** self.ramp

    @torch.no_grad()
    def after_step(self) -> None:
        self.steps += 1
        last = self.steps == self.total_steps
        if self.steps % self.every and not last:
            return
        weights = self._weights()
        decay = 1.0 if last and self.kind == "lookahead" else self.decay_at(self.steps)
        for key, average in self.average.items():
            average.lerp_(weights[key], 1 - decay)
            if self.kind == "lookahead":
                weights[key].copy_(average)

    @contextmanager
    def applied(self):
        """Within: the model holds the average (ema; with lookahead it always does), then its own weights again."""
        if self.kind != "ema" or self.own is not None:  # lookahead's model is the average; or already applied
            yield
            return
        weights = self._weights()
        self.own = {k: v.detach().clone() for k, v in weights.items()}
        with torch.no_grad():
            for key, value in weights.items():
                value.copy_(self.average[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, value in weights.items():
                    value.copy_(self.own[key])
            self.own = None

    def state_dict(self) -> dict:
        state = {"steps": self.steps, "average": {k: v.clone() for k, v in self.average.items()}}
        if self.kind == "ema":
            own = self.own or self._weights()
            state["own"] = {k: v.detach().clone() for k, v in own.items()}
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """After the model part: under ema that part loaded the average into the model; its own weights come back."""
        self.steps = state["steps"]
        for key, value in state["average"].items():
            self.average[key].copy_(value)
        weights = self._weights()
        for key, value in state.get("own", {}).items():
            weights[key].copy_(value)


class ScoredModel:
    """The checkpoint's `model` part under ema: the weights scored (the average), as a state_dict."""

    def __init__(self, average: WeightAverage):
        self.average = average

    def state_dict(self) -> dict:
        with self.average.applied():
            return {k: v.detach().clone() for k, v in self.average.model.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.average.model.load_state_dict(state)


class NoAverage:
    hooks = ()

    def __init__(self, model):
        self.parts = {"model": model}

    @staticmethod
    def applied():
        return nullcontext()


def build_average(model, kind: str, every: int, decay: float, ramp: float, total_steps: int):
    """trainer.average and its settings -> a WeightAverage, or NoAverage for none: its step `hooks`, and the
    checkpoint `parts` it owns (the model's, under ema the average's, then its own)."""
    if kind == "none":
        return NoAverage(model)
    average = WeightAverage(model, kind, every, decay, ramp, total_steps)
    average.hooks = (average.after_step,)
    average.parts = {"model": ScoredModel(average) if kind == "ema" else model, "average": average}
    return average

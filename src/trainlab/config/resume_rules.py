"""What a resumed run goes on with: the config it was made with, and only the settings that say how it goes on
(ON_RESUME) taken from the command; any other change is refused, naming the first setting that differs."""
import re

from omegaconf import DictConfig, OmegaConf

from trainlab.config.schema import on_resume_keys
from trainlab.errors import TrainlabError

FORMAT_WITH_VALIDATION = 2  # checkpoints before it chose best.pt on the test split (trainlab/runs/checkpoint.py)
# Settings that say how the run goes on, not what it is: a resume takes them from the command where it sets them.
ON_RESUME = on_resume_keys()  # declared beside each field: setting(on_resume=True)

# Parts that say where the figures go, not what the run is: a resume takes them whole from the command where it sets
# them (logger=[tensorboard,mlflow] adds a tracker; the run's tracker runs go on, their ids in the checkpoint).
ON_RESUME_PARTS = ("logger",)

NEWER_KEYS = ("data", "trainer")  # parts whose schema holds every option's keys: a key added later is safe to fill


def continued_config(saved: dict, cfg: DictConfig, overrides) -> DictConfig:
    """The config a resumed run goes on with: the one it was made with (`saved`, from its checkpoint), with the
    ON_RESUME settings the command sets. Any other setting the command sets must be the run's own: a resumed run that
    trained on with another optimizer would be neither the old run nor a new one."""
    continued = OmegaConf.create(saved)
    for part in NEWER_KEYS:  # a setting the run's trainlab did not have yet (data.max_pixels) takes the command's value
        news = {k: v for k, v in OmegaConf.to_container(cfg[part], resolve=True).items() if k not in saved[part]}
        continued[part] = OmegaConf.merge(continued[part], news)
    for part in ON_RESUME_PARTS:  # a run made before the part existed takes the command's
        if part not in saved or any(_part_of(o) == part for o in overrides):
            continued[part] = cfg[part]
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.") or key.startswith("hydra/") or _part_of(override) in ON_RESUME_PARTS:
            continue
        now = OmegaConf.select(cfg, key, default=None)
        if key in ON_RESUME:
            OmegaConf.update(continued, key, now, force_add=True)
            continue
        before = OmegaConf.select(continued, key, default=None)
        # a group (optimizer=adam) or a key (optimizer.lr=0.1); a choice that is not a part (experiment=...) is not
        if key.split(".")[0] in cfg and _plain(now) != _plain(before):
            raise TrainlabError(f"{override}: the run being resumed was made with {key}={_shown(before)}; a resume "
                                f"goes on as the run was made, so drop {override} (or start a new run to change it)")
    return continued


def _part_of(override: str) -> str:
    """logger.mlflow.tracking_uri=x and logger=[mlflow] -> logger."""
    return re.split(r"[./=]", override.lstrip("+~"), maxsplit=1)[0]


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _shown(value) -> str:
    if isinstance(value, DictConfig):
        return value.get("name") or str(value.get("_target_", "...")).rsplit(".", 1)[-1].lower()  # torch.optim.SGD: sgd
    return str(value)


def check_resumable(state: dict, current: dict) -> list:
    """The run in `state` (a checkpoint) can go on as `current` (the plain config) says: the same settings but how it
    goes on (ON_RESUME); the schedule's own rule is trainlab.training.schedule.check_resume.
    -> the ON_RESUME settings that change, as lines to say; raises naming the first other setting that differs."""
    if state.get("format", 0) < FORMAT_WITH_VALIDATION:
        raise TrainlabError("the checkpoint was written before validation splits (its best.pt was chosen on the test "
                            "split) and cannot be trained on: start a new run folder")
    saved = state["config"]
    changed = []
    for key, before, now in _differences(saved, current):
        if key.split(".")[0] in ON_RESUME_PARTS:
            continue
        if key in ON_RESUME:
            if key != "trainer.resume":
                changed.append(f"{key} {before} -> {now}")
            continue
        raise TrainlabError(f"{key} is {now!r} in this command but {before!r} in the run being resumed: a resume goes "
                            f"on as the run was made; drop the change, or start a new run in another folder "
                            f"(hydra.run.dir=...)")
    return changed


def _differences(before, now, prefix: str = ""):
    """(dotted key, saved value, current value) for each setting both configs have and that differs (a key only one
    of them has is a setting from another trainlab version: not compared); lists of one length item by item, so a
    changed model names its block (model.blocks.3.out_channels), not both lists."""
    if isinstance(before, dict) and isinstance(now, dict):
        for key in (k for k in before if k in now):  # in the config's order: the first difference is named
            yield from _differences(before[key], now[key], f"{prefix}{key}.")
    elif isinstance(before, list) and isinstance(now, list) and len(before) == len(now):
        for i, (old, new) in enumerate(zip(before, now)):
            yield from _differences(old, new, f"{prefix}{i}.")
    elif before != now:
        yield prefix.rstrip("."), _brief(before), _brief(now)


def _brief(value):
    """A setting as a one-line message shows it: a long list or mapping by its size."""
    if isinstance(value, (list, dict)) and len(repr(value)) > 60:
        return _Said(f"a list of {len(value)}" if isinstance(value, list) else f"a mapping of {len(value)} keys")
    return value


class _Said(str):
    def __repr__(self):
        return str(self)

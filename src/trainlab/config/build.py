"""Objects a config names by `_target_` (an optimizer, a scheduler, a loss), built through Hydra's instantiate once
the allow-list has passed them: the one place outside the entrypoints' glue that builds from the config tree."""
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trainlab.config.allowlist import check_config
from trainlab.errors import TrainlabError, one_line


def build(cfg: DictConfig, group: str, *args):
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


def build_partial(cfg: DictConfig, group: str, *args):
    """An optimizer or scheduler takes what only the run has (the parameters, the optimizer): built as a partial,
    whether or not its file says `_partial_: true`, then called with `args`."""
    if not cfg.get("_partial_"):
        cfg = OmegaConf.create({**OmegaConf.to_container(cfg, resolve=True), "_partial_": True})
    return build(cfg, group, *args)

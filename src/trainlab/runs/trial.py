"""A run as one trial of trainlab's Optuna search (hydra/sweeper=trainlab_optuna): what the search hands the job
(its study's storage and name, its trial number, the pruner: SearchTrial, in Launch.trial) and what the job gives
back besides its return value: each epoch, its best validation value so far for the pruner (Pruning). A search of
several objectives reads the others (OBJECTIVES) from the trial's folder.

The job reaches the study itself, through the storage named in the sweep's config, so pruning works alike for a
trial run in the sweeper's own process and for one launched through joblib or submitit on another machine. Optuna
is imported only by a trial that prunes."""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from trainlab.errors import TrainlabError, one_line
from trainlab.runs.folder import VAL_ACC, VAL_LOSS

log = logging.getLogger("trainlab")

SWEEPER = "hydra_plugins.trainlab_optuna_sweeper.optuna_sweeper.OptunaSweeper"
JOURNAL = "journal:"  # hydra.sweeper.storage=journal:PATH: Optuna's journal in a file, for a shared file system
PARAMS, EPOCH_SECONDS = "params", "epoch_seconds"
OBJECTIVES = (VAL_ACC, VAL_LOSS, PARAMS, EPOCH_SECONDS)  # what hydra.sweeper.objectives may name (_search.py reads)
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner"}  # optuna.pruners
PRUNED_AT = "pruned_at_epoch"  # the trial's user attribute, set by the job that was pruned: the search reads it


@dataclass(frozen=True)
class SearchTrial:
    """What a pruning job needs of its search: the trial's study and number, and the pruner."""

    storage: str
    study_name: str
    number: int
    pruner: str
    pruner_settings: dict = field(default_factory=dict)

    @classmethod
    def from_hydra(cls, hydra) -> Optional["SearchTrial"]:
        """The trial a sweep job of trainlab's Optuna sweeper is, where its search prunes; else None. Its job number
        is its trial number (the sweeper launches each trial so)."""
        from omegaconf import OmegaConf

        sweeper = hydra.sweeper
        pruner = str(sweeper.get("pruner", "none")).rsplit(".", 1)[-1]
        if sweeper.get("_target_") != SWEEPER or pruner == "none" or sweeper.get("storage") is None:
            return None
        settings = OmegaConf.to_container(sweeper.get("pruner_settings") or {})
        return cls(str(sweeper.storage), str(sweeper.study_name), int(hydra.job.num), pruner,
                   {key: value for key, value in settings.items() if value is not None})


def build_pruner(name: str, settings: dict):
    """hydra.sweeper.pruner and its pruner_settings -> Optuna's pruner of that name (one line for a setting it does
    not take); None for none. By a fixed table: a config names a pruner, never a class to import."""
    import optuna

    if name == "none":
        return None
    cls = getattr(optuna.pruners, PRUNERS[name])
    try:
        return cls(**settings)
    except (TypeError, ValueError) as e:
        raise TrainlabError(f"hydra.sweeper.pruner_settings: {cls.__name__} cannot be built ({one_line(e, 200)}): "
                            "drop the setting, or give one the pruner takes") from None


def study_storage(url: Optional[str]):
    """hydra.sweeper.storage as Optuna takes it: a database URL as it is; journal:PATH, Optuna's JournalStorage on a
    file (appended to under a lock that a network file system honours: the study of searches on several machines)."""
    if url is None or not url.startswith(JOURNAL):
        return url
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = Path(url[len(JOURNAL):]).expanduser()
    if path.is_dir():
        raise TrainlabError(f"hydra.sweeper.storage={url} names a folder: give the journal's file, e.g. "
                            f"journal:{path / 'optuna.journal'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


class Pruning:
    """The job's side of pruning: after each epoch, its best validation value so far goes to the study as the
    trial's intermediate value at that epoch, and the pruner says whether the trial stops there. A study that cannot
    be reached is one warning, and the trial runs all its epochs."""

    def __init__(self, trial: Optional[SearchTrial], main: bool = True):
        """`main`: the first process of a distributed run, the one that talks to the study."""
        self.trial, self._optuna_trial, self.failed = trial, None, trial is None or not main
        self.epoch: Optional[int] = None  # where it was pruned

    def should_stop(self, value: Optional[float], epoch: int, ask: bool = True) -> bool:
        """Report `value` at `epoch` -> whether the pruner stops the trial here (`ask` False: the last epoch, which
        the trial finishes whatever the pruner would say)."""
        if self.failed or value is None:
            return False
        try:
            trial = self._reach()
            trial.report(float(value), epoch)
            if not (ask and trial.should_prune()):
                return False
            trial.set_user_attr(PRUNED_AT, epoch)
        except Exception as e:  # noqa: BLE001 (a storage that is gone, locked, ...): the trial goes on unpruned
            self.failed = True
            log.warning(f"pruning is off for this trial: its study could not be reached ({one_line(e, 200)})")
            return False
        self.epoch = epoch
        return True

    def _reach(self):
        if self._optuna_trial is None:
            import optuna

            t = self.trial
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.load_study(study_name=t.study_name, storage=study_storage(t.storage),
                                      pruner=build_pruner(t.pruner, t.pruner_settings))
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, t.number)
            self._optuna_trial = optuna.trial.Trial(study, trial_id)
        return self._optuna_trial

    def line(self) -> str:
        """How the run's last line says it was pruned."""
        return f" · pruned by the search after epoch {self.epoch} (hydra.sweeper.pruner={self.trial.pruner})"


def objective_text(name: str, value) -> str:
    """An objective's value as the search's lines and the report show it: accuracy in percent, parameters whole;
    "-" where there is none."""
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.2%}" if name.endswith("acc") else f"{value:,.0f}" if name == PARAMS else f"{value:.6g}"

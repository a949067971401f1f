"""The Optuna sweeper as Hydra sees it: the schema of hydra/sweeper=trainlab_optuna and the Sweeper that runs it.

Hydra imports this module at every start to list its plugins, single runs included, so it imports neither Optuna
nor torch; the search itself is in _search.py.
"""
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig, ListConfig


class Pruner(Enum):
    none = 0
    median = 1
    percentile = 2
    hyperband = 3


@dataclass
class PrunerSettings:
    """Optuna's pruners' arguments, each null (the pruner's default) unless set; a pruner refuses one it does not take.
    median, percentile: n_startup_trials (trials never pruned), n_warmup_steps (epochs never pruned), interval_steps,
    n_min_trials; percentile: percentile; hyperband: min_resource, max_resource, reduction_factor, bootstrap_count."""

    n_startup_trials: Optional[int] = None
    n_warmup_steps: Optional[int] = None
    interval_steps: Optional[int] = None
    n_min_trials: Optional[int] = None
    percentile: Optional[float] = None
    min_resource: Optional[int] = None
    max_resource: Optional[Any] = None  # an int, or auto
    reduction_factor: Optional[int] = None
    bootstrap_count: Optional[int] = None


@dataclass
class OptunaSweeperConf:
    """Keys and types of hydra/sweeper=trainlab_optuna; each value and its reason is in its YAML in conf/."""

    _target_: str = MISSING
    sampler: Any = MISSING  # a hydra/sweeper/optuna_sampler option: tpe, random, grid, ...
    direction: Any = MISSING  # maximize or minimize, or a list of them: one an objective (trainlab's policy checks)
    objectives: Optional[List[str]] = None
    study_name: str = MISSING
    storage: Optional[str] = MISSING
    n_trials: int = MISSING
    n_jobs: int = MISSING
    max_failure_rate: float = MISSING
    pruner: Pruner = MISSING
    pruner_settings: PrunerSettings = field(default_factory=PrunerSettings)
    custom_search_space: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)


# Beside trainlab's own schemas (trainlab/config/schema.py names them <group>_<name>_schema), outside any group.
ConfigStore.instance().store(name="hydra_sweeper_trainlab_optuna_schema", node=OptunaSweeperConf, provider="trainlab")


class OptunaSweeper(Sweeper):
    """One Optuna trial a job: see _search.Search."""

    def __init__(self, sampler: Any, direction: Any, study_name: str, storage: Optional[str], n_trials: int,
                 n_jobs: int, max_failure_rate: float = 1.0, params: Optional[DictConfig] = None,
                 objectives: Optional[List[str]] = None, pruner: Any = "none",
                 pruner_settings: Optional[DictConfig] = None, custom_search_space: Optional[str] = None) -> None:
        from hydra_plugins.trainlab_optuna_sweeper._search import Search  # imports Optuna: only for a search

        directions = list(direction) if isinstance(direction, (list, ListConfig)) else [direction]
        self.search = Search(sampler, [str(d) for d in directions], study_name, storage, n_trials, n_jobs,
                             dict(params or {}), max_failure_rate, list(objectives or []),
                             getattr(pruner, "name", pruner),
                             {k: v for k, v in (pruner_settings or {}).items() if v is not None}, custom_search_space)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        self.search.run(arguments)

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
from omegaconf import MISSING, DictConfig


class Direction(Enum):
    maximize = 1
    minimize = 2


@dataclass
class OptunaSweeperConf:
    """Keys and types of hydra/sweeper=trainlab_optuna; each value and its reason is in its YAML in conf/."""

    _target_: str = MISSING
    sampler: Any = MISSING  # a hydra/sweeper/optuna_sampler option: tpe, random, grid, ...
    direction: Direction = MISSING
    study_name: str = MISSING
    storage: Optional[str] = MISSING
    n_trials: int = MISSING
    n_jobs: int = MISSING
    max_failure_rate: float = MISSING
    params: Dict[str, Any] = field(default_factory=dict)


# Beside trainlab's own schemas (trainlab/config/schema.py names them <group>_<name>_schema), outside any group.
ConfigStore.instance().store(name="hydra_sweeper_trainlab_optuna_schema", node=OptunaSweeperConf, provider="trainlab")


class OptunaSweeper(Sweeper):
    """One Optuna trial a job: see _search.Search."""

    def __init__(self, sampler: Any, direction: Any, study_name: str, storage: Optional[str], n_trials: int,
                 n_jobs: int, max_failure_rate: float = 1.0, params: Optional[DictConfig] = None) -> None:
        from hydra_plugins.trainlab_optuna_sweeper._search import Search  # imports Optuna: only for a search

        self.search = Search(sampler, getattr(direction, "name", direction), study_name, storage, n_trials, n_jobs,
                             dict(params or {}), max_failure_rate)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        self.search.run(arguments)

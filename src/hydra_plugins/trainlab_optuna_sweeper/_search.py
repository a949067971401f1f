"""An Optuna search as a Hydra sweep: the search space in Hydra's override grammar, one launched job a trial, the
study kept in a database so that rerunning the same command continues it, and the best trial reported at the end.

A trial whose job fails (an exception, or a return value that is not a finite number: trainlab's failing sweep job
returns NaN) is recorded as failed and the search goes on. Every failed trial's job folder holds an error.log (the
job writes it; this module does when the job could not), which trainlab.cli.SweepReport lists at the end of the
sweep before exiting 1.
"""
import contextlib
import functools
import itertools
import logging
import math
import os
import socket
import statistics
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import OverrideParseException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from trainlab.errors import USER_ERROR_EXIT, ConfigRefused, TrainlabError, one_line
from trainlab.runs.folder import (BEST, CHECKPOINTS, ERROR_LOG, LAST, PREVIOUS, SEARCH_RESULTS as RESULTS, SET_ASIDE,
                                  TEST_ROW, VAL_ACC, VAL_LOSS, RunFolderLock, higher_is_better, open_own,
                                  read_metrics)
from trainlab.runs.provenance import read_attempts
from trainlab.runs.resume import trace_files
from trainlab.runs.trackers import tag_trial
from trainlab.runs.trial import EPOCH_SECONDS, OBJECTIVES, PRUNED_AT, build_pruner, objective_text, study_storage

log = logging.getLogger(__name__)

FOLDER = "folder"  # each trial's user attribute: its job folder, recorded when the trial is asked
WORKER = "worker"  # and the search running it, host:pid: a RUNNING trial whose search is gone was stopped
BEAT = "beat"  # and when that search last said it still runs it (time.time()), every BEAT_SECONDS while it does
BEAT_SECONDS, STALE_SECONDS = 60, 300  # a search silent for 5 beats has stopped, on whichever machine it ran
WAIT_SECONDS = 5  # how often a search with nothing left to ask looks again at the trials others run
TURN_LOCK = ".search"  # <sweep folder>/.search.lock, while a search claims or asks trials (_turn)
FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


class Search:
    """Run `n_trials` trials of the study `study_name` in `storage` (a database URL; None keeps it in memory).

    Each trial is one job of the launcher, numbered by its trial number, so its folder is <sweep dir>/<number>
    (trainlab's hydra.sweep.subdir) and a rerun never writes into an earlier trial's folder. A rerun counts the
    trials already finished towards n_trials; a trial that a stopped search left running is run again in its own
    folder, where trainlab resumes it from its last checkpoint.
    """

    def __init__(self, sampler, directions: list, study_name: str, storage, n_trials: int, n_jobs: int, params: dict,
                 max_failure_rate: float = 1.0, objectives: list = (), pruner: str = "none",
                 pruner_settings: dict = None, custom_search_space: str = None):
        self.sampler, self.directions, self.study_name, self.storage = sampler, directions, study_name, storage
        self.n_trials, self.n_jobs, self.params = n_trials, max(1, n_jobs), params
        self.max_failure_rate, self.objectives = max_failure_rate, list(objectives)
        self.pruner, self.pruner_settings, self.custom_name = pruner, dict(pruner_settings or {}), custom_search_space

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.monitor = OmegaConf.select(config, "trainer.monitor", default=None) or "value"  # what a job returns
        self.names = self.objectives or [self.monitor]  # what each of the study's values is
        self.test_scores = {}  # trial number -> its test score (read_test_score), once read

    def run(self, arguments: list) -> None:
        try:
            self._run(arguments)
        except TrainlabError as e:  # one line and status 2, as trainlab's entrypoints report a user's mistake
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(USER_ERROR_EXIT)

    def _run(self, arguments: list) -> None:
        # hydra.sweeper.params first, then the command line's: a later value of a key replaces an earlier one
        space, fixed = search_space([f"{key}={value}" for key, value in self.params.items()] + list(arguments))
        pruner, self.custom = self._checked()
        n_trials = self.n_trials
        if _builds(self.sampler, optuna.samplers.GridSampler):  # cut to the number of points on the grid
            n_trials = min(n_trials, math.prod(len(v) for v in grid_values(space).values()))

        optuna.logging.disable_default_handler()  # Optuna's warnings go through Hydra's logging, beside the jobs' own;
        optuna.logging.enable_propagation()  # its set-up lines ("A new study created ...") say what the next line says
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
        try:
            study = optuna.create_study(study_name=self.study_name, storage=study_storage(self.storage),
                                        directions=self.directions, pruner=pruner,
                                        sampler=optuna.samplers.RandomSampler(), load_if_exists=True)  # replaced below
        except (ImportError, TrainlabError) as e:  # the database's driver (SQLAlchemy imports it when it first
            if not any(self.sweep_dir.iterdir()):  # connects); a journal that names a folder
                self.sweep_dir.rmdir()  # made just above: a search that never started leaves nothing
            raise TrainlabError(missing_driver(self.storage, e) if isinstance(e, ImportError) else str(e)) from None
        started = [d.name.lower() for d in study.directions]
        if started != self.directions:
            shown = started[0] if len(started) == 1 else f"[{','.join(started)}]"
            raise TrainlabError(f"study '{self.study_name}' in {self.storage} was started to {shown}, not "
                                f"{','.join(self.directions)}: rerun with hydra.sweeper.direction={shown}, or start "
                                f"another study (another hydra.sweep.dir or hydra.sweeper.study_name)")
        _check_same_space(study, space)
        self.trials_known = len(study.trials)  # the study's trials as this search last left it
        study.sampler = sampler = self._sampler(space, self.trials_known)

        done = study.get_trials(deepcopy=False, states=FINISHED)
        here = self.sweep_dir.resolve()
        live = _live_elsewhere(study)
        to_run = max(0, n_trials - len(done) - len(live))
        self._log_start(study, sampler, n_trials, done, to_run, _stopped(study, here)[:to_run], live)

        waited = set()
        while True:  # several searches on one study (on several machines) take turns to claim or ask trials
            with _turn(self.sweep_dir):
                trials = self._next(study, space, n_trials, here)
            if trials:
                self._launch(study, trials, fixed)
                self._check_failures(study)
                continue
            # nothing left to ask: the study is done once the trials other searches run end, or are left to this one
            elsewhere = _live_elsewhere(study)
            if not elsewhere:
                break
            if {t.number for t in elsewhere} - waited:
                waited |= {t.number for t in elsewhere}
                log.info(f"waiting for {', '.join(f'#{t.number} ({t.user_attrs[WORKER]})' for t in elsewhere)}, "
                         f"run by another search; a trial whose search is silent for {STALE_SECONDS // 60} minutes "
                         "runs again here")
            time.sleep(WAIT_SECONDS)
        self._report(study)

    def _checked(self) -> tuple:
        """The search's own settings, checked before any trial -> (the pruner, the custom search space or None)."""
        several = len(self.directions) > 1
        if (several or self.objectives) and len(self.objectives) != len(self.directions):
            raise TrainlabError(f"hydra.sweeper.direction gives {len(self.directions)} direction(s) and "
                                f"hydra.sweeper.objectives names {len(self.objectives) or 'no'} objective(s): name one "
                                f"objective a direction, e.g. objectives=[val/acc,params] with "
                                f"direction=[maximize,minimize] (objectives: {', '.join(OBJECTIVES)})")
        if self.pruner != "none" and several:
            raise TrainlabError(f"hydra.sweeper.pruner={self.pruner}: Optuna prunes a search of one objective only; "
                                "set hydra.sweeper.pruner=none, or give one direction")
        if self.pruner != "none" and self.storage is None:
            raise TrainlabError(f"hydra.sweeper.pruner={self.pruner} needs the study in a storage its trials reach "
                                "(each reports its epochs there): give hydra.sweeper.storage a sqlite URL or "
                                "journal:PATH, not null")
        return build_pruner(self.pruner, self.pruner_settings), custom_space(self.custom_name)

    def _check_failures(self, study) -> None:
        """hydra.sweeper.max_failure_rate: once more than that share of the study's finished trials has failed, the
        search stops, with its report, and exits 1."""
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        failed = sum(t.state == TrialState.FAIL for t in finished)
        if finished and failed / len(finished) > self.max_failure_rate:
            self._report(study)
            log.error(f"the search stops: {failed} of its {_trials(len(finished))} failed, more than "
                      f"hydra.sweeper.max_failure_rate={self.max_failure_rate:g} of them; the failed trials' folders "
                      "hold an error.log each")
            sys.exit(1)

    def _next(self, study, space: dict, n_trials: int, here: Path) -> list:
        """The trials this search runs next, claimed in its turn: one that a stopped search left running in this
        folder, else up to n_jobs new ones while the study holds fewer than n_trials finished or running (here or
        in another live search); [] when there are enough."""
        stopped = _stopped(study, here)
        if stopped:
            _claim(study, stopped[0])
            aside = _set_aside(Path(stopped[0].user_attrs[FOLDER]))
            if aside is not None:
                log.info(f"trial #{stopped[0].number} left no checkpoint to go on from (stopped in its first epoch): "
                         f"its files moved to {aside}, and it starts again")
            return stopped[:1]
        trials = study.get_trials(deepcopy=False)
        counted = sum(t.state in FINISHED or (t.state == TrialState.RUNNING and _running_elsewhere(t))
                      for t in trials)
        if len(trials) != self.trials_known:  # another search asked meanwhile: a seeded sampler moves on past its
            study.sampler = self._sampler(space, len(trials))  # trials, or both would draw the same random ones
        asked = [study.ask(space) for _ in range(max(0, min(self.n_jobs, n_trials - counted)))]
        self.trials_known = len(trials) + len(asked)
        for trial in asked:
            trial.set_user_attr(FOLDER, str(here / str(trial.number)))
            _claim(study, trial)
            self._extend(study, trial)
        return asked

    def _extend(self, study, trial) -> None:
        """hydra.sweeper.custom_search_space(cfg, trial): the parameters it suggests join the trial's overrides."""
        if self.custom is None:
            return
        try:
            self.custom(self.config, trial)
        except Exception as e:  # noqa: BLE001 (the user's function): the trial fails, the search stops here
            _tell_study(study, trial.number, state=TrialState.FAIL)
            raise TrainlabError(f"hydra.sweeper.custom_search_space={self.custom_name} failed on trial "
                                f"#{trial.number} ({_one_line(e)}): fix the function") from None

    def _sampler(self, space: dict, trials_before: int):
        """The hydra/sweeper/optuna_sampler option, built (`_partial_: true`): the grid sampler with the grid; a seeded
        sampler, in a study that has trials already, with its seed moved on by their number, since a new sampler
        from the same seed would draw again the random trials that the study began with."""
        if not isinstance(self.sampler, functools.partial):
            return self.sampler  # an option built already, without _partial_: as it is
        kwargs = {"search_space": grid_values(space)} if _builds(self.sampler, optuna.samplers.GridSampler) else {}
        seed = self.sampler.keywords.get("seed")
        if seed is not None and trials_before:
            kwargs["seed"] = seed + trials_before
        try:
            with warnings.catch_warnings():  # GPSampler and QMCSampler are "experimental": their choice, not a fault
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return self.sampler(**kwargs)
        except TypeError as e:  # hydra.sweeper.sampler.KEY=... that this sampler does not take
            name = getattr(self.sampler.func, "__name__", "the sampler")
            raise TrainlabError(f"hydra.sweeper.sampler: {name} cannot be built ({one_line(e, 200)}): drop the "
                                "setting, or choose a sampler that takes it") from None

    def _log_start(self, study, sampler, n_trials: int, done: list, to_run: int, stopped: list, live: list) -> None:
        where = f"Optuna study '{study.study_name}' in {self.storage or 'memory'}"
        if not done and not stopped and not live:
            aims = ", ".join(f"{d} {n}" for d, n in zip(self.directions, self.names))
            pruner = f", pruner {self.pruner}" if self.pruner != "none" else ""
            log.info(f"{where}, new: {_trials(to_run)}, {aims}, {type(sampler).__name__}{pruner}")
            return
        failed = sum(t.state == TrialState.FAIL for t in done)
        running = f"; {len(live)} running in another search" if live else ""
        line = (f"{where}: {_trials(len(done))} already done ({failed} failed){running}; {to_run} to run, up to "
                f"n_trials={n_trials}")
        if stopped:
            line += (f"; trial {', '.join(f'#{t.number}' for t in stopped)}, stopped before it finished, runs again "
                     "in its folder")
        log.info(line)

    def _launch(self, study, trials: list, fixed: dict) -> None:
        """Run `trials` as jobs numbered by trial number, then tell the study how each went."""
        for group in _consecutive(trials):
            overrides = [[*fixed.values(), *(f"{key}={value}" for key, value in trial.params.items())]
                         for trial in group]
            try:
                with _beating(study, group):
                    returns = self.launcher.launch(overrides, initial_job_idx=group[0].number)
            except BaseException as e:  # a config that cannot be composed or is refused, a signal: the search stops
                for trial in group:  # and a job that never started is failed, not run again by the next run
                    folder = Path(trial.user_attrs[FOLDER])
                    if not folder.exists():
                        _tell_study(study, trial.number, state=TrialState.FAIL)
                        folder.mkdir(parents=True)
                        why = one_line(e.message, 300) if isinstance(e, ConfigRefused) else _one_line(e)
                        with open_own(folder / ERROR_LOG, "w") as f:
                            f.write(f"error: the job did not start: {why}\n")
                raise
            for trial, ret in zip(group, returns):
                self._tell(study, trial, ret)

    def _tell(self, study, trial, ret: JobReturn) -> None:
        value, error, details = _objective(ret)
        folder = _job_folder(ret, trial)
        pruned = error is None and study._storage.get_trial(trial._trial_id).user_attrs.get(PRUNED_AT)
        if error is None and self.objectives and not pruned:
            try:
                value = objective_values(folder, self.objectives, value, self.monitor)
            except Exception as e:  # noqa: BLE001 (a folder without its figures: an older run, a damaged file)
                value, error = None, f"its objectives could not be read from {folder} ({_one_line(e)})"
        state = "PRUNED" if pruned else "COMPLETE" if error is None else "FAIL"
        tag_trial(folder, ret.cfg.get("logger") if ret.cfg is not None else None, trial.number,
                  state)  # on the job's tracker run, where it has one
        if pruned:
            _tell_study(study, trial.number, state=TrialState.PRUNED)  # its value: the last one it reported
            log.info(f"trial #{trial.number}: pruned after epoch {pruned} ({self._shown(value)} by then)")
        elif error is None:
            _tell_study(study, trial.number, values=value)
            log.info(f"trial #{trial.number}: {self._shown(value)} ({self._leading(study)})")
        else:
            _tell_study(study, trial.number, state=TrialState.FAIL)
            error_log = folder / ERROR_LOG
            if error_log.exists():  # the job's own account of it (trainlab.cli.report_errors), shown above
                error = f"see {error_log}"
            else:
                error_log.parent.mkdir(parents=True, exist_ok=True)
                with open_own(error_log, "w") as f:
                    f.write(f"error: {error}\n\n{details}")
            log.warning(f"trial #{trial.number} failed ({error}); recorded as failed, the search goes on")
        self._write_results(study)  # as the search goes: report.py shows pruned trials and the front while it runs

    def _leading(self, study) -> str:
        """The best trial so far, or the Pareto front of a search of several objectives."""
        if len(self.directions) == 1:
            best = study.best_trial
            return f"the best so far: #{best.number}, {self._shown(best.value)}"
        return "the Pareto front so far: " + ", ".join(f"#{t.number}" for t in _front(study))

    def _report(self, study) -> None:
        """Log the study's tally and its best trial (the Pareto front's, for several objectives) with its test
        score; write them to optimization_results.yaml."""
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        failed = [t.number for t in trials if t.state == TrialState.FAIL]
        pruned = [t.number for t in trials if t.state == TrialState.PRUNED]
        tally = f"Optuna study '{study.study_name}': {_trials(len(trials))}, {len(complete)} complete"
        tally += f", {len(pruned)} pruned" if pruned else ""
        log.info(tally + (f", {len(failed)} failed ({', '.join(f'#{n}' for n in failed)})" if failed else ""))
        if not complete:
            log.error("no trial completed: no best parameters")
            return
        for best in _front(study) if len(self.directions) > 1 else [study.best_trial]:
            title = "Pareto trial" if len(self.directions) > 1 else "Best trial"
            log.info(f"{title} #{best.number}: {self._shown(best.values)} with "
                     + " ".join(f"{key}={value}" for key, value in best.params.items()))
            test = self._test_score(best)
            log.info(f"  test acc {test['acc']:.2%} (loss {test['loss']:.4f}), scored once with its best weights"
                     if test else "  test score not recorded")
        self._write_results(study)
        log.info(f"{'Best parameters' if len(self.directions) == 1 else 'The Pareto front'} written to "
                 f"{self.sweep_dir / RESULTS}")

    def _test_score(self, trial):
        """A finished trial's test score from its best.pt, read once (the results are written after every trial)."""
        if trial.number not in self.test_scores:
            folder = Path(trial.user_attrs.get(FOLDER, self.sweep_dir / str(trial.number)))
            self.test_scores[trial.number] = read_test_score(folder / CHECKPOINTS / BEST)
        return self.test_scores[trial.number]

    def _write_results(self, study) -> None:
        """optimization_results.yaml: the best trial (each trial of the Pareto front, for several objectives) with
        its parameters, values and test score; the pruned and failed trials."""
        trials = study.get_trials(deepcopy=False)
        results = {"name": "optuna", "study": study.study_name, "objectives": self.names,
                   "directions": self.directions, "monitor": self.monitor, "trials": len(trials),
                   "pruned": [t.number for t in trials if t.state == TrialState.PRUNED],
                   "failed": [t.number for t in trials if t.state == TrialState.FAIL]}
        if any(t.state == TrialState.COMPLETE for t in trials):
            if len(self.directions) == 1:
                best = study.best_trial
                results.update(best_trial=best.number, best_params=dict(best.params), best_value=best.value,
                               test=self._test_score(best))
            else:
                results["pareto_front"] = [{"trial": t.number, "params": dict(t.params),
                                            "values": dict(zip(self.names, t.values)), "test": self._test_score(t)}
                                           for t in _front(study)]
        with open_own(self.sweep_dir / RESULTS, "w") as f:  # the sweep folder's own file: never through a link
            OmegaConf.save(OmegaConf.create(results), f)

    def _shown(self, values) -> str:
        """A trial's value(s) by name: "val/acc 91.20%", "val/acc 91.20%, params 94,000"."""
        values = values if isinstance(values, (list, tuple)) else [values]
        return ", ".join(f"{name} {objective_text(name, value)}" for name, value in zip(self.names, values))


def _front(study) -> list:
    """The study's Pareto front (the trials no other beats on every objective), by trial number."""
    return sorted(study.best_trials, key=lambda t: t.number)


def custom_space(name):
    """hydra.sweeper.custom_search_space: the function it names, where the allow-list admits it (a user's own,
    named in TRAINLAB_ALLOW_TARGETS); refused before any trial otherwise. None where there is none."""
    if name is None:
        return None
    import importlib

    from trainlab.config.allowlist import ALLOW_TARGETS_ENV, target_allowed

    if not target_allowed(name):
        raise TrainlabError(f"hydra.sweeper.custom_search_space={name} is not allowed: a config names no code to "
                            f"run; to trust your own function, say so in the environment: {ALLOW_TARGETS_ENV}={name}")
    module, _, attribute = name.rpartition(".")
    try:
        function = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as e:
        raise TrainlabError(f"hydra.sweeper.custom_search_space={name} cannot be found ({_one_line(e)}): put its "
                            "module on the path (PYTHONPATH=. or pip install -e your package)") from None
    if not callable(function):
        raise TrainlabError(f"hydra.sweeper.custom_search_space={name} is not a function of (cfg, trial)")
    return function


# Database drivers SQLAlchemy imports, by module -> the package that installs it
DRIVERS = {"psycopg2": "psycopg2-binary", "psycopg": "psycopg[binary]", "pymysql": "PyMySQL", "MySQLdb": "mysqlclient",
           "mysql": "mysql-connector-python", "asyncpg": "asyncpg", "pg8000": "pg8000"}


def missing_driver(storage: str, error: ImportError) -> str:
    """hydra.sweeper.storage names a database whose driver is not installed -> the line that names the package."""
    while error.__cause__ is not None and not getattr(error, "name", None):  # Optuna wraps SQLAlchemy's ImportError
        error = error.__cause__
    module = (getattr(error, "name", None) or "the database driver").split(".")[0]
    package = DRIVERS.get(module, module)
    scheme = str(storage).split("://", 1)[0]  # the URL's scheme only: the rest may hold a password
    return (f"hydra.sweeper.storage: a {scheme} storage needs the {module} module, which is not installed: "
            f"pip install {package} (or use sqlite:///PATH, which needs nothing more)")


def search_space(overrides: list) -> tuple:
    """Overrides in Hydra's grammar -> ({key: Optuna distribution} for the sweeps, {key: override} for the others,
    which every trial gets as they are)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise TrainlabError(f"hydra.sweeper.params: {one_line(e)}") from None
    space, fixed = {}, {}
    for override in parsed:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.input_line
    return space, fixed


def distribution(override: Override) -> BaseDistribution:
    """choice(a, b) or a,b -> categorical; range(start, stop, step) -> the ints (or floats) it lists, stop excluded
    as in Python; interval(low, high) -> floats (int(interval(...)) -> ints), tag(log, ...) on a log scale."""
    key, sweep = override.get_key_element(), override.value()
    if isinstance(sweep, Glob):
        raise TrainlabError(f"{key}={override.get_value_string()}: an Optuna search takes choice(...), range(...) "
                            "or interval(...), not glob(...)")
    if override.is_choice_sweep() or (override.is_range_sweep() and sweep.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if not values:
            raise TrainlabError(f"{key}={override.get_value_string()} lists no value")
        low, high, step = min(values), max(values), abs(sweep.step)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(low, high, step=step)
        return FloatDistribution(low, high, step=step)
    if override.is_interval_sweep():
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(sweep.start, sweep.end, log=log_scale)
    raise TrainlabError(f"{key}={override.get_value_string()}: an Optuna search takes choice(...), range(...) or "
                        "interval(...)")


def grid_values(space: dict) -> dict:
    """The search space as the grid sampler takes it: every value of each parameter."""
    values = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            values[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            values[key] = [dist.low + i * dist.step for i in range(round((dist.high - dist.low) / dist.step) + 1)]
        else:
            raise TrainlabError(f"{key}: the grid sampler needs values it can list, choice(...) or range(...), "
                                "not an interval")
    return values


def objective_values(folder: Path, names: list, returned: float, monitor: str) -> list:
    """A finished trial's figures for `names` (OBJECTIVES), from its run folder: the monitored value as the job
    returned it; the other validation figure at the epoch the monitor chose; the model's parameters (provenance.json);
    the median seconds of its epochs (metrics.csv)."""
    rows = [row for row in read_metrics(folder) if row["epoch"] != TEST_ROW]
    values = []
    for name in names:
        if name == monitor:
            values.append(returned)
        elif name in (VAL_ACC, VAL_LOSS):
            column = "val_acc" if higher_is_better(monitor) else "val_loss"
            scored = [row for row in rows if row.get(column) is not None]
            chosen = (max if higher_is_better(monitor) else min)(scored, key=lambda row: row[column])
            values.append(chosen[name.replace("/", "_")])
        elif name == EPOCH_SECONDS:
            values.append(statistics.median(row["seconds"] for row in rows))
        else:  # PARAMS
            values.append(float(read_attempts(folder)[-1]["model"]["parameters"]))
    return values


def read_test_score(checkpoint: Path):
    """{"loss", "acc"} on the test split, as the run recorded it in best.pt; None when it did not."""
    from trainlab.runs.checkpoint import load_checkpoint  # torch: imported by the task already

    try:
        test = load_checkpoint(checkpoint).get("test")
        return {"loss": float(test["loss"]), "acc": float(test["acc"])}
    except Exception:  # noqa: BLE001 (no file, an older run, no test split scored): reported as not recorded
        return None


def _objective(ret: JobReturn) -> tuple:
    """A job's return -> (its value, None, ""), or (None, why it failed on one line, the details)."""
    if ret.status != JobStatus.COMPLETED:
        error = ret._return_value  # the task's exception (JobReturn.return_value would raise it)
        return None, _one_line(error), "".join(traceback.format_exception(error))
    try:
        value = float(ret.return_value)
    except (TypeError, ValueError):
        return None, f"the job returned {ret.return_value!r}, not a number", ""
    return (value, None, "") if math.isfinite(value) else (None, f"the job returned {value}", "")


def _check_same_space(study, space: dict) -> None:
    """Optuna keeps each parameter's distribution for the whole study: a continued study must search the same way."""
    checked = set()
    for trial in study.get_trials(deepcopy=False):
        for key in (trial.distributions.keys() & space.keys()) - checked:
            checked.add(key)
            try:
                optuna.distributions.check_distribution_compatibility(trial.distributions[key], space[key])
            except ValueError as e:
                raise TrainlabError(f"{key} is searched otherwise than in the study '{study.study_name}' so far "
                                    f"({e}): continue it with the same values, or start another study (another "
                                    "hydra.sweep.dir or hydra.sweeper.study_name)") from None


def _trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


def _one_line(error: BaseException) -> str:
    return one_line(f"{type(error).__name__}: {error}", 300)


def _builds(sampler, cls) -> bool:
    return isinstance(sampler, functools.partial) and isinstance(sampler.func, type) and issubclass(sampler.func, cls)


def _tell_study(study, number: int, **outcome) -> None:
    try:
        study.tell(number, **outcome)
    except RuntimeError as e:  # the grid sampler stops the study once each point is taken; no loop to stop here
        if "Study.stop" not in str(e):
            raise


def _worker() -> str:
    """This search process, as a trial records who runs it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim(study, trial) -> None:
    """Record this search as the one running `trial`, beating now (in this order: a reader who sees the worker sees
    its beat). Through the storage: a FrozenTrial has no setter (Trial.set_user_attr calls the same)."""
    _beat(study, trial)
    study._storage.set_trial_user_attr(trial._trial_id, WORKER, _worker())


def _beat(study, trial) -> None:
    study._storage.set_trial_user_attr(trial._trial_id, BEAT, time.time())


@contextlib.contextmanager
def _beating(study, trials: list):
    """While this search runs `trials`, a thread records every BEAT_SECONDS that it still does: how a search on
    another machine tells a trial that runs from one whose search stopped (a process it cannot see). A beat that
    cannot be written (the storage out of reach a while) is tried again at the next; a search silent for
    STALE_SECONDS loses its trials to the others."""
    done = threading.Event()

    def beat():
        while not done.wait(BEAT_SECONDS):
            for trial in trials:
                with contextlib.suppress(Exception):
                    _beat(study, trial)

    thread = threading.Thread(target=beat, name="trainlab-search-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _live_elsewhere(study) -> list:
    """The study's RUNNING trials that another live search runs."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if _running_elsewhere(t)]


def _running_elsewhere(trial: FrozenTrial) -> bool:
    """Whether a RUNNING trial is being run by another live search: its beat is fresh and, on this machine, its
    process is alive. One on another machine whose search stopped (silent for STALE_SECONDS) is stopped."""
    host, _, pid = trial.user_attrs.get(WORKER, "").rpartition(":")
    if not host or trial.user_attrs.get(WORKER) == _worker():
        return False  # a study's trial from before workers were recorded, or this search's own
    if time.time() - trial.user_attrs.get(BEAT, 0.0) > STALE_SECONDS:
        return False  # its search has not said it runs it for 5 beats: stopped, or a process that reused its pid
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _stopped(study, here: Path) -> list:
    """This folder's trials that a search stopped before they finished: RUNNING, and no live search runs them."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if Path(t.user_attrs.get(FOLDER, "/")).parent == here and not _running_elsewhere(t)]


@contextlib.contextmanager
def _turn(sweep_dir: Path):
    """One search at a time counts, claims and asks trials: a lock file in the sweep folder, taken as Optuna's
    journal takes its own (creating it exclusively, which a network file system honours), stale after 30 s."""
    lock = JournalFileOpenLock(str(sweep_dir / TURN_LOCK))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _set_aside(folder: Path):
    """A stopped trial's run that left no checkpoint to go on from holds files a run starting there again would refuse
    to replace: they move into <folder>/stopped-N/ (SET_ASIDE; TensorBoard shows them as a run of their own), so that
    the trial starts again in its folder and nothing written is lost -> that folder; None where nothing moved (a
    checkpoint to resume, no run, or a live process writing there)."""
    if any((folder / CHECKPOINTS / name).exists() for name in (LAST, PREVIOUS)) or \
            RunFolderLock.held_elsewhere(folder):
        return None
    files = trace_files(folder)
    if not files:
        return None
    aside = next(path for n in itertools.count(1) for path in [folder / SET_ASIDE.format(n)]
                 if not (path.exists() or path.is_symlink()))
    for path in files:
        (aside / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
        path.rename(aside / path.relative_to(folder))
    return aside


def _job_folder(ret: JobReturn, trial: FrozenTrial) -> Path:
    if ret.hydra_cfg is not None:
        return Path(ret.hydra_cfg.hydra.runtime.output_dir)
    return Path(trial.user_attrs[FOLDER])


def _consecutive(trials: list) -> list:
    """Trials in runs of consecutive numbers: a launcher numbers one call's jobs from its first."""
    runs = []
    for trial in trials:
        if runs and trial.number == runs[-1][-1].number + 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs

"""Deny by default under `hydra.*`: a config or an override may set only the keys of USER_KEYS, each with the values
it takes, and choose only the options of CHOICES; every other value under `hydra` must be what trainlab's own conf/
composes with those choices (the reference), or the run is refused before Hydra acts on any of it.

Hydra acts on much of its own node: its logging configs build handlers and formatters that open files, callbacks are
instantiated, output_subdir and the runtime values name where files go, env_set and env_copy reach the environment,
help templates are rendered. Walking those values for bad ones missed a key twice, so the rule is turned around: what
is not declared here is refused. A user who trusts more names keys in the environment, never in a config:
TRAINLAB_ALLOW_KEYS=hydra.job.env_set.LD_LIBRARY_PATH (a key exactly, or every key below one: hydra.job.env_set.*).

    check_hydra(cfg, overrides, reference)   # raises UnsafeConfig naming the first key that breaks the rule
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

from trainlab.errors import EnvRefused, TrainlabError, printable
from trainlab.runs.trial import OBJECTIVES, PRUNERS

ALLOW_KEYS_ENV = "TRAINLAB_ALLOW_KEYS"
# The folder trainlab's own configs live in (the entrypoints' config_path, ../conf beside src/).
PACKAGED_CONF = Path(__file__).resolve().parents[3] / "conf"


class UnsafeConfig(TrainlabError):
    """A config sets what the allow-lists do not allow: a callable outside them, or a hydra key that is not a user's."""


@dataclass(frozen=True)
class Key:
    takes: str  # what the key takes, in words: the error says it
    ok: Callable  # the resolved value -> whether it is one of those


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")  # module.Name: what a target or a hook may name


def _text(limit: int = 1000) -> Callable:
    return lambda v: isinstance(v, str) and len(v) <= limit and not _CONTROL.search(v)


def _folder(v) -> bool:
    return _text(4096)(v) and v.strip() != ""


def _relative(v) -> bool:  # a sweep job's folder below the sweep's: no way out of it
    return _folder(str(v)) and not Path(str(v)).is_absolute() and ".." not in Path(str(v)).parts


def _int(low: int, none: bool = False) -> Callable:
    return lambda v: (v is None and none) or (isinstance(v, int) and not isinstance(v, bool) and v >= low)


def _number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)


def _one_of(*options) -> Callable:
    return lambda v: v in options


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float)) or _text()(v)


def _scalars(v) -> bool:
    return _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v))


def _loggers(v) -> bool:  # hydra.verbose: true, or the names of the loggers to make verbose
    names = v if isinstance(v, list) else [v]
    return isinstance(v, bool) or all(isinstance(n, str) and re.fullmatch(r"[\w.]+", n) for n in names)


def _search_path(v) -> bool:  # pkg:// imports the module it names to look inside: code runs
    return isinstance(v, list) and all(_folder(p) and (p.startswith("file://") or "://" not in p) for p in v)


def _storage(v) -> bool:  # Optuna's Redis storage unpickles what the server sends; databases, journals keep JSON
    return v is None or (_text()(v) and re.match(r"(sqlite|postgresql|mysql)(\+\w+)?://|journal:.", v) is not None)


TEXT, SLURM = "text without control characters", "text without control characters (a SLURM value)"
# The hydra keys a config or an override may set. A launcher's and a sweeper's keys exist only when that launcher or
# sweeper is chosen (Hydra refuses the others as unknown); `*` stands for any one key (a dotted one included).
USER_KEYS = {
    "hydra.run.dir": Key("a folder (a new one, or the run's own to continue it)", _folder),
    "hydra.sweep.dir": Key("a folder (a new one, or the sweep's own to continue it)", _folder),
    "hydra.sweep.subdir": Key("a relative path below hydra.sweep.dir", _relative),
    "hydra.mode": Key("RUN or MULTIRUN", lambda v: v is None or str(v) in ("RUN", "MULTIRUN", "RunMode.RUN",
                                                                            "RunMode.MULTIRUN")),
    "hydra.verbose": Key("true, false or logger names", _loggers),
    "hydra.searchpath": Key("a list of folders (file://PATH or PATH; not pkg://, which imports a module)",
                            _search_path),
    # hydra/launcher=parallel (Hydra's joblib launcher)
    "hydra.launcher.n_jobs": Key("an integer (-1: one job per core)", _int(-1)),
    "hydra.launcher.backend": Key("loky, multiprocessing, threading or null",
                                  _one_of(None, "loky", "multiprocessing", "threading")),
    "hydra.launcher.prefer": Key("processes or threads", _one_of("processes", "threads")),
    "hydra.launcher.timeout": Key("seconds, or null", _number),
    "hydra.launcher.verbose": Key("an integer", _int(0)),
    "hydra.launcher.batch_size": Key("auto or an integer", lambda v: v == "auto" or _int(1)(v)),
    # hydra/launcher=slurm and submitit_local (Hydra's submitit launcher)
    **{f"hydra.launcher.{k}": Key("an integer, or null", _int(0, none=True))
       for k in ("timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb", "cpus_per_gpu", "gpus_per_task",
                 "signal_delay_s", "max_num_timeout")},
    **{f"hydra.launcher.{k}": Key("an integer, at least 1", _int(1)) for k in ("tasks_per_node", "nodes",
                                                                               "array_parallelism")},
    "hydra.launcher.stderr_to_stdout": Key("true or false", _one_of(True, False)),
    **{f"hydra.launcher.{k}": Key(SLURM, lambda v: v is None or _text(200)(v))
       for k in ("name", "partition", "qos", "comment", "constraint", "exclude", "gres", "mem_per_gpu",
                 "mem_per_cpu", "account")},
    # the basic sweeper, and hydra/sweeper=trainlab_optuna
    "hydra.sweeper.params": Key("a mapping of keys to values to sweep", lambda v: v is None or v == {}),
    "hydra.sweeper.params.*": Key("a value to sweep (each job's config is checked as it is composed)", _scalar),
    "hydra.sweeper.max_batch_size": Key("an integer, or null", _int(1, none=True)),
    "hydra.sweeper.direction": Key("maximize or minimize, or a list of them", lambda v: isinstance(v, list) and v
                                   or str(v).rsplit(".", 1)[-1] in ("maximize", "minimize")),
    "hydra.sweeper.direction.*": Key("maximize or minimize", _one_of("maximize", "minimize")),
    "hydra.sweeper.objectives": Key(f"null or a list of {', '.join(OBJECTIVES)}", lambda v: v is None or v == []),
    "hydra.sweeper.objectives.*": Key(f"one of {', '.join(OBJECTIVES)}", _one_of(*OBJECTIVES)),
    "hydra.sweeper.pruner": Key(f"none, {', '.join(PRUNERS)}", lambda v: str(v).rsplit(".", 1)[-1] in ("none",
                                                                                                       *PRUNERS)),
    "hydra.sweeper.pruner_settings.*": Key("a number, auto or null (the pruner's own arguments)",
                                           lambda v: v in (None, "auto") or _number(v) or v == 0),
    "hydra.sweeper.custom_search_space": Key("null or module.function (allowed by TRAINLAB_ALLOW_TARGETS)",
                                             lambda v: v is None or (isinstance(v, str) and
                                                                     DOTTED_NAME.fullmatch(v) is not None)),
    "hydra.sweeper.study_name": Key("a name (letters, digits, _ . -)", lambda v: isinstance(v, str) and re.fullmatch(
        r"[\w.-]{1,200}", v) is not None),
    "hydra.sweeper.storage": Key("null, a sqlite, postgresql or mysql database URL, or journal:PATH", _storage),
    "hydra.sweeper.n_trials": Key("an integer, at least 1", _int(1)),
    "hydra.sweeper.n_jobs": Key("an integer, at least 1", _int(1)),
    "hydra.sweeper.max_failure_rate": Key("a number from 0 to 1", lambda v: isinstance(v, (int, float))
                                          and not isinstance(v, bool) and 0 <= v <= 1),
    "hydra.sweeper.sampler.*": Key("a number, text or a list of them (the sampler's own arguments)", _scalars),
}
NOT_USER_KEYS = {"hydra.sweeper.sampler._target_", "hydra.sweeper.sampler._partial_"}  # the option chooses those

# The options a config may choose in Hydra's own groups (hydra/launcher=parallel, ...): each is composed from the
# packaged file or plugin, so the reference holds the same option.
CHOICES = {
    "hydra/launcher": ("basic", "parallel", "slurm", "submitit_local", "submitit_slurm", "joblib"),
    "hydra/sweeper": ("basic", "trainlab_optuna"),
    "hydra/sweeper/optuna_sampler": ("tpe", "random", "grid", "nsgaii", "cmaes", "gp", "qmc"),
    "hydra/job_logging": ("trainlab", "stdout", "disabled"),  # Hydra's default follows a symlink to run.log
    "hydra/hydra_logging": ("default", "disabled"),
    "hydra/help": ("default",), "hydra/hydra_help": ("default",), "hydra/output": ("default",),
    "hydra/env": ("default",), "hydra/callbacks": (None,),
}

# Values Hydra computes for each composition, from the command line, the search path and the choices: checked by
# what they are computed from (a config cannot have set them: Hydra writes over them, or adds to them).
OVERRIDES_TASK, OVERRIDES_HYDRA, CHOICES_KEY = "hydra.overrides.task", "hydra.overrides.hydra", "hydra.runtime.choices"
STORAGE = "hydra.sweeper.storage"
COMPUTED = {OVERRIDES_TASK, OVERRIDES_HYDRA, CHOICES_KEY, "hydra.runtime.config_sources", "hydra.job.override_dirname",
            "hydra.job.config_name"}
WHOLE = {"hydra.searchpath", "hydra.verbose", *COMPUTED}  # one value each, however they are nested


def hydra_choices(cfg: DictConfig) -> dict:
    """The options chosen in Hydra's own groups -> {group: option}; UnsafeConfig for one that is not in CHOICES."""
    chosen = {}
    for group, option in (cfg.hydra.runtime.get("choices") or {}).items():
        if not str(group).startswith("hydra/"):
            continue
        if group not in CHOICES or option not in CHOICES[group]:
            options = ", ".join(str(o).lower() for o in CHOICES.get(group, ())) or "none: it is not one of trainlab's"
            raise UnsafeConfig(f"{group}={printable(option)} is not an option trainlab runs: {group} takes {options}")
        chosen[group] = option
    return chosen


_REFERENCES = {}  # this process's compositions of trainlab's own config, by primary config and options


def reference_config(config_name: str, chosen: dict) -> DictConfig:
    """trainlab's own `config_name` (conf/<config_name>.yaml, from PACKAGED_CONF and Hydra's packages and plugins
    alone: no search path a command or config adds) with the options `chosen` in Hydra's groups: what every hydra
    value that is not a user's must equal. (Composed as for a run: the run mode changes none of those values.)"""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    key = (config_name, tuple(sorted(chosen.items(), key=str)))
    if key not in _REFERENCES:
        loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(PACKAGED_CONF)))
        overrides = [f"{group}={option}" for group, option in chosen.items() if option is not None]
        _REFERENCES[key] = loader.load_configuration(config_name=config_name, overrides=overrides,
                                                     run_mode=RunMode.RUN)
    return _REFERENCES[key]


def check_hydra(cfg: DictConfig, overrides: list, reference: DictConfig, probe: DictConfig) -> None:
    """Hold cfg.hydra to the rule above: each user key's resolved value (read from `probe`, a copy of cfg with
    Hydra's runtime values set as they will be) must be one it takes; every other key must hold what the reference
    composes, unresolved. `overrides`: the command line's, from which Hydra computes hydra.overrides."""
    mine, theirs = _leaves(cfg.hydra), _leaves(reference.hydra)
    _check_computed(mine, overrides)
    for path in sorted(mine.keys() | theirs.keys(), key=lambda p: (p not in mine, p)):
        key = ".".join(path)
        if key in COMPUTED or trusted(key):
            continue
        user = _user_key(path)
        if user is not None and path in mine:
            value = _resolved(probe, path)
            if not user.ok(value):
                shown = _masked(value) if key == STORAGE else value
                raise UnsafeConfig(f"{key}={printable(_shown(shown))} cannot be used: {key} takes {user.takes}")
        elif path not in mine:
            if not any(other[:len(path)] == path for other in mine):  # else: a mapping or list that grew, below
                raise UnsafeConfig(f"{key} is removed by this config: {_not_settable(key)}")
        elif path not in theirs or mine[path] != theirs[path]:
            raise UnsafeConfig(f"{key} is set by this config ({printable(_shown(mine[path]))}): {_not_settable(key)}")
    _check_launcher_text(probe)
    _check_storage(probe)


def _check_launcher_text(probe: DictConfig) -> None:
    """No launcher string, trusted or not, carries a line break or a NUL: each becomes a line of a job's shell
    script (an #SBATCH option with a newline in it is a command of its own)."""
    if "launcher" not in probe.hydra:
        return
    try:
        values = _leaves(probe.hydra.launcher, ("hydra", "launcher"), resolve=True)
    except Exception as e:  # noqa: BLE001 (any resolver's failure)
        raise UnsafeConfig(unresolved("hydra.launcher", e)) from None
    for path, value in values.items():
        if isinstance(value, str) and _CONTROL.search(value):
            raise UnsafeConfig(f"{'.'.join(path)}={printable(_shown(value))} cannot be used: a launcher's text goes "
                               "into a job's script, so it takes no control characters (line breaks, NUL)")


def _check_storage(probe: DictConfig) -> None:
    """An Optuna study's SQLite file lies in the sweep's folder or under outputs/: a database file elsewhere is a
    file written outside the run, and SQLite would take any file it is pointed at as its own."""
    storage = OmegaConf.select(probe, STORAGE, default=None)
    if not isinstance(storage, str) or not storage.startswith("sqlite:///") or trusted(STORAGE):
        return
    path = Path(os.path.abspath(storage[len("sqlite:///"):]))
    homes = [Path(os.path.abspath(str(probe.hydra.sweep.dir))), Path(os.path.abspath("outputs"))]
    if not any(path.is_relative_to(home) for home in homes) or path.is_symlink():
        raise UnsafeConfig(f"{STORAGE}={printable(_masked(storage))} cannot be used: a study's SQLite file lies in the sweep's "
                           f"folder or under outputs/ (and is no symbolic link); to trust this path, run with "
                           f"{ALLOW_KEYS_ENV}={STORAGE}")


def _not_settable(key: str) -> str:
    return (f"under hydra a config may set only the run and sweep folders, the launcher's and the sweeper's fields "
            f"and a few more (README: Security); to trust this key, run with {ALLOW_KEYS_ENV}={key}")


def _check_computed(mine: dict, overrides: list) -> None:
    parsed = OverridesParser.create().parse_overrides(overrides)
    expected = {OVERRIDES_HYDRA: [o.input_line for o in parsed if o.is_hydra_override()],
                OVERRIDES_TASK: [o.input_line for o in parsed if not o.is_hydra_override()]}
    for key, lines in expected.items():
        if mine.get(tuple(key.split("."))) != lines:
            raise UnsafeConfig(f"{key} is set by this config: Hydra fills it from the command line")
    for group, option in (mine.get(tuple(CHOICES_KEY.split("."))) or {}).items():
        if not (option is None or isinstance(option, str)):
            raise UnsafeConfig(f"{CHOICES_KEY}.{group} is set by this config: Hydra fills it with the options chosen")


def _leaves(node: DictConfig, root: tuple = ("hydra",), resolve: bool = False) -> dict:
    """{path (a tuple of keys): value} of every value under `node` (the hydra node), interpolations as written (a node
    that is an interpolation is one value) or `resolve`d, a key of WHOLE as one value however it is nested."""
    out = {}

    def add(value, path):
        whole = ".".join(path) in WHOLE
        if isinstance(value, dict) and value and not whole:
            for key, item in value.items():
                add(item, path + (str(key),))
        elif isinstance(value, list) and value and not whole:
            for i, item in enumerate(value):
                add(item, path + (str(i),))
        else:
            out[path] = value

    add(OmegaConf.to_container(node, resolve=resolve), root)
    return out


def _user_key(path: tuple) -> Optional[Key]:
    key = ".".join(path)
    if key in NOT_USER_KEYS:
        return None
    if key in USER_KEYS:
        return USER_KEYS[key]
    for pattern, rule in USER_KEYS.items():
        if pattern.endswith(".*") and len(path) > (depth := pattern.count(".")) and \
                ".".join(path[:depth]) == pattern[:-2]:
            return rule
    return None


def _resolved(probe: DictConfig, path: tuple):
    """The value at `path` in `probe`, resolved (a list or mapping as plain Python); UnsafeConfig where it cannot be."""
    node = probe
    try:
        for key in path:
            node = node[int(key)] if isinstance(node, ListConfig) else node[key]
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
    except Exception as e:  # noqa: BLE001 (any resolver's failure)
        raise UnsafeConfig(unresolved(".".join(path), e)) from None


def unresolved(path: str, error: Exception) -> str:
    """The line for a value at `path` that cannot be resolved when the config is checked: the variable ${oc.env:...}
    may not read, or why else."""
    cause, key = error, getattr(error, "full_key", None) or path
    while cause is not None and not isinstance(cause, EnvRefused):
        cause = cause.__cause__ or cause.__context__
    first = _first_line(error)
    refused = f"{EnvRefused.__name__} raised while resolving interpolation: "  # how OmegaConf words what it wraps
    if cause is not None or refused in first:
        return f"{key} reads {printable(cause if cause is not None else first.split(refused, 1)[1])}"
    return (f"{key} cannot be resolved when the config is checked ({printable(first[:200])}): a value that resolves "
            "only later is not checked; give it a plain value")


def _masked(url) -> str:
    """A database URL as it may be printed: its password as ***."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", str(url))


def _shown(value) -> str:
    text = repr(value) if isinstance(value, str) and _CONTROL.search(value) else str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def trusted(key: str) -> bool:
    """Whether the user trusts the hydra key `key` (TRAINLAB_ALLOW_KEYS)."""
    return named_in_env(ALLOW_KEYS_ENV, key)


def named_in_env(variable: str, name: str) -> bool:
    """Whether the environment variable `variable` (a comma-separated list: TRAINLAB_ALLOW_KEYS, _ALLOW_TARGETS,
    _ENV_ALLOW) names `name`, exactly or as every name below one (`mypkg.losses.*`): the user's trust, said outside
    any config."""
    for entry in (e.strip() for e in os.environ.get(variable, "").split(",")):
        if entry and (name == entry or (entry.endswith(".*") and name.startswith(entry[:-1]))):
            return True
    return False

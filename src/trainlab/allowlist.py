"""What a config may make Python construct, and the check that holds every composed config to it.

A config names callables in two ways: `_target_` anywhere (trainlab's optimizer, scheduler and loss; Hydra's
callbacks, sweeper and launcher, and what they build), and `()` / `class` in Hydra's logging configs, which Python's
logging.config builds. A prefix cannot hold: `torch` also holds torch.hub.load (imports a hubconf.py),
torch.utils.cpp_extension.load_inline (compiles and runs C++), torch.ops.load_library, torch.package, file writers.
So a target passes only by exact name, or as a public class of the right kind in a namespace of constructors (an
optimizer in torch.optim, an nn.Module in torch.nn, ...). Its string is checked before its module is imported:
only modules named here are ever imported to look a name up.

A few other keys hand text to a shell, the process environment or pickle; they are refused too unless left as
shipped. Hydra composes every config, single run or sweep job, in CheckedConfigLoader, which checks the config before
Hydra builds a callback, a plugin or a logging handler from it; trainlab's own builders check again (optim.py),
so a config read from a checkpoint or built in a notebook is held to the same list.

A user who trusts more says so outside any config, in the environment:
TRAINLAB_ALLOW_TARGETS=mypkg.MyNet,mypkg.losses.* (exact names, or every name below a module) and
TRAINLAB_ALLOW_KEYS=hydra.launcher.setup (keys refused below).
"""
import importlib
import os
import re
import shutil
import sys
from pathlib import Path

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.object_type import ObjectType
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainlab.config import check_known_keys, composition_error
from trainlab.errors import ConfigRefused, TrainlabError

ALLOW_TARGETS_ENV = "TRAINLAB_ALLOW_TARGETS"
ALLOW_KEYS_ENV = "TRAINLAB_ALLOW_KEYS"

# Namespaces of constructors: a public class in one of them may be built when it is of the kind named.
# (module, base classes, what the error calls them)
CLASS_NAMESPACES = {
    "torch.optim": (("torch.optim.Optimizer",), "optimizers"),
    "torch.optim.lr_scheduler": (("torch.optim.lr_scheduler.LRScheduler",
                                  "torch.optim.lr_scheduler.ReduceLROnPlateau"), "schedulers"),
    "torch.nn": (("torch.nn.Module",), "modules"),
    "torchvision.transforms": (("builtins.object",), "classes"),
}
# Builders of classification networks (resnet18, vgg11, ...): functions, listed by torchvision itself.
MODEL_BUILDERS = "torchvision.models"
# Classes in those namespaces that exist to call what they are given.
EXCLUDED = {"torchvision.transforms.Lambda", "torch.optim.lr_scheduler.LambdaLR",
            "torch.optim.lr_scheduler.MultiplicativeLR"}

EXACT_TARGETS = {
    # trainlab's own
    "trainlab.optim.SoftmaxMSELoss", "trainlab.optim.SoftmaxL1Loss", "trainlab.cli.SweepReport",
    # Hydra's sweepers and launchers, as the project ships them (Hydra builds only registered plugins of these)
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.trainlab_optuna_sweeper.optuna_sweeper.OptunaSweeper",  # trainlab's own (src/hydra_plugins)
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    # the Optuna sweeper's samplers (its hydra/sweeper/sampler options)
    "optuna.samplers.TPESampler", "optuna.samplers.RandomSampler", "optuna.samplers.CmaEsSampler",
    "optuna.samplers.NSGAIISampler", "optuna.samplers.GridSampler",
}
# What Hydra's logging configs may build (`class` / `()`), and the only streams `ext://` may name.
LOGGING_TARGETS = {"logging.StreamHandler", "logging.FileHandler", "logging.NullHandler", "logging.Formatter"}
LOGGING_STREAMS = {"ext://sys.stdout", "ext://sys.stderr"}
LOGGING_SECTIONS = ("job_logging", "hydra_logging")
# A log file stays in the run's folder: its name may not climb out or be spliced from other values.
LOG_FILE = re.compile(r"\$\{hydra[.:]runtime\.output_dir\}/(\$\{hydra[.:]job\.name\}|[\w-]+)(\.[\w]+)?")

# Environment variables a config may set for its job (hydra.job.env_set): none of them loads or runs code.
# Others (LD_PRELOAD, PYTHONPATH, CXX, ...) can; export them in the shell.
ENV_SET_NAMES = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG",
                 "PYTORCH_CUDA_ALLOC_CONF", "NCCL_DEBUG"}
# Launcher keys whose text reaches a shell (sbatch script lines and #SBATCH options): only empty from a config.
SHELL_KEYS = ("hydra.launcher.setup", "hydra.launcher.additional_parameters")
# Optuna's Redis storage unpickles what the server sends; the database storages keep JSON.
STORAGE_KEY = "hydra.sweeper.storage"

NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_UNRESOLVED = object()  # an interpolation that cannot be resolved yet (${hydra:runtime.output_dir} before the job)


class UnsafeConfig(TrainlabError):
    """A config names something outside the allow-list."""


def target_allowed(target) -> bool:
    """Whether a config may build `target` (a dotted name), by the rules above."""
    if not isinstance(target, str) or not NAME.fullmatch(target):
        return False
    if target in EXACT_TARGETS or _user_allowed(target):
        return True
    module, _, name = target.rpartition(".")
    if name.startswith("_") or target in EXCLUDED:
        return False
    if module in CLASS_NAMESPACES:
        found = getattr(importlib.import_module(module), name, None)
        bases = tuple(_object(base) for base in CLASS_NAMESPACES[module][0])
        return isinstance(found, type) and issubclass(found, bases)
    if module == MODEL_BUILDERS:
        import torchvision.models

        return name in torchvision.models.list_models(module=torchvision.models)
    return False


def check_config(cfg, where: str = "") -> None:
    """Raise UnsafeConfig, naming the key, if `cfg` (a whole composed config, or one part of it at `where`) would
    build anything outside the allow-list or hand text to a shell, the environment or pickle."""
    _walk(cfg, where, seen=set())
    if isinstance(cfg, DictConfig) and not where and "hydra" in cfg:
        _check_hydra(cfg.hydra)


class CheckedConfigLoader(ConfigLoaderImpl):
    """Hydra's config loader, checking each config it composes: a run's, a sweep's, and each sweep job's (the
    joblib and submitit launchers carry this loader into the job's process and compose the job's config there).

    A config that cannot be composed (a misspelt key, an unknown option, a wrong type), names a key no schema has
    (`+trainer.epochz=3`) or is refused by the allow-list ends the process at once, with one line and status 2, before
    any folder is made: Hydra would print several lines and exit 1, and its first composition (to learn the run
    mode) ignores exceptions altogether. HYDRA_FULL_ERROR=1 lets the exception through.
    """

    def load_configuration(self, *args, **kwargs) -> DictConfig:
        try:
            cfg = super().load_configuration(*args, **kwargs)
            check_config(cfg)
            check_known_keys(cfg)
        except (HydraException, OmegaConfBaseException, TrainlabError) as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            message = composition_error(e, self._groups())
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise ConfigRefused(message) from None
        return cfg

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list) -> DictConfig:
        """A sweep job's config; one that cannot be composed ends the sweep before any job runs, and takes the
        sweep folder Hydra made just before (it holds only multirun.yaml) with it."""
        try:
            return super().load_sweep_config(master_config, sweep_overrides)
        except ConfigRefused:
            sweep_dir = Path(master_config.hydra.sweep.dir)
            if sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
                shutil.rmtree(sweep_dir)
            raise

    def _groups(self) -> list:
        try:
            return self.repository.get_group_options("", ObjectType.GROUP)
        except Exception:  # noqa: BLE001 (only for a suggestion)
            return []


def guard_hydra() -> None:
    """Make Hydra compose through CheckedConfigLoader, and report its own failures as one line: call before
    @hydra.main's function (every entrypoint does)."""
    import hydra._internal.hydra

    from trainlab.cli import report_hydra_errors

    hydra._internal.hydra.ConfigLoaderImpl = CheckedConfigLoader  # the name Hydra.create_main_hydra2 builds from
    report_hydra_errors()


def _walk(node, path: str, seen: set) -> None:
    if id(node) in seen:  # an interpolation that points back at a parent
        return
    seen = seen | {id(node)}
    logging = _in_logging(path)
    for key, value in _children(node):
        where = f"{path}.{key}" if path else str(key)
        if key == "_target_" or (logging and key in ("()", "class")):
            allowed = (value in LOGGING_TARGETS or _user_allowed(value)) if logging else target_allowed(value)
            if not allowed:
                raise UnsafeConfig(_refusal(where, value, logging))
        elif logging and isinstance(value, str) and value.startswith("ext://") and value not in LOGGING_STREAMS:
            raise UnsafeConfig(f"{where} is '{value}': a logging config may name only the streams "
                               f"{', '.join(sorted(LOGGING_STREAMS))}")
        elif isinstance(value, (DictConfig, ListConfig)):
            _walk(value, where, seen)


def _children(node):
    """(key, value) pairs of a DictConfig or ListConfig, interpolations resolved: a `_target_` or a whole node
    may come from elsewhere in the config, or from a resolver such as oc.create."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if OmegaConf.is_missing(node, key):
            continue
        try:
            yield key, node[key]
        except Exception:  # noqa: BLE001 (any resolver's failure): checked as a value that cannot be known
            yield key, _UNRESOLVED


def _check_hydra(hydra: DictConfig) -> None:
    """The Hydra keys that take text for a shell, the environment, a file path or pickle."""
    for section in LOGGING_SECTIONS:
        handlers = OmegaConf.select(hydra, f"{section}.handlers", default=None) or {}
        for name in handlers:
            handler = handlers[name]
            if isinstance(handler, DictConfig) and handler.get("class") == "logging.FileHandler":
                filename = OmegaConf.to_container(handler, resolve=False).get("filename")
                if not (isinstance(filename, str) and LOG_FILE.fullmatch(filename)):
                    raise UnsafeConfig(f"hydra.{section}.handlers.{name}.filename is '{filename}': a log file is "
                                       "written in the run's folder, as ${hydra.runtime.output_dir}/NAME.log")
    job_name = hydra.job.get("name")
    if isinstance(job_name, str) and (not re.fullmatch(r"[\w.-]+", job_name) or job_name in (".", "..")):
        raise UnsafeConfig(f"hydra.job.name is '{job_name}': it names the log file, so letters, digits, _ . - only")
    for name in hydra.job.get("env_set") or {}:
        key = f"hydra.job.env_set.{name}"
        if name not in ENV_SET_NAMES and not _key_allowed(key):
            raise UnsafeConfig(f"{key}: a config may set only {', '.join(sorted(ENV_SET_NAMES))}; export {name} "
                               f"in the shell instead (or trust the key: {ALLOW_KEYS_ENV}={key})")
    for key in SHELL_KEYS:
        if OmegaConf.select(hydra, key[len("hydra."):], default=None) and not _key_allowed(key):
            raise UnsafeConfig(f"{key} is set: its text goes into the job's shell script, so a config may not set it; "
                               f"to trust it, run with {ALLOW_KEYS_ENV}={key}")
    storage = OmegaConf.select(hydra, STORAGE_KEY[len("hydra."):], default=None)
    if isinstance(storage, str) and storage.startswith("redis") and not _key_allowed(STORAGE_KEY):
        raise UnsafeConfig(f"{STORAGE_KEY} is '{storage}': Optuna's Redis storage unpickles what the server sends; "
                           f"use a database URL such as sqlite:///outputs/optuna.db "
                           f"(or {ALLOW_KEYS_ENV}={STORAGE_KEY})")


def _refusal(where: str, value, logging: bool) -> str:
    shown = "(an interpolation not yet resolved)" if value is _UNRESOLVED else f"'{value}'"
    if logging:
        kinds = ", ".join(sorted(LOGGING_TARGETS))
    else:
        kinds = ", ".join(f"{module} {kind}" for module, (_, kind) in CLASS_NAMESPACES.items())
        kinds += f", {MODEL_BUILDERS} classifiers and trainlab's own classes"
    return (f"{where} {shown} is not allowed: a config builds only {kinds}; to trust another, name it in the "
            f"environment, not the config: {ALLOW_TARGETS_ENV}=module.Name")


def _in_logging(path: str) -> bool:
    return any(path == f"hydra.{s}" or path.startswith(f"hydra.{s}.") for s in LOGGING_SECTIONS)


def _user_allowed(target) -> bool:
    if not isinstance(target, str):
        return False
    for entry in _env_list(ALLOW_TARGETS_ENV):
        if target == entry or (entry.endswith(".*") and target.startswith(entry[:-1])):
            return True
    return False


def _key_allowed(key: str) -> bool:
    return key in _env_list(ALLOW_KEYS_ENV)


def _env_list(name: str) -> list:
    return [entry.strip() for entry in os.environ.get(name, "").split(",") if entry.strip()]


def _object(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)

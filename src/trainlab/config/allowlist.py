"""What a config may make Python construct, and the checks every composed config goes through before Hydra or
trainlab acts on any of it.

A config names callables by `_target_` (trainlab's optimizer, scheduler and loss; Hydra's callbacks, sweeper and
launcher) and by `()` (the factories of Python's logging.config); both are held to one allow-list. A prefix cannot
hold: `torch` also holds torch.hub.load (imports a hubconf.py), torch.utils.cpp_extension.load_inline (compiles and
runs C++), torch.ops.load_library, torch.package, file writers. So a target passes only by exact name, or as a public
class of the right kind in a namespace of constructors (an optimizer in torch.optim, an nn.Module in torch.nn, ...).
Its string is checked before its module is imported: only modules named here are ever imported to look a name up.

The check sees the config resolved as it will be used (Hydra's runtime values set as they will be): a value from
oc.create, oc.decode or ${hydra:...} is walked like any other, and one that cannot be resolved is refused. Under
`hydra.*` the rule is deny by default (trainlab/config/hydra_policy.py). Hydra composes every config, single run or sweep
job, in CheckedConfigLoader, which checks it before Hydra builds a callback, a plugin or a logging handler from it
and before a run or sweep folder is written into (trainlab/runs/folder.py); trainlab's own builders check again
(optim.py), so a config read from a checkpoint or built in a notebook is held to the same list.

A user who trusts more says so outside any config, in the environment:
TRAINLAB_ALLOW_TARGETS=mypkg.MyNet,mypkg.losses.* (exact names, or every name below a module) and
TRAINLAB_ALLOW_KEYS=hydra.launcher.setup (hydra keys a config may then set).
"""
import copy
import importlib
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from trainlab.config.mistakes import check_known_keys, composition_error, unchosen_key
from trainlab.errors import ConfigRefused, TrainlabError, one_line, printable
from trainlab.config.hydra_policy import (ALLOW_KEYS_ENV, DOTTED_NAME, USER_KEYS, UnsafeConfig,  # noqa: F401
                                   check_hydra, hydra_choices, named_in_env, reference_config, trusted, unresolved)
from trainlab.launch import first_process, job_processes
from trainlab.runs.folder import (MADE_FOR_THE_RUN, RunFolderLock, check_run_folder, check_sweep_folder,
                                 missing_folders)

ALLOW_TARGETS_ENV = "TRAINLAB_ALLOW_TARGETS"

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
    "trainlab.training.losses.SoftmaxMSELoss", "trainlab.training.losses.SoftmaxL1Loss", "trainlab.cli.SweepReport",
    "trainlab.training.schedule.PiecewiseLinearLR", "trainlab.training.muon.Muon",
    # conf/'s optimizers, schedulers and loss by name too: checked without importing torch (a second), so a command
    # that is refused for another reason says so at once
    "torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.lr_scheduler.StepLR",
    "torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.lr_scheduler.OneCycleLR", "torch.nn.CrossEntropyLoss",
    # Hydra's sweepers and launchers, as the project ships them (Hydra builds only registered plugins of these)
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.trainlab_optuna_sweeper.optuna_sweeper.OptunaSweeper",  # trainlab's own (src/hydra_plugins)
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    # the Optuna sweeper's samplers (its hydra/sweeper/sampler options)
    "optuna.samplers.TPESampler", "optuna.samplers.RandomSampler", "optuna.samplers.CmaEsSampler",
    "optuna.samplers.NSGAIISampler", "optuna.samplers.GridSampler", "optuna.samplers.GPSampler",
    "optuna.samplers.QMCSampler",
}
TARGET_KEYS = ("_target_", "()")  # what Hydra's instantiate and Python's logging.config build a callable from



def target_allowed(target) -> bool:
    """Whether a config may build `target` (a dotted name), by the rules above."""
    if not isinstance(target, str) or not DOTTED_NAME.fullmatch(target):
        return False
    if target in EXACT_TARGETS or named_in_env(ALLOW_TARGETS_ENV, target):
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
    build anything outside the allow-list, or, composed with Hydra's part, sets a hydra key that is not a user's."""
    if isinstance(cfg, DictConfig) and not where and "hydra" in cfg:
        given = OmegaConf.to_container(cfg.hydra.overrides)  # as typed: a ${...} in an override is not resolved
        check_composed(cfg, given["hydra"] + given["task"], cfg.hydra.job.config_name or "config",
                       OmegaConf.select(cfg, "hydra.run.dir", default=None))
        return
    check_app(cfg, where)


def check_composed(cfg: DictConfig, overrides: list, entry: str, folder) -> None:
    """A config as Hydra composed it, with its hydra node: that node against the reference (trainlab's own `entry`
    with the same options), then the rest, both resolved as the run in `folder` will see them."""
    probe = probe_of(cfg, folder)
    with hydra_config_set(probe):
        check_hydra(cfg, overrides, reference_config(entry, hydra_choices(cfg)), probe)
        check_app(probe)


def check_app(cfg, where: str = "") -> None:
    """Every value of `cfg` but its hydra node, resolved as the run will read it, then walked: each `_target_` and
    `()` on the allow-list. A value that cannot be resolved now is refused: it would resolve later, unchecked."""
    try:
        if isinstance(cfg, DictConfig) and not where and "hydra" in cfg:
            value = {key: _plain(cfg, key) for key in cfg.keys() if key != "hydra"}  # Hydra's part: hydra_policy
        else:
            value = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as e:  # noqa: BLE001 (any resolver's failure)
        raise UnsafeConfig(unresolved(where or "the config", e)) from None
    _walk(value, where)


def _plain(cfg: DictConfig, key):
    if OmegaConf.is_missing(cfg, key):
        return "???"
    value = cfg[key]
    return OmegaConf.to_container(value, resolve=True, throw_on_missing=False) if isinstance(
        value, (DictConfig, ListConfig)) else value


def _walk(value, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in TARGET_KEYS and not target_allowed(item):
                raise UnsafeConfig(_refusal(where, item))
            _walk(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}.{i}")


def probe_of(cfg: DictConfig, output_dir) -> DictConfig:
    """A copy of `cfg` with Hydra's runtime values set as the job will see them: hydra.runtime.output_dir (the run's
    folder) and, where the launcher has not numbered the job yet, job 0. What the checks resolve."""
    probe = copy.deepcopy(cfg)
    if "hydra" not in probe:
        return probe
    with read_write(probe.hydra), open_dict(probe.hydra):
        if output_dir is not None:
            probe.hydra.runtime.output_dir = os.path.abspath(str(output_dir))
        if OmegaConf.is_missing(probe.hydra.job, "num"):
            probe.hydra.job.num, probe.hydra.job.id = 0, "0"
    return probe


@contextmanager
def hydra_config_set(probe: DictConfig):
    """${hydra:...} reads Hydra's global config: for a check, the probe's."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    before = instance.cfg
    if "hydra" in probe:
        instance.set_config(probe)
    try:
        yield
    finally:
        instance.cfg = before


class CheckedConfigLoader(ConfigLoaderImpl):
    """Hydra's config loader, checking each config it composes: a run's, a sweep's, and each sweep job's (the
    joblib and submitit launchers carry this loader into the job's process and compose the job's config there).

    A config that cannot be composed (a misspelt key, an unknown option, a wrong type), names a key no schema has
    (`+trainer.epochz=3`), is refused by the allow-lists or, for src/run.py, aims at a run or sweep folder that is not
    a new one or the run's own ends the process at once, with one line and status 2, before Hydra acts on it or writes
    anything: Hydra would print several lines and exit 1, and its first composition (to learn the run mode) ignores
    exceptions altogether. HYDRA_FULL_ERROR=1 lets the exception through.
    """

    entry = "config"  # the entrypoint's primary config, whose hydra node is the reference (guard_hydra sets it)
    checks_folders = False  # src/run.py about to run: its run or sweep folder is checked before Hydra writes there
    _sweep_job = False

    def load_configuration(self, config_name, overrides, run_mode, from_shell=True, validate_sweep_overrides=True):
        try:
            _check_search_path(overrides)  # before Hydra looks in the folders it names: pkg:// imports a module
            try:
                cfg = super().load_configuration(config_name=config_name, overrides=overrides, run_mode=run_mode,
                                                 from_shell=from_shell,
                                                 validate_sweep_overrides=validate_sweep_overrides)
            except KeyError as e:  # Hydra copies hydra.job.env_copy's variables as it composes: one that is not set
                if not (e.args and isinstance(e.args[0], str) and e.args[0] not in os.environ):
                    raise
                raise UnsafeConfig(f"hydra.job.env_copy names {printable(e)}, which is not set; and a config may not "
                                   "copy the environment at all (README: Security)") from None
            except AssertionError:  # OmegaConf's answer to a key set under a node that is null
                raise TrainlabError(unchosen_key(overrides) or "the config cannot be composed") from None
            if validate_sweep_overrides:  # else: Hydra's composition to learn the run mode, which acts on nothing
                self._check(cfg, list(overrides), run_mode)
        except (HydraException, OmegaConfBaseException, TrainlabError) as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            missing = getattr(e, "missing_cfg_file", None)
            if missing and "/" in str(missing) and getattr(e, "options", None) is None:  # a list's choice: logger=[x]
                e.options = self._options(str(missing).rsplit("/", 1)[0])
            message = one_line(composition_error(e, self._groups()))
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise ConfigRefused(message) from None
        return cfg

    def _check(self, cfg: DictConfig, overrides: list, run_mode) -> None:
        """Hydra's part against trainlab's own composition, then the rest, resolved, then the run or sweep folder."""
        sweep = run_mode == RunMode.MULTIRUN
        key = "hydra.sweep.dir" if sweep or self._sweep_job else "hydra.run.dir"
        folder = _resolved_folder(cfg, key)  # on cfg itself: the value Hydra will use (its stamp and now, once)
        if self._sweep_job:
            folder = os.path.join(folder, _resolved_folder(probe_of(cfg, folder), "hydra.sweep.subdir"))
        check_composed(cfg, overrides, self.entry, folder)
        check_known_keys(cfg)
        if self.checks_folders and sweep and not self._sweep_job:
            _check_job_processes(cfg, overrides)
        if self.checks_folders and not self._sweep_job and first_process():  # torchrun: the first speaks for all
            if sweep:
                check_sweep_folder(folder, lambda record: _same_sweep(record, overrides))
            elif not check_run_folder(folder):
                # a new run's folder is this process's from now on: a second run started into it at the same moment
                # is refused before Hydra writes its .hydra/ there
                MADE_FOR_THE_RUN[:] = missing_folders(folder)  # outputs/runs/: removed too if the start fails
                RunFolderLock(folder).acquire()

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list) -> DictConfig:
        """A sweep job's config; one that cannot be composed ends the sweep before any job runs, and takes the
        sweep folder Hydra made just before (it holds only multirun.yaml) with it."""
        try:
            self._sweep_job = True
            return super().load_sweep_config(master_config, sweep_overrides)
        except ConfigRefused:
            sweep_dir = Path(master_config.hydra.sweep.dir)
            if sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
                shutil.rmtree(sweep_dir)
            raise
        finally:
            self._sweep_job = False

    def _options(self, group: str) -> list:
        try:
            return self.repository.get_group_options(group, ObjectType.CONFIG)
        except Exception:  # noqa: BLE001 (only for a suggestion)
            return []

    def _groups(self) -> list:
        try:
            return self.repository.get_group_options("", ObjectType.GROUP)
        except Exception:  # noqa: BLE001 (only for a suggestion)
            return []


def _check_search_path(overrides: list) -> None:
    """hydra.searchpath from the command line, held to its rule before Hydra reads it (Hydra imports a pkg://
    entry's package to list its configs, before any composed config can be checked)."""
    key = "hydra.searchpath"
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.get_key_element() == key and not trusted(key):
            value = override.value()
            if not USER_KEYS[key].ok(value):
                raise UnsafeConfig(f"{key}={printable(value)} cannot be used: {key} takes {USER_KEYS[key].takes}")


def _check_job_processes(cfg: DictConfig, overrides: list) -> None:
    """Each job of Hydra's submitit launcher trains on hydra.launcher.nodes x tasks_per_node processes
    (trainlab/distributed.py): checked before any job is queued, submitit's local executor is given one node, and
    each batch size the command gives splits over the processes (one a search draws: by its job, as it starts)."""
    launcher = cfg.hydra.launcher
    if str(launcher.get("_target_", "")).endswith(".LocalLauncher") and (launcher.get("nodes") or 1) > 1:
        raise TrainlabError(f"hydra.launcher.nodes={launcher.nodes}: hydra/launcher=submitit_local runs on this "
                            "machine alone; use hydra.launcher.nodes=1, or hydra/launcher=slurm for several machines")
    processes = job_processes(launcher)
    if processes == 1 or "data.batch_size" in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}):
        return
    sizes = [OmegaConf.select(cfg, "data.batch_size")]
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.get_key_element().lstrip("+~") == "data.batch_size" and override.is_sweep_override():
            sizes = list(override.sweep_iterator()) if override.is_discrete_sweep() else []
    for size in sizes:
        if isinstance(size, int) and size % processes:
            raise TrainlabError(f"data.batch_size={size} does not split over the {processes} processes of each job "
                                f"(hydra.launcher.nodes={launcher.get('nodes') or 1} x tasks_per_node="
                                f"{launcher.get('tasks_per_node') or 1}): use a multiple of {processes}")


def _resolved_folder(cfg: DictConfig, key: str) -> str:
    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except Exception as e:  # noqa: BLE001 (any resolver's failure)
        raise UnsafeConfig(unresolved(key, e)) from None
    if not USER_KEYS[key].ok(value):
        raise UnsafeConfig(f"{key}={printable(value)} cannot be used: {key} takes {USER_KEYS[key].takes}")
    return value


def _same_sweep(record: Path, overrides: list) -> None:
    """A sweep folder of Hydra's basic sweeper goes on only with the settings it was made with (job folders are
    numbered by position in the sweep: other settings would resume other jobs' runs); how it goes on may change."""
    from trainlab.config.resume_rules import ON_RESUME

    try:
        saved = yaml.safe_load(record.read_text())["hydra"]["overrides"]["task"]
        parsed = OverridesParser.create().parse_overrides([*saved, *overrides])
    except Exception as e:  # noqa: BLE001 (a damaged record: not a sweep to go on with)
        raise TrainlabError(f"{printable(record)} cannot be read ({one_line(e, 120)}): give this sweep a folder of its "
                            "own (hydra.sweep.dir=...)") from None
    before, now = parsed[:len(saved)], parsed[len(saved):]

    def settings(lines):
        return sorted(o.input_line for o in lines if not o.is_hydra_override()
                      and o.get_key_element().lstrip("+~") not in ON_RESUME)

    if settings(before) != settings(now):
        differ = sorted(set(settings(before)) ^ set(settings(now)))
        raise TrainlabError(f"{printable(record.parent)} holds a sweep made with other settings ("
                            f"{printable(', '.join(differ[:4]))}): a sweep goes on in its folder only as it was made; "
                            "give this one a folder of its own (hydra.sweep.dir=...)")


def guard_hydra(config_name: str = "config", writes_runs: bool = False) -> None:
    """Make Hydra compose through CheckedConfigLoader, and report its own failures as one line: call before
    @hydra.main's function (every entrypoint does). `config_name`: the entrypoint's primary config (the reference for
    Hydra's part); `writes_runs`: it writes run and sweep folders (src/run.py), checked before it runs."""
    import hydra._internal.hydra

    from trainlab.cli import report_hydra_errors

    checks_folders = writes_runs and _runs_a_job(sys.argv[1:])

    def checked_loader(config_search_path):
        loader = CheckedConfigLoader(config_search_path=config_search_path)
        loader.entry, loader.checks_folders = config_name, checks_folders  # instance values: they travel to workers
        return loader

    hydra._internal.hydra.ConfigLoaderImpl = checked_loader  # the name Hydra.create_main_hydra2 builds from
    report_hydra_errors()


def _runs_a_job(argv: list) -> bool:
    """Whether Hydra's command line runs the app (not --cfg, --help, --info, shell completion)."""
    from hydra._internal.utils import get_args_parser

    try:
        args, _ = get_args_parser().parse_known_args(argv)
    except SystemExit:
        return True
    return not (args.cfg or args.help or args.hydra_help or args.info or args.shell_completion)


def _refusal(where: str, value) -> str:
    kinds = ", ".join(f"{module} {kind}" for module, (_, kind) in CLASS_NAMESPACES.items())
    kinds += f", {MODEL_BUILDERS} classifiers and trainlab's own classes"
    return (f"{where} '{printable(value)}' is not allowed: a config builds only {kinds}; to trust another, name it in "
            f"the environment, not the config: {ALLOW_TARGETS_ENV}=module.Name")


def _object(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)

"""What the launcher knows about a run, as one value: built once by an entrypoint from Hydra, or by a test or a
notebook, so that a run behaves the same under Hydra, under pytest and in a notebook. Library code reads this,
never Hydra's global state."""
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

MULTIRUN_YAML = "multirun.yaml"  # Hydra's basic sweeper writes the sweep's own config there before its first job


@dataclass(frozen=True)
class Launch:
    run_dir: Path  # where the run writes: checkpoints/, events, run.log
    overrides: tuple = ()  # the command line's overrides, a sweep job's own included: the HPARAMS tab shows them
    job: int = 0  # this job's number in a sweep
    jobs_at_once: int = 1  # jobs a parallel launcher runs at once on this machine: each takes its share
    sweep: bool = False  # one job of a multirun: an error goes to its folder and the sweep goes on
    swept: Optional[tuple] = None  # the keys the sweep varies (optimizer, optimizer.lr); None: not known
    choices: Mapping = field(default_factory=dict)  # each config group's option (optimizer: adam), as Hydra chose
    trial: Optional[object] = None  # a pruning search's trial (runs/trial.py SearchTrial): the job reports to it

    @classmethod
    def of(cls, given=None) -> "Launch":
        """A Launch as given, or one for a run folder (a path), or a new folder under outputs/runs (None)."""
        if isinstance(given, Launch):
            return given
        return cls(Path(given) if given is not None else Path("outputs/runs") / launch_stamp())  # as conf/ names it

    @classmethod
    def from_hydra(cls) -> "Launch":
        """What Hydra's launcher says about the job it is running (call only inside a @hydra.main function)."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        from omegaconf import OmegaConf

        # as typed: an override holding ${...} is text here, not resolved again
        run_dir, overrides = Path(hydra.runtime.output_dir), tuple(OmegaConf.to_container(hydra.overrides.task))
        choices = {group: option for group, option in hydra.runtime.choices.items()
                   if option is not None and not group.startswith("hydra/")}
        if hydra.mode != RunMode.MULTIRUN:
            return cls(run_dir, overrides, choices=choices)
        n_jobs = hydra.launcher.get("n_jobs", 1) or 1  # the parallel launcher's; -1: one per core
        from trainlab.runs.trial import SearchTrial

        return cls(run_dir, overrides, hydra.job.num, (os.cpu_count() or 1) if n_jobs < 0 else n_jobs, sweep=True,
                   swept=swept_keys(hydra.sweep.dir), choices=choices, trial=SearchTrial.from_hydra(hydra))


def first_process() -> bool:
    """Whether this is the first process of a data-parallel run (torchrun's RANK 0, task 0 of a submitit job of
    several tasks), or the only one: the one that checks, locks and writes the run folder."""
    tasks = submitit_tasks()  # before distributed.setup exports RANK from it
    return tasks.global_rank == 0 if tasks is not None else os.environ.get("RANK", "0") == "0"


def submitit_tasks():
    """submitit's JobEnvironment (global and local rank, tasks, nodes) where this process is one task of a submitit
    job of several (Hydra's submitit launcher with hydra.launcher.tasks_per_node or nodes above 1): the job's tasks
    train one sweep point together (distributed.setup). None for any other process."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):  # set by submitit in its jobs alone (slurm, local)
        return None
    import submitit

    tasks = submitit.JobEnvironment()
    return tasks if tasks.num_tasks > 1 else None


def job_processes(launcher) -> int:
    """The processes each job of `launcher` (hydra.launcher) trains with as one data-parallel run: Hydra's submitit
    launcher starts hydra.launcher.nodes x tasks_per_node; any other launcher, one."""
    if "hydra_submitit_launcher" not in str(launcher.get("_target_", "")):
        return 1
    return int(launcher.get("nodes") or 1) * int(launcher.get("tasks_per_node") or 1)


def script(name: str = "run.py") -> str:
    """An entrypoint as the user typed its path (src/run.py), or `name` beside it (src/report.py); src/ when the run
    was not started from one (a notebook)."""
    here = Path(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else Path("src/run.py")
    return str(here.with_name(name))


def swept_keys(sweep_dir) -> Optional[tuple]:
    """The keys a sweep of Hydra's basic sweeper varies (`optimizer=sgd,adam`, `hydra.sweeper.params`), in the order
    given, from the sweep's multirun.yaml; None where that is not known (another sweeper: an Optuna search)."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        hydra = yaml.safe_load((Path(str(sweep_dir)) / MULTIRUN_YAML).read_text())["hydra"]
        if not hydra["sweeper"]["_target_"].endswith(".BasicSweeper"):
            return None
        params = [f"{key}={value}" for key, value in (hydra["sweeper"].get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides(params + list(hydra["overrides"]["task"]))
    except (OSError, yaml.YAMLError, HydraException, KeyError, TypeError, AttributeError):  # not a basic sweep's
        return None
    return tuple(dict.fromkeys(_key(o) for o in overrides if o.is_sweep_override()))


# Settings that say how a run shows itself or where it goes on, not what it is: left out of its folder's name.
NOT_IN_NAME = ("trainer.resume", "trainer.progress_bar", "trainer.log_graph", "trainer.log_images",
               "trainer.log_every_n_steps", "trainer.checkpoint_every_n_steps", "trainer.device", "data.num_workers",
               "data.pin_memory", "data.eval_batch_size")


def run_folder_name(stamp: str, overrides) -> str:
    """A single run's folder, and its run's name in TensorBoard: its start time, then what its command set, as a sweep
    job's folder is named (job_folder_name): `2026-12-07_10-00-00_data-folder+model-my_net`; the time alone for a
    command that set nothing."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides))
                  if not o.is_hydra_override() and not o.is_sweep_override()]  # a sweep's jobs are named each
        keys = tuple(k for k in (_key(o) for o in parsed) if k not in NOT_IN_NAME)
        return job_folder_name(stamp, [o.input_line for o in parsed], keys or None)
    except Exception:  # noqa: BLE001 (a name is a nicety: the time alone still makes a folder of its own)
        return stamp


def job_folder_name(number, overrides, swept) -> str:
    """A sweep job's folder, and its run's name in TensorBoard: its number, then the values the sweep gave it, e.g.
    `3_optimizer-adam+optimizer.lr-0.01`. Hydra reads `=` and `,` in a value as syntax, so the folder is named with
    `-` and `+` instead and can be given back unquoted (checkpoint=..., trainer.resume=...); in a value, anything
    but letters, digits and `._-` becomes `_` (a path makes one folder), and a long one keeps its start and end.
    Just the number where the sweep varies nothing, or what it varies is not known (swept None)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parts = []
    for override in OverridesParser.create().parse_overrides(list(overrides)) if swept else ():
        if _key(override) in swept and not override.is_delete():
            value = _UNSAFE.sub("_", override.get_value_element_as_str())
            if len(value) > MAX_VALUE:  # a path's last folders, a number's first digits
                value = value[:MAX_VALUE // 2 - 2] + ".." + value[-(MAX_VALUE - MAX_VALUE // 2):]
            parts.append(f"{_UNSAFE.sub('_', _key(override))}-{value}")
    name = f"{number}_{'+'.join(parts)}" if parts else str(number)
    return name if len(name) <= MAX_NAME else name[:MAX_NAME - 2] + ".."


MAX_VALUE, MAX_NAME = 24, 120  # a folder name may hold 255 bytes; a legend or a table column far fewer
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]")


def sweep_job_folder(*, _root_) -> str:
    """The resolver conf/config.yaml names sweep job folders with (hydra.sweep.subdir): job_folder_name of the job
    Hydra is starting. Naming never stops a sweep: where anything is amiss, the job's number alone."""
    hydra = _root_.hydra
    try:
        if not str(hydra.sweeper._target_).endswith(".BasicSweeper"):
            return str(hydra.job.num)  # trainlab's Optuna sweeper records each trial's folder by its number
        from omegaconf import OmegaConf

        return job_folder_name(hydra.job.num, OmegaConf.to_container(hydra.overrides.task), swept_keys(hydra.sweep.dir))
    except Exception:  # noqa: BLE001 (a folder name is a nicety; the number alone is still a folder of its own)
        return str(hydra.job.num)


def _key(override) -> str:
    """An override's key as a job's overrides spell it: `+seed=1,2` and `seed=1` both `seed`."""
    return override.get_key_element().lstrip("+~")


def launch_stamp() -> str:
    """The run folder's time stamp: under torchrun, the launcher's start time, the same in every process of a node
    (so all write into one folder; nodes each have their own launcher: distributed.check_one_run asks for
    hydra.run.dir); else now."""
    started = time.time()
    if "LOCAL_RANK" in os.environ:
        try:  # boot time (whole seconds) + the launcher's start in clock ticks since boot: exact in every process
            with open(f"/proc/{os.getppid()}/stat") as f:
                ticks = int(f.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/stat") as f:
                boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
            started = boot + ticks // os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, StopIteration):
            pass
    return time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(round(started)))


def seconds_since_launch():
    """Seconds since this process started (Linux's /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None

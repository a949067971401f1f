"""What the launcher knows about a run, as one value: built once by an entrypoint from Hydra, or by a test or a
notebook, so that a run behaves the same under Hydra, under pytest and in a notebook. Library code reads this,
never Hydra's global state."""
import os
from dataclasses import dataclass
from pathlib import Path

from trainlab.distributed import launch_stamp


@dataclass(frozen=True)
class Launch:
    run_dir: Path  # where the run writes: checkpoints/, events, run.log
    overrides: tuple = ()  # the command line's overrides, a sweep job's own included: the HPARAMS tab shows them
    job: int = 0  # this job's number in a sweep
    jobs_at_once: int = 1  # jobs a parallel launcher runs at once on this machine: each takes its share
    sweep: bool = False  # one job of a multirun: an error goes to its folder and the sweep goes on

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
        run_dir, overrides = Path(hydra.runtime.output_dir), tuple(hydra.overrides.task)
        if hydra.mode != RunMode.MULTIRUN:
            return cls(run_dir, overrides)
        n_jobs = hydra.launcher.get("n_jobs", 1) or 1  # the parallel launcher's; -1: one per core
        return cls(run_dir, overrides, hydra.job.num, (os.cpu_count() or 1) if n_jobs < 0 else n_jobs, sweep=True)

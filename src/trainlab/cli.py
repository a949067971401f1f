"""How the entrypoints report what went wrong: one line and status 2 for a user's mistake, 75 for a clean stop.
A run that failed before it wrote anything leaves no folder; any other failed run or sweep job keeps its error in
error.log in its folder (report.py shows it failed), and SweepReport lists a sweep's failed jobs at the end.
"""
import contextlib
import functools
import logging
import os
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf.errors import OmegaConfBaseException

from trainlab.errors import (INTERRUPTED_EXIT, KEYBOARD_EXIT, USER_ERROR_EXIT, Interrupted, TrainlabError, one_line,
                             os_error_line, refused_by_file_system)
from trainlab.launch import Launch, first_process, script, submitit_tasks
from trainlab.runs.folder import (CHECKPOINTS, ERROR_LOG, LAST, RunFolderBusy, RunFolderLock, discard_failed_start,
                                 open_own)

log = logging.getLogger("trainlab")


def report_errors(main):
    """Wrap a @hydra.main task: errors reported as above. HYDRA_FULL_ERROR=1 lets every exception through."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return _reported(main, *args, **kwargs)
        finally:  # a data-parallel run's process leaves its group after its line: the others read why it stopped
            if "trainlab.distributed" in sys.modules:  # torch imported: no cost where it was not
                sys.modules["trainlab.distributed"].teardown()

    return wrapper


def _reported(main, *args, **kwargs):
    """The task, its errors reported: one line each (and error.log), as the module says."""
    try:
        return main(*args, **kwargs)
    except Interrupted as e:
        if first_process():  # one line for the run, not one a process
            log.warning("%s", e)
        elif submitit_tasks() is not None:  # submitit collects every task's result; the first's tells the job's end
            return float("nan")
        sys.exit(INTERRUPTED_EXIT)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the loop's handler is set
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        run_dir = Launch.from_hydra().run_dir
        if not first_process():  # the first process of a data-parallel run says it and tidies up
            sys.exit(KEYBOARD_EXIT)
        if (run_dir / CHECKPOINTS / LAST).exists():
            from trainlab.runs.resume import resume_command  # imports torch: only here

            log.warning(f"stopped at once by Ctrl-C; the last checkpoint is intact; to resume: "
                        f"{resume_command(run_dir)}")
        else:
            log.warning("stopped by Ctrl-C before the run wrote a checkpoint: nothing to resume")
            discard_failed_start(run_dir)
        sys.exit(KEYBOARD_EXIT)
    except RunFolderBusy as e:  # the folder is the other run's: no error.log there, nothing discarded
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("error: %s", one_line(e))
        sys.exit(USER_ERROR_EXIT)
    except Exception as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if peer_lost(e):  # not this process's fault: the one that stopped first says why
            e = TrainlabError(peer_lost_line())
        refusal = refused_by_file_system(e)
        user_error = isinstance(e, (TrainlabError, OmegaConfBaseException)) or refusal is not None
        message = (os_error_line(refusal) if refusal is not None else _worker_message(e) if user_error
                   else f"{type(e).__name__}: {e}")
        launch = Launch.from_hydra()
        error_log = launch.run_dir / ERROR_LOG
        if not launch.sweep:
            if user_error:
                log.error("error: %s", message)
            _leave_failed_start(launch.run_dir, message)
            if not user_error:
                raise  # a bug: Hydra shows where
            sys.exit(USER_ERROR_EXIT)
        if not first_process():  # a data-parallel run's first process alone writes into its folder
            log.error("error: %s", message)
            return float("nan")
        log.error("error: %s (traceback in %s)", message, error_log)
        _write_error_log(error_log, message)
        return float("nan")  # the sweep goes on; a sweeper reads NaN as a failed trial


def _leave_failed_start(run_dir: Path, message: str) -> None:
    """A start that failed leaves nothing; a run folder with the run's files in it is marked failed, but only where
    the run is this process's: a command refused in another run's folder writes nothing there. In a data-parallel
    run the folder is the first process's: another removes at most an empty one that Hydra made for it alone (a
    folder its node named, not the first's)."""
    if not first_process():
        with contextlib.suppress(OSError):  # not empty: the first process's
            run_dir.rmdir()
    elif not discard_failed_start(run_dir) and RunFolderLock.is_claimed(run_dir):
        _write_error_log(run_dir / ERROR_LOG, message)  # report.py: failed


def _write_error_log(path: Path, message: str) -> None:
    """error.log: the error's line, then its traceback. Where the disk is full, the line already printed must do."""
    try:
        with open_own(path, "w") as f:
            f.write(f"error: {message}\n\n{traceback.format_exc()}")
    except (OSError, TrainlabError):  # a full disk, a link where the file should be: the printed line must do
        pass


def report_hydra_errors() -> None:
    """Hydra's own steps around the task (making the run folder, its logs) fail as one line and status 2 too, where
    the file system refuses (a file where the folder should be, a read-only disk) or Ctrl-C comes; any other error
    keeps Hydra's report. Installed by allowlist.guard_hydra, which every entrypoint calls."""
    import hydra._internal.utils as hydra_utils

    hydra_report = hydra_utils.run_and_report
    if getattr(hydra_report, "trainlab", False):
        return

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except (OSError, KeyboardInterrupt) as e:
                refusal = refused_by_file_system(e)
                if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (isinstance(e, KeyboardInterrupt) or refusal):
                    raise
                print("stopped by Ctrl-C" if refusal is None else f"error: {os_error_line(refusal)}",
                      file=sys.stderr, flush=True)
                sys.exit(KEYBOARD_EXIT if isinstance(e, KeyboardInterrupt) else USER_ERROR_EXIT)
        return hydra_report(guarded)

    run_and_report.trainlab = True
    hydra_utils.run_and_report = run_and_report


# What a collective raises (a RuntimeError) where another process of the run has gone: gloo's closed connection,
# NCCL's remote error; the rendezvous store's lost connection is a DistNetworkError
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote process exited")


def peer_lost(error: Exception) -> bool:
    """Whether `error` is a data-parallel run's collective failing because another of its processes stopped (not,
    say, a tracker's server resetting its connection: an OSError)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    return type(error).__name__ in ("DistNetworkError", "DistBackendError") or (
        isinstance(error, RuntimeError) and any(words in str(error) for words in PEER_LOST))


def peer_lost_line() -> str:
    """What stopped the run, as far as this process can tell: in a submitit job, the first error line another task
    logged (its log is on the sweep's file system) and where; under torchrun, its report of the failed process."""
    tasks = submitit_tasks()
    this = f"this one (rank {os.environ.get('RANK', '?')}) stops too"
    if tasks is None:
        return f"another process of this data-parallel run stopped, so {this}; torchrun's report names it"
    from submitit.core.utils import JobPaths

    for rank in (r for r in range(tasks.num_tasks) if r != tasks.global_rank):
        paths = JobPaths(tasks.paths.folder, tasks.job_id, rank)
        for path in (paths.stdout, paths.stderr):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                found = next((line for line in path.read_text().splitlines() if line.startswith("error: ")), None)
                if found:
                    return f"task {rank} of this job stopped first ({one_line(found[7:], 300)}; {path}), so {this}"
    return f"another task of this job stopped first, so {this}; the tasks log to {Path(tasks.paths.folder)}/"


def _worker_message(error: Exception) -> str:
    """The error's message on one line; for an error raised in a DataLoader worker, the worker's own message."""
    text = str(error)
    if "Original Traceback" in text:  # torch re-raises a worker's exception with the worker's traceback inside
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return one_line(text)


class SweepReport(Callback):
    """At the end of a multirun: where its results are and the command that compares them; the jobs that failed,
    with their overrides, and a non-zero exit if any did."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(sweep_dir.glob(f"*/{ERROR_LOG}"), key=lambda p: _job_number(p.parent.name))
        jobs = sum(1 for p in sweep_dir.glob("*/.hydra"))
        log.info(f"sweep: {jobs} jobs in {sweep_dir}; compare them: python {script('report.py')} {sweep_dir}")
        if not failed:
            return
        lines = [f"{len(failed)} job(s) of the sweep in {sweep_dir} failed:"]
        for error_log in failed:
            overrides = error_log.parent / ".hydra" / "overrides.yaml"
            args = " ".join(line[2:] for line in overrides.read_text().splitlines()) if overrides.exists() else ""
            lines.append(f"  #{error_log.parent.name} {args}: {error_log.read_text().splitlines()[0]}")
        log.error("\n".join(lines))
        sys.exit(1)


def _job_number(folder: str) -> tuple:
    """A job folder's number, for the order jobs ran in: 10_optimizer-adam after 2_optimizer-sgd."""
    number = folder.split("_", 1)[0]
    return (int(number), folder) if number.isdigit() else (-1, folder)

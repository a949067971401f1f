"""How the entrypoints report what went wrong: one line and status 2 for a user's mistake, 75 for a clean stop.
A run that failed before it wrote anything leaves no folder; any other failed run or sweep job keeps its error in
error.log in its folder (report.py shows it failed), and SweepReport lists a sweep's failed jobs at the end.
"""
import functools
import logging
import os
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf.errors import OmegaConfBaseException

from trainlab.errors import INTERRUPTED_EXIT, USER_ERROR_EXIT, Interrupted, TrainlabError, one_line
from trainlab.launch import Launch
from trainlab.run_folder import ERROR_LOG, discard_failed_start

log = logging.getLogger("trainlab")


def report_errors(main):
    """Wrap a @hydra.main task: errors reported as above. HYDRA_FULL_ERROR=1 lets every exception through."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Interrupted as e:
            log.warning("%s", e)
            sys.exit(INTERRUPTED_EXIT)
        except Exception as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            user_error = isinstance(e, (TrainlabError, OmegaConfBaseException))
            message = _worker_message(e) if user_error else f"{type(e).__name__}: {e}"
            launch = Launch.from_hydra()
            error_log = launch.run_dir / ERROR_LOG
            if not launch.sweep:
                if user_error:
                    log.error("error: %s", message)
                # a start that failed leaves nothing; a run folder with the run's files in it is marked failed
                if not discard_failed_start(launch.run_dir) and (launch.run_dir / ".hydra").is_dir():
                    error_log.write_text(f"error: {message}\n\n{traceback.format_exc()}")  # report.py: failed
                if not user_error:
                    raise  # a bug: Hydra shows where
                sys.exit(USER_ERROR_EXIT)
            log.error("error: %s (traceback in %s)", message, error_log)
            error_log.write_text(f"error: {message}\n\n{traceback.format_exc()}")
            return float("nan")  # the sweep goes on; a sweeper reads NaN as a failed trial

    return wrapper


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
        log.info(f"sweep: {jobs} jobs in {sweep_dir}; compare them: python {_script('report.py')} {sweep_dir}")
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


def _script(name: str) -> str:
    """src/report.py beside the entrypoint that runs (src/run.py), as the user typed its path."""
    here = Path(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else Path("src/run.py")
    return str(here.with_name(name))

"""How the entrypoints report what went wrong: one line and status 2 for a user's mistake, 75 for a clean stop;
in a sweep, a failing job's error goes to error.log in its folder and SweepReport lists the failed jobs at the end.
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
from trainlab.run_folder import ERROR_LOG

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
            if not launch.sweep:
                if not user_error:
                    raise  # a bug: Hydra shows where
                log.error("error: %s", message)
                sys.exit(USER_ERROR_EXIT)
            error_log = launch.run_dir / ERROR_LOG
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
    """At the end of a multirun: list the jobs that failed, with their overrides, and exit non-zero if any did."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(sweep_dir.glob(f"*/{ERROR_LOG}"), key=lambda p: (len(p.parent.name), p.parent.name))
        if not failed:
            return
        lines = [f"{len(failed)} job(s) of the sweep in {sweep_dir} failed:"]
        for error_log in failed:
            overrides = error_log.parent / ".hydra" / "overrides.yaml"
            args = " ".join(line[2:] for line in overrides.read_text().splitlines()) if overrides.exists() else ""
            lines.append(f"  #{error_log.parent.name} {args}: {error_log.read_text().splitlines()[0]}")
        log.error("\n".join(lines))
        sys.exit(1)

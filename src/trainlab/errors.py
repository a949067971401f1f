"""The one exception type for mistakes a user can make, and how the entrypoints report errors.

A single run reports a TrainlabError as one line and exits with status 2. In a sweep a failing job must not stop the
others: its error and traceback go to error.log in its own folder, and SweepReport lists the failed jobs at the end.
"""
import functools
import logging
import os
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger("trainlab")

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 75  # EX_TEMPFAIL: stopped by a signal after writing a checkpoint; run it again to resume
ERROR_LOG = "error.log"  # in a failed sweep job's folder


class TrainlabError(Exception):
    """A problem in the user's config, data or files; the message names the problem and the fix."""


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the run cleanly; the message says how to resume."""


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
            message = _one_line(e) if user_error else f"{type(e).__name__}: {e}"
            job_dir = _sweep_job_dir()
            if job_dir is None:
                if not user_error:
                    raise  # a bug: Hydra shows where
                log.error("error: %s", message)
                sys.exit(USER_ERROR_EXIT)
            log.error("error: %s (traceback in %s)", message, job_dir / ERROR_LOG)
            (job_dir / ERROR_LOG).write_text(f"error: {message}\n\n{traceback.format_exc()}")
            return float("nan")  # the sweep goes on; a sweeper reads NaN as a failed trial

    return wrapper


def _one_line(error: Exception) -> str:
    """The error's message on one line; for an error raised in a DataLoader worker, the worker's own message."""
    text = str(error)
    if "Original Traceback" in text:  # torch re-raises a worker's exception with the worker's traceback inside
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def _sweep_job_dir():
    """This job's folder when running as part of a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().runtime.output_dir)


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

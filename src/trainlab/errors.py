"""The one exception type for mistakes a user can make, and how the entrypoints report it."""
import functools
import logging
import os
import sys

from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger("trainlab")


class TrainlabError(Exception):
    """A problem in the user's config, data or files; the message names the problem and the fix."""


def exit_on_user_error(main):
    """Report a TrainlabError (or a config value OmegaConf rejects at run time) as one line and exit with status 2.

    HYDRA_FULL_ERROR=1 lets the exception through, traceback and all.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (TrainlabError, OmegaConfBaseException) as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            message = " ".join(str(e).split())  # one line, whatever the source wrapped
            log.error("error: %s", message)
            sys.exit(2)

    return wrapper

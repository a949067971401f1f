"""The exception types for what a user can get wrong or interrupt, the exit codes the entrypoints give them, and
the one way a message is folded onto one line (trainlab/cli.py reports them)."""

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 75  # EX_TEMPFAIL: stopped by a signal after writing a checkpoint; run it again to resume


class TrainlabError(Exception):
    """A problem in the user's config, data or files; the message names the problem and the fix."""


class ConfigRefused(SystemExit):
    """A config that cannot be composed or is refused, its line already printed: ends the process with status 2 from
    wherever Hydra composes (its first composition ignores exceptions); a sweeper that catches it reads `message`."""

    def __init__(self, message: str):
        super().__init__(USER_ERROR_EXIT)
        self.message = message


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the run cleanly; the message says how to resume."""


def one_line(text, limit: int = None) -> str:
    """Any message (or exception) on one line: white space folded, cut to `limit` characters."""
    folded = " ".join(str(text).split())
    return folded[:limit] if limit else folded

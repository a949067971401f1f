"""The exception types for what a user can get wrong or interrupt, the exit codes the entrypoints give them, and
the one way a message is folded onto one line (trainlab/cli.py reports them)."""
import errno
import re
from pathlib import Path

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 75  # EX_TEMPFAIL: stopped by a signal after writing a checkpoint; run it again to resume
KEYBOARD_EXIT = 130  # stopped at once by Ctrl-C (128 + SIGINT), as a shell reports it


class TrainlabError(Exception):
    """A problem in the user's config, data or files; the message names the problem and the fix."""


class EnvRefused(TrainlabError):
    """A config reads an environment variable it may not (trainlab.config.schema's ${oc.env:...})."""


class ConfigRefused(SystemExit):
    """A config that cannot be composed or is refused, its line already printed: ends the process with status 2 from
    wherever Hydra composes (its first composition ignores exceptions); a sweeper that catches it reads `message`."""

    def __init__(self, message: str):
        super().__init__(USER_ERROR_EXIT)
        self.message = message


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the run cleanly; the message says how to resume."""


def one_line(text, limit: int = None) -> str:
    """Any message (or exception) on one line: white space folded, other control characters escaped (printable), cut
    to `limit` characters."""
    folded = printable(" ".join(str(text).split()))
    return folded[:limit] if limit else folded


# Control characters (C0, DEL, C1) and the Unicode marks that reorder or hide text: a name from a checkpoint, a
# folder or a config holding them could move the cursor, recolour the terminal or print a fake `error:` line.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def printable(text) -> str:
    """`text` (a name or a value that came from a file or a config) safe to print on a terminal or write into a log
    line: each control character escaped as Python writes it in a string (a newline as \\n, ESC as \\x1b)."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], str(text))


REFUSALS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
            errno.EISDIR, errno.ENAMETOOLONG)


def refused_by_file_system(error: BaseException):
    """The OSError by which the file system refused a write or a folder (space, permissions, a path in the way: the
    user's to fix), where `error` is one or was raised while handling one (torch.save turns a full disk into a
    RuntimeError); else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in REFUSALS:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def os_error_line(error: OSError) -> str:
    """A file system's refusal (full, read-only, a file where a folder should be) in words, with what to do."""
    path = Path(error.filename) if error.filename else None
    where = f" {path}" if path else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        last = path.parent / "last.pt" if path else None
        size = f"; a checkpoint here takes {last.stat().st_size / 1e6:.1f} MB" if last and last.exists() else ""
        return (f"the disk is full: writing{where} failed{size}; free some space, then run the same command again: a "
                f"run goes on from its last checkpoint, which is intact")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{error.strerror.lower()}:{where}; choose a folder you can write (hydra.run.dir=...)"
    if error.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        blocking = next((p for p in ([path, *path.parents] if path else []) if p.is_file()), path)
        return (f"{blocking or 'a file'} is a file where a folder is needed (for{where}): move it away, or choose "
                "another folder (hydra.run.dir=...)")
    if error.errno == errno.ENAMETOOLONG:
        return f"a name in{where} is longer than the file system allows: choose a shorter one (hydra.run.dir=...)"
    return f"{error.strerror or type(error).__name__}:{where}"


def shape_text(shape) -> str:
    """(3, 32, 32) -> '3x32x32': how messages and tables show a shape."""
    return "x".join(map(str, shape))

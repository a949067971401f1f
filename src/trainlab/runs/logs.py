"""run.log and the terminal's lines: Hydra's job log (conf/hydra/job_logging/trainlab.yaml) written only once the run
folder is this run's, the same lines for a run called from Python (a notebook), and every line escaped as shown. run.log
stays in memory until this process has taken the folder's lock, so a command refused after Hydra set up its logging
leaves no line in another run's log."""
import logging
import sys
from pathlib import Path

from trainlab.errors import printable
from trainlab.runs.folder import LOG, RUN_LOG, RunFolderLock, open_own


class RunLogHandler(logging.FileHandler):
    """Hydra's job log (run.log), as conf/config.yaml sets it up: opened without following a symbolic link, and kept
    in memory until this process takes the run folder's lock (RunFolderLock), then written from the start. A command
    refused before then (another run's folder, a setting a resume refuses) writes nothing there; a start that fails
    before then leaves its lines on the terminal, and its folder is removed (discard_failed_start)."""

    waiting = []  # this process's handlers whose folder it has not claimed yet

    def __init__(self, filename, mode="a", encoding=None, **kwargs):
        super().__init__(filename, mode, encoding, delay=True, **kwargs)
        self.folder = Path(self.baseFilename).parent
        self.pending = None if RunFolderLock.is_claimed(self.folder) else []
        if self.pending is not None:
            RunLogHandler.waiting.append(self)

    @classmethod
    def claim(cls, folder: Path) -> None:
        """The folder's run is this process's: its waiting handlers write what they hold."""
        for handler in [h for h in cls.waiting if h.folder.resolve() == folder]:
            cls.waiting.remove(handler)
            pending, handler.pending = handler.pending, None
            for record in pending:
                handler.emit(record)

    def emit(self, record) -> None:
        if self.pending is not None:
            self.pending.append(record)
            return
        super().emit(record)

    def _open(self):
        return open_own(self.baseFilename, self.mode, encoding=self.encoding)

    def close(self) -> None:
        if self in RunLogHandler.waiting:
            RunLogHandler.waiting.remove(self)
        super().close()


RunFolderLock.on_claim.append(RunLogHandler.claim)


class RunLogging:
    """run() called from Python where logging is not set up (a notebook, a script): the run's lines on stdout and in
    its run.log, as src/run.py shows and writes them, for as long as it runs. Where anything set logging up (Hydra, a
    notebook's own handlers on the root logger or trainlab's), it is left alone.

        @RunLogging.around        # on trainlab.training.recipe.run
        def run(cfg, launch=None):
            ...
            RunLogging.write_into(run_dir)   # once the run's folder is known
    """

    current = None  # the one set up by the run() going on in this process, if any

    def __init__(self):
        self.handlers, self.level = [], LOG.level

    @classmethod
    def around(cls, function):
        import functools

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if logging.getLogger().handlers or LOG.handlers or cls.current is not None:
                return function(*args, **kwargs)
            cls.current = own = cls()
            own.add(logging.StreamHandler(sys.stdout), "%(message)s")
            LOG.setLevel(logging.INFO)
            try:
                return function(*args, **kwargs)
            finally:
                own.close()
                cls.current = None

        return wrapper

    @classmethod
    def write_into(cls, run_dir: Path) -> None:
        if cls.current is not None:
            cls.current.add(RunLogHandler(Path(run_dir) / RUN_LOG), "[%(asctime)s][%(levelname)s] %(message)s")

    def add(self, handler, fmt: str) -> None:
        handler.setFormatter(PrintableFormatter(fmt))
        LOG.addHandler(handler)
        self.handlers.append(handler)

    def close(self) -> None:
        for handler in self.handlers:
            LOG.removeHandler(handler)
            handler.close()
        LOG.setLevel(self.level)


class PrintableFormatter(logging.Formatter):
    """Every log line as the terminal and run.log show it: control characters escaped but the line breaks a message
    holds by design (a model's table), so no text from a file or a config can colour, move or rewrite the screen."""

    def format(self, record) -> str:
        return "\n".join(printable(line) for line in super().format(record).split("\n"))

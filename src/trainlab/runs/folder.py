"""A run folder's layout: its file names, the TensorBoard tags a run writes, the run of a checkpoint, and reading a
run's metrics back. What writes a run and what reads one (report, evaluate, bench) agree by using these names.

    <run>/.hydra/config.yaml, overrides.yaml   the composed config and the command line's overrides (Hydra)
    <run>/run.log                              the terminal's lines, timestamped
    <run>/metrics.csv                          a row per epoch and the test row: METRICS_COLUMNS
    <run>/events.out.tfevents.*                TensorBoard: the tags below
    <run>/checkpoints/last.pt, last.prev.pt, best.pt
    <run>/error.log                            a failed run's error and traceback (report.py: failed)
    <run>/provenance.json, provenance.diff     which code, command, packages, machine and data made each attempt
                                               (runs/provenance.py); provenance.2.diff: the first resume's, and so on
    <run>/wandb/                               logger=wandb's run files, an offline-run-* folder per attempt
    <run>/evaluate/                            src/evaluate.py's events
    <run>/export/                              src/export.py's model file and preprocessing.json
    <run>/.lock                                flocked by the process writing into the run (its pid inside)

A run folder is ours or refused: trainlab opens its own files there never through a symbolic link (O_NOFOLLOW), and a
folder handed over by someone else is checked before anything is written into it (check_run_folder,
check_sweep_folder): a link among trainlab's names, files that are not a run's, or another live run writing there is
refused in one line. run.log's handler is in runs/logs.py.
"""
import csv
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Optional

from trainlab.errors import TrainlabError, printable

LOG = logging.getLogger("trainlab")

CHECKPOINTS = "checkpoints"
LAST, PREVIOUS, BEST = "last.pt", "last.prev.pt", "best.pt"
ERROR_LOG = "error.log"
METRICS_CSV = "metrics.csv"
EVALUATE = "evaluate"
EXPORT = "export"
RUN_LOCK = ".lock"
RUN_LOG = "run.log"  # Hydra's job log, ${hydra.job.name}.log, for src/run.py
HYDRA_DIR = ".hydra"
PROVENANCE = "provenance.json"
PROVENANCE_DIFF = re.compile(r"provenance(\.\d+)?\.diff")  # an attempt's uncommitted changes: provenance.diff, .2.diff
# the names trainlab itself writes in a run folder
WANDB = "wandb"  # logger=wandb's offline run files (runs/trackers.py)
OWN_NAMES = (HYDRA_DIR, RUN_LOCK, RUN_LOG, ERROR_LOG, METRICS_CSV, CHECKPOINTS, EVALUATE, EXPORT, PROVENANCE, WANDB)
EVENTS = "events.out.tfevents."
LEFT_BY_A_KILL = re.compile(r".+\.\d+\.[0-9a-f]{8}\.tmp")  # temporary_name()'s, where a kill cut a write short
SET_ASIDE = "stopped-{}"  # stopped-1, ...: a search trial's attempt that left no checkpoint, its files (_search.py)
# What a sweep folder holds beside its jobs' folders: Hydra's record of the sweep, the Optuna study, the report.
MULTIRUN_YAML, OPTUNA_DB = "multirun.yaml", "optuna.db"
SEARCH_RESULTS = "optimization_results.yaml"  # an Optuna search's best trial (or Pareto front), pruned and failed ones
SWEEP_NAMES = (MULTIRUN_YAML, OPTUNA_DB, SEARCH_RESULTS, "report.csv", "val_acc.png", ".submitit",
               "optuna.journal", ".search.lock")  # a journal study (journal:PATH); the lock of searches' turns

# TensorBoard tags. TensorBoard lists groups (the part before the slash) alphabetically and opens the first few:
# test, train and val hold everything a run writes, so they come first; the HPARAMS metric is among them.
TRAIN_LOSS = "train/loss"  # every trainer.log_every_n_steps steps
TRAIN_ACC, VAL_LOSS, VAL_ACC, LR = "train/acc", "val/loss", "val/acc", "train/lr"  # per epoch
TEST_LOSS, TEST_ACC = "test/loss", "test/acc"  # once, at the last step, with the weights validation chose
TEST_EPOCH_LOSS, TEST_EPOCH_ACC = "test/epoch_loss", "test/epoch_acc"  # per epoch, with trainer.test_every_epoch
IMAGES_PER_S = "train/images_per_s"
STARTUP_S = "train/startup_s"  # once a process, at step 0: from the command to the first training step
# src/evaluate.py's, in <run>/evaluate/ at step = the checkpoint's epoch; {split}: the split it scored, test or val
EVALUATE_ACC, CLASS_ACC, CONFUSION_MATRIX = "{split}/evaluate_acc", "{split}/class_acc", "{split}/confusion_matrix"


def higher_is_better(monitor: str) -> bool:
    """trainer.monitor's direction: the highest val/acc wins, the lowest val/loss."""
    return monitor.endswith("acc")


def best_metric(monitor: str) -> str:
    """The best monitored value so far (a search's objective; HPARAMS's first metric): val/acc -> val/best_acc."""
    split, name = monitor.split("/", 1)
    return f"{split}/best_{name}"


# metrics.csv: one row per epoch, then the test row, whose `epoch` is "test" and whose val_* columns are those of
# the epoch whose weights were tested. Empty where a run has no such value (no validation split, say).
METRICS_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
                   "seconds", "images_per_s"]
TEST_ROW = "test"


def temporary_name(path: Path) -> Path:
    """A name beside `path` that no other writer uses: <name>.<pid>.<random>.tmp."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


class MetricsFile:
    """<run>/metrics.csv, appended a row at a time and flushed to disk, so it holds what the checkpoints hold: a
    resumed run first drops the rows its checkpoint does not cover (an epoch finished after it), so no row is ever
    missing or doubled. Its columns are METRICS_COLUMNS, then any other a row brings (a new figure): the file is
    rewritten with the wider header the first time one appears, the earlier rows' cells left empty."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path, self.enabled = Path(run_dir) / METRICS_CSV, enabled
        self.columns = list(METRICS_COLUMNS)

    def rows_covered(self, epochs_done: int) -> list:
        """The rows of epochs 1..epochs_done, as written: what the checkpoint a run resumes from covers (its test
        row, if any, is written again at the end); a row cut short by a kill is left out. TrainlabError, naming the
        line, for a file damaged otherwise (a stray byte, an epoch that is not a number): read before the run writes
        anything, so the run it belongs to is left as it was."""
        if not self.enabled or not self.path.exists():
            return []
        try:
            with open_own(self.path, "r", newline="") as f:
                reader = csv.DictReader(f)
                self.columns += [c for c in reader.fieldnames or [] if c not in self.columns]
                rows = []
                for row in reader:
                    if None in row.values() or row["epoch"] == TEST_ROW:  # cut short by a kill; the test row
                        continue
                    if not (row["epoch"] or "").isdigit():
                        raise ValueError(f"line {reader.line_num}: epoch {row['epoch']!r} is not a number")
                    rows += [row] if int(row["epoch"]) <= epochs_done else []
        except (UnicodeDecodeError, ValueError, csv.Error) as e:
            raise TrainlabError(f"{printable(shown_path(self.path))} is damaged ({printable(e)}): the run's figures "
                                "are in its TensorBoard events and checkpoints too; repair the file or move it away, "
                                "then run the same command again") from None
        return rows

    def rewrite_with(self, rows: list) -> None:
        """Rewrite the file to hold `rows` (what rows_covered read), atomically: a new run starts it afresh."""
        if not self.enabled or not self.path.exists():
            return
        tmp = temporary_name(self.path)
        with open(tmp, "w", newline="") as f:
            _write(f, rows, self.columns, header=True)
        os.replace(tmp, self.path)

    def append(self, **row) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        wider = [key for key in row if key not in self.columns]
        if wider and not new:  # a figure the header lacks: the rows so far under the wider header
            with open_own(self.path, "r", newline="") as f:
                rows = list(csv.DictReader(f))
            self.columns += wider
            self.rewrite_with(rows)
        self.columns += [key for key in wider if key not in self.columns]
        with open_own(self.path, "a", newline="") as f:
            _write(f, [row], self.columns, header=new)
            f.flush()
            os.fsync(f.fileno())


class RunFolderBusy(TrainlabError):
    """Another live process writes into the run folder: the folder is that run's, so this one leaves no error.log
    there and never discards it."""


def busy(run_dir: Path, pid: str) -> str:
    return (f"another run (pid {printable(pid)}) is writing into {printable(shown_path(run_dir))}: wait for it to end "
            "or stop it, or give this run a folder of its own (hydra.run.dir=...)")


class RunFolderLock:
    """The one process writing into a run folder holds <run>/.lock (flock, its pid written inside): a second run
    writing into the same folder (two commands given one hydra.run.dir, a resume of a run still going) is refused
    rather than interleave its checkpoints, events and metrics.csv with the first's. The kernel lets go of the lock
    when the process dies, however it dies; a process never refuses itself (runs one after another in a notebook).

        lock = RunFolderLock(run_dir).acquire()   # TrainlabError: another run (pid N) is writing into <run>: ...
        ...
        lock.release()                            # or: with RunFolderLock(run_dir): ...
    """

    held = {}  # this process's: resolved folder -> [open lock file, how many hold it]
    claimed = set()  # every folder (resolved) this process has held: its run (run.log, error.log may be written)
    on_claim = []  # called with a folder this process first holds: run.log's handler (runs/logs.py) writes then

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.key = None

    def acquire(self) -> "RunFolderLock":
        key = self.run_dir.resolve()
        if key in RunFolderLock.held:
            RunFolderLock.held[key][1] += 1
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            f = open_own(self.run_dir / RUN_LOCK, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                pid = f.read().strip() or "unknown"  # unknown: the other has not written it yet
                f.close()
                raise RunFolderBusy(busy(self.run_dir, pid)) from None
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
            RunFolderLock.held[key] = [f, 1]
            RunFolderLock.claimed.add(key)
            for claimed in RunFolderLock.on_claim:
                claimed(key)
        self.key = key
        return self

    @staticmethod
    def is_claimed(run_dir: Path) -> bool:
        """Whether this process has held the folder's lock: the run in it is this process's."""
        return Path(run_dir).resolve() in RunFolderLock.claimed

    @staticmethod
    def held_elsewhere(run_dir: Path) -> bool:
        """Whether another live process holds the run folder's lock."""
        path = Path(run_dir) / RUN_LOCK
        if not path.is_file() or path.is_symlink() or Path(run_dir).resolve() in RunFolderLock.held:
            return False
        with open_own(path, "r") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # let go of at once, by the close
                return False
            except BlockingIOError:
                return True

    def release(self) -> None:
        if self.key is None:
            return
        entry = RunFolderLock.held[self.key]
        entry[1] -= 1
        if not entry[1]:
            del RunFolderLock.held[self.key]
            entry[0].close()  # the lock goes with it; the file stays, empty of meaning
        self.key = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def open_own(path: Path, mode: str = "a", **kwargs):
    """open() for one of trainlab's own files in a run folder (modes r, a, a+, w), never through a symbolic link, and
    never a file that has other names (a hard link): either would let a folder from someone else aim a write at any
    file of the user's. TrainlabError, naming the file, for such a file."""
    flags = {"r": os.O_RDONLY, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
             "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC}[mode.replace("b", "")]
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TrainlabError(link_refusal(Path(path))) from None
        raise
    if mode != "r" and os.fstat(fd).st_nlink > 1:
        os.close(fd)
        raise TrainlabError(shared_name(Path(path)))
    if flags & os.O_TRUNC:
        os.ftruncate(fd, 0)
    return os.fdopen(fd, mode, **kwargs)


def shared_name(path: Path) -> str:
    return (f"{printable(path)} has other names (a hard link): trainlab writes its own files in a run folder only "
            "where no other file shares them; remove it, or give the run a new folder (hydra.run.dir=...)")


def link_refusal(path: Path, elsewhere: str = "hydra.run.dir=...") -> str:
    """The line for a symbolic link where trainlab writes one of its own files; `elsewhere`: how to choose another."""
    try:
        target = f" (to {printable(os.readlink(path))})"
    except OSError:
        target = ""
    return (f"{printable(path)} is a symbolic link{target}: trainlab writes a run's files only as plain files in its "
            f"own folder; remove the link, or choose another folder ({elsewhere})")


def check_run_folder(run_dir: Path) -> bool:
    """A run folder about to be written into, checked before anything is: -> whether it holds a run already (False:
    absent or empty, a new run's). TrainlabError for a link among trainlab's own names, for files that are not a
    run's (a folder of the user's), and RunFolderBusy where another live run writes into it."""
    run_dir = Path(run_dir)
    if not run_dir.exists() and not run_dir.is_symlink():
        return False
    if run_dir.is_symlink() and not run_dir.is_dir():
        raise TrainlabError(link_refusal(run_dir))
    if not run_dir.is_dir():
        raise TrainlabError(f"{printable(run_dir)} is a file where the run's folder should be: move it away, or "
                            "choose another folder (hydra.run.dir=...)")
    refuse_links(run_dir)
    for name in (RUN_LOCK, RUN_LOG, ERROR_LOG, METRICS_CSV):  # files trainlab appends to or rewrites in place
        if (run_dir / name).is_file() and (run_dir / name).stat().st_nlink > 1:
            raise TrainlabError(shared_name(run_dir / name))
    entries = sorted(p.name for p in run_dir.iterdir())
    _refuse_foreign(run_dir, _not_a_runs(entries), "run")
    if RunFolderLock.held_elsewhere(run_dir):
        with open_own(run_dir / RUN_LOCK, "r") as f:
            raise RunFolderBusy(busy(run_dir, f.read().strip() or "unknown"))
    return bool(entries)


def check_sweep_folder(sweep_dir: Path, same_sweep) -> None:
    """A sweep folder about to be written into, checked before anything is: absent or empty (a new sweep), the same
    sweep again (`same_sweep(multirun.yaml's path)` says whether it is: it raises naming what differs), an Optuna
    study's (the study checks its own search space), or refused: links among trainlab's names, here or in a job's
    folder, and files that are neither a sweep's nor its jobs' folders."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists() and not sweep_dir.is_symlink():
        return
    if not sweep_dir.is_dir():
        raise TrainlabError(link_refusal(sweep_dir, "hydra.sweep.dir=...") if sweep_dir.is_symlink() else
                            f"{printable(sweep_dir)} is a file where the sweep's folder should be: move it away, or "
                            "choose another folder (hydra.sweep.dir=...)")
    refuse_links(sweep_dir, SWEEP_NAMES, "hydra.sweep.dir=...")
    foreign = []
    for entry in sorted(sweep_dir.iterdir()):
        if entry.name in SWEEP_NAMES or LEFT_BY_A_KILL.fullmatch(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink() and not _not_a_runs(os.listdir(entry)):
            refuse_links(entry, elsewhere="hydra.sweep.dir=...")  # a job's folder
            continue
        foreign.append(entry.name)
    _refuse_foreign(sweep_dir, foreign, "sweep")
    if (sweep_dir / MULTIRUN_YAML).is_file():
        same_sweep(sweep_dir / MULTIRUN_YAML)


def _not_a_runs(names) -> list:
    """Of a folder's file names, those that are not trainlab's own in a run folder."""
    return [name for name in names if name not in OWN_NAMES and not name.startswith(EVENTS)
            and not LEFT_BY_A_KILL.fullmatch(name) and not PROVENANCE_DIFF.fullmatch(name)
            and not re.fullmatch(SET_ASIDE.format(r"\d+"), name)]


def _refuse_foreign(folder: Path, foreign: list, what: str) -> None:
    """TrainlabError where a run's or sweep's (`what`) folder holds `foreign` files: someone's own folder."""
    if foreign:
        shown = ", ".join(printable(name) for name in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise TrainlabError(f"{printable(shown_path(folder))} holds files that are not a {what}'s ({shown}): a {what} "
                            f"writes into a new folder, or goes on in its own; choose another folder "
                            f"(hydra.{what}.dir=...)")


def refuse_links(folder: Path, names=OWN_NAMES, elsewhere: str = "hydra.run.dir=...") -> None:
    """TrainlabError where one of trainlab's own `names` in `folder`, or a file in its checkpoints/, .hydra/ or
    evaluate/, is a symbolic link (export/ by its name only: src/export.py writes into a new folder of its own there,
    then links each file to a name that must be free)."""
    for name in names:
        path = Path(folder) / name
        if path.is_symlink():
            raise TrainlabError(link_refusal(path, elsewhere))
        if name in (CHECKPOINTS, HYDRA_DIR, EVALUATE) and path.is_dir():
            for inside in path.iterdir():
                if inside.is_symlink():
                    raise TrainlabError(link_refusal(inside, elsewhere))


def _write(f, rows: list, columns: list, header: bool) -> None:
    writer = csv.DictWriter(f, columns)
    if header:
        writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


def _cell(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else csv_text(value)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula (OWASP)


def csv_text(value):
    """A CSV cell that a spreadsheet reads as text, never as a formula: text that starts like one gets a leading `'`
    (OWASP's advice for CSV injection); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def read_metrics(folder: Path) -> list:
    """metrics.csv's rows as dicts: numbers as numbers (epoch an int, or "test"), empty cells None; [] if absent."""
    path = Path(folder) / METRICS_CSV
    if not path.exists():
        return []
    rows = []
    with open_own(path, "r", newline="") as f:
        for row in csv.DictReader(f):
            parsed = {k: (None if v in ("", None) else float(v)) for k, v in row.items() if k != "epoch"}
            parsed["step"] = int(parsed["step"]) if parsed.get("step") is not None else None
            parsed["epoch"] = row["epoch"] if row["epoch"] == TEST_ROW else int(row["epoch"])
            rows.append(parsed)
    return rows


def shown_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory where it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def missing_folders(path: Path) -> list:
    """`path` and those of its parents that do not exist yet, deepest first: what making it would make."""
    path, missing = Path(os.path.abspath(path)), []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_if_empty(folders: list) -> None:
    """Remove each of `folders` (deepest first) that is an empty folder: what a failed start made and left empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, not there, or not ours to remove: left as it is
            return


MADE_FOR_THE_RUN = []  # the parents of this process's new run folder it made (outputs/, outputs/runs/)


def discard_failed_start(run_dir: Path) -> bool:
    """Remove a run folder that holds only what Hydra writes at the start (.hydra/ and the log): a start that failed
    (a bad value, a missing data folder) leaves nothing to find. -> whether it did; a folder with anything of the
    run's (checkpoints, events, metrics.csv), one another live run writes into, or the working directory itself is
    never touched."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or run_dir.resolve() == Path.cwd().resolve() or not (run_dir / ".hydra").is_dir():
        return False
    if any(p.name not in (".hydra", RUN_LOCK) and p.suffix != ".log" for p in run_dir.iterdir()):
        return False
    if RunFolderLock.held_elsewhere(run_dir):  # another run's, that has not written anything yet
        return False
    shutil.rmtree(run_dir)
    remove_if_empty([p for p in MADE_FOR_THE_RUN if p != Path(os.path.abspath(run_dir))])
    return True


def run_of(checkpoint: Path) -> Optional[Path]:
    """The run folder a checkpoint file belongs to (<run>/checkpoints/x.pt); None for a file kept elsewhere."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else None


def read_scalars(folder: Path) -> dict:
    """{tag: [(step, value), ...]} from the event files in `folder`; {} before the first one is written."""
    if not any(Path(folder).glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # half a second: only here

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: every point, not a sample
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

"""A run folder's layout: its file names, the TensorBoard tags a run writes, the run of a checkpoint, and reading a
run's metrics back. What writes a run and what reads one (report, evaluate, bench) agree by using these names.

    <run>/.hydra/config.yaml, overrides.yaml   the composed config and the command line's overrides (Hydra)
    <run>/run.log                              the terminal's lines, timestamped
    <run>/metrics.csv                          a row per epoch and the test row: METRICS_COLUMNS
    <run>/events.out.tfevents.*                TensorBoard: the tags below
    <run>/checkpoints/last.pt, last.prev.pt, best.pt
    <run>/error.log                            a failed run's error and traceback (report.py: failed)
    <run>/evaluate/                            src/evaluate.py's events
    <run>/.lock                                flocked by the process writing into the run (its pid inside)
"""
import csv
import fcntl
import os
import secrets
import shutil
from pathlib import Path
from typing import Optional

from trainlab.errors import TrainlabError

CHECKPOINTS = "checkpoints"
LAST, PREVIOUS, BEST = "last.pt", "last.prev.pt", "best.pt"
ERROR_LOG = "error.log"
METRICS_CSV = "metrics.csv"
EVALUATE = "evaluate"
RUN_LOCK = ".lock"

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


def best_metric(monitor: str) -> str:
    """The best monitored value so far (a search's objective; HPARAMS's first metric): val/acc -> val/best_acc."""
    split, name = monitor.split("/", 1)
    return f"{split}/best_{name}"


# metrics.csv: one row per epoch, then the test row, whose `epoch` is "test" and whose val_* columns are those of
# the epoch whose weights were tested. Empty where a run has no such value (no validation split, say).
METRICS_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
                   "seconds", "images_per_s"]
TEST_ROW = "test"


class MetricsFile:
    """<run>/metrics.csv, appended a row at a time and flushed to disk, so it holds what the checkpoints hold: a
    resumed run first drops the rows its checkpoint does not cover (an epoch finished after it), so no row is ever
    missing or doubled."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path, self.enabled = Path(run_dir) / METRICS_CSV, enabled

    def keep(self, epochs_done: int) -> None:
        """Keep the rows of epochs 1..epochs_done, as written: what the checkpoint a run resumes from covers (its test
        row, if any, is written again at the end). A row cut short by a kill is dropped. Rewritten atomically."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [row for row in csv.DictReader(f) if None not in row.values()  # short: cut by a kill
                    and row["epoch"] != TEST_ROW and int(row["epoch"]) <= epochs_done]
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # no writer shares it
        with open(tmp, "w", newline="") as f:
            _write(f, rows, header=True)
        os.replace(tmp, self.path)

    def append(self, **row) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            _write(f, [row], header=new)
            f.flush()
            os.fsync(f.fileno())


class RunFolderBusy(TrainlabError):
    """Another live process writes into the run folder: the folder is that run's, so this one leaves no error.log
    there and never discards it."""


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

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.key = None

    def acquire(self) -> "RunFolderLock":
        key = self.run_dir.resolve()
        if key in RunFolderLock.held:
            RunFolderLock.held[key][1] += 1
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            f = open(self.run_dir / RUN_LOCK, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                pid = f.read().strip() or "unknown"  # unknown: the other has not written it yet
                f.close()
                raise RunFolderBusy(f"another run (pid {pid}) is writing into {shown_path(self.run_dir)}: wait for it "
                                    "to end or stop it, or give this run a folder of its own (hydra.run.dir=...)"
                                    ) from None
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
            RunFolderLock.held[key] = [f, 1]
        self.key = key
        return self

    @staticmethod
    def held_elsewhere(run_dir: Path) -> bool:
        """Whether another live process holds the run folder's lock."""
        path = Path(run_dir) / RUN_LOCK
        if not path.is_file() or Path(run_dir).resolve() in RunFolderLock.held:
            return False
        with open(path) as f:
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


def _write(f, rows: list, header: bool) -> None:
    writer = csv.DictWriter(f, METRICS_COLUMNS)
    if header:
        writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


def _cell(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def read_metrics(folder: Path) -> list:
    """metrics.csv's rows as dicts: numbers as numbers (epoch an int, or "test"), empty cells None; [] if absent."""
    path = Path(folder) / METRICS_CSV
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
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

"""The run's figures, fanned out: each event (a logged step, an epoch, the test) goes to every sink of the run, the
terminal, metrics.csv and TensorBoard; a tracker is one more sink. A distributed run's other processes have none."""
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from trainlab.runs.folder import (IMAGES_PER_S, LR, STARTUP_S, TEST_ACC, TEST_EPOCH_ACC, TEST_EPOCH_LOSS, TEST_LOSS,
                                  TEST_ROW, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS, MetricsFile, RunFolderLock,
                                  best_metric, read_scalars)
from trainlab.runs.tensorboard import RunWriter

log = logging.getLogger("trainlab")


def show_progress(wanted: bool) -> bool:
    """trainer.progress_bar, on a terminal only: a bar redrawn into a file or a pipe is noise (one shapes epoch wrote
    152 KB of redraws), and TQDM_DISABLE=1 turns bars off, as in any tqdm program."""
    disabled = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return wanted and not disabled and sys.stderr.isatty()


@dataclass
class EpochReport:
    """An epoch's figures: train, validation (None without a validation split) and, with trainer.test_every_epoch,
    the test split (`epoch_test`: to watch, never to choose). Each has .loss, .acc, .seconds; train also .images,
    .skipped and .images_per_s."""
    epoch: int
    epochs: int
    step: int  # the global step at its end
    lr: float  # the learning rate it began at
    train: object
    val: object = None
    epoch_test: object = None
    monitor: str = "val/acc"
    best: Optional[float] = None  # the best monitored value so far

    @property
    def trained(self) -> bool:
        return self.train.images > 0  # with trainer.nonfinite=skip every step of an epoch may have been skipped

    @property
    def seconds(self) -> float:
        return self.train.seconds + sum(e.seconds for e in (self.val, self.epoch_test) if e is not None)

    def scalars(self) -> dict:
        scalars = {TRAIN_ACC: self.train.acc, LR: self.lr, IMAGES_PER_S: self.train.images_per_s} if self.trained \
            else {LR: self.lr}
        if self.val is not None:
            scalars.update({VAL_LOSS: self.val.loss, VAL_ACC: self.val.acc, best_metric(self.monitor): self.best})
        if self.epoch_test is not None:
            scalars.update({TEST_EPOCH_LOSS: self.epoch_test.loss, TEST_EPOCH_ACC: self.epoch_test.acc})
        return scalars

    def line(self) -> str:
        train, val, epoch_test = self.train, self.val, self.epoch_test
        shown = f"  val loss {val.loss:.4f} acc {val.acc:6.2%}" if val is not None else ""
        shown += f"  (test acc {epoch_test.acc:6.2%})" if epoch_test is not None else ""
        skipped = f"  {train.skipped} non-finite steps skipped" if train.skipped else ""
        fitted = (f"train loss {train.loss:.4f} acc {train.acc:6.2%}" if self.trained else
                  f"trained nothing: all {train.skipped} steps were skipped (their loss or gradients were not finite)")
        return (f"epoch {self.epoch:>{len(str(self.epochs))}}/{self.epochs}  {fitted}{shown}  lr {self.lr:.3g}  "
                f"{self.seconds:.1f}s" + (f" ({train.images_per_s:,.0f} img/s){skipped}" if self.trained else ""))

    def row(self) -> dict:
        train, val, epoch_test, trained = self.train, self.val, self.epoch_test, self.trained
        return dict(epoch=self.epoch, step=self.step, train_loss=train.loss if trained else None,
                    train_acc=train.acc if trained else None, val_loss=val and val.loss, val_acc=val and val.acc,
                    test_loss=epoch_test and epoch_test.loss, test_acc=epoch_test and epoch_test.acc, lr=self.lr,
                    seconds=self.seconds, images_per_s=train.images_per_s)


class Sink:
    """What a sink may be told; each takes what it shows. A tracker needs only scalars()."""

    def scalars(self, values: dict, step: int) -> None:
        pass

    def epoch(self, report: EpochReport) -> None:
        self.scalars(report.scalars(), report.step)

    def test(self, test: Optional[dict], chosen: Optional[dict], step: int) -> None:
        """The test split's {"loss", "acc"} (None: the data has none), scored with the weights of the epoch whose
        validation is `chosen`."""
        if test is not None:
            self.scalars({TEST_LOSS: test["loss"], TEST_ACC: test["acc"]}, step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def missed(self) -> Optional[str]:
        """Why the sink missed figures (a tracker that failed on the way), or None."""
        return None


class TerminalSink(Sink):
    """An epoch's line on the terminal and in run.log (a step's loss shows in the progress bar)."""

    def epoch(self, report: EpochReport) -> None:
        log.info(report.line())


class CsvSink(Sink):
    """metrics.csv: a row per epoch, then the test row."""

    def __init__(self, metrics_file: MetricsFile):
        self.file = metrics_file

    def epoch(self, report: EpochReport) -> None:
        self.file.append(**report.row())

    def test(self, test, chosen, step) -> None:
        chosen, test = chosen or {}, test or {}
        self.file.append(epoch=TEST_ROW, step=step, val_loss=chosen.get("loss"), val_acc=chosen.get("acc"),
                         test_loss=test.get("loss"), test_acc=test.get("acc"))


class TensorBoardSink(Sink):
    """The run's event files (RunWriter). A resumed run drops what was logged after its checkpoint (purge_step), and
    one that only scores the test again does not log a test score its stopped attempt already logged."""

    def __init__(self, writer: RunWriter, run_dir: Path, rescoring: bool):
        self.writer, self.run_dir, self.rescoring = writer, run_dir, rescoring

    def scalars(self, values: dict, step: int) -> None:
        self.writer.scalars(values, step)

    def test(self, test, chosen, step) -> None:
        # (Reading events takes a second: only for a resumed run with nothing left to train.)
        if test is not None and not (self.rescoring and any(at == step for at, _ in
                                                          read_scalars(self.run_dir).get(TEST_ACC, []))):
            super().test(test, chosen, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Metrics:
    """The run's sinks, told each event in turn. Opened on a run folder (Metrics.open), it holds the folder's lock
    while it writes (no other live run writes there) and close() lets go of it."""

    def __init__(self, sinks: list, lock: Optional[RunFolderLock] = None, writer: Optional[RunWriter] = None):
        self.sinks, self.lock = sinks, lock
        self.writer = writer or RunWriter(None, enabled=False)  # TensorBoard's extras: images, graph, hparams

    @classmethod
    def open(cls, run_dir: Path, main: bool, epochs_done: int, first_step: Optional[int],
             rescoring: bool = False, tracking=None) -> "Metrics":
        """The run's sinks in `run_dir`, after `epochs_done` epochs (a resumed run's checkpoint; `first_step`, its
        first step to log, None for a new run; `rescoring`: it only scores the test again); the trackers `tracking`
        chooses (runs/trackers.py; None: TensorBoard alone); a distributed run's other processes (not `main`) get
        none. A damaged metrics.csv is refused before anything is written."""
        if not main:
            return cls([])
        csv = MetricsFile(run_dir)
        kept = csv.rows_covered(epochs_done)  # what the checkpoint covers
        lock = RunFolderLock(run_dir).acquire()
        tensorboard = tracking is None or tracking.tensorboard
        writer = RunWriter(run_dir, purge_step=first_step, enabled=tensorboard)
        csv.rewrite_with(kept)
        sinks = [TerminalSink(), CsvSink(csv)] + ([TensorBoardSink(writer, run_dir, rescoring)] if tensorboard else [])
        try:
            return cls(sinks + (tracking.sinks() if tracking is not None else []), lock, writer)
        except BaseException:
            lock.release()
            raise

    def step(self, step: int, loss: float) -> None:
        """The mean training loss of the steps since the last call (every trainer.log_every_n_steps)."""
        self.scalars({TRAIN_LOSS: loss}, step)

    def scalars(self, values: dict, step: int) -> None:
        for sink in self.sinks:
            sink.scalars(values, step)

    def startup(self, seconds: float) -> None:
        self.scalars({STARTUP_S: seconds}, 0)

    def epoch(self, report: EpochReport) -> None:
        for sink in self.sinks:
            sink.epoch(report)

    def test(self, test: Optional[dict], chosen: Optional[dict], step: int) -> None:
        for sink in self.sinks:
            sink.test(test, chosen, step)

    def flush(self) -> None:
        """Before a checkpoint: what was logged reaches the disk first, since a resumed run logs only what comes
        after its checkpoint."""
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        try:
            for sink in self.sinks:
                sink.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def missed(self) -> str:
        """What the run's last line adds when a tracker failed on the way: ' · logger.mlflow missed data (...)'."""
        return "".join(f" · {text}" for text in (sink.missed() for sink in self.sinks) if text)

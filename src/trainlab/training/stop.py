"""When training stops before trainer.epochs: a signal (SIGTERM, SIGINT, a cluster's preemption), the time budget
(trainer.max_minutes), early stopping (trainer.early_stopping_patience) or a search's pruner (runs/trial.py)."""
import signal
import threading
import time
from typing import Optional

from trainlab import distributed

EARLY, TIME, PRUNED = "early stopping", "time budget", "pruned"  # why training ended early: kept in the checkpoint
SIGNAL, LAUNCHER_SIGNAL = "signal", "launcher's signal"  # a signal to stop; one to hand on to the launcher after
BETWEEN_STEPS = (None, SIGNAL, LAUNCHER_SIGNAL, TIME)  # why to stop between two steps, the weakest first


class StopPolicy:
    """Asked between two steps (`after_step`) and after each epoch (`after_epoch`); `reason` says why training ended
    early, if it did. Signals are caught only inside `with policy:`."""

    def __init__(self, max_minutes: Optional[float] = None, patience: Optional[int] = None, device=None,
                 processes: int = 1, pruning=None):
        self.max_minutes, self.patience, self.device, self.processes = max_minutes, patience, device, processes
        self.pruning = pruning  # a search's trial (runs/trial.py Pruning; the first process's), or None
        self.reason: Optional[str] = None
        self.started = self.end = None  # training's start in this process, and the time budget's end
        self.signals = StopOnSignal()

    def __enter__(self):
        self.started = time.perf_counter()
        self.end = self.started + 60 * self.max_minutes if self.max_minutes else None
        self.signals.__enter__()
        return self

    def __exit__(self, *exc):
        self.signals.__exit__(*exc)

    def out_of_time(self) -> bool:
        """Whether the time budget is spent: in a distributed run, on any process (each times its own start), so
        that all end at the same point."""
        spent = self._spent()
        return distributed.any_process(spent, self.device) if self.processes > 1 else spent

    def _spent(self) -> bool:
        return self.end is not None and time.perf_counter() > self.end

    def after_step(self) -> Optional[str]:
        """Between two steps: TIME, SIGNAL or LAUNCHER_SIGNAL where training must stop now (checkpoint first), else
        None. In a distributed run every process gets the same answer, the strongest any of them has (BETWEEN_STEPS),
        so all stop after the same step and end it the same way."""
        why = TIME if self._spent() else self.signals.asked()
        if self.processes > 1:  # one collective a step: both the signals and the time budget
            why = BETWEEN_STEPS[distributed.largest(BETWEEN_STEPS.index(why), self.device)]
        if why == TIME:
            self.reason = TIME
        return why

    def pass_to_launcher(self, why: Optional[str]) -> None:
        """After the checkpoint of a stop by a launcher's signal (this process's or another's): the launcher's own
        handler, which may requeue the job and exit this process (submitit's does so in the first task alone). The
        other processes wait for it to be done before they exit: a cluster may end every task of a job once one of
        them exits, and the requeue must have been asked for by then."""
        if why != LAUNCHER_SIGNAL:
            return
        try:
            self.signals.pass_to_launcher()
        finally:
            if self.processes > 1:
                distributed.wait_for_all()

    def after_epoch(self, best, epoch: int, last: bool) -> Optional[str]:
        """After epoch `epoch` (`last`: trainer.epochs's): EARLY, PRUNED or TIME where training ends here, else None.
        The pruner is told every epoch's best value, the last's included (it weighs the other trials by them)."""
        pruned = self.pruning is not None and self.pruning.should_stop(best.value, epoch, ask=not last)
        if self.processes > 1:  # the first process asks the study; all stop together
            pruned = distributed.any_process(pruned, self.device)
        if best.out_of_patience(self.patience):
            self.reason = EARLY
        elif pruned:
            self.reason = PRUNED
        elif not last and self.out_of_time():
            self.reason = TIME
        return self.reason

    def to_test(self, loaders):
        """The test split's loader, to score at the end; None for a trial the search pruned (hopeless: its test is
        not worth the time, and nothing is chosen on it)."""
        return None if self.reason == PRUNED else loaders.test

    def state_dict(self) -> dict:
        return {"reason": self.reason}

    def load_state_dict(self, state: dict) -> None:
        self.reason = state["reason"]


class StopOnSignal:
    """SIGTERM or SIGINT asks the loop to stop after the current step (a second SIGINT stops at once). A cluster
    launcher's preemption signal (submitit's SIGUSR2) does too, and is then handed on to the launcher's own handler,
    which requeues the job: it resumes from the checkpoint just written."""

    HANDED_ON = (signal.SIGUSR2,)

    def __enter__(self):
        self.signal, self.number, self.previous = None, None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, *self.HANDED_ON):
                if sig in self.HANDED_ON and not callable(signal.getsignal(sig)):
                    continue  # nobody to hand it on to: leave it alone
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, number, frame):
        if self.signal is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal, self.number = signal.Signals(number).name, number

    def asked(self) -> Optional[str]:
        """None, SIGNAL, or LAUNCHER_SIGNAL for a launcher's signal with a handler to hand it on to."""
        if self.signal is None:
            return None
        return LAUNCHER_SIGNAL if self.number in self.HANDED_ON and self.number in self.previous else SIGNAL

    def pass_to_launcher(self) -> None:
        """After the checkpoint: let the launcher whose signal it was act on it (it may requeue and exit). In a
        distributed run, another process may have caught it: the launcher's handler here is given it all the same."""
        number = self.number if self.number in self.HANDED_ON else self.HANDED_ON[0]
        previous = self.previous.get(number)
        if callable(previous):
            previous(number, None)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

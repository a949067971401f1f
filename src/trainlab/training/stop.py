"""When training stops before trainer.epochs: a signal (SIGTERM, SIGINT, a cluster's preemption), the time budget
(trainer.max_minutes) or early stopping (trainer.early_stopping_patience)."""
import signal
import threading
import time
from typing import Optional

from trainlab import distributed

EARLY, TIME = "early stopping", "time budget"  # why training ended early: kept in the checkpoint


class StopPolicy:
    """Asked between two steps (`after_step`) and after each epoch (`after_epoch`); `reason` says why training ended
    early, if it did. Signals are caught only inside `with policy:`."""

    def __init__(self, max_minutes: Optional[float] = None, patience: Optional[int] = None, device=None,
                 processes: int = 1):
        self.max_minutes, self.patience, self.device, self.processes = max_minutes, patience, device, processes
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
        return self.end is not None and time.perf_counter() > self.end

    def after_step(self) -> Optional[str]:
        """Between two steps: "signal" or TIME where training must stop now (checkpoint first), else None. In a
        distributed run every process gets the same answer, so all stop at the same step."""
        out_of_time = self.out_of_time()
        if self.processes > 1:
            asked = distributed.any_process(self.signals.signal is not None or out_of_time, self.device)
        else:
            asked = self.signals.signal is not None or out_of_time
        if not asked:
            return None
        if out_of_time:
            self.reason = TIME
            return TIME
        return "signal"

    def after_epoch(self, best, last: bool) -> Optional[str]:
        """After an epoch (`last`: trainer.epochs's): EARLY or TIME where training ends here, else None."""
        if best.out_of_patience(self.patience):
            self.reason = EARLY
        elif not last and self.out_of_time():
            self.reason = TIME
        return self.reason

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

    def pass_to_launcher(self) -> None:
        """After the checkpoint: let the launcher whose signal it was act on it (it may requeue and exit)."""
        previous = self.previous.get(self.number)
        if self.number in self.HANDED_ON and callable(previous):
            previous(self.number, None)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

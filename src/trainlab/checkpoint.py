"""Checkpoints: written atomically with the previous one kept, read back with weights_only=True so a file can never
run code, and holding everything that decides the rest of a run, so a resumed run ends bit for bit where an
uninterrupted one would."""
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from trainlab.engine import TrainState
from trainlab.errors import TrainlabError, one_line
from trainlab.run_folder import BEST, LAST, PREVIOUS

log = logging.getLogger("trainlab")

# The checkpoint record's version: a reader refuses a newer one rather than misread it. 2: validation splits (best
# chosen on validation, the test score kept once scored); a run of format 1 chose its best.pt on the test split.
FORMAT = 2


class Checkpointer:
    """The run's checkpoints/: last.pt at each epoch's end, every `every_n_steps` steps and when a signal stops the
    run (the one before kept as last.prev.pt), and best.pt when an epoch sets the best monitored validation value
    (with no validation split: every epoch's end, so best.pt holds the last weights).

    What a checkpoint holds is decided here: the state of the model, optimizer, scheduler, run and generators, and
    `about` (the plain config, the class names, the image shape). Weights that are not finite are never written, and
    the events logged so far reach the disk first, since a resumed run logs only what comes after its checkpoint.
    """

    def __init__(self, folder: Path, model, optimizer, scheduler, writer, about: dict, every_n_steps: int = 0,
                 enabled: bool = True):
        self.folder, self.model, self.optimizer, self.scheduler = folder, model, optimizer, scheduler
        self.writer = writer
        self.about, self.every_n_steps, self.enabled = about, every_n_steps, enabled

    def due(self, step: int) -> bool:
        """Whether global step `step` (1-based) is one of every_n_steps."""
        return bool(self.every_n_steps) and step % self.every_n_steps == 0

    def save(self, state: TrainState, best: bool = False) -> None:
        if not self.enabled:
            return
        check_finite(self.model)
        self.writer.flush()
        record = {"format": FORMAT, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                  "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                  **state.state_dict(), "rng": rng_states(), "epoch": state.epoch - (state.batch == 0), **self.about}
        if best:  # first: a run killed between the two resumes from the last.pt before, and writes best.pt again
            save_checkpoint(self.folder / BEST, record)
        save_checkpoint(self.folder / LAST, record, keep_previous=True)

    def best_weights(self, epoch: int) -> dict:
        """The model weights best.pt holds (on the CPU), which must be those of `epoch`."""
        record = load_checkpoint(self.folder / BEST)
        if record.get("epoch") != epoch:
            raise TrainlabError(f"{self.folder / BEST} holds the weights of epoch {record.get('epoch')}, but the run's "
                                f"best epoch was {epoch}: the test split cannot be scored with the chosen weights; "
                                "evaluate a checkpoint with src/evaluate.py instead")
        return record["model"]

    def add_test(self, test: dict) -> None:
        """Write the test split's score into best.pt too, whose weights it was scored with."""
        if not self.enabled or not (self.folder / BEST).exists():
            return
        record = load_checkpoint(self.folder / BEST)
        record["test"] = test
        save_checkpoint(self.folder / BEST, record)


def save_checkpoint(path: Path, state: dict, keep_previous: bool = False) -> None:
    """Write `state` to a temporary file beside `path`, flush it to disk, then rename: a crash at any point leaves a
    complete file behind (with keep_previous, the one before is kept as last.prev.pt: a fallback if this one is
    later found damaged)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, path.with_name(PREVIOUS))
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """-> the saved record (model, optimizer, config, classes, ...), tensors on the CPU."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainlabError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # unpickling refused, truncated file, not a checkpoint at all
        reason = one_line(f"{type(e).__name__}: {e}", 200)
        raise TrainlabError(f"{path} is not a readable trainlab checkpoint ({reason})") from None
    if isinstance(record, dict) and record.get("format", FORMAT) > FORMAT:  # records before versions had none
        raise TrainlabError(f"{path} was written by a newer trainlab (checkpoint format {record['format']}, this one "
                            f"reads up to {FORMAT}): upgrade trainlab to read it")
    return record


def load_latest(folder: Path) -> tuple:
    """The newest valid checkpoint in a run's checkpoints/ folder -> (state, path); (None, None) when there is none.
    A damaged newest one falls back to the one before, with a warning; with no valid one left, the run stops."""
    candidates = [p for p in (Path(folder) / LAST, Path(folder) / PREVIOUS) if p.exists()]
    for i, path in enumerate(candidates):
        try:
            state = load_checkpoint(path)
            if "position" not in state:
                raise TrainlabError(f"{path} holds no training position")
        except TrainlabError as e:
            if i + 1 < len(candidates):
                log.warning(f"warning: {e}; resuming from {candidates[i + 1]} instead")
                continue
            raise TrainlabError(f"{e}; no valid checkpoint is left in {folder}: move the folder away to start over, "
                                "or set trainer.resume=never") from None
        return state, path
    return None, None


def check_finite(model: torch.nn.Module) -> None:
    """Refuse to write weights that are NaN or infinite."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TrainlabError(f"weight {name} is not finite; no checkpoint was written")


def rng_states() -> dict:
    """Every random generator a training step draws from (dropout, for one)."""
    states = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(_tuples(states["python"]))
    np.random.set_state(tuple(states["numpy"]))
    torch.random.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _numpy_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]  # tensors load weights-only


def _tuples(value):
    """random.setstate wants the tuples that a save turned into lists back."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value

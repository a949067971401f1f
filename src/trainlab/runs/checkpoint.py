"""Checkpoints: written atomically with the previous one kept, checksummed, read back with weights_only=True so a file
can never run code, and holding everything that decides the rest of a run, so a resumed run ends bit for bit where an
uninterrupted one would."""
import fcntl
import hashlib
import logging
import os
import random
import shutil
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from trainlab.errors import TrainlabError, one_line, refused_by_file_system
from trainlab.runs.folder import BEST, LAST, PREVIOUS, temporary_name

log = logging.getLogger("trainlab")

# The checkpoint record's version: a reader refuses a newer one rather than misread it. 2: validation splits (best
# chosen on validation, the test score kept once scored); a run of format 1 chose its best.pt on the test split.
FORMAT = 2
# Every record save_checkpoint writes carries CHECKSUM, a digest of all the rest (every tensor's bytes included), so a
# file changed after it was written (a flipped bit, a copy cut short) is found on load; records from before it have
# none and load as they are. Each tensor's bytes go through zlib.crc32, the rest (and those crcs) through blake2b:
# measured over a CIFAR-size cache (60,000x3x32x32 uint8, 184 MB) on one CPU core, crc32 0.044 s, sha256 0.10 s,
# blake2b 0.21 s; reading that cache (torch.load without mmap) takes 0.11 s, writing it 0.6 s.
CHECKSUM = "checksum"
# What a training checkpoint of this FORMAT holds: what evaluate and predict read, and what a resume reads.
# load_checkpoint names what is missing, rather than a KeyError later.
CHECKPOINT_KEYS = ("model", "config", "classes", "image_shape")
RESUME_KEYS = ("position", "best", "optimizer", "scheduler", "rng", "totals", "epoch")


class Checkpointer:
    """The run's checkpoints/ over a registry of named parts: last.pt at each epoch's end, every `every_n_steps`
    steps and when a signal stops the run (the one before kept as last.prev.pt), and best.pt when an epoch sets the
    best monitored validation value (with no validation split: every epoch's end, so best.pt holds the last weights).

    A part is anything with state_dict() and load_state_dict(): the model, the optimizer, the schedule, the clock,
    the chosen epoch, the generators; its state is kept under its name, and restored in the order given (the
    generators last). A new piece of state (averaged weights, a scaler, a tracker's run id) is one more part. Beside
    them a record holds `about` (the plain config, the class names, the image shape) and what readers such as
    src/evaluate.py read (the epoch of its weights, their validation and test scores: each part's facts()).
    Weights that are not finite are never written; `before_save` runs first (the logs reach the disk: a resumed run
    logs only what comes after its checkpoint)."""

    def __init__(self, folder: Path, about: dict, every_n_steps: int = 0, enabled: bool = True, writes: bool = True,
                 **parts):
        """`writes`: this process writes the files (a distributed run's first); the others make each record with it,
        at the same steps (a part may gather from every process), and write nothing."""
        self.folder, self.about, self.every_n_steps, self.enabled = folder, about, every_n_steps, enabled
        self.writes, self.parts = writes, parts
        self.before_save = None

    def due(self, step: int) -> bool:
        """Whether global step `step` (1-based) is one of every_n_steps."""
        return bool(self.every_n_steps) and step % self.every_n_steps == 0

    def record(self) -> dict:
        record = {"format": FORMAT, **{name: part.state_dict() for name, part in self.parts.items()}}
        for part in self.parts.values():
            record.update(part.facts() if hasattr(part, "facts") else {})
        return {**record, **self.about}

    def save(self, best: bool = False) -> None:
        if not self.enabled:
            return
        check_finite(self.parts["model"])
        if self.before_save is not None:
            self.before_save()
        record = self.record()
        if not self.writes:
            return
        if best:  # first: a run killed between the two resumes from the last.pt before, and writes best.pt again
            save_checkpoint(self.folder / BEST, record)
        save_checkpoint(self.folder / LAST, record, keep_previous=True)

    def restore(self, record: Optional[dict]) -> None:
        """Each part from a checkpoint's record (None: a new run, nothing to restore), in the order given."""
        if record is None:
            return
        record = upgraded(record)
        missing = [name for name in self.parts if name not in record]
        if missing:
            raise TrainlabError(f"the checkpoint holds no {', '.join(missing)}: resume from checkpoints/last.pt of a "
                                "run folder, or start a new run")
        for name, part in self.parts.items():
            part.load_state_dict(record[name])

    def add_test(self, test: dict) -> None:
        """Write the test split's score into best.pt too, whose weights it was scored with."""
        if not (self.enabled and self.writes) or not (self.folder / BEST).exists():
            return
        record = load_checkpoint(self.folder / BEST)
        record["test"] = test
        record["best"] = {**record["best"], "test": test}
        save_checkpoint(self.folder / BEST, record)


def upgraded(record: dict) -> dict:
    """A record in the layout the parts read now: one written before the parts kept the epoch in progress, the
    latest validation and the test score themselves held them beside the parts."""
    record = dict(record)
    record.setdefault("tracking", {})  # written before trackers: no tracker run to go on in
    if "latest" not in record["best"]:
        record["best"] = {**record["best"], "latest": record.get("val"), "test": record.get("test")}
    scheduler = record["scheduler"]
    if not (isinstance(scheduler, dict) and set(scheduler) == {"scheduler", "steps"}):
        record["scheduler"] = {"scheduler": scheduler, "steps": 0}  # written before warm-up, which it never had
    if record["totals"] is None or "sums" not in record["totals"]:
        record["totals"] = {"sums": record["totals"], "lr": record.get("epoch_lr")}
    if not isinstance(record.get("stopped"), dict):
        record["stopped"] = {"reason": record.get("stopped")}
    return record


class Generators:
    """Every random generator a training step draws from (dropout, for one), as a checkpointed part. In a
    distributed run each process draws its own (its dropout masks), so every process's states are kept, gathered as
    the checkpoint is made (all processes make it; the first writes it), under "ranks"; the first's are also the
    part's own, which a run resumed on another number of processes goes on from."""

    def state_dict(self) -> dict:
        states = rng_states()
        if not torch.distributed.is_initialized():
            return states
        every = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(every, states)
        return {**every[0], "ranks": every}

    def load_state_dict(self, state: dict) -> None:
        ranks = state.get("ranks")
        if ranks and torch.distributed.is_initialized() and len(ranks) == torch.distributed.get_world_size():
            state = ranks[torch.distributed.get_rank()]
        set_rng_states(state)


def save_checkpoint(path: Path, state: dict, keep_previous: bool = False, key: bytes = None) -> None:
    """Write `state` with its checksum to a temporary file beside `path` (a name of this process's own: writers never
    meet), flush it to disk, then rename: a crash at any point leaves a complete file behind. With keep_previous, the
    one before is kept as last.prev.pt (a fallback if this one is later found damaged), by a link renamed over it:
    `path` is never absent, even for a moment. `key`: the checksum is keyed (checksum()), so only a holder of the
    key can write a file that reads back as intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**state, CHECKSUM: checksum(state, key)}
    tmp, previous = temporary_name(path), temporary_name(path.with_name(PREVIOUS))
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666), "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            try:
                os.link(path, previous)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, previous)
            os.replace(previous, path.with_name(PREVIOUS))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save turns a full disk into a RuntimeError, its OSError unnamed
        refusal = refused_by_file_system(e)
        if refusal is None or refusal.filename:
            raise
        raise OSError(refusal.errno, refusal.strerror, str(path)) from e  # the message names the file
    finally:  # what a failed write (a full disk) left behind
        for leftover in (tmp, previous):
            leftover.unlink(missing_ok=True)


def read_record(path: Path, checked: bool = False, key: bytes = None) -> dict:
    """torch.load (weights only, onto the CPU, read into memory rather than mapped: a file cut short while mapped
    would kill the process with SIGBUS), its checksum checked where it has one. DamagedFile: it does not match (or,
    `checked`, there is none). `key`: the checksum must be keyed with it (written by a holder of the key)."""
    record = torch.load(path, map_location="cpu", weights_only=True)
    if checked and not (isinstance(record, dict) and CHECKSUM in record):
        raise DamagedFile(f"{path} has no checksum (written by an older trainlab)")
    if isinstance(record, dict) and CHECKSUM in record:
        if checksum(record, key) != record.pop(CHECKSUM):
            raise DamagedFile(f"{path} is damaged: its contents no longer match the checksum written with it" if key
                              is None else f"{path} was not written by this user's trainlab, or changed since")
    return record


class DamagedFile(TrainlabError):
    """A file whose checksum does not match its contents: changed after it was written."""


def checksum(record, key: bytes = None) -> str:
    """A digest of everything in `record`: each tensor's dtype, shape and bytes, every other value's repr, the keys
    and the nesting. With `key`, a keyed digest (a MAC): only a holder of the key can make one that matches."""
    digest = hashlib.blake2b(digest_size=16, key=key or b"")

    def add(value):
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
            digest.update(zlib.crc32(flat.view(torch.uint8).numpy() if flat.numel() else b"").to_bytes(4, "big"))
        elif isinstance(value, dict):
            keys = sorted((k for k in value if k != CHECKSUM), key=repr)
            digest.update(f"D{len(keys)}".encode())
            for key in keys:
                digest.update(repr(key).encode())
                add(value[key])
        elif isinstance(value, (list, tuple)):  # a tuple may come back a list
            digest.update(f"L{len(value)}".encode())
            for item in value:
                add(item)
        else:
            digest.update(f"V{value!r}".encode())

    add(record)
    return digest.hexdigest()


class FileLock:
    """An exclusive flock on `path` (created if need be, OSError if it cannot be) held for a `with` block; the kernel
    lets go of it if the process dies. `waiting`: logged when another process holds it, before waiting for it."""

    def __init__(self, path: Path, waiting: str = None):
        # never through a symbolic link: the lock file sits in a folder that may be someone else's (a data folder)
        self.file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o666), "a")
        self.waiting = waiting

    def __enter__(self):
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if self.waiting:
                log.info(self.waiting)
            fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.file.close()  # and the lock with it


def load_checkpoint(path: Path) -> dict:
    """-> the saved record (model, optimizer, config, classes, ...), tensors on the CPU; TrainlabError says why a file
    is missing, unreadable, damaged, newer than this trainlab, or not a trainlab checkpoint."""
    try:
        record = read_record(path)
    except FileNotFoundError:
        raise TrainlabError(f"checkpoint {path} does not exist") from None
    except DamagedFile as e:
        raise DamagedFile(f"{e} (it changed on disk after it was written): use another checkpoint of the run "
                          "(last.pt, last.prev.pt or best.pt in its checkpoints/), or train it again") from None
    except Exception as e:  # unpickling refused, truncated file, not a checkpoint at all
        reason = one_line(f"{type(e).__name__}: {e}", 200)
        raise TrainlabError(f"{path} is not a readable trainlab checkpoint ({reason})") from None
    if not isinstance(record, dict):
        raise TrainlabError(f"{path} is a torch file but not a trainlab checkpoint (it holds a "
                            f"{type(record).__name__}, not a checkpoint's record): give checkpoints/last.pt or "
                            "best.pt from a run folder")
    if record.get("format", FORMAT) > FORMAT:  # records before versions had none
        raise TrainlabError(f"{path} was written by a newer trainlab (checkpoint format {record['format']}, this one "
                            f"reads up to {FORMAT}): upgrade trainlab to read it")
    # a training checkpoint of this format (one with a position) holds all a resume reads; predict and evaluate
    # check what they read, an older format is refused by a resume by its format
    needed = CHECKPOINT_KEYS + RESUME_KEYS if "position" in record and record.get("format") == FORMAT else ()
    missing = [key for key in needed if key not in record]
    if missing:
        raise TrainlabError(f"{path} is not a complete trainlab checkpoint (it holds no {', '.join(missing)}): give "
                            "checkpoints/last.pt or best.pt from a run folder")
    return record


def load_latest(folder: Path) -> tuple:
    """The newest valid checkpoint in a run's checkpoints/ folder -> (state, path); (None, None) when there is none.
    A damaged newest one falls back to the one before, with a warning; with no valid one left, the run stops."""
    candidates = [p for p in (Path(folder) / LAST, Path(folder) / PREVIOUS) if p.exists()]
    if candidates and candidates[0].name == PREVIOUS:
        log.warning(f"warning: {Path(folder) / LAST} is missing; resuming from {candidates[0]}")
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

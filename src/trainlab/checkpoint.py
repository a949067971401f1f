"""Checkpoints: written atomically, read back with weights_only=True so a file can never run code."""
import os
from pathlib import Path

import torch

from trainlab.errors import TrainlabError


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` to a temporary file beside `path`, flush it to disk, then rename: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """-> the saved dict (model, optimizer, config, classes, ...), tensors on the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainlabError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # unpickling refused, truncated file, not a checkpoint at all
        reason = " ".join(str(e).split())[:200]
        raise TrainlabError(f"{path} is not a readable trainlab checkpoint ({reason})") from None

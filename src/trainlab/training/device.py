"""The device a run computes on, and the seeds that make it repeatable."""
import os
import random

import numpy as np
import torch

from trainlab.errors import TrainlabError


def resolve_device(name: str, job: int = 0, jobs_at_once: int = 1) -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; otherwise the named device, checked.

    With several jobs at once on one machine (a parallel launcher), job `job` takes GPU job % GPUs under 'auto', or,
    on the CPU, its 1/jobs_at_once share of the threads, so the jobs do not fight over the same cores.
    """
    if jobs_at_once > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs_at_once))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", job % torch.cuda.device_count() if jobs_at_once > 1 else 0)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainlabError(f"trainer.device '{name}' is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainlabError(f"trainer.device={name} but no GPU is visible: use trainer.device=auto or cpu")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    """Same seed, same device, same numbers: every generator a run draws from starts from `seed`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic  # benchmark mode picks kernels by timing: not repeatable

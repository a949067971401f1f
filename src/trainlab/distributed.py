"""Data-parallel training across processes started by `torchrun --nproc_per_node=N src/run.py ...`.

Each process trains a replica on its share of every batch; DistributedDataParallel averages the gradients, so N
processes on `data.batch_size` images a step follow the same path as one process on the whole batch. Epoch metrics are
summed across the processes; only the first (rank 0) logs, writes TensorBoard and checkpoints.
"""
import os
from dataclasses import dataclass

import torch

from trainlab.errors import TrainlabError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_name: str) -> tuple:
    """-> (Ranks, device). Under torchrun: join the process group (NCCL on GPUs, gloo on CPUs) and take the GPU of
    this process's local rank; otherwise one process, nothing to join."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), None
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    on_gpu = device_name != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", ranks.local_rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if on_gpu else "gloo")
    return ranks, device


def shard_size(batch_size: int, ranks: Ranks) -> int:
    """Each process's part of a batch of `batch_size` (the global batch: the same steps as one process)."""
    if batch_size % ranks.world:
        raise TrainlabError(f"data.batch_size={batch_size} does not split over {ranks.world} processes: "
                            f"use a multiple of {ranks.world}")
    return batch_size // ranks.world


def all_sum(*values: torch.Tensor) -> list:
    """The element-wise sum of each tensor over all processes (the tensors themselves when there is one)."""
    if not torch.distributed.is_initialized():
        return list(values)
    for value in values:
        torch.distributed.all_reduce(value)
    return list(values)


def any_process(flag: bool, device) -> bool:
    """True on every process when `flag` is true on one (so that all stop after the same step)."""
    if not torch.distributed.is_initialized():
        return flag
    value = torch.tensor(float(flag), device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def teardown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

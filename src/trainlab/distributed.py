"""Data-parallel training across processes: torchrun's (`torchrun --nproc_per_node=N src/run.py ...`, on one node or
several), or the tasks of one submitit job (Hydra's submitit launcher with hydra.launcher.tasks_per_node or nodes
above 1: each sweep point one run over all of them).

Each process trains a replica on its share of every batch; DistributedDataParallel averages the gradients, so N
processes on `data.batch_size` images a step follow the same path as one process on the whole batch. Epoch metrics are
summed across the processes; only the first (rank 0) logs, writes TensorBoard and checkpoints.
"""
import gc
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from trainlab.data.datasets import stream_seed
from trainlab.errors import TrainlabError
from trainlab.launch import submitit_tasks


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple:
        """(rank, processes), as the data path takes it (data/datasets.py every_nth)."""
        return self.rank, self.world


def setup(device_name: str) -> tuple:
    """-> (Ranks, device). Under torchrun or in a submitit job of several tasks: join the process group (NCCL on GPUs,
    gloo on CPUs) and take the GPU of this process's local rank; otherwise one process, nothing to join."""
    tasks = submitit_tasks()
    if tasks is not None:
        from submitit.helpers import TorchDistributedEnvironment

        # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (the job's first node) and MASTER_PORT (drawn from the job's id;
        # one the user set is kept: it is read first, and overwrite=True does not refuse it) as torchrun sets them.
        # Not CUDA_VISIBLE_DEVICES: narrowed to the local rank's number, it names the node's GPU of that number,
        # not the job's where SLURM gave the job others (4-7); gpu_index picks among the GPUs the task sees.
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), None
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.local_rank + 1))
    on_gpu = device_name != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", gpu_index(ranks.local_rank, local_world)) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and "OMP_NUM_THREADS" not in os.environ:
        # submitit's local tasks share this machine's cores, each would take them all (SLURM binds a task to its
        # cpus_per_task, torchrun sets OMP_NUM_THREADS=1)
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if on_gpu else "gloo")
    return ranks, device


def gpu_index(local_rank: int, local_world: int) -> int:
    """The GPU of the process of `local_rank` among the `local_world` on its node, by what it sees: its local rank's
    where each sees all the node's GPUs (torchrun, submitit's local tasks, SLURM by default), the only one where the
    launcher gave each its own (SLURM's --gpu-bind). Fewer GPUs than processes, but more than one, is refused: two
    processes of a run cannot share a GPU under NCCL."""
    seen = torch.cuda.device_count()
    if seen == 1:
        return 0
    if seen >= local_world:
        return local_rank
    raise TrainlabError(f"{local_world} processes on this node see {seen} GPUs: give each process a GPU of its own "
                        "(hydra.launcher.gpus_per_node equal to tasks_per_node, or torchrun --nproc_per_node=<GPUs>)")


def process_seed(seed: int, ranks: Ranks) -> int:
    """The seed of this process's own generators: the run's for the first (one process draws as before), a stream of
    its own for each other, so dropout masks differ between the processes' images as between one process's. The
    weights drawn from it differ too, but DistributedDataParallel gives every process the first's. Data augmentation
    draws from its own keyed streams (data/datasets.py)."""
    return stream_seed(seed, "process", ranks.rank) % 2 ** 32 if ranks.rank else seed  # numpy takes 32 bits


def check_one_run(run_dir: Path, position) -> None:
    """Every process writes into the first's run folder and goes on from the same checkpoint `position` (None: a new
    run). Under torchrun on several nodes, each node names a new run's folder from its own start time, and a node
    that cannot see the folder finds no checkpoint to resume: refused in one line on every process, naming the fix."""
    if not torch.distributed.is_initialized():
        return
    seen = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(seen, (str(run_dir), position))
    folders = sorted({folder for folder, _ in seen})
    if len(folders) > 1:
        named = ", ".join(folders[:2]) + (", ..." if len(folders) > 2 else "")
        raise TrainlabError(f"the processes of this run named {len(folders)} run folders ({named}): each node names a "
                            "new run's folder from its own start time; name one on a file system every node shares: "
                            "hydra.run.dir=<shared path>")
    if len({repr(p) for _, p in seen}) > 1:
        other = next(rank for rank, (_, p) in enumerate(seen) if repr(p) != repr(seen[0][1]))
        found = f"rank 0: {_position_text(seen[0][1])}, rank {other}: {_position_text(seen[other][1])}"
        raise TrainlabError(f"the processes found different checkpoints to resume in {folders[0]} ({found}): every "
                            "node must see the same run folder: put hydra.run.dir on a file system they all share")


def _position_text(position) -> str:
    return "none" if position is None else f"epoch {position['epoch']}, batch {position['batch']}"


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


def same_as_first(*tensors: torch.Tensor) -> None:
    """Overwrite each tensor with the first process's (nothing where there is one process)."""
    if torch.distributed.is_initialized():
        for tensor in tensors:
            torch.distributed.broadcast(tensor, 0)


def any_process(flag: bool, device) -> bool:
    """True on every process when `flag` is true on one (so that all stop after the same step)."""
    return bool(largest(int(flag), device))


def largest(value: int, device) -> int:
    """The largest of every process's `value` (the value itself when there is one process)."""
    if not torch.distributed.is_initialized():
        return value
    tensor = torch.tensor(float(value), device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return int(tensor.item())


def wait_for_all() -> None:
    """Return once every process has come here (at once where there is one process)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def teardown() -> None:
    """Leave the process group. The others see this process go: after a failure, only once it has logged why
    (cli.report_errors), so that the line they read from its log names the cause.

    What still holds the group goes first: a DistributedDataParallel kept by its reference cycles, or by the frames of
    the error on its way out. Freed only as the interpreter exits, after the group, it aborts the process ("terminate
    called without an active exception", exit -6): measured on gloo, about one run in 15."""
    if torch.distributed.is_initialized():
        error = sys.exc_info()[1]  # called from a `finally`: the error (a SystemExit after its line) going out
        while error is not None:
            traceback.clear_frames(error.__traceback__)  # their locals only: a traceback still prints
            error = error.__cause__ or error.__context__
        gc.collect()
        torch.distributed.destroy_process_group()

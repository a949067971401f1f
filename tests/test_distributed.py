"""Data-parallel runs: two CPU processes on the gloo backend, as torchrun starts them on two nodes or as two tasks of
one submitit job, follow the same path as one process on the same global batch, and write one run folder."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import QUICK, ROOT, free_port, needs_extra, preempting_env, run_cli, scalars
from trainlab.distributed import teardown
from trainlab.runs.checkpoint import load_checkpoint
from trainlab.runs.folder import read_metrics

pytestmark = pytest.mark.slow

RECIPE = ["data=shapes", "data.num_train=512", "data.num_test=128", "data.batch_size=64", "trainer.epochs=2",
          "optimizer=sgd", "optimizer.momentum=0.9", "trainer.device=cpu", "trainer.data_path=resident",
          *QUICK]  # Adam magnifies rounding; the DataLoader path's sharding: test_the_sampler_shards_each_batch; the
# resident path's shifts and flips: test_resident.py (with them, 16 steps here grow the sums' rounding to 2e-5)


def assert_same_path(checkpoint: dict, reference: dict) -> None:
    for key in reference["model"]:  # the same steps; only the order of floating-point sums differs
        assert torch.allclose(checkpoint["model"][key], reference["model"][key], atol=1e-5), key
    assert checkpoint["best"]["val"]["acc"] == pytest.approx(reference["best"]["val"]["acc"], abs=1 / 50)  # 50 images
    assert checkpoint["test"]["acc"] == pytest.approx(reference["test"]["acc"], abs=1 / 128)


def test_torchrun_on_two_nodes_and_a_preempted_submitit_job_of_two_tasks_each_follow_one_process(tmp_path):
    # two torchrun agents, as two nodes would start them, meeting through c10d on a free port
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # and only rank 0 talks to a tracker
    rendezvous = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
                  "--rdzv-id=two-nodes"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "src/run.py", *RECIPE,
                f"hydra.run.dir={tmp_path / 'ddp'}", "logger=[tensorboard,mlflow]",
                f"logger.mlflow.tracking_uri={store}"]
    # meanwhile, a job of two tasks on submitit's local executor, preempted at step 10 (epoch 2 of 2, batch 2 of 8)
    sweep = tmp_path / "sweep"
    threads = {**os.environ, "OMP_NUM_THREADS": "1"}  # as many in each process: the same sums, the same bits
    env = {**threads, **preempting_env(tmp_path / "site", step=10), "MASTER_PORT": str(free_port())}  # kept
    submitit = [sys.executable, "src/run.py", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                "hydra.launcher.timeout_min=5", *RECIPE, "trainer.log_every_n_steps=2", f"hydra.sweep.dir={sweep}"]
    logs = [tmp_path / name for name in ("node0.out", "node1.out", "submitit.out")]  # files: no pipe fills up
    processes = []
    for command, log, environment in zip([torchrun, torchrun, submitit], logs, [threads, threads, env]):
        with log.open("w") as out:
            processes.append(subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=environment))
    try:
        one = run_cli(*RECIPE, f"hydra.run.dir={tmp_path / 'one'}")  # and one process, the reference
        codes = [process.wait(timeout=240) for process in processes]
    finally:  # none left running after a failure
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert one.returncode == 0, one.stdout + one.stderr
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], "\n".join(outputs)
    reference = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")

    assert "".join(outputs[:2]).count("best val acc") == 1  # only rank 0 speaks
    client = needs_extra("mlflow.tracking", "mlflow").MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("trainlab").experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert run.info.status == "FINISHED" and sorted(steps) == [8, 16]  # 2 epochs of 8 global batches, once each
    two_nodes = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert_same_path(two_nodes, reference)

    [job] = [p for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit"]  # one run for the sweep point
    text = (job / "run.log").read_text()
    assert text.count("Requeued job") == 1 and text.count("best val acc") == 1, text
    assert f"resuming {job} at epoch 2, batch 2" in text  # step 10: its checkpoint, written once the signal came
    tasks = sorted(sweep.glob(".submitit/*/*_log.out"))
    assert len(tasks) == 2 and "Requeued job" not in tasks[1].read_text()  # requeued by task 0
    assert "epoch 1/2" not in tasks[1].read_text()  # task 1 logs nothing of the run
    assert len(list(job.glob("events.out.tfevents.*"))) == 2  # one writer an attempt: task 0's
    assert [row["epoch"] for row in read_metrics(job)] == [1, 2, "test"]
    steps = [step for step, _ in scalars(job)["train/loss"]]
    assert steps == sorted(set(steps)) and 10 in steps  # none twice: logged after the checkpoint, dropped on resume
    preempted = load_checkpoint(job / "checkpoints" / "last.pt")
    assert_same_path(preempted, reference)
    # the same shards and sums as the uninterrupted two processes: the preempted run resumed exactly
    assert all(torch.equal(preempted["model"][key], two_nodes["model"][key]) for key in two_nodes["model"])


FAILING_TASK_SITE = """
import os
if os.environ.get("SUBMITIT_LOCAL_GLOBALID") == "1":  # task 1 of the job fails at its third step
    from trainlab.training.step import TrainStep

    update, calls = TrainStep.update, []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory (a test's)")
        return update(self, *args, **kwargs)
    TrainStep.update = failing
"""


def test_a_task_that_fails_ends_its_job_at_once_and_the_first_task_names_its_error(tmp_path):
    """The other task's collective fails when the failing one leaves (gloo); it leaves only after logging its line,
    which the first task reads from the job's logs into error.log and the sweep's report, not a gloo message."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAILING_TASK_SITE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT / "src")])}
    sweep = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "src/run.py", "-m", "hydra/launcher=submitit_local",
                             "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5", *RECIPE,
                             f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 1, result.stdout + result.stderr
    [job] = [p for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit"]
    [task1] = sweep.glob(".submitit/*/*_1_log.out")
    cause = "task 1 of this job stopped first (RuntimeError: CUDA out of memory (a test's); "
    assert (job / "error.log").read_text().startswith(f"error: {cause}{task1}), so this one (rank 0) stops too\n")
    assert f"error: {cause}" in result.stderr + result.stdout  # the sweep's list of failed jobs
    assert "error: RuntimeError: CUDA out of memory (a test's)" in task1.read_text()
    assert "Traceback" not in task1.read_text() + task1.with_suffix(".err").read_text()


def test_a_launchers_signal_is_handed_on_after_the_checkpoint_and_no_other_is():
    from trainlab.training.stop import LAUNCHER_SIGNAL, SIGNAL, StopPolicy

    handed = []
    launchers = signal.signal(signal.SIGUSR2, lambda number, frame: handed.append(number))  # as submitit's handler
    try:
        with StopPolicy() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.after_step() == LAUNCHER_SIGNAL and handed == []  # the loop checkpoints first
            stop.pass_to_launcher(LAUNCHER_SIGNAL)
        with StopPolicy() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.after_step() == SIGNAL
            stop.pass_to_launcher(SIGNAL)
    finally:
        signal.signal(signal.SIGUSR2, launchers)
    assert handed == [signal.SIGUSR2]


def test_processes_in_different_run_folders_or_checkpoints_are_refused_in_one_line(monkeypatch):
    from trainlab import distributed
    from trainlab.errors import TrainlabError

    def gathered(*seen):  # what every process of a run of len(seen) says, as all_gather_object collects it
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: len(seen))
        monkeypatch.setattr(torch.distributed, "all_gather_object",
                            lambda out, mine: out.__setitem__(slice(None), seen))

    gathered(("outputs/runs/a", None), ("outputs/runs/a", None))
    distributed.check_one_run(Path("outputs/runs/a"), None)  # one folder, one start: nothing to say
    gathered(("outputs/runs/10-00-00", None), ("outputs/runs/10-00-01", None))  # two nodes' start times
    with pytest.raises(TrainlabError, match=r"named 2 run folders .*: hydra\.run\.dir=<shared path>$"):
        distributed.check_one_run(Path("outputs/runs/10-00-00"), None)
    gathered(("/shared/run", {"epoch": 2, "batch": 3}), ("/shared/run", None))  # a node that does not see the folder
    with pytest.raises(TrainlabError, match=r"\(rank 0: epoch 2, batch 3, rank 1: none\): every node must see"):
        distributed.check_one_run(Path("/shared/run"), {"epoch": 2, "batch": 3})


def test_the_sampler_shards_each_batch_between_the_processes():
    from trainlab.data.datasets import EpochSampler

    whole = list(EpochSampler(100, 8, True, False, seed=3))
    parts = [list(EpochSampler(100, 8, True, False, seed=3, shard=(rank, 2))) for rank in range(2)]
    for batch in range(13):  # each process's batch of 4 is its half of the global batch of 8
        merged = parts[0][batch * 4:(batch + 1) * 4] + parts[1][batch * 4:(batch + 1) * 4]
        assert sorted(merged) == sorted(whole[batch * 8:(batch + 1) * 8])


def in_two_processes(target, *args) -> list:
    """`target(rank, port, *args)` in two new interpreters (spawned: no state of this one), meeting on a free port
    -> their exit codes."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=target, args=(rank, port, *args)) for port in [free_port()] for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    return [process.exitcode for process in processes]


def _draw_save_draw_restore(rank: int, port: int, out: str, device: str) -> None:
    """One process of two: its own random stream (as its dropout masks are), the checkpoint's part made by both,
    more draws, then the part restored as a resumed process restores it: the draws after the checkpoint again."""
    from trainlab.runs.checkpoint import Generators

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)  # gloo: both may share one GPU
    torch.manual_seed(100 + rank)
    record = [Generators().state_dict()]  # made by both; the first's is written, and every process reads that one
    torch.distributed.broadcast_object_list(record, src=0)
    state = record[0]
    after = torch.rand(4, device=device)
    torch.rand(7, device=device)  # the run goes on, then is stopped
    Generators().load_state_dict(state)
    torch.save({"after": after.cpu(), "again": torch.rand(4, device=device).cpu(), "kept": len(state["ranks"])},
               f"{out}.{rank}")
    teardown()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the GPU's generators need a GPU; run where one is lent"))])
def test_a_checkpoint_keeps_every_processes_random_generators_and_each_resumes_its_own(tmp_path, device):
    assert in_two_processes(_draw_save_draw_restore, str(tmp_path / "drawn"), device) == [0, 0]
    drawn = [torch.load(tmp_path / f"drawn.{rank}") for rank in range(2)]
    for rank in range(2):  # each process draws again what it drew after the checkpoint: its own stream, not the first's
        assert drawn[rank]["kept"] == 2 and torch.equal(drawn[rank]["again"], drawn[rank]["after"])
    assert not torch.equal(drawn[0]["after"], drawn[1]["after"])


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)  # the same start in every process and in the reference
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5))


def _global_batches(device) -> list:
    """12 global batches of 16 (the last one short: 12), the same in every process."""
    generator = torch.Generator().manual_seed(1)
    sizes = [16] * 11 + [12]
    return [(torch.rand(n, 3, 8, 8, generator=generator).to(device),
             torch.randint(0, 5, (n,), generator=generator).to(device)) for n in sizes]


def _steps(step, batches, optimizer, take, graph_like) -> None:
    """The 12 steps, the rate lowered after the 7th; `take` cuts a process's part out of each global batch;
    `graph_like` runs a step the way a CUDA graph step of several processes does (None: the plain step)."""
    for i, (images, targets) in enumerate(batches):
        if i == 7:
            for group in optimizer.param_groups:
                group["lr"] = 0.01
        mine = take(images), take(targets)
        (graph_like or step)(*mine)


def _fitted_whitening(device, shard=(0, 1)) -> torch.Tensor:
    """A whitening block fitted on the first 27 images of an epoch of 40 in batches of 8, as the process of `shard`
    (rank, processes) sees them: every processes-th image of each batch, from its rank's."""
    from trainlab.distributed import Ranks
    from trainlab.models.whitening import Whiten, fit_whitening

    rank, processes = shard
    images = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(2)).to(device)
    block = Whiten(3, 2).to(device)
    fit_whitening(torch.nn.Sequential(block), [(images[i:i + 8][rank::processes], None) for i in range(0, 40, 8)],
                  images=27, ranks=Ranks(rank, processes))  # shares of 14 and 13 images
    return block.weight.detach().cpu()


def _data_parallel_steps(rank: int, port: int, out: str, on_gpu: bool) -> None:
    """One of two processes (gloo, which also sums CUDA tensors, so both can share one GPU): on a GPU, the CUDA graph
    step of a data-parallel run; on a CPU, every third step the graphs' split step run eagerly (the gradients through
    the plain module, SummedGradients, the update) between DistributedDataParallel's own steps."""
    from trainlab.training.numerics import Numerics
    from trainlab.training.step import CudaGraphStep, SummedGradients, TrainStep

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    device = torch.device("cuda" if on_gpu else "cpu")
    model = _tiny_net().to(device)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0] if on_gpu else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = TrainStep(net, torch.nn.CrossEntropyLoss(), optimizer, Numerics(device))
    calls = []

    def split(images, targets):
        calls.append(len(calls))
        if len(calls) % 3:
            return step(images, targets)  # DDP's step
        optimizer.zero_grad(set_to_none=True)
        step.gradients(model, images, targets)  # its hooks see a backward they did not prepare for: they let it be
        summed = SummedGradients(step.params, 2)
        summed.sum()
        summed.unpack()
        step.apply()

    graph_like = CudaGraphStep(step, (8, 3, 8, 8), processes=2) if on_gpu else split
    _steps(step, _global_batches(device), optimizer, lambda t: t.chunk(2)[rank], graph_like)
    recorded = on_gpu and graph_like.update_graph is not None
    whitening = _fitted_whitening(device, shard=(rank, 2))
    torch.save({"params": {k: v.cpu() for k, v in model.named_parameters()}, "recorded": recorded,
                "whitening": whitening}, f"{out}.{rank}")
    teardown()


@pytest.mark.parametrize("on_gpu", [False, pytest.param(True, marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="a CUDA graph needs a GPU; run where one is lent"))])
def test_the_cuda_graph_step_and_the_whitening_fit_of_two_processes_follow_one_process_on_the_whole_batch(tmp_path, on_gpu):
    from trainlab.training.numerics import Numerics
    from trainlab.training.step import TrainStep

    assert in_two_processes(_data_parallel_steps, str(tmp_path / "steps"), on_gpu) == [0, 0]
    device = torch.device("cuda" if on_gpu else "cpu")
    model = _tiny_net().to(device)  # the reference: one process, the whole batch, plain steps
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = TrainStep(model, torch.nn.CrossEntropyLoss(), optimizer, Numerics(device))
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    _steps(step, _global_batches(device), optimizer, lambda t: t, None)
    done = [torch.load(tmp_path / f"steps.{rank}") for rank in range(2)]
    assert all(part["recorded"] == on_gpu for part in done)  # on a GPU: the two graphs were recorded and replayed
    one = _fitted_whitening(device)  # and the whitening both fit from their shares is the one fitted on all 27 images
    assert torch.equal(done[0]["whitening"], done[1]["whitening"])  # the first's, to the bit
    assert torch.allclose(done[0]["whitening"], one, atol=1e-3)  # eigenvectors of sums taken in another order
    for name, value in model.named_parameters():
        assert (value - start[name]).abs().max() > 1e-3, name  # the steps moved the weights
        for part in done:  # both processes end where one process ends, up to the order of the sums
            assert torch.allclose(part["params"][name], value.detach().cpu(), atol=1e-5), name


def test_each_process_draws_from_a_seed_of_its_own_that_every_generator_takes():
    from trainlab.distributed import Ranks, process_seed
    from trainlab.training.device import seed_everything

    seeds = [process_seed(2 ** 32 - 1, Ranks(rank, 4)) for rank in range(4)]
    assert seeds[0] == 2 ** 32 - 1 and len(set(seeds)) == 4  # the first keeps the run's: one process draws as before
    for seed in seeds:
        seed_everything(seed, deterministic=True)  # numpy's generator takes 32 bits


def test_only_a_collective_that_lost_a_process_is_reported_as_another_process_stopping(monkeypatch):
    from trainlab.cli import peer_lost

    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:439")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert peer_lost(gloo)
    assert not peer_lost(ConnectionResetError(104, "Connection reset by peer"))  # a tracker's server, say
    assert not peer_lost(BrokenPipeError(32, "Broken pipe"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not peer_lost(gloo)  # one process: no other to blame


def _scoring_net() -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights in every process and in the reference
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10))
    net[1].running_mean.uniform_(-1, 1)  # statistics of some training, the first process's
    return net


def _scores(rank: int, processes: int) -> dict:
    """Validation and test scores of _scoring_net on a shapes split (10 validation and 37 test images: shares of 5 and 5, 19 and 18), on both
    data paths, as the process `rank` of `processes` scores them; with the images its own forward passes took."""
    from conftest import compose
    from trainlab.data.build import build_run_data
    from trainlab.data.transforms import check_transforms
    from trainlab.distributed import Ranks
    from trainlab.training.evaluator import Evaluator
    from trainlab.training.numerics import Numerics

    cfg = compose("data=shapes", "data.num_train=90", "data.num_test=37", "data.eval_batch_size=8")
    model, scored = _scoring_net(), []
    model.register_forward_hook(lambda module, args, out: scored.append(len(out)))
    if rank:
        model[1].running_mean.zero_()  # a process's own statistics, which the first's replace before scoring
    net = torch.nn.parallel.DistributedDataParallel(model) if processes > 1 else model
    evaluator = Evaluator(net, Numerics(torch.device("cpu")), torch.nn.CrossEntropyLoss())
    figures = {}
    for path in ("resident", "loader"):
        _, loaders, _ = build_run_data(cfg.data, check_transforms(cfg.transform), torch.device("cpu"),
                                       Ranks(rank, processes), path)
        for split in ("val", "test"):
            scored.clear()
            scores = evaluator.score(getattr(loaders, split))
            figures[path, split] = (scores.loss, scores.acc, scores.images, sum(scored))
    return figures


def _sharded_scores(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.save(_scores(rank, 2), f"{out}.{rank}")
    teardown()  # trainlab's: a DistributedDataParallel still alive when the group goes aborts the exit


def test_two_processes_each_score_half_of_a_split_and_both_get_the_whole_splits_figures(tmp_path):
    assert in_two_processes(_sharded_scores, str(tmp_path / "scores")) == [0, 0]
    shares = [torch.load(tmp_path / f"scores.{rank}") for rank in range(2)]
    whole = _scores(0, 1)
    for key, (loss, acc, images, forward) in whole.items():
        assert images == forward and images in (10, 37)  # shapes holds out one image a class
        for share in shares:  # the sum of both shares, in each process, scored with the first one's statistics
            assert share[key][:3] == (pytest.approx(loss, rel=1e-6), acc, images), key
        assert [share[key][3] for share in shares] == [(images + 1) // 2, images // 2], key  # each its half

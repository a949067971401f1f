"""Search and scale: named experiments, the Optuna search, and Hydra's parallel and submitit launchers."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import QUICK, ROOT, compose, job_dir, run_cli
from trainlab.runs.checkpoint import load_checkpoint
from trainlab.training.recipe import run

pytestmark = pytest.mark.slow

TINY = ["data=shapes", "data.num_train=200", "data.num_test=50", "trainer.epochs=1", *QUICK]


def test_experiment_tutorial_is_the_tutorials_exact_recipe():
    cfg = compose("experiment=tutorial")
    assert (cfg.data.name, cfg.model.name, cfg.optimizer._target_) == ("cifar10", "tudui", "torch.optim.SGD")
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.data.batch_size, cfg.trainer.epochs) == (0.01, 0.0, 64, 10)
    assert [step["type"] for step in cfg.transform.train] == ["to_tensor"] and "_target_" not in cfg.scheduler


def test_parallel_jobs_each_take_their_share_of_the_cpu(tmp_path):
    result = run_cli("-m", "hydra/launcher=parallel", *TINY, "optimizer=sgd,adam", f"hydra.sweep.dir={tmp_path}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "cannot start" not in output  # the workers decode in their own process: no warning for what was not asked
    assert f"sweep: 2 jobs in {tmp_path}; compare them: python src/report.py {tmp_path}" in output
    threads = max(1, (os.cpu_count() or 1) // 2)
    for job in (0, 1):
        assert (job_dir(tmp_path, job) / "checkpoints" / "last.pt").exists()
        assert f"({threads} threads: job {job}, 2 at once)" in (job_dir(tmp_path, job) / "run.log").read_text()


def test_submitit_local_executor_runs_the_sweep(tmp_path):
    env = {"PYTHONPATH": str(ROOT / "src")}  # the executor's fresh processes import trainlab as installed code would
    result = run_cli("-m", "hydra/launcher=submitit_local", *TINY, "optimizer=sgd,adam", "hydra.launcher.timeout_min=5",
                     f"hydra.sweep.dir={tmp_path}", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    for job in ("0_optimizer-sgd", "1_optimizer-adam"):  # the job process names its folder as the sweep's would
        assert "best val acc" in (tmp_path / job / "run.log").read_text()
        assert torch.is_tensor(load_checkpoint(tmp_path / job / "checkpoints" / "last.pt")["model"]["0.weight"])


def test_a_preempted_submitit_job_checkpoints_is_requeued_and_resumes_exactly(tmp_path):
    recipe = ["data=shapes", "data.num_train=1600", "data.num_test=64", "model=mlp", "transform=augment",
              "trainer.epochs=5", "trainer.checkpoint_every_n_steps=0", *QUICK]
    sweep = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, "src/run.py", "-m", "hydra/launcher=submitit_local", *recipe, "hydra.launcher.timeout_min=5",
         f"hydra.sweep.dir={sweep}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    log, deadline = sweep / "0" / "run.log", time.time() + 120
    while not (log.exists() and "epoch 1/5" in log.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    jobs = [pid for pid, line in _processes() if "submitit.core._submit" in line and str(sweep) in line]
    assert jobs, "the submitit job process was not found"
    for pid in jobs:
        os.kill(pid, signal.SIGUSR2)  # what SLURM sends (through submitit) before preempting a job
    output = process.communicate(timeout=240)[0]
    assert process.returncode == 0, output
    text = log.read_text()
    assert "Requeued job" in text and "resuming" in text and "epoch 5/5" in text
    run(compose(*recipe), tmp_path / "reference")
    expected = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")["model"]
    got = load_checkpoint(sweep / "0" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def _processes():
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue

"""Search and scale: named experiments, the Optuna search, and Hydra's parallel and submitit launchers."""
import os

import pytest
import torch

from conftest import QUICK, ROOT, assert_one_clear_line, compose, job_dir, run_cli
from trainlab.runs.checkpoint import load_checkpoint

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


def test_a_batch_that_does_not_split_over_a_jobs_tasks_is_refused_before_any_job_is_queued(tmp_path):
    result = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", *TINY,
                     "data.batch_size=64,63", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert_one_clear_line(result, "data.batch_size=63", "tasks_per_node=2", "use a multiple of 2")
    assert not (tmp_path / "sweep").exists()

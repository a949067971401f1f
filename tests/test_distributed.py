"""torchrun: two CPU processes on the gloo backend follow the same path as one process on the same global batch."""
import subprocess
import sys

import pytest
import torch

from conftest import QUICK, ROOT, needs_extra, run_cli
from trainlab.runs.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

RECIPE = ["data=shapes", "data.num_train=512", "data.num_test=128", "data.batch_size=64", "trainer.epochs=2",
          "optimizer=sgd", "optimizer.momentum=0.9", "trainer.device=cpu", *QUICK]  # Adam magnifies rounding


@pytest.mark.parametrize("path", ["resident"])  # the DataLoader path's sharding: test_the_sampler_shards_each_batch
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # and only rank 0 talks to a tracker
    both = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "src/run.py",
                           *RECIPE, f"trainer.data_path={path}", f"hydra.run.dir={tmp_path / 'ddp'}",
                           "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={store}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert both.returncode == 0, both.stdout + both.stderr
    assert both.stdout.count("best val acc") == 1  # only rank 0 speaks
    client = needs_extra("mlflow.tracking", "mlflow").MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("trainlab").experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert run.info.status == "FINISHED" and sorted(steps) == [8, 16]  # 2 epochs of 8 global batches, once each
    one = run_cli(*RECIPE, f"trainer.data_path={path}", f"hydra.run.dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stdout + one.stderr
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("ddp", "one"))
    for key in a["model"]:  # the same steps; only the order of floating-point sums differs
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5), key
    assert a["best"]["val"]["acc"] == pytest.approx(b["best"]["val"]["acc"], abs=1 / 50)  # 50 validation images
    assert a["test"]["acc"] == pytest.approx(b["test"]["acc"], abs=1 / 128)


def test_the_sampler_shards_each_batch_between_the_processes():
    from trainlab.data.datasets import EpochSampler

    whole = list(EpochSampler(100, 8, True, False, seed=3))
    parts = [list(EpochSampler(100, 8, True, False, seed=3, shard=(rank, 2))) for rank in range(2)]
    for batch in range(13):  # each process's batch of 4 is its half of the global batch of 8
        merged = parts[0][batch * 4:(batch + 1) * 4] + parts[1][batch * 4:(batch + 1) * 4]
        assert sorted(merged) == sorted(whole[batch * 8:(batch + 1) * 8])

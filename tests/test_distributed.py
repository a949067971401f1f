"""torchrun: two CPU processes on the gloo backend follow the same path as one process on the same global batch."""
import subprocess
import sys

import pytest
import torch

from conftest import QUICK, ROOT, run_cli
from trainlab.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

RECIPE = ["data=shapes", "data.num_train=512", "data.num_test=128", "data.batch_size=64", "trainer.epochs=2",
          "optimizer=sgd", "optimizer.momentum=0.9", "trainer.device=cpu", *QUICK]  # Adam magnifies rounding


@pytest.mark.parametrize("path", ["resident", "loader"])
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, path):
    both = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "src/run.py",
                           *RECIPE, f"trainer.data_path={path}", f"hydra.run.dir={tmp_path / 'ddp'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert both.returncode == 0, both.stdout + both.stderr
    assert both.stdout.count("best test acc") == 1  # only rank 0 speaks
    one = run_cli(*RECIPE, f"trainer.data_path={path}", f"hydra.run.dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stdout + one.stderr
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("ddp", "one"))
    for key in a["model"]:  # the same steps; only the order of floating-point sums differs
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5), key
    assert a["best_acc"] == pytest.approx(b["best_acc"], abs=1 / 128)

"""A careful user's worst day: Ctrl-C at any moment, a file where the run folder should be, a full disk. Each is one
line naming what to do, and nothing written before is lost."""
import os
import signal
import subprocess
import sys

import pytest

from conftest import QUICK, ROOT, compose, run_cli, run_signalled, scalars
from trainlab.runs.checkpoint import load_checkpoint
from trainlab.runs.folder import read_metrics
from trainlab.training.recipe import run

TINY = ["data=shapes", "data.num_train=200", "data.num_test=50", "model=mlp", *QUICK, "trainer.log_images=false"]

# `python src/run.py ARGS`, with Ctrl-C pressed while the data is being built: start-up, before the loop's handler.
CTRL_C_AT_START_UP = """
import os, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal; see the test
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
import trainlab.training.recipe as train
build = train.build_run_data
def pressed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return build(*args, **kwargs)
train.build_run_data = pressed
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_ctrl_c_during_start_up_is_one_line_and_leaves_no_folder(tmp_path):
    # Python leaves SIGINT ignored where its parent ignored it, as a shell does for a job it starts in the background
    # (`python -m pytest &`): the run would never see this Ctrl-C. The script sets the terminal's handler first.
    result = subprocess.run([sys.executable, "-c", CTRL_C_AT_START_UP, "src/run.py", *TINY,
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 130 and "Traceback" not in output, output
    assert output.strip().splitlines()[-1] == "stopped by Ctrl-C before the run wrote a checkpoint: nothing to resume"
    assert not (tmp_path / "run").exists()


def test_a_second_ctrl_c_stops_at_once_in_one_line_naming_the_command_that_resumes(tmp_path):
    result = run_signalled(signal.SIGINT, 5, *TINY, "trainer.epochs=2", "trainer.checkpoint_every_n_steps=2",
                           "trainer.log_every_n_steps=1", f"hydra.run.dir={tmp_path}", times=2)
    output = result.stdout + result.stderr
    assert result.returncode == 130 and "Traceback" not in output, output
    assert output.strip().splitlines()[-1] == ("stopped at once by Ctrl-C; the last checkpoint is intact; to resume: "
                                               f"python src/run.py trainer.resume={tmp_path}")
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["position"] == {"epoch": 2, "batch": 1}  # step 4


def test_a_file_where_the_run_folder_should_be_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    result = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'taken' / 'run'}")
    assert (result.returncode, (result.stdout + result.stderr).strip()) == (2, (
        f"error: {tmp_path / 'taken'} is a file where a folder is needed (for {tmp_path / 'taken' / 'run'}): move it "
        "away, or choose another folder (hydra.run.dir=...)"))


def mounted(folder, options: str):
    """A small tmpfs at `folder` (mount options `options`), or a skip where this user cannot mount one."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({done.stderr.decode().strip()}): it takes root")
    return folder


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1.6 MB file system: room for a run's first checkpoints (last.pt and best.pt, 0.6 MB each), not a third."""
    yield mounted(tmp_path / "disk", "size=1600k")
    subprocess.run(["umount", str(tmp_path / "disk")], check=True)


def test_a_run_folder_on_a_read_only_disk_is_one_line(tmp_path):
    read_only = mounted(tmp_path / "ro", "size=100k,ro")
    try:
        result = run_cli(*TINY, f"hydra.run.dir={read_only / 'run'}")
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    assert (result.returncode, (result.stdout + result.stderr).strip()) == (2, (
        f"error: read-only file system: {read_only / 'run'}; choose a folder you can write (hydra.run.dir=...)"))


def test_a_full_disk_is_one_line_and_the_run_goes_on_once_there_is_room(tiny_disk):
    settings = ["data=shapes", "data.num_train=200", "data.num_test=50", *QUICK, "trainer.log_images=false",
                "trainer.epochs=3", f"hydra.run.dir={tiny_disk / 'run'}"]  # tudui: 0.6 MB a checkpoint
    full = run_cli(*settings)
    output = full.stdout + full.stderr
    assert full.returncode == 2 and "Traceback" not in output, output
    line = output.strip().splitlines()[-1]
    assert line.startswith(f"error: the disk is full: writing {tiny_disk / 'run' / 'checkpoints'}/") and \
        "a checkpoint here takes 0.6 MB; free some space, then run the same command again" in line, line
    assert load_checkpoint(tiny_disk / "run" / "checkpoints" / "last.pt")["position"] == {"epoch": 2, "batch": 0}
    assert not list((tiny_disk / "run" / "checkpoints").glob("*.tmp"))  # no half-written file left taking room

    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_disk)], check=True)
    again = run_cli(*settings)
    assert again.returncode == 0 and "resuming" in again.stdout and "epoch 3/3" in again.stdout, again.stdout


def test_a_kill_after_the_test_score_is_logged_leaves_one_test_point_once_resumed(tmp_path, monkeypatch):
    from trainlab.runs.tensorboard import RunWriter

    scalars_of = RunWriter.scalars

    def die_after_the_test_score(self, values, step):  # logged and on disk, not yet in a checkpoint
        scalars_of(self, values, step)
        if "test/acc" in values:
            self.flush()
            raise SystemExit("killed")
    monkeypatch.setattr(RunWriter, "scalars", die_after_the_test_score)
    with pytest.raises(SystemExit):
        run(compose(*TINY, "trainer.epochs=1"), tmp_path)
    monkeypatch.undo()
    run(compose(*TINY, "trainer.epochs=1"), tmp_path)  # resumed: the test is scored again, and logged once
    assert len(scalars(tmp_path)["test/acc"]) == 1
    assert [row["epoch"] for row in read_metrics(tmp_path)] == [1, "test"]


def test_an_epoch_resumed_part_way_reports_the_learning_rate_it_began_at(tmp_path, monkeypatch):
    # onecycle steps the learning rate every batch: the resumed epoch's line and row give the rate at its start
    from trainlab.errors import Interrupted
    from trainlab.runs.tensorboard import RunWriter

    settings = [*TINY, "scheduler=onecycle", "trainer.epochs=2"]
    run(compose(*settings), tmp_path / "whole")
    scalars_of = RunWriter.scalars

    def stop_at_step_5(self, values, step):  # SIGTERM, in this process: checkpointed mid-epoch 2, then stopped
        scalars_of(self, values, step)
        if "train/loss" in values and step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(RunWriter, "scalars", stop_at_step_5)
    with pytest.raises(Interrupted, match="at epoch 2, batch 2"):
        run(compose(*settings, "trainer.log_every_n_steps=1"), tmp_path / "stopped")
    monkeypatch.undo()
    run(compose(*settings, "trainer.log_every_n_steps=1"), tmp_path / "stopped")
    assert [row["lr"] for row in read_metrics(tmp_path / "stopped")] == \
        [row["lr"] for row in read_metrics(tmp_path / "whole")]


def test_a_second_run_into_a_folder_another_run_is_writing_is_refused_and_leaves_it_alone(tmp_path):
    hold = (f"import time; from trainlab.runs.folder import RunFolderLock; RunFolderLock({str(tmp_path)!r}).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- the first run's\n")
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli(*TINY, "trainer.epochs=1", f"hydra.run.dir={tmp_path}")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip().splitlines()[-1] == (
        f"error: another run (pid {holder.pid}) is writing into {tmp_path}: wait for it to end or stop it, or give "
        "this run a folder of its own (hydra.run.dir=...)")
    assert not (tmp_path / "error.log").exists() and not (tmp_path / "checkpoints").exists()
    assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == "- the first run's\n"  # Hydra wrote nothing there

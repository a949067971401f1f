"""Runs survive being killed: exact resume, signals, damaged checkpoints, non-finite losses."""
import logging
import re
import shlex
import signal

import pytest
import torch

from conftest import QUICK, ROOT, compose, run_cli, run_signalled, scalars
from trainlab.runs.checkpoint import load_checkpoint
from trainlab.errors import TrainlabError
from trainlab.launch import Launch
from trainlab.runs.folder import read_metrics
from trainlab.training.recipe import run

pytestmark = pytest.mark.slow

# Dropout and random crops and flips: the randomness a resumed run must replay.
RECIPE = ["data=shapes", "data.num_train=480", "data.num_test=64", "data.batch_size=32", "model=mlp",
          "transform=augment", "optimizer=adam", "trainer.epochs=6", "trainer.checkpoint_every_n_steps=3",
          "trainer.log_every_n_steps=1", *QUICK, "trainer.log_images=false"]
PER_EPOCH = -(-(480 - 50) // 32)  # batches of an epoch: data.val_split holds out 50 of the 480 (5 a class)
STEPS = 6 * PER_EPOCH


def final_weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same recipe, never interrupted, per data path."""
    made = {}

    def get(*extra):
        if extra not in made:
            run_dir = tmp_path_factory.mktemp("reference")
            run(compose(*RECIPE, *extra), run_dir)
            made[extra] = final_weights(run_dir)
        return made[extra]
    return get


MID_EPOCH, EPOCH_END = PER_EPOCH + 6, 3 * PER_EPOCH  # 2 steps past a checkpoint; an epoch's last step, before
# its end-of-epoch checkpoint
MID_WINDOW = PER_EPOCH + 2  # the last checkpoint before it, at step 15, is epoch 2's first batch


@pytest.mark.parametrize("extra,kill_at", [(("trainer.data_path=resident",), MID_EPOCH),
                                           (("trainer.data_path=loader",), MID_EPOCH),
                                           (("trainer.data_path=loader", "data.num_workers=2"), MID_EPOCH),
                                           (("trainer.data_path=resident",), EPOCH_END),
                                           # killed mid warm-up (30 steps), in front of a per-step schedule
                                           # an average of the weights kept beside them (trainer.average=ema),
                                           # and updates from 4 batches each: killed mid-window, its checkpoint
                                           # at epoch 2's first batch (MID_WINDOW)
                                           (("scheduler=onecycle", "scheduler.warmup_steps=30",
                                             "trainer.clip_grad_norm=0.5", "trainer.average=ema",
                                             "trainer.average_every=4", "trainer.average_ramp=3",
                                             "trainer.accumulate_grad_batches=4"), MID_WINDOW)])
def test_killed_then_rerun_ends_bit_for_bit_like_an_uninterrupted_run(tmp_path, reference, extra, kill_at):
    # The run kills itself there (conftest.SIGNAL_AT_STEP). Killed from this process instead, after seeing a
    # checkpoint, it could run to its end first on a loaded machine (1 suite in 8, in the 2-worker case).
    killed = run_signalled(signal.SIGKILL, kill_at, *RECIPE, *extra, f"hydra.run.dir={tmp_path}")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    result = run_cli(*RECIPE, *extra, f"hydra.run.dir={tmp_path}")  # the same command, the same folder
    # both runs' log (run.log is appended to), for a failure to be read from CI's output alone
    story = f"run.log:\n{(tmp_path / 'run.log').read_text()}\nrerun's output:\n{result.stdout}{result.stderr}"
    assert result.returncode == 0, story
    assert "resuming" in result.stdout and "nothing to do" not in result.stdout, story
    expected, got = reference(*extra), final_weights(tmp_path)
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differ, f"weights differ from the uninterrupted run's: {differ}\n{story}"
    steps = [s for s, _ in scalars(tmp_path)["train/loss"]]
    assert steps == list(range(1, STEPS + 1)), f"logged steps {steps}\n{story}"  # none missing, none twice
    rows = [row["epoch"] for row in read_metrics(tmp_path)]
    assert rows == [*range(1, 7), "test"], f"metrics.csv rows {rows}\n{story}"  # each epoch once


def test_a_stop_prints_the_command_that_resumes_it_in_its_own_folder(tmp_path, reference):
    # As a user: a run in outputs/runs/<time> is stopped, and the command its last line prints is pasted. One folder
    # in the end, and the weights of a run never stopped.
    short = ("trainer.epochs=2", "trainer.checkpoint_every_n_steps=0")  # the recipe, cut to two epochs
    settings = [*RECIPE, *short]
    stopped = run_signalled(signal.SIGTERM, PER_EPOCH + 2, *settings, cwd=tmp_path)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 75, output
    assert "Traceback" not in output
    [folder] = (tmp_path / "outputs" / "runs").iterdir()
    assert f"stopped by SIGTERM at epoch 2, batch 2; checkpoint written; to resume: python {ROOT / 'src' / 'run.py'} " \
           f"trainer.resume=outputs/runs/{folder.name}" in output, output
    assert load_checkpoint(folder / "checkpoints" / "last.pt")["position"] == {"epoch": 2, "batch": 2}

    pasted = shlex.split(output.split("to resume: ", 1)[1].splitlines()[0])
    assert pasted[:2] == ["python", str(ROOT / "src" / "run.py")]
    result = run_cli(*pasted[2:], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming outputs/runs/{folder.name} at epoch 2, batch 2" in result.stdout
    assert list((tmp_path / "outputs" / "runs").iterdir()) == [folder]  # no folder of its own
    assert "trainer.resume" not in (folder / ".hydra" / "overrides.yaml").read_text()  # as the run was made
    expected, got = reference(*short), final_weights(folder)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_latest_goes_on_as_the_run_was_made_and_a_changed_setting_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainlabError, match="trainer.resume=latest: no run under outputs/ holds a checkpoint"):
        run(compose("trainer.resume=latest"), tmp_path / "nothing")
    first = tmp_path / "outputs" / "runs" / "first"
    run(compose(*RECIPE, "trainer.epochs=1"), first)
    with pytest.raises(TrainlabError, match=re.escape("optimizer=sgd: the run being resumed was made with "
                                                      "optimizer=adam; a resume goes on as the run was made")):
        command = ("optimizer=sgd", "trainer.resume=latest")
        run(compose(*command), Launch(first, command))
    # the command's trainer.epochs says how far it goes on; the rest is the run's own (mlp, adam, 480 images)
    more = ("trainer.resume=latest", "trainer.epochs=2")
    run(compose(*more), Launch(first, more))
    rows = read_metrics(first)
    assert [row["epoch"] for row in rows] == [1, 2, "test"] and rows[1]["lr"] == 0.001  # adam's, not sgd's 0.01
    assert load_checkpoint(first / "checkpoints" / "last.pt")["config"]["model"]["name"] == "mlp"


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    settings = [*RECIPE, "model=tudui", "trainer.epochs=1", "trainer.checkpoint_every_n_steps=0"]
    run(compose(*settings), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    run(compose(*settings[:-2], "trainer.epochs=2", "trainer.checkpoint_every_n_steps=0"), tmp_path)
    assert (tmp_path / "checkpoints" / "last.prev.pt").exists()
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a full disk
    result = run_cli(*settings[:-2], "trainer.epochs=3", "trainer.checkpoint_every_n_steps=0",
                     f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stdout and "last.prev.pt instead" in result.stdout
    # last.prev.pt: the end of epoch 2, before the test score was added to it
    assert "resuming" in result.stdout and "at epoch 3, batch 0" in result.stdout
    (tmp_path / "checkpoints" / "last.prev.pt").write_bytes(b"not a checkpoint")
    last.write_bytes(b"")
    result = run_cli(*settings, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and "no valid checkpoint is left" in result.stdout + result.stderr


def test_a_nonfinite_loss_stops_naming_the_step_or_is_skipped(tmp_path):
    settings = ["data=shapes", "data.num_train=256", "data.num_test=64", "trainer.epochs=1", *QUICK,
                "optimizer.lr=1e30", "optimizer.momentum=0.9", "trainer.checkpoint_every_n_steps=1",
                "trainer.log_every_n_steps=100"]  # the check before each checkpoint must catch it, not the log
    result = run_cli(*settings, f"hydra.run.dir={tmp_path / 'stop'}")
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "the loss became NaN or infinite at step" in output, output
    for name in ("last.pt", "best.pt"):  # checkpoints from before the bad step only
        path = tmp_path / "stop" / "checkpoints" / name
        if path.exists():
            weights = load_checkpoint(path)["model"]
            assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    result = run_cli(*settings, "trainer.nonfinite=skip", f"hydra.run.dir={tmp_path / 'skip'}")
    assert result.returncode == 0 and "non-finite steps skipped" in result.stdout, result.stdout + result.stderr
    weights = load_checkpoint(tmp_path / "skip" / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_resuming_with_another_model_or_a_missing_run_is_refused(tmp_path):
    run(compose("data=shapes", "data.num_train=64", "data.num_test=32", "trainer.epochs=1", *QUICK), tmp_path)
    for args, message in ((["model=lenet"], "model.name is 'lenet' in this command but 'tudui' in the run being "
                                            "resumed: a resume goes on as the run was made"),
                          ([f"trainer.resume={tmp_path / 'nope'}"], "no such run folder or checkpoint")):
        result = run_cli("data=shapes", "data.num_train=64", "data.num_test=32", "trainer.epochs=2", *QUICK, *args,
                         f"hydra.run.dir={tmp_path}")
        assert result.returncode == 2 and message in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("made,changed,message", [
    ([], ["optimizer.lr=0.5"], "optimizer.lr is 0.5 in this command but 0.01 in the run being resumed"),
    ([], ["optimizer=adam"], "optimizer._target_ is 'torch.optim.Adam' in this command but 'torch.optim.SGD'"),
    ([], ["data.batch_size=16"], "data.batch_size is 16 in this command but 32"),
    ([], ["data.image_size=28"], "data.image_size is 28 in this command but 32"),
    (["scheduler=cosine"], ["trainer.epochs=3"], "scheduler.T_max is 3 in this command but 2"),
    (["scheduler=onecycle"], ["trainer.epochs=3"], "trainer.epochs 2 -> 3: the one-cycle schedule was laid out over 2"),
])
def test_a_setting_changed_on_resume_is_refused_naming_it(tmp_path, made, changed, message):
    base = ["data=shapes", "data.num_train=128", "data.num_test=32", "data.batch_size=32", "model=mlp", *QUICK,
            "trainer.log_images=false", *made]
    run(compose(*base, "trainer.epochs=2", "trainer.checkpoint_every_n_steps=2"), tmp_path)
    with pytest.raises(TrainlabError, match=re.escape(message)):
        run(compose(*base, "trainer.epochs=2", *changed), tmp_path)


def test_how_a_run_goes_on_may_change_on_resume_and_is_said(tmp_path, caplog):
    base = ["data=shapes", "data.num_train=128", "data.num_test=32", "model=mlp", *QUICK, "trainer.log_images=false"]
    run(compose(*base, "trainer.epochs=1"), tmp_path)
    with caplog.at_level(logging.INFO, logger="trainlab"):
        run(compose(*base, "trainer.epochs=2", "trainer.max_minutes=5"), tmp_path)
    said = "resuming", "at epoch 2, batch 0 (trainer.epochs 1 -> 2, trainer.max_minutes None -> 5.0)"
    assert all(part in caplog.text for part in said), caplog.text
    assert [row["epoch"] for row in read_metrics(tmp_path)] == [1, 2, "test"]


def test_resume_never_into_a_folder_holding_a_run_is_refused_and_leaves_it(tmp_path):
    settings = ["data=shapes", "data.num_train=64", "data.num_test=32", "model=mlp", "trainer.epochs=1", *QUICK]
    run(compose(*settings), tmp_path)
    best = (tmp_path / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(TrainlabError, match="trainer.resume=never, but .* holds a run .*a new run there would "
                                            "overwrite it"):
        run(compose(*settings, "trainer.resume=never"), tmp_path)
    assert (tmp_path / "checkpoints" / "best.pt").read_bytes() == best

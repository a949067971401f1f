"""Real runs of src/run.py, as a user types them; assertions on what a user would look at."""
import gc
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import QUICK, ROOT, compose, event_tags, options, run_cli, run_forked, scalars
from trainlab.runs.checkpoint import load_checkpoint
from trainlab.errors import TrainlabError
from trainlab.runs.report import report
from trainlab.runs.folder import read_metrics
import trainlab.training.recipe
from trainlab.training.recipe import run

pytestmark = pytest.mark.slow

SHAPES = ["data=shapes", "data.num_train=1500", "data.num_test=300"]


def assert_complete_run_folder(run_dir):
    """What every run leaves: composed config and overrides, log, TensorBoard events, checkpoints."""
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "run.log", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_a_shapes_run_learns_and_leaves_a_complete_run_folder(tmp_path):
    result = run_cli(*SHAPES, *QUICK, "trainer.log_graph=true", "optimizer=adam", "trainer.epochs=4",
                     "trainer.log_every_n_steps=1", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "145,578" in out and out.count(" train loss ") == 4 and "best val acc" in out
    assert "data shapes: 1,350 train / 150 val / 300 test images" in out  # val_split 0.1 of train held out
    assert_complete_run_folder(tmp_path)
    assert "epoch 4/4" in (tmp_path / "run.log").read_text()
    assert yaml.safe_load((tmp_path / ".hydra/config.yaml").read_text())["optimizer"]["_target_"] == "torch.optim.Adam"

    steps = -(-1350 // 64)  # batches per epoch: 1,500 less the 150 validation images
    values = scalars(tmp_path)
    assert [s for s, _ in values["train/loss"]] == list(range(1, 4 * steps + 1))
    for tag in ("train/acc", "val/loss", "val/acc", "train/lr", "val/best_acc"):
        assert [s for s, _ in values[tag]] == [steps, 2 * steps, 3 * steps, 4 * steps], tag  # at each epoch's end
    for tag in ("test/loss", "test/acc"):
        assert [s for s, _ in values[tag]] == [4 * steps], tag  # once, at the end
    tags = event_tags(tmp_path)
    assert tags["images"] == ["train/first_batch"] and tags["graph"]
    assert tags["hparams"] == ["_hparams_/session_start_info"]  # a single run: TensorBoard compares what it finds

    val = [v for _, v in values["val/acc"]]
    best_epoch = val.index(max(val)) + 1  # the first epoch that reached the best
    assert max(val) > 0.5, f"chance is 0.1; a short run on shapes should be well above it, got {max(val)}"
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert checkpoint["epoch"] == checkpoint["best"]["epoch"] == best_epoch and len(checkpoint["classes"]) == 10
    assert checkpoint["best"]["val"]["acc"] == pytest.approx(max(val))
    test_acc = values["test/acc"][0][1]
    assert checkpoint["test"] == {"loss": pytest.approx(values["test/loss"][0][1]), "acc": pytest.approx(test_acc),
                                  "epoch": best_epoch}  # scored with best.pt's weights
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, "test"]
    assert [r["val_acc"] for r in rows[:4]] == pytest.approx(val, abs=1e-5)
    assert rows[-1]["test_acc"] == pytest.approx(test_acc, abs=1e-5)
    assert rows[-1]["val_acc"] == pytest.approx(max(val), abs=1e-5)  # the val score of the weights tested
    assert f"test acc {test_acc:.2%}" in out.splitlines()[-1]
    assert checkpoint["config"]["model"]["name"] == "tudui" and set(checkpoint["model"]) >= {"0.weight", "8.bias"}


def test_a_folder_run_on_ants_and_bees_with_a_gif_among_the_jpegs(tmp_path, ants_bees):
    result = run_cli("data=folder", f"data.root={ants_bees}", "data.image_size=32", "trainer.epochs=2", *QUICK,
                     f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert "13 train / 6 val / no test images, 2 classes, 3x32x32" in result.stdout  # train/ and val/ only
    assert f"no test split: {ants_bees / 'test'} does not exist" in result.stdout
    assert_complete_run_folder(tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["classes"] == ["ants", "bees"]
    values = scalars(tmp_path)
    assert len(values["val/acc"]) == 2 and "test/acc" not in values


def test_a_two_job_sweep_leaves_two_complete_folders(tmp_path):
    result = run_cli("-m", *SHAPES, "data.num_train=300", "trainer.epochs=1", *QUICK, "optimizer=sgd,adam",
                     f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_optimizer-sgd", "1_optimizer-adam"]
    for job, optimizer in zip(jobs, ("sgd", "adam")):
        assert_complete_run_folder(job)
        assert f"optimizer={optimizer}" in (job / ".hydra/overrides.yaml").read_text()
        assert event_tags(job)["hparams"]


@pytest.mark.parametrize("path", ["resident", "loader"])
def test_same_seed_same_numbers_and_run_returns_the_best_accuracy(tmp_path, path):
    settings = [*SHAPES, "data.num_train=256", "data.num_test=64", "trainer.epochs=2", *QUICK,
                "trainer.log_images=false", "transform=augment", f"trainer.data_path={path}"]
    results = [run(compose(*settings), tmp_path / name) for name in ("a", "b")]
    assert results[0] == results[1] and 0 <= results[0] <= 1
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"] for name in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    run(compose(*settings, "trainer.seed=1"), tmp_path / "c")
    c = load_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt")["model"]
    assert not torch.equal(a["0.weight"], c["0.weight"])


NOTEBOOK = """
import sys
from hydra import compose, initialize_config_dir
from trainlab.training.recipe import run  # importing trainlab registers its schemas: no other step

with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose("config", overrides=sys.argv[3:])
print("returned", run(cfg, sys.argv[2]))
print("again", run(cfg, sys.argv[2]))
"""


def test_a_config_composed_with_hydras_compose_api_runs_as_a_notebook_would(tmp_path):
    overrides = [*SHAPES, "data.num_train=200", "data.num_test=50", "trainer.epochs=1", *QUICK]
    done = subprocess.run([sys.executable, "-c", NOTEBOOK, str(ROOT / "conf"), str(tmp_path), *overrides],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # as a fresh clone's notebook
    assert done.returncode == 0, done.stdout + done.stderr
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["best"]["val"]["acc"]
    lines = done.stdout.strip().splitlines()
    assert f"returned {best}" in lines and lines[-1] == f"again {best}"
    # what src/run.py shows, shown from Python too, and kept in run.log; a second call says the run is finished
    epoch = next(line for line in lines if line.startswith("epoch 1/1  train loss"))
    assert epoch in (tmp_path / "run.log").read_text()
    assert lines[-2].startswith(f"nothing to do: {tmp_path} finished training")


def test_no_progress_bar_is_drawn_into_a_file_or_pipe(tmp_path):
    # trainer.progress_bar at its default (true); the output captured, as when redirected to a file
    result = run_cli(*SHAPES, "data.num_train=300", "data.num_test=50", "trainer.epochs=2", "trainer.log_graph=false",
                     f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\r" not in result.stdout + result.stderr and "batch/s" not in result.stderr  # no bar redraws
    assert result.stdout.count(" train loss ") == 2  # the epoch lines are all there


def test_the_collector_src_run_turns_off_for_start_up_is_on_for_every_epoch(tmp_path, monkeypatch):
    epochs_ran_with = []
    epoch = trainlab.training.recipe.Epoch

    def watched(*args, **kwargs):
        epochs_ran_with.append(gc.isenabled())
        return epoch(*args, **kwargs)

    monkeypatch.setattr(trainlab.training.recipe, "Epoch", watched)
    gc.disable()  # as src/run.py does before its imports
    try:
        run(compose(*SHAPES, "data.num_train=64", "data.num_test=32", "trainer.epochs=2", *QUICK,
                    "trainer.log_images=false"), tmp_path)
        assert epochs_ran_with == [True, True]
        assert gc.get_freeze_count() > 0  # start-up's objects, out of every later collection
    finally:
        gc.enable()
        gc.unfreeze()


@pytest.mark.parametrize("options", [["trainer.precision=bf16"], ["trainer.channels_last=false"]])
def test_the_speed_options_train_as_well(tmp_path, options):
    # 100 steps of 16 images: bf16 on a CPU without bf16 arithmetic (AMD EPYC) takes 14 s, where 2000 images in
    # batches of 64 took 85 s; the defaults reach 0.98 here, chance is 0.1. (LeNet reached 0.25 to 0.28 on a budget
    # like this, on the CPU and an H100 alike: too close to chance to tell a broken option from a slow learner.)
    best = run(compose(*SHAPES, "data.num_train=600", "data.num_test=200", "data.batch_size=16", "trainer.epochs=3",
                       "optimizer=adam", *QUICK, "trainer.log_images=false", *options), tmp_path)
    assert best > 0.4


@pytest.mark.parametrize("args,line", [
    (["optimizer.lrr=0.1"], "error: optimizer.lrr is not a key of optimizer: did you mean optimizer.lr?"),
    (["model=transformer"], "error: model=transformer is not an option of model; the options: "
                            + ", ".join(options("model"))),
    (["trainer.epochs=abc"], "error: trainer.epochs=abc cannot work: trainer.epochs takes an integer, not 'abc'"),
    (["+trainer.epochz=3"], "error: trainer.epochz is not a key of trainer: did you mean trainer.epochs?"),
    (["+optimizer.lrr=0.1"], "error: optimizer.lrr is not a key of optimizer: did you mean optimizer.lr?"),
    (["trainr.epochs=3"], "error: trainr.epochs is not a key: did you mean trainer.epochs?"),
    (["-m", "model=tudui,transformer"], "error: model=transformer is not an option of model; the options: "
                                        + ", ".join(options("model"))),
    (["-m", "hydra/sweeper=trainlab_optuna", "hydra.sweeper.pruner=mediam"],
     "error: hydra.sweeper.pruner=mediam cannot work: hydra.sweeper.pruner takes one of none, median, percentile, "
     "hyperband, not 'mediam'"),
])
def test_a_mistake_in_the_command_is_one_line_naming_the_closest_key_exit_2_and_no_folder(tmp_path, args, line):
    result = run_forked(*args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert (result.returncode, (result.stdout + result.stderr).strip()) == (2, line)
    assert list(tmp_path.iterdir()) == []  # nothing written: the config is checked before any folder is made


def test_hydra_full_error_still_shows_everything():
    result = run_cli("+trainer.epochz=3", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "trainer.epochz is not a key" in result.stderr


def test_a_key_for_an_option_without_a_schema_is_still_allowed():
    from trainlab.config.mistakes import check_known_keys

    cfg = compose("data=shapes")
    cfg.optimizer = OmegaConf.create({"_target_": "torch.optim.RMSprop", "_partial_": True, "lr": 0.01, "alpha": 0.9})
    check_known_keys(cfg)  # RMSprop's own keys: only its _target_ says what it takes
    OmegaConf.update(cfg, "trainer.epochz", 3, force_add=True)  # a part with a schema stays checked: as Hydra's +
    with pytest.raises(TrainlabError, match=re.escape("trainer.epochz is not a key of trainer: did you mean "
                                                      "trainer.epochs?")):
        check_known_keys(cfg)


@pytest.mark.parametrize("args,message", [
    (["data=folder"], "error: data.root is not set: add data.root=... to the command"),
    (["data=shapes", "data.num_train=100", "model.blocks.0.kernel_size=64"],
     "error: model block 0 (conv) cannot take input"),
])
def test_a_start_that_fails_says_one_line_and_leaves_no_folder(tmp_path, args, message):
    result = run_cli(*args, *QUICK, f"hydra.run.dir={tmp_path / 'run'}")
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert message in output and "Traceback" not in output
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_once_started_is_marked_failed_and_report_says_why(tmp_path, capsys):
    result = run_cli("data=shapes", "data.subset=64", "data.val_subset=32", "data.test_subset=32", "optimizer.lr=1e30",
                     *QUICK, f"hydra.run.dir={tmp_path / 'runs' / 'a'}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert (tmp_path / "runs" / "a" / "error.log").read_text().startswith("error: the loss became NaN or infinite")
    report(tmp_path / "runs", plot=False)
    out = capsys.readouterr().out
    assert "1 failed" in out and "job a failed: the loss became NaN or infinite" in out, out


@pytest.mark.parametrize("args,message", [
    (["data=folder", "data.root=/does/not/exist"], "data.root /does/not/exist is not a folder"),
    (["data=shapes", "data.batch_size=0"], "data.batch_size=0 cannot work: it must be at least 1"),
    (["data.root=/nonexistent/cifar", "data.download=false"], "put cifar-10-python.tar.gz"),
    (["data.root=/nonexistent/cifar", "data.download=false"], "or train offline: data=shapes (generated), or your "
                                                               "own images with data=folder data.root=<folder>"),
])
def test_more_bad_input_is_a_trainlab_error_naming_the_fix(tmp_path, args, message):
    with pytest.raises(TrainlabError) as e:  # printed as one line by the CLI, as the test above shows
        run(compose(*args, *QUICK), tmp_path)
    assert message in str(e.value)


def test_photos_of_many_sizes_without_a_resize_get_one_clear_line(tmp_path, ants_bees):
    result = run_cli("data=folder", f"data.root={ants_bees}", "transform=to_tensor", *QUICK,
                     f"hydra.run.dir={tmp_path}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "error: images differ in size" in output and "transform=resize" in output


def test_full_error_shows_the_traceback(tmp_path):
    result = run_cli("data=shapes", "data.batch_size=0", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "TrainlabError" in result.stderr


def test_help_lists_the_groups_and_cfg_job_prints_the_composed_config():
    result = run_cli("--help")
    assert result.returncode == 0
    for group in ("data", "model", "optimizer", "scheduler"):  # as conf/ holds them: a file of the user's included
        assert f"{group}: {', '.join(options(group))}" in result.stdout
    assert "schema" not in result.stdout
    settings = {line.split(":", 1)[0]: line for line in result.stdout.splitlines() if "  # " in line}
    assert re.fullmatch(r"optimizer.lr: 0.01 +# the tutorial's", settings["optimizer.lr"])  # the reason in its YAML
    assert re.fullmatch(r"trainer.seed: 0 +# same seed, same device: same numbers", settings["trainer.seed"])
    assert re.fullmatch(r"data.shuffle: true +# a new order every epoch", settings["data.shuffle"])
    result = run_cli("--cfg", "job", "optimizer=adam")
    assert result.returncode == 0 and "_target_: torch.optim.Adam" in result.stdout


def _image_folder(root, sizes):
    """root/train/<class>/*.png and root/test/<class>/*.png: an image of each size in `sizes` per class and split."""
    from PIL import Image

    for split in ("train", "test"):
        for label, colour in (("dark", 40), ("light", 220)):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i, size in enumerate(sizes):
                Image.new("RGB", size, (colour, colour, colour)).save(root / split / label / f"{i}.png")
    return root


def test_a_folder_of_32px_images_trains_at_32px_and_a_resize_is_said(tmp_path):
    root = _image_folder(tmp_path / "images", [(32, 32)] * 10)
    result = run_cli("data=folder", f"data.root={root}", "trainer.epochs=1", *QUICK, f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 classes, 3x32x32" in result.stdout and "resized" not in result.stdout, result.stdout

    from trainlab.data.image_folder import settle_image_size

    cfg = compose("data=folder", f"data.root={root}")
    assert settle_image_size(cfg) is None and cfg.data.image_size == 32  # all one size: theirs
    cfg = compose("data=folder", f"data.root={root}", "data.image_size=48")
    assert settle_image_size(cfg) == ("images are resized to 48x48 (data.image_size=48); most are 32x32 "
                                      "(data.image_size=null keeps their own size)")
    mixed = _image_folder(tmp_path / "mixed", [(32, 32), (40, 30)])
    cfg = compose("data=folder", f"data.root={mixed}")
    assert settle_image_size(cfg) == ("images of 2 sizes (32x32, 40x30): each is resized to 64x64 "
                                      "(data.image_size=null; set it to choose another size)")
    assert cfg.data.image_size == 64


def test_a_single_runs_folder_is_named_by_what_its_command_set():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        named = {}
        for args in (["data=folder", "data.root=/photos/hymenoptera_data"], ["model=mlp", "optimizer.lr=0.1"],
                     ["trainer.progress_bar=false"]):
            cfg = hydra_compose("config", overrides=args, return_hydra_config=True)
            named[args[0]] = Path(cfg.hydra.run.dir).name  # the folder, and the run's name in TensorBoard
    stamp = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d"
    assert re.fullmatch(stamp + r"_data-folder\+data.root-_photos_hymenoptera_data", named["data=folder"])
    assert re.fullmatch(stamp + r"_model-mlp\+optimizer.lr-0.1", named["model=mlp"])
    assert re.fullmatch(stamp, named["trainer.progress_bar=false"])  # how a run shows itself does not name it

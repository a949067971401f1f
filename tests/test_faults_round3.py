"""Faults, round three (issue 21): what still lost data or was silently wrong, and the tracebacks where one line is
promised. Each test drives the real code (in-process where that shows the same, to keep the suite short)."""
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import QUICK, ROOT, assert_one_clear_line, compose, run_cli, run_forked, run_signalled
from trainlab.errors import TrainlabError
from trainlab.data.image_folder import ImageFiles, read_image
from trainlab.data.resident import build_resident
from trainlab.data.transforms import check_transforms

GRADIENT = np.linspace(0, 1, 64).reshape(8, 8)  # a picture: dark top left, light bottom right


def deep_images(folder):
    """The same gradient as 8-bit PNG, 16-bit PNG (I;16), 32-bit integer TIFF (I) and float TIFF (F, 0 to 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(GRADIENT * 255).astype(np.uint8)).save(folder / "eight.png")
    Image.fromarray(np.round(GRADIENT * 65535).astype(np.uint16)).save(folder / "sixteen.png")
    Image.fromarray(np.round(GRADIENT * 65535).astype(np.int32), mode="I").save(folder / "int32.tif")
    Image.fromarray(GRADIENT.astype(np.float32), mode="F").save(folder / "float.tif")
    return sorted(folder.iterdir())


def test_deep_images_are_scaled_to_8_bits_not_clipped_on_every_path(tmp_path):
    files = deep_images(tmp_path / "data" / "train" / "grey")
    deep_images(tmp_path / "data" / "train" / "other")
    expected = np.asarray(Image.open(files[0]).convert("RGB"))
    assert {Image.open(f).mode for f in files} == {"L", "I;16", "I", "F"}
    for f in files:  # predict.py reads each file with read_image, as training does
        assert np.abs(np.asarray(read_image(f, "RGB", 10**6)).astype(int) - expected).max() <= 1, f
    loader = ImageFiles([(str(f), 0) for f in files], ["grey"], None, "fail", 10**6)  # the DataLoader path
    assert all(np.abs(np.asarray(loader[i][0]).astype(int) - expected).max() <= 1 for i in range(len(files)))
    cfg = compose("data=folder", f"data.root={tmp_path / 'data'}", "data.image_size=8", "data.val_split=0")
    data = build_resident(cfg.data, check_transforms(cfg.transform), torch.device("cpu"), 0, False)[0]  # the cache
    images = data.train.images.numpy().transpose(0, 2, 3, 1).astype(int)
    assert np.abs(images - expected).max() <= 1


def test_an_image_whose_values_no_8_bit_range_holds_is_one_line(tmp_path):
    for name in ("ants", "bees"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (90, 0, 0)).save(tmp_path / "data" / "train" / name / "0.png")
    Image.fromarray(np.full((8, 8), -3.5, np.float32), mode="F").save(tmp_path / "data" / "train" / "bees" / "x.tif")
    files = ImageFiles([(str(tmp_path / "data" / "train" / "bees" / "x.tif"), 1)], ["ants", "bees"], None, "fail",
                       10**6)
    with pytest.raises(TrainlabError, match="x.tif is a mode-F image with values from -3.5 to -3.5, which no 8-bit "
                                            "range maps without losing them: save it as 8 bits a channel"):
        files[0]


def test_a_resume_after_images_were_added_is_refused_before_it_resplits(tmp_path):
    from trainlab.training.recipe import run

    root = tmp_path / "data"
    for name, colour in (("ants", (200, 0, 0)), ("bees", (0, 0, 200))):
        (root / "train" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), colour).save(root / "train" / name / f"{i}.png")
    settings = ["data=folder", f"data.root={root}", "data.image_size=8", "data.batch_size=4", *QUICK,
                "trainer.log_images=false"]
    run(compose(*settings, "trainer.epochs=1"), tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    Image.new("RGB", (8, 8), (0, 0, 200)).save(root / "train" / "bees" / "new.png")
    with pytest.raises(TrainlabError, match="the files in data.root=.* are not those the run began with"):
        run(compose(*settings, "trainer.epochs=2"), tmp_path / "run")
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("left", [["checkpoints/best.pt", "metrics.csv"], ["events.out.tfevents.1.host"]])
def test_a_run_whose_last_checkpoint_is_gone_is_not_replaced_by_the_same_command(tmp_path, left):
    for name in left:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"what the run left")
    result = run_forked("data=shapes", "trainer.epochs=1", *QUICK, f"hydra.run.dir={tmp_path}")
    assert_one_clear_line(result, "but no checkpoints/last.pt to continue it from: a new run there would replace it")
    assert all((tmp_path / name).read_bytes() == b"what the run left" for name in left)


def test_a_damaged_metrics_csv_stops_a_resume_in_one_line_and_leaves_the_run_as_it_was(tmp_path):
    from trainlab.training.recipe import run

    settings = ["data=shapes", "data.num_train=64", "data.num_test=32", *QUICK]
    for name, damage in (("stray", b"\xff\xfe"), ("word", b"two,1,2,3,4,5,6,7,8,9,10\n")):
        run(compose(*settings, "trainer.epochs=1"), tmp_path / name)
        with open(tmp_path / name / "metrics.csv", "ab") as f:
            f.write(damage)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = run_cli(*settings, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'stray'}")  # as a user resumes it
    assert_one_clear_line(result, "metrics.csv is damaged (", "repair the file or move it away")
    with pytest.raises(TrainlabError, match=r"metrics.csv is damaged \(line 4: epoch 'two' is not a number\)"):
        run(compose(*settings, "trainer.epochs=2"), tmp_path / "word")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # no error.log, no new line


# src/run.py, but a decoding worker process dies (as the kernel's out-of-memory killer ends one) at its 4th image
WORKER_DIES = """
import os, runpy, signal, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
import torch.utils.data
from trainlab.data import image_folder
read = image_folder.ImageFiles.__getitem__
def dies(self, index):
    if torch.utils.data.get_worker_info() is not None and index == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return read(self, index)
image_folder.ImageFiles.__getitem__ = dies
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_decoding_worker_that_dies_ends_the_run_in_one_line(tmp_path):
    for name in ("ants", "bees"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        for i in range(20):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "data" / "train" / name / f"{i}.png")
    result = subprocess.run([sys.executable, "-c", WORKER_DIES, "src/run.py", "data=folder",
                             f"data.root={tmp_path / 'data'}", "data.image_size=8", *QUICK,
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_clear_line(result, "decoding folder train: a decoding process died (DataLoader worker")
    assert not (tmp_path / "run").exists()


def test_a_file_left_out_by_bad_images_skip_does_not_choose_the_image_size(tmp_path, caplog):
    from trainlab.training.recipe import run

    for name in ("ants", "bees"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(tmp_path / "data" / "train" / name / f"{i}.png")
    Image.new("RGB", (64, 64), (0, 0, 200)).save(tmp_path / "broken.png")
    (tmp_path / "data" / "train" / "bees" / "broken.png").write_bytes((tmp_path / "broken.png").read_bytes()[:90])
    caplog.set_level("INFO", logger="trainlab")
    run(compose("data=folder", f"data.root={tmp_path / 'data'}", "data.bad_images=skip", "data.val_split=0",
                "trainer.epochs=1", *QUICK, "trainer.log_images=false"), tmp_path / "run")
    assert "data folder: 8 train / no val / no test images, 2 classes, 3x32x32" in caplog.text  # no 64x64 resize


def test_sigterm_while_the_run_writes_its_end_lets_it_finish(tmp_path, caplog):
    from trainlab.runs.checkpoint import load_checkpoint
    from trainlab.training.recipe import run

    args = ["data=shapes", "data.num_train=64", "data.num_test=32", "trainer.epochs=1", *QUICK]
    result = run_signalled(signal.SIGTERM, 0, *args, f"hydra.run.dir={tmp_path}", tag="test/acc")  # as it is logged
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "SIGTERM came while the run was writing its end: it finished first" in output
    assert "test" in load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert not list(tmp_path.rglob("*.tmp"))
    caplog.set_level("INFO", logger="trainlab")
    run(compose(*args), tmp_path)  # run again: nothing left to do
    assert "nothing to do" in caplog.text


def test_a_model_changed_before_a_rerun_is_named_by_the_block_that_differs(tmp_path):
    from trainlab.training.recipe import run

    settings = ["data=shapes", "data.num_train=64", "data.num_test=32", *QUICK, "trainer.log_images=false"]
    run(compose(*settings, "trainer.epochs=1"), tmp_path)
    changed = compose(*settings, "trainer.epochs=2")
    changed.model.blocks[4].out_channels = 48  # conf/model/tudui.yaml edited between the two commands
    with pytest.raises(TrainlabError) as refused:
        run(changed, tmp_path)
    assert str(refused.value).startswith("model.blocks.4.out_channels is 48 in this command but 64 in the run")
    assert len(str(refused.value)) < 250


def test_a_run_that_finishes_after_a_failure_is_no_longer_reported_failed(tmp_path, capsys):
    from trainlab.runs.report import report
    from trainlab.training.recipe import run

    settings = ["data=shapes", "data.num_train=64", "data.num_test=32", *QUICK, "trainer.log_images=false"]
    run(compose(*settings, "trainer.epochs=1"), tmp_path / "run")
    (tmp_path / "run" / ".hydra").mkdir()  # as src/run.py leaves it: what report.py finds a run by
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("trainer:\n  epochs: 2\n")
    (tmp_path / "run" / "error.log").write_text("error: the disk is full: ...\n")  # the attempt that failed
    run(compose(*settings, "trainer.epochs=2"), tmp_path / "run")  # the same run, resumed and finished
    report(tmp_path, plot=False)
    assert not (tmp_path / "run" / "error.log").exists() and " done " in capsys.readouterr().out


def test_resume_latest_on_a_finished_run_says_only_that_it_is_finished(tmp_path):
    from trainlab.training.recipe import run

    args = ["data=shapes", "data.num_train=64", "data.num_test=32", "trainer.epochs=1", *QUICK]
    run(compose(*args, "trainer.log_images=false"), tmp_path / "outputs" / "runs" / "2026-12-07_10-00-00")
    again = run_cli(*args, "trainer.resume=latest", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout and "resuming" not in again.stdout


def test_predict_on_a_folder_predicts_every_readable_image_and_names_the_others(tmp_path):
    from trainlab.training.recipe import run

    run(compose("data=shapes", "data.num_train=64", "data.num_test=32", "trainer.epochs=1", *QUICK,
                "trainer.log_images=false"), tmp_path / "run")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a_broken.png").write_bytes(b"\x89PNG not really")
    for name in ("b_red.png", "c_blue.png"):
        Image.new("RGB", (32, 32), (200, 0, 0) if "red" in name else (0, 0, 200)).save(images / name)
    result = subprocess.run([sys.executable, "src/predict.py", f"checkpoint={tmp_path / 'run'}", f"image={images}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_clear_line(result, "1 of 3 images could not be read (a_broken.png", "the other 2 were predicted")
    assert f"{images / 'b_red.png'}\n" in result.stdout and f"{images / 'c_blue.png'}\n" in result.stdout
    assert "warning: skipped" in result.stdout + result.stderr and "a_broken.png cannot be decoded" in result.stdout


def test_an_epoch_whose_every_step_was_skipped_says_it_trained_nothing(tmp_path, caplog):
    from trainlab.runs.folder import read_metrics
    from trainlab.training.recipe import run

    caplog.set_level("INFO", logger="trainlab")
    run(compose("data=shapes", "data.num_train=128", "data.num_test=32", "trainer.epochs=2", "optimizer.lr=1e37",
                "trainer.nonfinite=skip", *QUICK, "trainer.log_images=false"), tmp_path)  # one step, then none finite
    line = next(line for line in caplog.text.splitlines() if "epoch 2/2" in line)
    assert "trained nothing: all 2 steps were skipped" in line and "train loss" not in line
    assert read_metrics(tmp_path)[1]["train_loss"] is None


def test_a_scheduler_file_of_ones_own_needs_no_partial(tmp_path):
    from omegaconf import OmegaConf

    from trainlab.training.recipe import run

    cfg = compose("data=shapes", "data.num_train=64", "data.num_test=32", "trainer.epochs=2", *QUICK,
                  "trainer.log_images=false")
    cfg.scheduler = OmegaConf.create({"_target_": "torch.optim.lr_scheduler.LinearLR", "start_factor": 0.1,
                                      "total_iters": 2, "interval": "epoch"})  # the README's warm-up, as a user writes it
    cfg.optimizer = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.1})
    assert run(cfg, tmp_path) is not None


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_of(monkeypatch, caplog, has_bf16):
    from trainlab.training import numerics

    monkeypatch.setattr(numerics, "cpu_has_bf16", lambda: has_bf16)
    caplog.set_level("INFO", logger="trainlab")
    numerics.Numerics.choose(torch.device("cpu"), "bf16")
    numerics.Numerics.choose(torch.device("cpu"), "fp32")
    warned = "trainer.precision=bf16 on a CPU without bfloat16 instructions" in caplog.text
    assert warned != has_bf16


def test_a_first_run_that_cannot_fetch_its_data_leaves_no_folder_behind(tmp_path):
    nowhere = "http://127.0.0.1:9"  # the download fails at once, online or not: nothing is fetched by a test
    result = run_cli("trainer.epochs=1", *QUICK, cwd=tmp_path,
                     env={"http_proxy": nowhere, "https_proxy": nowhere, "HTTP_PROXY": nowhere, "HTTPS_PROXY": nowhere})
    assert_one_clear_line(result, "cifar10 is not in", "could not be fetched")
    assert list(tmp_path.iterdir()) == []  # no empty outputs/runs/, no empty data/


def test_the_report_shows_no_more_digits_of_a_loss_than_metrics_csv_holds(tmp_path, capsys):
    from trainlab.runs.report import report
    from trainlab.runs.folder import MetricsFile

    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("trainer:\n  epochs: 1\n")
    MetricsFile(tmp_path / "run").append(epoch=1, step=10, train_loss=391337.28, train_acc=0.1)  # as a run wrote it
    report(tmp_path, plot=False)
    out = capsys.readouterr().out
    assert " 391337" in out and "391337.0000" not in out


@pytest.mark.parametrize("cpuinfo,chosen,why", [
    ("flags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n", "bf16", "the CPU has avx512_bf16"),  # an AMD EPYC here
    ("flags\t\t: fpu sse amx_bf16 amx_tile avx512_bf16\n", "bf16", "the CPU has amx_bf16"),  # a Xeon with AMX
    ("flags\t\t: fpu sse avx2 avx512f\n", "fp32", "the CPU has no bfloat16 instructions"),  # emulated bf16: 14x slower
    (None, "fp32", "the CPU has no bfloat16 instructions"),  # no /proc/cpuinfo to ask: the safe choice
])
def test_precision_auto_takes_bf16_where_the_cpu_computes_it(monkeypatch, tmp_path, caplog, cpuinfo, chosen, why):
    from trainlab.training import numerics

    if cpuinfo is not None:
        (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(numerics, "CPUINFO", tmp_path / "cpuinfo")
    caplog.set_level("INFO", logger="trainlab")
    assert numerics.Numerics.choose(torch.device("cpu"), "auto").precision == chosen
    assert f"precision: {chosen} (trainer.precision=auto: {why})" in caplog.text
    assert "emulated" not in caplog.text  # auto never picks what the warning is about

"""Misuse a user can make gets one clear line, a non-zero exit and no traceback; no file or config runs code."""
import re

import pytest
import torch
from PIL import Image

from conftest import QUICK, assert_one_clear_line, compose, run_cli
from trainlab.errors import TrainlabError
from trainlab.training.recipe import run
from test_resident import tiny_folder

pytestmark = pytest.mark.slow


@pytest.fixture
def messy_folder(tmp_path):
    """Class folders with grey, palette (GIF) and RGBA images among the PNGs, and one file that is no image."""
    root = tmp_path / "data"
    tiny_folder(root)
    Image.new("L", (9, 9), 100).save(root / "train" / "red" / "grey.png")
    Image.new("P", (9, 9), 3).save(root / "train" / "blue" / "palette.gif")
    Image.new("RGBA", (9, 9), (1, 2, 3, 4)).save(root / "train" / "blue" / "rgba.png")
    return root


def folder_run(root, run_dir, *extra):
    return run_cli("data=folder", f"data.root={root}", "data.image_size=8", "trainer.epochs=1", *QUICK, *extra,
                   f"hydra.run.dir={run_dir}")


@pytest.mark.parametrize("path", ["resident", "loader"])
def test_images_of_any_mode_are_converted_to_the_models_channels(messy_folder, tmp_path, path):
    result = folder_run(messy_folder, tmp_path / "run", f"trainer.data_path={path}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "15 train / 12 val / no test images, 2 classes, 3x8x8" in result.stdout


@pytest.mark.parametrize("extra", [["trainer.data_path=resident"], ["trainer.data_path=loader", "data.num_workers=2"]])
def test_a_file_that_cannot_be_decoded_is_named_or_skipped(messy_folder, tmp_path, extra):
    broken = messy_folder / "train" / "red" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert_one_clear_line(folder_run(messy_folder, tmp_path / "fail", *extra), str(broken), "data.bad_images=skip")
    result = folder_run(messy_folder, tmp_path / "skip", *extra, "data.bad_images=skip")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"skipped {broken}" in result.stdout + result.stderr


def test_an_empty_class_folder_and_a_root_without_images(messy_folder, tmp_path):
    (messy_folder / "train" / "green").mkdir()
    (messy_folder / "val" / "green").mkdir()
    assert_one_clear_line(folder_run(messy_folder, tmp_path / "a"), "green", "each class needs a folder of images")
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    assert_one_clear_line(folder_run(empty, tmp_path / "b"), "each class needs a folder of images")
    assert_one_clear_line(folder_run(tmp_path / "nowhere", tmp_path / "c"), "is not a folder")


@pytest.mark.parametrize("args,expected", [
    (["trainer.epochs=0"], "trainer.epochs=0 cannot work"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 cannot work"),
    (["data.subset=0"], "data.subset=0 cannot work"),
    (["trainer.precision=fp8"], "trainer.precision=fp8 cannot work: it must be one of fp32, bf16"),
    (["trainer.resume=/no/such/run"], "no such run folder or checkpoint"),
    (["scheduler=cosine", "scheduler.T_max=0"], "scheduler.T_max=0 cannot work: it must be at least 1"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0 cannot work: it must be at least 1"),
    (["optimizer.lr=1e308"], "optimizer.lr=1e+308 cannot work: it must be greater than 0 (and below 3.4e38)"),
    (["trainer.seed=-1"], "trainer.seed=-1 cannot work: it must be from 0 to 2**32 - 1"),
    (["trainer.tta=mirror"], "trainer.tta=mirror cannot work: it must be one of none, flip, flip_translate"),
    (["trainer.average=swa"], "trainer.average=swa cannot work: it must be one of none, ema, lookahead"),
    (["trainer.average_decay=1.5"], "trainer.average_decay=1.5 cannot work: it must be from 0 to below 1"),
])
def test_impossible_values_are_refused_before_any_data_is_read(tmp_path, args, expected):
    with pytest.raises(TrainlabError, match=re.escape(expected)):  # the CLI prints it as one line (test_runs.py)
        run(compose("data=folder", "data.root=/data/that/is/never/read", *args), tmp_path)


def test_a_target_off_the_allow_list_is_refused_from_the_command_line_and_a_file(tmp_path):
    marker = tmp_path / "ran"
    result = run_cli("data=shapes", "optimizer._target_=os.system", f"hydra.run.dir={tmp_path / 'a'}")
    assert_one_clear_line(result, "optimizer._target_ 'os.system' is not allowed")
    conf = tmp_path / "conf" / "loss"
    conf.mkdir(parents=True)
    (conf / "evil.yaml").write_text(f"_target_: os.system\ncommand: touch {marker}\n")
    result = run_cli("data=shapes", "loss=evil", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                     f"hydra.run.dir={tmp_path / 'b'}")
    assert_one_clear_line(result, "loss._target_ 'os.system' is not allowed")
    assert not marker.exists() and not (tmp_path / "b" / "checkpoints").exists()


def test_a_crafted_pickle_posing_as_a_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "last.pt"
    torch.save({"model": Payload(), "position": {"epoch": 1, "batch": 0}}, evil)
    result = run_cli("data=shapes", *QUICK, f"trainer.resume={evil}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_clear_line(result, "is not a readable trainlab checkpoint")
    assert not marker.exists()


def test_a_failing_sweep_job_does_not_stop_the_others(tmp_path):
    result = run_cli("-m", "data=shapes", "data.num_train=128", "data.num_test=32", "trainer.epochs=1", *QUICK,
                     "data.batch_size=16,0,32", f"hydra.sweep.dir={tmp_path}")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for job in ("0_data.batch_size-16", "2_data.batch_size-32"):
        assert (tmp_path / job / "checkpoints" / "last.pt").exists()
    error_log = (tmp_path / "1_data.batch_size-0" / "error.log").read_text()
    assert "data.batch_size=0 cannot work" in error_log and "Traceback" in error_log
    assert "1 job(s) of the sweep" in output and "#1_data.batch_size-0 " in output and "data.batch_size=0" in output


@pytest.mark.parametrize("args,expected", [
    (["data.image_size=4"], "data.image_size=4 cannot work: it must be at least 8 for data=shapes"),
    (["data.num_test=0"], "data.num_test=0 cannot work: it must be at least 1"),
    (["data.num_train=10"], "data.val_split=0.1 holds out no image: no class of the 10 training images has two"),
])
def test_odd_numbers_for_the_embedded_data_are_one_line_not_a_traceback(tmp_path, args, expected):
    with pytest.raises(TrainlabError, match=re.escape(expected)):
        run(compose("data=shapes", "trainer.epochs=1", *args), tmp_path)

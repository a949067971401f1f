"""Image folders as users have them (issue 14): trainlab's own cache and hidden folders beside the classes, symlinks
and loops, one class only, images past PIL's decompression-bomb limit, and evaluate pointed at a folder of val/ only.
Each gets what it should, the same on both data paths, or one line that names the problem and the fix."""
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from conftest import QUICK, ROOT, compose, entry_config
from trainlab.data.image_folder import list_images
from trainlab.errors import TrainlabError
from trainlab.inference.score import evaluate_checkpoint
from trainlab.training.recipe import run

pytestmark = pytest.mark.slow

PATHS = ["trainer.data_path=resident", "trainer.data_path=loader"]


def classes_of(root, per_class=4, names=("ants", "bees")):
    """root/<class>/<i>.png: 8x8 images of one colour a class."""
    for name, colour in zip(names, [(200, 0, 0), (0, 0, 200)]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), colour).save(root / name / f"{i}.png")
    return root


def train(root, run_dir, *overrides):
    run(compose("data=folder", f"data.root={root}", "data.image_size=8", "data.batch_size=4", "trainer.epochs=1",
                *QUICK, "trainer.log_images=false", *overrides), run_dir)
    return run_dir / "checkpoints" / "best.pt"


def data_line(caplog) -> str:
    """The last run's 'data folder: ...' line, up to the classes and image shape."""
    return re.findall(r"data folder: [^·]*", caplog.text)[-1].strip()


def test_the_cache_and_hidden_folders_beside_the_classes_are_not_classes(tmp_path, caplog):
    root = classes_of(tmp_path / "photos", per_class=5)
    caplog.set_level("INFO", logger="trainlab")
    checkpoint = train(root, tmp_path / "first", "data.split=0.2")  # writes photos/.trainlab-cache
    assert (root / ".trainlab-cache").is_dir()
    assert data_line(caplog) == "data folder: 6 train / 2 val / 2 test images, 2 classes, 3x8x8"
    classes_of(root / ".ipynb_checkpoints")  # a notebook's copies: a hidden folder, as every image tool skips
    Image.new("RGB", (8, 8), (0, 0, 200)).save(root / "bees" / "new.png")  # the cache is rebuilt
    for path in PATHS:
        train(root, tmp_path / path, "data.split=0.2", path)
        assert data_line(caplog) == "data folder: 7 train / 2 val / 2 test images, 2 classes, 3x8x8", path
    evaluate = entry_config("evaluate", checkpoint=str(checkpoint), log_dir=str(tmp_path / "events"))
    assert 0 <= evaluate_checkpoint(evaluate) <= 1  # src/evaluate.py reads the same folder


def test_a_symlink_loop_is_left_out_with_a_warning_and_both_data_paths_list_the_same_images(tmp_path, caplog):
    root = tmp_path / "photos"
    classes_of(root / "train")
    far = classes_of(tmp_path / "elsewhere", per_class=1)
    (root / "train" / "ants" / "loop").symlink_to("..")  # back to train/: followed, one class was counted 41 times
    (root / "train" / "ants" / "far.png").symlink_to(far / "ants" / "0.png")  # an image elsewhere: still one
    (root / "train" / "bees" / "more").symlink_to(far / "bees")  # a folder elsewhere, reached twice: listed once
    (root / "train" / "bees" / "more_again").symlink_to(far / "bees")
    (root / "train" / "ants" / "again.png").symlink_to(root / "train" / "ants" / "0.png")  # a file reached twice
    caplog.set_level("WARNING", logger="trainlab")
    samples, classes = list_images(root / "train")
    assert (f"warning: left out the symlink {root}/train/ants/loop: it points back to {root}/train, a folder above "
            "it (a loop)") in caplog.text
    assert classes == ["ants", "bees"]
    assert [os.path.relpath(f, root / "train") for f, _ in samples] == [
        "ants/0.png", "ants/1.png", "ants/2.png", "ants/3.png", "ants/far.png",
        "bees/0.png", "bees/1.png", "bees/2.png", "bees/3.png", "bees/more/0.png"]
    caplog.set_level("INFO", logger="trainlab")
    for path in PATHS:
        train(root, tmp_path / path, "data.val_split=0", path)
        assert data_line(caplog) == "data folder: 10 train / no val / no test images, 2 classes, 3x8x8", path
    assert caplog.text.count("left out the symlink") == 1  # said once, however often the runs walked the folder


@pytest.mark.parametrize("layout", ["train/", "data.split"])
def test_one_class_is_refused_a_classifier_needs_two(tmp_path, layout):
    root = tmp_path / "photos"
    classes_of(root / "train" if layout == "train/" else root, names=("ants",))
    split = ["data.split=0.2"] if layout == "data.split" else []
    folder = root / "train" if layout == "train/" else root
    with pytest.raises(TrainlabError, match=re.escape(
            f"{folder} holds one class folder, ants (4 images): a classifier needs at least 2 classes; add a folder "
            "of images for each other class beside ants")):
        train(root, tmp_path / "run", *split)


def test_an_image_past_the_decompression_bomb_limit_is_named_or_skipped(tmp_path, caplog, monkeypatch):
    root = tmp_path / "photos"
    classes_of(root / "train")
    warned, refused = root / "train" / "ants" / "big.png", root / "train" / "bees" / "huge.png"
    Image.new("RGB", (12, 12)).save(warned)  # 144 pixels: past data.max_pixels below (PIL would only warn)
    Image.new("RGB", (16, 16)).save(refused)  # 256: past twice PIL's limit, where PIL raises by itself
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # as a photo of more than 89 megapixels meets the default
    for path in PATHS:
        with pytest.raises(TrainlabError, match=re.escape(
                f"{warned} has 12x12 = 144 pixels, more than data.max_pixels=100: shrink the image, or raise "
                "data.max_pixels, or set data.bad_images=skip")):
            train(root, tmp_path / "fail", "data.val_split=0", "data.max_pixels=100", path)
    caplog.set_level("INFO", logger="trainlab")
    train(root, tmp_path / "skip", "data.val_split=0", "data.bad_images=skip", "data.max_pixels=100",
          "trainer.data_path=loader")
    assert f"skipped {warned}: has 12x12 = 144 pixels, more than data.max_pixels=100" in caplog.text
    assert f"skipped {refused}: is too large to decode safely" in caplog.text
    train(root, tmp_path / "resident", "data.val_split=0", "data.bad_images=skip", "data.max_pixels=100")
    assert data_line(caplog) == "data folder: 8 train / no val / no test images, 2 classes, 3x8x8"  # 10 less 2


def test_evaluate_on_a_folder_of_val_only_says_what_evaluate_needs(tmp_path):
    root = tmp_path / "photos"
    classes_of(root / "train")
    classes_of(root / "val", per_class=2)
    checkpoint = train(root, tmp_path / "run")
    only_val = tmp_path / "new"
    classes_of(only_val / "val", per_class=2)
    result = subprocess.run([sys.executable, "src/evaluate.py", f"checkpoint={checkpoint}", "split=val",
                             f"data.root={only_val}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and "Traceback" not in output and len(errors) == 1, output
    assert errors[0] == (
        f"error: data.root={only_val} holds val/ but no train/: evaluate reads a folder as the run did, the class "
        "folders in train/ (the run's classes), val/ and test/ beside it where they exist; give data.root a folder "
        "laid out so, or leave data.root out to evaluate on the run's own data")
    assert "data.train_dir" not in output  # a key evaluate refuses

"""Using a trained model: src/predict.py on real photos and folders, src/evaluate.py against the run's own numbers, and
one clear line for what a user can get wrong."""
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import QUICK, ROOT, SHARED, compose, entry_config, needs_shared, run_forked, scalars
from trainlab.runs.checkpoint import load_checkpoint
from trainlab.errors import TrainlabError
from trainlab.inference.score import evaluate_checkpoint
from trainlab.inference.predict import predict
from trainlab.data.shapes import CLASSES, draw_shape
from trainlab.training.recipe import run

pytestmark = pytest.mark.slow

# The model sees grey 32x32 images and its transform.test keeps each image's own size: photos must be converted to
# one channel and resized.
GREY = ["transform.train=[{type: grayscale, num_output_channels: 1}, {type: to_tensor}]",
        "transform.test=[{type: grayscale, num_output_channels: 1}, {type: to_tensor}]"]


def run_script(script, *args, cwd=ROOT) -> subprocess.CompletedProcess:
    """`python src/<script>.py ARGS`, as a user types it, from `cwd`."""
    return run_forked(*args, script=f"{script}.py", cwd=cwd)


def train(run_dir, *overrides):
    run(compose(*overrides, "trainer.epochs=1", *QUICK, "trainer.log_images=false"), run_dir)
    return run_dir / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def ants_checkpoint(ants_bees, tmp_path_factory):
    return train(tmp_path_factory.mktemp("ants_run"), "data=folder", f"data.root={ants_bees}", "data.image_size=32")


@pytest.fixture(scope="module")
def grey_checkpoint(tmp_path_factory):
    return train(tmp_path_factory.mktemp("grey_run"), "data=shapes", "data.num_train=200", "data.num_test=100",
                 "optimizer=adam", *GREY)


def blocks(output: str) -> dict:
    """predict's output -> {image path: [(probability, class), ...]}."""
    found, image = {}, None
    for line in output.splitlines():
        ranked = re.fullmatch(r"  (\d\.\d{4})  (.+)", line)
        if ranked:
            found[image].append((float(ranked[1]), ranked[2]))
        elif not line.startswith(("model ", "note: ")):
            image = line
            found[image] = []
    return found


def assert_ranked(ranked, classes, k):
    probabilities = [p for p, _ in ranked]
    assert len(ranked) == k and {name for _, name in ranked} <= set(classes)
    assert all(0 <= p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-3  # printed to 4 places
    assert probabilities == sorted(probabilities, reverse=True)


def test_predict_a_folder_of_photos_of_many_sizes_and_a_gif(ants_checkpoint, ants_bees, tmp_path):
    result = run_script("predict", f"checkpoint={ants_checkpoint}", f"image={ants_bees / 'train'}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    images = sorted(p for p in (ants_bees / "train").rglob("*") if p.is_file())
    found = blocks(result.stdout)
    assert list(found) == [str(p) for p in images] and any(p.suffix == ".gif" for p in images)
    for ranked in found.values():
        assert_ranked(ranked, ["ants", "bees"], k=2)  # top_k 3, capped at the class count
    assert "note:" not in result.stdout  # transform=resize brings every photo to 32x32 itself
    assert list(tmp_path.iterdir()) == []  # no run folder, no .hydra, no log file


def test_a_grey_model_takes_photos_and_images_of_any_mode_resized_once(grey_checkpoint, tmp_path, caplog):
    photos = needs_shared(SHARED / "data" / "hymenoptera_data")
    drawn = Image.fromarray(draw_shape(CLASSES.index("star"), 48, np.random.default_rng(0)))
    files = [tmp_path / "star.png", tmp_path / "grey.png", tmp_path / "palette.gif"]
    drawn.convert("RGBA").save(files[0])
    drawn.convert("L").save(files[1])
    drawn.convert("P").save(files[2])
    files += [sorted((photos / "val" / "bees").iterdir())[0], photos / "train" / "ants" / "imageNotFound.gif"]
    caplog.set_level("INFO", logger="trainlab")
    results = predict(entry_config("predict", checkpoint=str(grey_checkpoint), image=[str(f) for f in files], top_k=4))
    assert [path for path, _ in results] == files
    for _, ranked in results:
        assert_ranked([(p, name) for name, p in ranked], CLASSES, k=4)
    notes = [r.message for r in caplog.records if r.message.startswith("note:")]
    assert len(notes) == 1 and "1x48x48" in notes[0] and "resized to 32x32" in notes[0]


def test_evaluate_prints_the_runs_validation_accuracy_and_logs_the_confusion_matrix(ants_checkpoint):
    result = run_script("evaluate", f"checkpoint={ants_checkpoint}")  # ants and bees: train/ and val/, no test/
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert "error: the run's data has no test split (13 train / 6 val / no test images): evaluate split=val" in \
        result.stdout + result.stderr
    result = run_script("evaluate", f"checkpoint={ants_checkpoint}", "split=val")
    assert result.returncode == 0, result.stdout + result.stderr
    val_acc = load_checkpoint(ants_checkpoint)["val"]["acc"]
    right, total = map(int, re.search(rf"^accuracy {val_acc:.2%} \((\d+)/(\d+)\)$", result.stdout, re.M).groups())
    assert right / total == val_acc and total == 6  # the run's validation split: val/, 3 ants and 3 bees
    per_class = re.findall(r"^  (ants|bees) +[\d.]+% \((\d+)/(\d+)\)$", result.stdout, re.M)
    assert [name for name, _, _ in per_class] == ["ants", "bees"]
    assert sum(int(r) for _, r, _ in per_class) == right and sum(int(n) for _, _, n in per_class) == total
    log_dir = ants_checkpoint.parent.parent / "evaluate"
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["val/class_acc", "val/confusion_matrix"]  # a chart of each class's
    assert scalars(log_dir) == {"val/evaluate_acc": [(1, pytest.approx(val_acc))]}  # one card, not one a class


def test_evaluate_in_process_and_on_another_copy_of_the_data(grey_checkpoint, ants_checkpoint, ants_bees, tmp_path,
                                                             caplog):
    def evaluate(checkpoint, root=None, split="test"):
        return evaluate_checkpoint(entry_config("evaluate", checkpoint=str(checkpoint), data={"root": root}, split=split,
                                                log_dir=str(tmp_path / "events")))

    tested = load_checkpoint(grey_checkpoint)  # a run of shapes: held-out validation, and its own test split
    assert evaluate(grey_checkpoint.parent.parent) == tested["test"]["acc"]  # a run folder: its best.pt
    assert evaluate(grey_checkpoint, split="val") == tested["val"]["acc"]  # the same held-out images as the run's
    copy = shutil.copytree(ants_bees, tmp_path / "copy")
    next((copy / "val" / "bees").iterdir()).unlink()
    caplog.set_level("INFO", logger="trainlab")
    assert 0 <= evaluate(ants_checkpoint, str(copy), "val") <= 1
    assert "data folder: 5 val images" in caplog.text
    (copy / "train" / "wasps").mkdir()
    shutil.copy(next((copy / "train" / "ants").iterdir()), copy / "train" / "wasps")
    shutil.copytree(copy / "train" / "wasps", copy / "val" / "wasps")
    with pytest.raises(TrainlabError, match=r"the checkpoint knows classes \['ants', 'bees'\]"):
        evaluate(ants_checkpoint, str(copy), "val")


@pytest.fixture
def bad_inputs(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return tmp_path


@pytest.mark.parametrize("script,args,expected", [
    ("predict", ["checkpoint={tmp}/notes.pt", "image={tmp}/broken.jpg"], "not a readable trainlab checkpoint"),
    ("predict", ["checkpoint={ckpt}", "image={tmp}/none.jpg"], "image {tmp}/none.jpg does not exist"),
    ("predict", ["checkpoint={ckpt}", "image={tmp}/empty"], "{tmp}/empty holds no image files"),
    ("predict", ["checkpoint={ckpt}", "image={tmp}/broken.jpg"], "{tmp}/broken.jpg cannot be decoded"),
    ("evaluate", ["checkpoint={tmp}/none.pt"], "checkpoint {tmp}/none.pt does not exist"),
])
def test_bad_input_gets_one_clear_line_and_exit_2(ants_checkpoint, bad_inputs, script, args, expected):
    def fill(text):
        return text.format(tmp=bad_inputs, ckpt=ants_checkpoint)

    result = run_script(script, *map(fill, args))
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and "Traceback" not in output and len(errors) == 1, output
    assert fill(expected) in errors[0]

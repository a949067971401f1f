"""Three splits with clear roles: validation held out the same way whatever trainer.seed, the folder cases, the
best epoch chosen on validation, the test split scored once, early stopping and the time budget."""
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import QUICK, compose
from trainlab.runs.checkpoint import load_checkpoint
from trainlab.data.build import build_run_data
from trainlab.data.datasets import build_data
from trainlab.errors import TrainlabError
from trainlab.runs.folder import read_metrics
from trainlab.data.splits import hold_out, targets_of
from trainlab.training.recipe import run
from trainlab.data.transforms import build_transforms, check_transforms

SHAPES = ["data=shapes", "data.num_train=1000", "data.num_test=200"]


def test_hold_out_takes_the_same_share_of_every_class_and_keeps_each_image_in_one_split():
    targets = [0] * 50 + [1] * 30 + [2] * 3 + [3] * 1  # unbalanced, a class of 3 and one of a single image
    kept, held = hold_out(targets, 0.1, seed=0)
    assert sorted(kept + held) == list(range(len(targets))) and not set(kept) & set(held)
    assert Counter(targets[i] for i in held) == {0: 5, 1: 3, 2: 1}  # round(0.1 n), at least one, none of a lone image
    assert hold_out(targets, 0.1, seed=0) == (kept, held)  # the seed alone decides
    assert hold_out(targets, 0.1, seed=1)[1] != held


def test_validation_is_held_out_of_train_by_split_seed_alone_and_goes_through_the_test_pipeline():
    cfg = compose(*SHAPES, "transform=augment")
    data = build_data(cfg.data, *build_transforms(check_transforms(cfg.transform)))
    assert (len(data.train), len(data.val), len(data.test)) == (900, 100, 200)
    assert Counter(targets_of(data.val)) == {label: 10 for label in range(10)}  # 100 images a class, 10 held out
    assert not set(data.train.indices) & set(data.val.indices)  # both index the same 1,000 training images
    # the test pipeline (no random crop or flip): a validation image is the same every time it is read
    assert torch.equal(data.val[0][0], data.val[0][0])
    seeds = []
    for seed in (0, 1):
        cfg = compose(*SHAPES, f"trainer.seed={seed}")
        data, loaders, _ = build_run_data(cfg.data, check_transforms(cfg.transform), torch.device("cpu"),
                           data_path=cfg.trainer.data_path, seed=cfg.trainer.seed)
        seeds.append(torch.cat([images for images, _ in loaders.val]))
    assert torch.equal(*seeds)  # another trainer.seed, the same validation images
    cfg = compose(*SHAPES, "data.split_seed=1")
    other = build_data(cfg.data, *build_transforms(check_transforms(cfg.transform)))
    assert set(other.val.indices) != set(build_data(compose(*SHAPES).data, *build_transforms(
        check_transforms(compose(*SHAPES).transform))).val.indices)
    cfg = compose(*SHAPES, "data.val_split=0")
    assert build_data(cfg.data, *build_transforms(check_transforms(cfg.transform))).val is None


def image_folder(root, splits: dict):
    """{split folder: images a class} of two classes of 8x8 PNGs."""
    for split, count in splits.items():
        for label, colour in (("cats", 40), ("dogs", 200)):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = np.full((8, 8, 3), colour + i, dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


@pytest.mark.parametrize("path", ["resident", "loader"])
@pytest.mark.parametrize("folders,sizes", [
    ({"train": 10}, (18, 2, None)),  # no val/: held out of train; no test/
    ({"train": 10, "val": 3}, (20, 6, None)),  # the tutorial's layout
    ({"train": 10, "val": 3, "test": 4}, (20, 6, 8)),
    ({"train": 10, "test": 4}, (18, 2, 8)),
])
def test_a_folder_uses_its_val_and_test_folders_where_they_exist(tmp_path, folders, sizes, path):
    cfg = compose("data=folder", f"data.root={image_folder(tmp_path, folders)}", "data.image_size=8",
                  f"trainer.data_path={path}")
    data, loaders, _ = build_run_data(cfg.data, check_transforms(cfg.transform), torch.device("cpu"),
                           data_path=cfg.trainer.data_path, seed=cfg.trainer.seed)
    got = tuple(None if split is None else len(split) for split in (data.train, data.val, data.test))
    assert got == sizes
    assert (loaders.test is None) == (sizes[2] is None)


def test_a_folder_split_holds_out_test_then_validation(tmp_path):
    root = image_folder(tmp_path, {"all": 10})
    cfg = compose("data=folder", f"data.root={root / 'all'}", "data.image_size=8", "data.split=0.2")
    data = build_data(cfg.data, *build_transforms(check_transforms(cfg.transform)))
    assert (len(data.train), len(data.val), len(data.test)) == (14, 2, 4)  # 20 images: 4 test, then 2 of 16 val


def test_the_same_folder_for_validation_and_test_is_refused(tmp_path):
    root = image_folder(tmp_path, {"train": 4, "val": 2})
    cfg = compose("data=folder", f"data.root={root}", "data.image_size=8", "data.test_dir=val")
    with pytest.raises(TrainlabError, match="data.val_dir and data.test_dir are both 'val'"):
        build_data(cfg.data, *build_transforms(check_transforms(cfg.transform)))


RUN = [*SHAPES, "data.num_train=500", "data.num_test=100", *QUICK, "trainer.log_images=false", "optimizer=adam"]


@pytest.mark.slow
def test_best_pt_is_the_epoch_of_the_lowest_val_loss_with_monitor_val_loss(tmp_path):
    best = run(compose(*RUN, "trainer.epochs=4", "trainer.monitor=val/loss"), tmp_path)
    rows = read_metrics(tmp_path)
    epochs = [row for row in rows if row["epoch"] != "test"]
    chosen = min(epochs, key=lambda row: row["val_loss"])
    assert best == pytest.approx(chosen["val_loss"], abs=1e-5)
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert checkpoint["epoch"] == chosen["epoch"] and checkpoint["test"]["epoch"] == chosen["epoch"]
    assert rows[-1]["epoch"] == "test" and rows[-1]["val_loss"] == pytest.approx(chosen["val_loss"], abs=1e-5)


@pytest.mark.slow
def test_early_stopping_stops_after_patience_epochs_without_improvement_and_still_tests(tmp_path, caplog):
    # a learning rate too small to move the weights: epoch 1 is the best, no later epoch betters it
    settings = [*RUN, "optimizer.lr=1e-12", "trainer.epochs=10", "trainer.early_stopping_patience=2"]
    caplog.set_level("INFO", logger="trainlab")
    run(compose(*settings), tmp_path)
    assert "early stopping: no better val/acc in the 2 epochs after epoch 1" in caplog.text
    assert [row["epoch"] for row in read_metrics(tmp_path)] == [1, 2, 3, "test"]
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["test"]["epoch"] == 1
    caplog.clear()
    run(compose(*settings), tmp_path)  # again in the same folder
    assert "nothing to do" in caplog.text and "it stopped early" in caplog.text


@pytest.mark.slow
def test_a_time_budget_stops_cleanly_after_a_checkpoint_and_a_rerun_goes_on(tmp_path, caplog):
    caplog.set_level("INFO", logger="trainlab")
    run(compose(*RUN, "trainer.epochs=3", "trainer.max_minutes=0.0001"), tmp_path)
    assert "time budget: trainer.max_minutes=0.0001 spent at epoch 1, batch 1" in caplog.text
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["position"] == {"epoch": 1, "batch": 1} and last["test"] is not None  # tested all the same
    assert [row["epoch"] for row in read_metrics(tmp_path)] == ["test"]
    caplog.clear()
    run(compose(*RUN, "trainer.epochs=3"), tmp_path)  # the budget lifted: on to the end
    assert "resuming" in caplog.text
    assert [row["epoch"] for row in read_metrics(tmp_path)] == [1, 2, 3, "test"]  # the early test row replaced

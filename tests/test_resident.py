"""The device-resident data path sees the same data as the DataLoader path, and its cache follows its source."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose
from trainlab.data.build import build_run_data
from trainlab.data.datasets import build_data, build_loaders
from trainlab.errors import TrainlabError
from trainlab.data.resident import NotResident, build_resident
from trainlab.data.transforms import BatchedSteps, build_pipeline, build_transforms, check_transforms


def both_paths(*overrides, seed=0):
    cfg = compose("data=shapes", "data.num_train=200", "data.num_test=60", *overrides)
    steps = check_transforms(cfg.transform)
    loader_data = build_data(cfg.data, *build_transforms(steps))
    loaders = build_loaders(cfg.data, loader_data, seed)
    resident = build_resident(cfg.data, steps, torch.device("cpu"), seed, progress=False)
    return loader_data, loaders, resident


@pytest.mark.parametrize("transform", ["to_tensor", "normalize"])
def test_deterministic_pipelines_give_identical_tensors_on_both_paths(transform):
    loader_data, loaders, (resident_data, resident) = both_paths(
        f"transform={transform}", "data.shuffle=false", "data.subset=150", "data.batch_size=32")
    assert loader_data.image_shape == resident_data.image_shape and loader_data.classes == resident_data.classes
    for a, b in ((loaders.train, resident.train), (loaders.val, resident.val), (loaders.test, resident.test)):
        assert len(a) == len(b) > 0
        for (x1, y1), (x2, y2) in zip(a, b):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def marked_image(size=8):
    """Pixel (r, c) holds r * size + c + 1 in every channel: a crop's offset and a flip can be read back."""
    values = np.arange(1, size * size + 1, dtype=np.uint8).reshape(size, size)
    return np.stack([values] * 3, axis=-1)


def read_offsets(batch: torch.Tensor, size=8, padding=2):
    """(N, C, size, size) uint8 crops of the marked image -> [(top, left, flipped)] (top/left in padded pixels)."""
    found = []
    for crop in batch[:, 0].long():
        flipped = bool((crop[crop > 0].view(-1)[:2].diff() < 0).any()) if (crop > 0).sum() > 1 else False
        if flipped:
            crop = crop.flip(1)
        r, c = (crop > 0).nonzero()[0].tolist()
        first = crop[r, c].item() - 1  # the original pixel at (r, c) of the crop
        found.append((first // size - r + padding, first % size - c + padding, flipped))
    return found


def test_random_crop_and_flip_draw_the_same_distributions_on_the_device():
    steps = [{"type": "random_crop", "size": 8, "padding": 2}, {"type": "random_horizontal_flip", "p": 0.5},
             {"type": "pil_to_tensor"}]
    n = 3000
    per_image = build_pipeline(steps, "t")
    torch.manual_seed(0)
    image = Image.fromarray(marked_image())
    reference = torch.stack([per_image(image) for _ in range(n)])
    batched = BatchedSteps(steps[:2], torch.Generator().manual_seed(1))
    device_made = batched(torch.from_numpy(marked_image()).permute(2, 0, 1).unsqueeze(0).repeat(n, 1, 1, 1))
    assert device_made.shape == reference.shape and device_made.dtype == torch.uint8
    a, b = read_offsets(reference), read_offsets(device_made)

    def histogram(found):
        counts = np.zeros((5, 5))
        for top, left, _ in found:
            counts[top, left] += 1
        return counts / len(found)

    assert np.abs(histogram(a) - histogram(b)).sum() / 2 < 0.06  # total variation; uniform over the 25 offsets
    assert np.abs(histogram(b) - 1 / 25).max() < 0.015
    flips = [np.mean([f for *_, f in found]) for found in (a, b)]
    assert abs(flips[0] - 0.5) < 0.04 and abs(flips[1] - 0.5) < 0.04
    assert len(set(map(tuple, device_made[:50, 0, 0].tolist()))) > 10  # every image draws its own crop


def tiny_folder(root, per_class=6):
    for split in ("train", "val"):
        for label, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (10 + i, 12), colour).save(root / split / label / f"{i}.png")


def test_the_cache_is_written_reused_and_rebuilt_when_the_source_changes(tmp_path, caplog):
    tiny_folder(tmp_path)
    cfg = compose("data=folder", f"data.root={tmp_path}", "data.image_size=8")
    steps = check_transforms(cfg.transform)
    cpu = torch.device("cpu")
    caplog.set_level("INFO", logger="trainlab")
    first = build_resident(cfg.data, steps, cpu, 0, False)[0]
    caches = list((tmp_path / ".trainlab-cache").glob("*.pt"))
    assert len(caches) == 1 and "cached in" in caplog.text
    caplog.clear()
    again = build_resident(cfg.data, steps, cpu, 0, False)[0]
    assert "decoded images from" in caplog.text and torch.equal(first.train.images, again.train.images)
    Image.new("RGB", (9, 9), (0, 200, 0)).save(tmp_path / "train" / "red" / "new.png")
    grown = build_resident(cfg.data, steps, cpu, 0, False)[0]
    assert len(grown.train) == len(first.train) + 1
    assert len(list((tmp_path / ".trainlab-cache").glob("*.pt"))) == 2
    resized = build_resident(compose("data=folder", f"data.root={tmp_path}", "data.image_size=4").data,
                             check_transforms(compose("data=folder", "data.root=x", "data.image_size=4").transform),
                             cpu, 0, False)[0]
    assert resized.image_shape == (3, 4, 4)  # a baked step changed: decoded again


def test_auto_falls_back_to_the_loader_and_forcing_resident_names_the_step():
    cfg = compose("data=shapes", "data.num_train=64", "data.num_test=32",
                  "transform=resize_augment")
    with pytest.raises(NotResident, match=r"transform.train step 0 \(random_resized_crop\) has no batched twin"):
        build_resident(cfg.data, check_transforms(cfg.transform), torch.device("cpu"), 0, False)
    for path, expected in (("auto", "DataLoader (transform.train step 0"), ("resident", None)):
        cfg.trainer.data_path = path
        if expected:
            assert build_run_data(cfg.data, check_transforms(cfg.transform), torch.device("cpu"),
                           data_path=cfg.trainer.data_path, seed=cfg.trainer.seed)[2].startswith(expected)
        else:
            with pytest.raises(TrainlabError, match="trainer.data_path=resident cannot be used"):
                build_run_data(cfg.data, check_transforms(cfg.transform), torch.device("cpu"),
                           data_path=cfg.trainer.data_path, seed=cfg.trainer.seed)


@pytest.mark.parametrize("mix", [None, "mixup", "cutmix"])
def test_each_process_of_a_data_parallel_run_augments_its_images_as_one_process_does(mix):
    """Shifted crops and flips: each process draws for the whole batch and keeps its share's draws, so the images of
    two processes, interleaved as the batch was shared (every other image), are one process's batch; a mix pairs
    each image with the one before it in the whole batch (another process's), with the batch's ratio."""
    cfg = compose("data=shapes", "data.num_train=203", "data.num_test=20", "transform=augment", "data.batch_size=24")
    cfg.transform.train = [*cfg.transform.train, *([{"type": mix}] if mix else [])]  # last, as mixes go
    steps = check_transforms(cfg.transform)

    def epoch_two(shard):
        loaders = build_resident(cfg.data, steps, torch.device("cpu"), 0, False, shard)[1]
        loaders.train.start(2)
        return list(loaders.train)

    one, first, second = epoch_two((0, 1)), epoch_two((0, 2)), epoch_two((1, 2))
    assert len(one) == len(first) == len(second) and len(one[-1][0]) % 2  # the last batch's shares differ in size
    for (images, labels), (a, y_a), (b, y_b) in zip(one, first, second):
        merged, merged_labels = torch.empty_like(images), torch.empty_like(labels)
        merged[0::2], merged[1::2], merged_labels[0::2], merged_labels[1::2] = a, b, y_a, y_b
        assert torch.equal(merged, images) and torch.equal(merged_labels, labels)
    if mix:  # soft targets, mixed in earnest in some batch (mixup's ratio is often near 0 or 1)
        assert any((labels.max(1).values < 0.9).any() for _, labels in one)

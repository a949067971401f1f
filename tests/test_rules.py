"""The pieces that have rules: transform order, block shapes, checkpoints, seeds, subsets."""
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose
from trainlab.runs.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from trainlab.errors import TrainlabError
from trainlab.models.blocks import summary_table
from trainlab.models.build import build_model
from trainlab.data.transforms import build_pipeline, check_pipeline, normalization


def blocks(*items):
    return OmegaConf.create({"name": "test", "blocks": list(items)})


@pytest.mark.parametrize("steps,message", [
    ([{"type": "normalize", "mean": [0.5], "std": [0.5]}, {"type": "to_tensor"}],
     "step 0 (normalize): needs a tensor but gets a PIL image: put it after to_tensor"),
    ([{"type": "to_tensor"}, {"type": "to_tensor"}], "step 1 (to_tensor): needs a PIL image but gets a tensor"),
    ([{"type": "resize", "size": [8, 8]}], "ends with a PIL image: add {type: to_tensor}"),
    ([{"type": "random_crop"}, {"type": "to_tensor"}], "step 0 (random_crop): set size"),
    ([{"type": "random_crop", "size": 8, "pad": 2}, {"type": "to_tensor"}], "'pad' does not apply; it takes size"),
    ([{"type": "random_flip"}, {"type": "to_tensor"}], "step 0 (random_flip): unknown step"),
    ([{"type": "random_horizontal_flip", "p": "often"}, {"type": "to_tensor"}], "p must be a number, not 'often'"),
])
def test_a_pipeline_that_cannot_work_fails_naming_the_step(steps, message):
    with pytest.raises(TrainlabError, match="transform.train") as e:
        build_pipeline(steps, "transform.train")
    assert message in str(e.value)


def test_the_image_grid_undoes_the_last_normalize_step():
    steps = [{"type": "resize", "size": [8, 8]}, {"type": "to_tensor"}, {"type": "normalize", "mean": [0.5],
                                                                          "std": [0.2]}]
    assert normalization(check_pipeline(steps, "t")) == ([0.5], [0.2])
    assert normalization(check_pipeline(steps[:2], "t")) is None


def test_input_sizes_are_inferred_so_one_model_file_fits_grey_28px_and_colour_32px():
    cfg = compose("model=tudui").model
    grey, colour = build_model(cfg, (1, 28, 28), 10), build_model(cfg, (3, 32, 32), 10)
    assert grey[0].in_channels == 1 and grey[7].in_features == 64 * 3 * 3
    assert colour[0].in_channels == 3 and colour[7].in_features == 64 * 4 * 4
    assert build_model(cfg, (3, 32, 32), 2)[-1].out_features == 2  # last linear: the number of classes


def test_changing_one_width_is_one_edit():
    cfg = compose("model=tudui", "model.blocks.4.out_channels=16").model
    assert build_model(cfg, (3, 32, 32), 10)[7].in_features == 16 * 4 * 4


@pytest.mark.parametrize("items,message", [
    ([{"type": "conv", "out_channels": 4, "kernel_size": 3}, {"type": "linear"}],
     "model block 1 (linear) needs flat input but gets (4, 6, 6): put a {type: flatten} block before it"),
    ([{"type": "flatten"}, {"type": "conv", "out_channels": 4, "kernel_size": 3}, {"type": "linear"}],
     "model block 1 (conv) needs image-shaped input"),
    ([{"type": "maxpool", "kernel_size": 16}, {"type": "flatten"}, {"type": "linear"}],
     "model block 0 (maxpool) cannot take input of shape (3, 8, 8)"),
    ([{"type": "conv", "out_channel": 4, "kernel_size": 3}], "model block 0 (conv): 'out_channel' does not apply"),
    ([{"type": "conv", "kernel_size": 3}], "model block 0 (conv): set out_channels"),
    ([{"type": "convolution"}], "model block 0 (convolution): unknown block type"),
    ([{"type": "flatten"}, {"type": "linear", "out_features": 7}], "ends with output shape (7,), but the data has 10"),
    ([{"type": "flatten"}, {"type": "linear", "out_features": "wide"}], "out_features must be an integer"),
])
def test_a_model_that_cannot_take_the_data_fails_naming_the_block(items, message):
    with pytest.raises(TrainlabError) as e:
        build_model(blocks(*items), (3, 8, 8), 10)
    assert message in str(e.value)


def test_summary_lists_every_block_with_output_shape_and_parameters():
    net = build_model(compose("model=tudui").model, (3, 32, 32), 10)
    table = summary_table(net, (3, 32, 32))
    assert "conv 3->32 k5 s1 p2" in table and "64x4x4" in table and "65,600" in table
    assert table.splitlines()[-1].split()[-1] == "145,578"


def test_checkpoint_round_trip_is_weights_only_and_atomic(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "config": {"a": [1, 2]}, "classes": ["x", "y"], "epoch": 2}
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, state)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["classes"] == ["x", "y"]


def test_a_checkpoint_of_a_newer_format_is_refused_not_misread(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": FORMAT + 1, "model": {}})
    with pytest.raises(TrainlabError, match=f"newer trainlab \\(checkpoint format {FORMAT + 1}, this one reads up"):
        load_checkpoint(path)
    save_checkpoint(path, {"model": {}})  # written before records had a format
    assert load_checkpoint(path) == {"model": {}}


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(TrainlabError, match="not a readable trainlab checkpoint"):
        load_checkpoint(path)


def test_targets_off_the_allow_list_are_refused():
    from trainlab.training.optim import build_loss

    with pytest.raises(TrainlabError, match="not allowed"):
        build_loss(OmegaConf.create({"_target_": "os.system", "command": "echo hi"}))


def test_an_epoch_resumed_part_way_times_only_the_batches_this_process_trained():
    from trainlab.training.clock import Clock
    from trainlab.training.epoch import Epoch, EpochProgress, Sums

    class Step:  # what an Epoch asks of a step: a device, a model, and (loss, correct) for a batch
        device, model = torch.device("cpu"), torch.nn.Identity()

        def __call__(self, images, targets, share=1.0, update=True):
            return torch.tensor(1.0), torch.tensor(3)

    progress = EpochProgress(torch.device("cpu"))
    progress.sums = Sums(torch.tensor(64.0), torch.tensor(6), seen=64)  # 2 batches before
    batches = [(torch.zeros(32, 1), torch.zeros(32, dtype=torch.long))] * 3
    epoch = Epoch(Step(), batches, Clock(epochs=1, batches=5, batch=2), progress)
    assert list(epoch) == [3, 4, 5]
    stats = epoch.scores()
    assert (stats.images, stats.timed) == (160, 96)  # the epoch's loss and accuracy cover all 5; its speed these 3
    assert stats.images_per_s == 96 / stats.seconds

"""Every option of every config group composes and builds; the schemas reject what they should, at compose time."""
import copy

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose, options
from trainlab.data.datasets import build_data
from trainlab.errors import TrainlabError
from trainlab.models.build import build_model
from trainlab.training.optim import build_loss, build_optimizer
from trainlab.training.schedule import build_schedule
from trainlab.training.numerics import Numerics
from trainlab.training.step import CudaGraphStep, TrainStep, graphs_off
from trainlab.data.transforms import (BatchedSteps, build_pipeline, build_transforms, check_transforms,
                                      split_for_device)


# (channels, native height and width) of each data option's images
NATIVE = {"cifar10": (3, 32), "mnist": (1, 28), "fashion_mnist": (1, 28), "shapes": (3, 32), "folder": (3, 300)}


def test_every_group_has_its_options():  # the shipped ones; a user's own file beside them is tested like them
    assert {"cifar10", "fashion_mnist", "folder", "mnist", "shapes"} <= set(options("data"))
    assert {"tudui", "lenet", "vgg_small", "mlp"} <= set(options("model"))
    assert {"adam", "adamw", "muon", "sgd"} <= set(options("optimizer"))
    assert {"cosine", "none", "onecycle", "step"} <= set(options("scheduler"))
    assert {"cross_entropy", "l1", "mse"} <= set(options("loss"))


@pytest.mark.parametrize("data", options("data"))
@pytest.mark.parametrize("transform", options("transform"))
def test_data_and_transform_options_compose_and_transform_an_image(data, transform):
    learned = ["data.image_size=64"] if compose(f"data={data}").data.name == "folder" else []  # a run learns it from the folder (test_runs.py)
    cfg = compose(f"data={data}", f"transform={transform}", "data.root=somewhere", *learned)
    channels, side = NATIVE[cfg.data.name]  # a data option of the user's own is one of these builders
    image = Image.new("RGB" if channels == 3 else "L", (side + 17 * (cfg.data.name == "folder"), side))
    steps = check_transforms(cfg.transform)
    pipelines = [build_pipeline(steps["test"], "transform.test")]
    if any(step.get("alternate") for step in steps["train"]):  # a step that only the resident path runs
        with pytest.raises(TrainlabError, match="runs on the resident path only"):
            build_pipeline(steps["train"], "transform.train")
        bake, tail = split_for_device(steps["train"], "transform.train")
        batch = build_pipeline(bake, "decode")(image).unsqueeze(0)
        pipelines.append(lambda _: BatchedSteps(tail, torch.Generator())(batch, torch.tensor([0]), 1)[0])
    else:
        pipelines.append(build_pipeline(steps["train"], "transform.train"))
    for pipeline in pipelines:
        out = pipeline(image)
        assert out.dtype == torch.float32 and out.shape[0] == channels


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("shape,classes", [((3, 32, 32), 10), ((1, 28, 28), 10), ((3, 64, 64), 2)])
def test_every_model_builds_for_each_data_shape_and_runs_a_batch(model, shape, classes):
    cfg = compose(f"model={model}")
    if model == "vit_b_16":  # made for 224x224 images: smaller ones are one line
        with pytest.raises(TrainlabError, match=f"model vit_b_16 cannot take {'x'.join(map(str, shape))} images"):
            build_model(cfg.model, shape, classes)
        return
    net = build_model(cfg.model, shape, classes)
    assert net(torch.rand(4, *shape)).shape == (4, classes)


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
@pytest.mark.parametrize("loss", options("loss"))
def test_optimizer_scheduler_and_loss_options_take_a_step(optimizer, scheduler, loss):
    cfg = compose(f"optimizer={optimizer}", f"scheduler={scheduler}", f"loss={loss}", "trainer.epochs=2")
    net = torch.nn.Linear(5, 3)
    opt = build_optimizer(cfg.optimizer, net)
    schedule = build_schedule(cfg.scheduler, opt, total_steps=10)
    sched, interval = schedule.scheduler, schedule.interval
    loss_fn = build_loss(cfg.loss)
    before = net.weight.detach().clone()
    value = loss_fn(net(torch.rand(8, 5)), torch.randint(0, 3, (8,)))
    value.backward()
    opt.step()
    if sched is not None:
        sched.step()
    assert interval in ("epoch", "step")
    assert value.ndim == 0 and not torch.equal(before, net.weight)


def test_tudui_is_the_tutorials_network_exactly():
    net = build_model(compose("model=tudui").model, (3, 32, 32), 10)
    assert sum(p.numel() for p in net.parameters()) == 145_578
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(32, (5, 5), (2, 2)), (32, (5, 5), (2, 2)),
                                                                            (64, (5, 5), (2, 2))]


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_trainlab_step_is_the_tutorials_step(channels_last):
    """From the same weights on the same batches, the tutorial's loop and TrainStep end at the same weights: bit for
    bit in the tutorial's layout, to rounding in channels_last (the CPU's default). Speed changed the pace, not the
    arithmetic."""
    torch.manual_seed(0)
    cfg = compose("model=tudui", "optimizer=sgd", "loss=cross_entropy")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    ours = build_model(cfg.model, (3, 32, 32), 10).to(memory_format=layout)
    nn = torch.nn
    tutorial = nn.Sequential(nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 5, padding=2),
                             nn.MaxPool2d(2), nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(1024, 64), nn.Linear(64, 10))
    tutorial.load_state_dict(ours.state_dict())
    start = {k: v.clone() for k, v in tutorial.state_dict().items()}
    step = TrainStep(ours, build_loss(cfg.loss), build_optimizer(cfg.optimizer, ours),
                     Numerics(torch.device("cpu"), channels_last=channels_last))
    loss_fn, sgd = nn.CrossEntropyLoss(), torch.optim.SGD(tutorial.parameters(), lr=0.01)  # the tutorial's
    for _ in range(20):
        images, targets = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
        step(images, targets)
        loss = loss_fn(tutorial(images), targets)
        sgd.zero_grad()
        loss.backward()
        sgd.step()
    mine, theirs = ours.state_dict(), tutorial.state_dict()
    assert max((theirs[k] - start[k]).abs().max() for k in theirs) > 1e-3  # the steps moved the weights
    tolerance = 1e-6 if channels_last else 0.0
    assert all(torch.allclose(mine[k], theirs[k], rtol=0, atol=tolerance) for k in theirs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA graph needs a GPU; run where one is lent")
def test_the_cuda_graph_step_matches_the_eager_step_across_a_learning_rate_change():
    """Recorded once, replayed, recorded again when the learning rate changes, eager for a short last batch: the
    graph step ends where eager steps end, and each replay's outputs are right when read before the next."""
    torch.manual_seed(0)
    cfg = compose("model=tudui", "optimizer=sgd", "optimizer.momentum=0.9", "loss=cross_entropy")
    numerics = Numerics(torch.device("cuda"))
    eager_model = build_model(cfg.model, (3, 32, 32), 10).cuda()
    graph_model = copy.deepcopy(eager_model)
    eager_sgd, graph_sgd = (build_optimizer(cfg.optimizer, m) for m in (eager_model, graph_model))
    eager = TrainStep(eager_model, build_loss(cfg.loss), eager_sgd, numerics)
    graph = CudaGraphStep(TrainStep(graph_model, build_loss(cfg.loss), graph_sgd, numerics),
                          batch_shape=(64, 3, 32, 32))
    for i in range(12):
        if i == 7:  # after warm-up and a few replays
            for group in (*eager_sgd.param_groups, *graph_sgd.param_groups):
                group["lr"] = 0.001
        size = 64 if i < 11 else 40  # the last batch is short: eager inside the graph step
        images, targets = torch.rand(size, 3, 32, 32, device="cuda"), torch.randint(0, 10, (size,), device="cuda")
        (eager_loss, eager_right), (graph_loss, graph_right) = eager(images, targets), graph(images, targets)
        assert torch.allclose(eager_loss, graph_loss, atol=1e-5) and eager_right.item() == graph_right.item(), i
    assert graph.graph is not None and graph.graph_lr == 0.001
    mine, theirs = graph_model.state_dict(), eager_model.state_dict()
    assert all(torch.allclose(mine[k], theirs[k], atol=1e-5) for k in theirs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA graph needs a GPU; run where one is lent")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_cuda_graph_replays_a_per_step_warmup_and_clipping(precision):
    """Adam reads its rate from the device: one graph, recorded once, replays every rate of a warm-up in front of a
    per-step schedule, the gradients clipped inside it, and ends where eager steps end."""
    torch.manual_seed(0)
    cfg = compose("model=tudui", "optimizer=adam", "scheduler=onecycle", "scheduler.warmup_steps=6")
    numerics = Numerics(torch.device("cuda"), precision)
    eager_model = build_model(cfg.model, (3, 32, 32), 10).cuda()
    graph_model = copy.deepcopy(eager_model)
    steps = []
    for model, graphs in ((eager_model, False), (graph_model, True)):
        optimizer = build_optimizer(cfg.optimizer, model)
        schedule = build_schedule(cfg.scheduler, optimizer, total_steps=12)
        step = TrainStep(model, build_loss(cfg.loss), optimizer, numerics, clip_grad_norm=0.5,
                         hooks=[schedule.after_step])
        steps.append((CudaGraphStep(step, batch_shape=(64, 3, 32, 32)) if graphs else step, schedule))
    (eager, eager_schedule), (graph, graph_schedule) = steps
    for i in range(12):
        images, targets = torch.rand(64, 3, 32, 32, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
        (eager_loss, _), (graph_loss, _) = eager(images, targets), graph(images, targets)
        assert torch.allclose(eager_loss.float(), graph_loss.float(), atol=1e-3), i
        assert graph_schedule.lr == pytest.approx(eager_schedule.lr), i
    assert graph.rates_on_device and graph.graph_lr is None  # recorded once: the rate is read, not baked in
    mine, theirs = graph_model.state_dict(), eager_model.state_dict()
    assert all(torch.allclose(mine[k].float(), theirs[k].float(), atol=1e-3) for k in theirs)


def test_a_step_a_cuda_graph_cannot_hold_is_named_with_the_setting_that_keeps_it_eager():
    model = torch.nn.Linear(4, 2)
    cpu = Numerics(torch.device("cpu"))

    def why(optimizer="sgd", accumulate=1, per_step=False, **settings):
        step = TrainStep(model, torch.nn.CrossEntropyLoss(), build_optimizer(compose(f"optimizer={optimizer}").optimizer,
                                                                              model), cpu, **settings)
        return graphs_off(step, accumulate, per_step)

    assert why() is None and why("adam", per_step=True) is None  # Adam reads a per-step rate from the GPU
    assert "accumulate_grad_batches=4" in why(accumulate=4)
    assert "nonfinite=skip" in why(skip_nonfinite=True)
    assert "per-step schedule" in why("sgd", per_step=True)


def test_onehot_losses_compare_softmax_with_one_hot_targets():
    logits, target = torch.tensor([[10.0, -10.0]]), torch.tensor([0])
    for loss in ("mse", "l1"):
        assert build_loss(compose(f"loss={loss}").loss)(logits, target).item() < 1e-6


def test_onecycle_runs_over_the_whole_training():
    cfg = compose("scheduler=onecycle", "optimizer.lr=0.1")
    opt = build_optimizer(cfg.optimizer, torch.nn.Linear(2, 2))
    schedule = build_schedule(cfg.scheduler, opt, total_steps=40)
    sched, interval = schedule.scheduler, schedule.interval
    assert interval == "step" and sched.total_steps == 40


@pytest.mark.parametrize("override,message", [
    ("optimizer.lrr=0.1", "Key 'lrr' not in 'SGDConfig'"),
    ("trainer.epochs=many", "trainer.epochs"),
    ("data.batchsize=8", "Key 'batchsize' not in 'DataConfig'"),
    ("model=resnet999", "Could not find 'model/resnet999'"),
    ("trainer.progress_bar=maybe", "trainer.progress_bar"),
])
def test_schema_rejects_misspelt_keys_unknown_options_and_wrong_types(override, message):
    with pytest.raises(ConfigCompositionException) as e:
        compose(override)
    assert message in str(e.value) + str(e.value.__cause__)


def test_the_composed_config_is_plain_and_complete():
    cfg = compose()
    assert OmegaConf.missing_keys(cfg) == set()
    assert cfg.data.name == "cifar10" and cfg.model.name == "tudui" and cfg.optimizer.lr == 0.01
    assert cfg.data.batch_size == 64 and cfg.trainer.epochs == 10


def test_offline_cifar10_without_the_archive_names_both_ways_out(tmp_path):
    cfg = compose(f"data.root={tmp_path}", "data.download=false")
    train_tf, test_tf = build_transforms(check_transforms(cfg.transform))
    with pytest.raises(Exception) as e:
        build_data(cfg.data, train_tf, test_tf)
    assert "data.download=true" in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)

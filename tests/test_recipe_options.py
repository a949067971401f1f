"""The options the record-class recipes (experiment=cifar10_fast, cifar10_fast_sgd) are built from, each on its own:
whitening, parameter groups, Muon, the piecewise-linear schedule, weight averaging, test-time augmentation, the device
twins of reflect-padded crops and alternating flips, fp16's gradient scaler; then the recipe on a slice of real data."""
import copy
import tarfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import QUICK, SHARED, compose, needs_shared, run_cli
from trainlab.runs.folder import read_metrics
from trainlab.data.transforms import BatchedSteps, build_pipeline, check_transforms
from trainlab.errors import TrainlabError
from trainlab.models.blocks import build_blocks_model
from trainlab.models.whitening import Whiten, begin_epoch, fit_whitening
from trainlab.training.averaging import build_average
from trainlab.training.evaluator import Evaluator
from trainlab.training.numerics import Numerics
from trainlab.training.muon import orthogonalize
from trainlab.training.optim import build_optimizer
from trainlab.training.schedule import build_schedule
from trainlab.training.clock import Clock
from trainlab.training.step import TrainStep, rates_on_device


def correlated_images(n=256, seed=0):
    """Images whose neighbouring pixels and channels are strongly correlated, like photos."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 8, 8, generator=g).repeat_interleave(2, 2).repeat_interleave(2, 3)  # 16x16 blotches
    return base.repeat(1, 3, 1, 1) + 0.1 * torch.randn(n, 3, 16, 16, generator=g)


def test_whitening_makes_its_patches_covariance_identity_like_and_trains_its_bias_as_long_as_asked():
    images = correlated_images()
    block = Whiten(3, kernel_size=2, eps=1e-6, bias_epochs=2)
    assert block.out_channels == 24 and not block.weight.requires_grad
    fit_whitening(nn.Sequential(block, nn.Flatten()), [(images, None)])
    with torch.no_grad():
        out = block(images)[:, :12]  # the positive half; the other is its negative
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=0.05), covariance.diagonal()
    raw = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    before = raw.T @ raw / len(raw)
    assert (before - torch.diag(before.diagonal())).abs().mean() > 0.4  # the raw patches: far from it
    begin_epoch(block, 2)
    assert block.bias.requires_grad
    begin_epoch(block, 3)
    assert not block.bias.requires_grad


def test_whitening_is_fitted_on_its_own_input_and_the_blocks_after_it_never_run():
    model = build_blocks_model(OmegaConf.create({"name": "w", "blocks": [
        {"type": "conv", "out_channels": 4, "kernel_size": 1}, {"type": "whiten", "kernel_size": 2},
        {"type": "flatten"}, {"type": "linear"}]}), (3, 8, 8), 10)
    after = []
    model[3].register_forward_hook(lambda *a: after.append(1))
    line = fit_whitening(model, [(torch.randn(40, 3, 8, 8), None)] * 3, images=100)
    assert line == "whitening: 1 block(s) fitted on the patches of 100 training images"
    assert model[1].weight.abs().sum() > 0 and not after
    assert fit_whitening(nn.Sequential(nn.Flatten()), []) is None


def test_parameter_groups_from_yaml_get_their_rates_and_decay():
    cfg = compose("model=cifar_fast", "optimizer=sgd", "optimizer.lr=0.5", "optimizer.weight_decay=0.01",
                  "optimizer.groups=[{select: norm, lr_scale: 64, weight_decay_scale: 0.25},"
                  "{select: bias, weight_decay: 0}]")
    model = build_blocks_model(cfg.model, (3, 32, 32), 10)
    optimizer = build_optimizer(cfg.optimizer, model)
    rest, norms, biases = optimizer.param_groups
    norm_params = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in norms["params"]} == norm_params  # their frozen scales are in no group
    assert (norms["lr"], norms["weight_decay"]) == (32.0, 0.0025)
    assert [id(p) for p in biases["params"]] == [id(model[0].bias)]  # the whitening bias; the norms' were taken
    assert (biases["lr"], biases["weight_decay"]) == (0.5, 0)
    assert (rest["lr"], rest["weight_decay"]) == (0.5, 0.01) and len(rest["params"]) == 7  # 6 convs and the linear
    assert optimizer.defaults["nesterov"] is False and optimizer.param_groups[0]["momentum"] == 0.0


@pytest.mark.parametrize("groups,message", [
    ("[{select: lyer4, lr_scale: 2}]", "select: 'lyer4' names no parameter of the model"),
    ("[{lr_scale: 2}]", "optimizer.groups[0]: set select"),
    ("[{select: norm, lr: 2}]", "'lr' does not apply; it takes select, lr_scale"),
    ("[{select: bias, weight_decay: 0, weight_decay_scale: 0}]", "not both"),
    ("[{select: head, orthogonalize: false}]", "orthogonalize is not a setting of SGD; a group takes select, lr_scale, "
                                               "weight_decay, weight_decay_scale, momentum$"),
    ("[{select: head, momentum: 0.9}]@adam", "momentum is not a setting of Adam")])
def test_a_mistaken_parameter_group_is_one_line_naming_the_fix(groups, message):
    groups, _, optimizer = groups.partition("@")
    cfg = compose("model=resnet_small", f"optimizer={optimizer or 'sgd'}", f"optimizer.groups={groups}")
    with pytest.raises(TrainlabError, match=message.replace("[", r"\[")):
        build_optimizer(cfg.optimizer, build_blocks_model(cfg.model, (3, 32, 32), 10))


@pytest.mark.parametrize("override,message", [
    ("optimizer.groups=[1]", "optimizer.groups=[1] cannot work: cannot assign int to Dict[str, Any]"),
    ("optimizer.groups=abc", "optimizer.groups=abc cannot work: optimizer.groups takes a list, not 'abc'")])
def test_a_parameter_group_of_the_wrong_type_is_one_line_at_compose_time(override, message):
    from trainlab.config.mistakes import composition_error

    with pytest.raises(Exception) as raised:
        compose(override)
    assert composition_error(raised.value) == message


def test_muon_orthogonalizes_the_filters_momentum_steps_the_head_as_sgd_and_resumes_exactly():
    raw = torch.randn(64, 288, generator=torch.Generator().manual_seed(0))
    spread = torch.linalg.svdvals(raw)
    assert spread.max() / spread.min() > 2  # a gradient's directions: far from one size
    sizes = torch.linalg.svdvals(orthogonalize(raw, 5))
    assert 0.6 < sizes.min() and sizes.max() < 1.3  # Newton-Schulz's: every one near 1
    cfg = compose("model=cifar_fast", "optimizer=muon", "optimizer.lr=0.1", "optimizer.momentum=0.5",
                  "optimizer.groups=[{select: head, orthogonalize: false, lr_scale: 2, momentum: 0.8,"
                  " weight_decay: 0.01}]")
    model = build_blocks_model(cfg.model, (3, 32, 32), 10)
    optimizer = build_optimizer(cfg.optimizer, model)
    rest, head = optimizer.param_groups
    conv, linear = model[2].weight, model[25].weight
    assert [p is linear for p in head["params"]] == [True] and any(p is conv for p in rest["params"])
    twin = linear.detach().clone().requires_grad_()  # the head's update is torch.optim.SGD's, exactly
    sgd = torch.optim.SGD([twin], lr=0.2, momentum=0.8, nesterov=True, weight_decay=0.01)
    generator = torch.Generator().manual_seed(1)

    def step(optimizer, params, twins=()):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        for t in twins:
            t.grad = linear.grad.clone()
        optimizer.step()

    trained = [p for p in model.parameters() if p.requires_grad]
    for _ in range(3):
        before = conv.detach().clone()
        step(optimizer, trained, [twin])
        sgd.step()
        assert torch.equal(linear, twin)
        moved = torch.linalg.svdvals((before - conv.detach()).reshape(len(conv), -1) / 0.1)  # lr x an orthogonal update
        assert 0.6 < moved.min() and moved.max() < 1.3
    saved, copied = copy.deepcopy(optimizer.state_dict()), copy.deepcopy(model)  # exact resume from the state
    resumed = build_optimizer(cfg.optimizer, copied)
    resumed.load_state_dict(saved)
    state = generator.get_state()
    step(optimizer, trained)
    generator.set_state(state)
    step(resumed, [p for p in copied.parameters() if p.requires_grad])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), copied.parameters()))
    assert rates_on_device(resumed, torch.device("cpu"))  # rates as tensors, as a CUDA graph reads them: the same step
    generator.set_state(state)
    step(optimizer, trained)
    generator.set_state(state)
    step(resumed, [p for p in copied.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), copied.parameters()))


def test_the_piecewise_linear_schedule_warms_up_then_decays_per_step():
    cfg = compose("scheduler=piecewise", "optimizer.lr=2.0")
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    schedule = build_schedule(cfg.scheduler, optimizer, total_steps=100)
    rates = []
    for _ in range(101):
        rates.append(schedule.lr)
        optimizer.step()
        schedule.after_step()
    assert rates[0] == pytest.approx(0.4) and rates[23] == pytest.approx(2.0) and rates[100] == pytest.approx(0.14)
    assert rates[11] == pytest.approx(0.4 + 1.6 * 11 / 23)  # straight between the points
    assert all(a < b for a, b in zip(rates[:23], rates[1:24])) and all(a > b for a, b in zip(rates[23:], rates[24:]))


def _averaged(kind, steps=10, total=10):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    average = build_average(model, kind, every=2, decay=0.5, ramp=0, total_steps=total)
    seen = []
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # a "step" that moves every weight by one
        average.after_step()
        seen.append(model[0].bias.detach().clone())
    return model, average, seen


def test_ema_is_what_is_scored_while_the_model_trains_on_and_its_checkpoint_resumes_exactly():
    model, average, _ = _averaged("ema")
    own = model[0].bias.detach().clone()
    with average.applied():
        scored = model[0].bias.detach().clone()
        saved = {name: part.state_dict() for name, part in average.parts.items()}
    assert torch.equal(model[0].bias, own)  # back to its own weights
    # the weights rise by 2 between updates (every 2 steps), each update halves the gap: 1, 1.5, 1.75, 1.875, 1.9375
    assert torch.allclose(own - scored, torch.full((3,), 1.9375))
    assert torch.equal(saved["model"]["0.bias"], scored)  # the checkpoint's model: the scored weights
    fresh, again, _ = _averaged("ema", steps=0)
    for name, part in again.parts.items():
        part.load_state_dict(saved[name])
    assert torch.equal(fresh[0].bias, own) and again.steps == 10
    with again.applied():
        assert torch.equal(fresh[0].bias, scored)


def test_lookahead_writes_the_average_back_and_lands_on_it_at_the_last_step():
    model, average, seen = _averaged("lookahead", steps=4, total=4)
    # step 2 moved the weights to start + 2, then halfway back to the average (start): where step 1 left them
    assert torch.allclose(seen[1], seen[0]) and torch.allclose(seen[2], seen[0] + 1)
    assert torch.equal(model[0].bias, average.average["0.bias"])
    assert list(average.parts) == ["model", "average"] and average.parts["model"] is model


def test_ema_ramp_follows_the_weights_early():
    model = nn.Linear(1, 1)
    average = build_average(model, "ema", every=1, decay=0.9, ramp=3, total_steps=100)
    assert average.decay_at(10) == pytest.approx(0.9 * 0.001) and average.decay_at(100) == pytest.approx(0.9)


class HalfSighted(nn.Module):
    """Calls itself brighter-than-half from the left half of an image only; counts its forward passes."""

    def __init__(self):
        super().__init__()
        self.passes = 0

    def forward(self, x):
        self.passes += 1
        left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return torch.stack([0.5 - left, left - 0.5], dim=1)


@pytest.mark.parametrize("tta,passes", [("none", 1), ("flip", 2), ("flip_translate", 6)])
def test_tta_averages_its_views_and_never_lowers_accuracy_on_a_fixed_case(tta, passes):
    g = torch.Generator().manual_seed(0)
    halves = torch.rand(200, 2, generator=g)  # each image: its left half one grey, its right half another
    images = halves.repeat_interleave(4, dim=1).view(200, 1, 1, 8).expand(200, 1, 8, 8)
    labels = (halves.mean(dim=1) > 0.5).long()
    plain, model = Evaluator(HalfSighted(), Numerics.choose(torch.device("cpu"), "fp32", False)), HalfSighted()
    evaluator = Evaluator(model, Numerics.choose(torch.device("cpu"), "fp32", False), tta=tta)
    right = (evaluator.logits(images).argmax(1) == labels).float().mean()
    assert model.passes == passes
    assert right >= (plain.logits(images).argmax(1) == labels).float().mean()
    if tta != "none":
        assert right == 1  # each view's mirror image shows it the other half


def test_reflect_padded_crops_and_alternating_flips_on_the_device():
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 1, 1, 1) + 1
    crop = BatchedSteps([{"type": "random_crop", "size": 4, "padding": 2, "padding_mode": "reflect"}],
                        torch.Generator().manual_seed(0))
    assert (crop(images) > 0).all()  # no zero border: the edge is mirrored
    flips = BatchedSteps([{"type": "random_horizontal_flip", "alternate": True}], torch.Generator(), seed=3)
    index = torch.arange(1000)
    pictures = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).repeat(1000, 1, 1, 1)
    flipped = {epoch: flips(pictures, index, epoch)[:, 0, 0, 0] == 3 for epoch in (1, 2, 3)}
    assert torch.equal(flipped[1], ~flipped[2]) and torch.equal(flipped[1], flipped[3])  # every other epoch
    assert 400 < flipped[1].sum() < 600  # each image from its own start
    other = BatchedSteps([{"type": "random_horizontal_flip", "alternate": True}], torch.Generator(), seed=4)
    assert not torch.equal(other(pictures, index, 1)[:, 0, 0, 0] == 3, flipped[1])  # the seed chooses the starts
    with pytest.raises(TrainlabError, match="transform.x step 0 .* alternate: true: it runs on the resident path only"):
        build_pipeline([{"type": "random_horizontal_flip", "alternate": True}, {"type": "to_tensor"}], "transform.x")


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory) -> Path:
    """A slice of the CIFAR-10 JPEG copy: the first 60 training and 20 test images of each class."""
    archive = needs_shared(SHARED / "data" / "cifar10-jpg.tar.gz")
    root, taken = tmp_path_factory.mktemp("cifar"), {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts  # cifar10/<split>/<class>/NNNN.jpg
            if not member.isfile() or len(parts) != 4:
                continue
            key = parts[1:3]
            if taken.get(key, 0) < (60 if parts[1] == "train" else 20):
                taken[key] = taken.get(key, 0) + 1
                tar.extract(member, root, filter="data")
    return root / "cifar10"


@pytest.mark.slow
def test_the_record_recipe_learns_on_a_slice_of_the_jpeg_copy(tmp_path, cifar_slice):
    result = run_cli("experiment=cifar10_fast", "data=folder", f"data.root={cifar_slice}", "data.test_dir=test",
                     "data.batch_size=100", "trainer.epochs=3", *QUICK, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "whitening: 1 block(s) fitted on the patches of 600 training images" in result.stdout
    assert "resident on the device" in result.stdout  # every random step has its device twin
    test = read_metrics(tmp_path)[-1]
    assert test["epoch"] == "test" and test["test_acc"] > 0.2, test  # chance is 10%; 3 epochs of 600 images


def _fp16_step(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return TrainStep(model, nn.CrossEntropyLoss(), optimizer, Numerics.choose(torch.device("cpu"), "fp16", False))


def test_the_fp16_scaler_skips_an_overflowing_step_and_resumes_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 3))
    step = _fp16_step(model)
    images, targets = torch.randn(16, 8), torch.randint(0, 3, (16,))
    assert list(step.parts) == ["optimizer", "scaler"]
    step.scaler.load_state_dict({**step.scaler.state_dict(), "scale": 2.0 ** 60})  # the gradients overflow fp16
    before = model[0].weight.detach().clone()
    assert step(images, targets) == (None, None)  # skipped: counted as such by the epoch
    assert torch.equal(model[0].weight, before) and step.scaler.get_scale() == 2.0 ** 59
    step.scaler.load_state_dict({**step.scaler.state_dict(), "scale": 2.0 ** 8})
    loss, right = step(images, targets)
    assert loss is not None and not torch.equal(model[0].weight, before)  # applied
    saved = copy.deepcopy({name: part.state_dict() for name, part in step.parts.items()})  # as if on disk
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    resumed_model = nn.Sequential(nn.Linear(8, 3))
    resumed_model.load_state_dict(weights)
    resumed = _fp16_step(resumed_model)
    for name, part in resumed.parts.items():
        part.load_state_dict(saved[name])
    for one in (step, resumed):
        one(images, targets)
    assert torch.equal(model[0].weight, resumed_model[0].weight)
    assert resumed.scaler.state_dict() == step.scaler.state_dict()


@pytest.mark.parametrize("mixes", [["mixup"], ["cutmix"], ["mixup", "cutmix"]])
def test_mixup_and_cutmix_targets_sum_to_one_and_follow_the_pixels_they_mixed(mixes):
    images = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 16, 16).contiguous()
    targets = torch.arange(8) % 4
    steps = BatchedSteps([{"type": m} for m in mixes], torch.Generator().manual_seed(0), classes=4)
    for _ in range(5):
        mixed, soft = steps.mix(images, targets)
        assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
        # each image is a blend (or patchwork) of itself and the one before it, in the share its target says
        own = soft[torch.arange(8), targets]
        expected = own * images[:, 0, 0, 0] + (1 - own) * images.roll(1, 0)[:, 0, 0, 0]
        assert torch.allclose(mixed.mean(dim=(1, 2, 3))[1:], expected[1:], atol=1e-5)  # image 0 pairs with 7, class 3


def test_mixing_is_refused_outside_the_end_of_the_training_pipeline_in_one_line():
    cfg = compose("transform=augment", "transform.train=[{type: to_tensor}, {type: mixup}, {type: normalize, "
                  "mean: [0.5], std: [0.5]}]")
    with pytest.raises(TrainlabError, match="put mixup and cutmix last"):
        check_transforms(cfg.transform)
    cfg = compose("transform=augment", "transform.test=[{type: to_tensor}, {type: cutmix}]")
    with pytest.raises(TrainlabError, match=r"transform.test step 1 \(cutmix\): mixing belongs in transform.train"):
        check_transforms(cfg.transform)
    with pytest.raises(TrainlabError, match="mixes whole batches: it runs on the resident path only"):
        build_pipeline([{"type": "to_tensor"}, {"type": "mixup"}], "transform.train")


@pytest.mark.parametrize("step", [{"type": "trivial_augment"}, {"type": "rand_augment", "num_ops": 2, "magnitude": 9}])
def test_automatic_augmentation_policies_build_and_change_an_image(step):
    from PIL import Image

    torch.manual_seed(0)
    image = Image.fromarray((torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy())
    pipeline = build_pipeline([step, {"type": "to_tensor"}], "transform.train")
    plain = build_pipeline([{"type": "to_tensor"}], "transform.test")(image)
    outs = [pipeline(image) for _ in range(8)]
    assert all(out.shape == (3, 32, 32) for out in outs) and any(not torch.equal(out, plain) for out in outs)


def test_accumulated_batches_make_the_update_one_batch_of_them_all_makes_to_rounding():
    torch.manual_seed(0)
    images, targets = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))

    def trained(accumulate):
        torch.manual_seed(1)
        # no batchnorm: its statistics over a quarter batch differ from the whole batch's, in any framework
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 4))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
        updates = []
        step = TrainStep(model, nn.CrossEntropyLoss(), optimizer, Numerics.choose(torch.device("cpu"), "fp32", False),
                         hooks=[lambda: updates.append(1)], accumulate=accumulate)
        clock = Clock(epochs=1, batches=accumulate, accumulate=accumulate)
        for _ in range(2):  # two updates
            for i, (x, y) in enumerate(zip(images.chunk(accumulate), targets.chunk(accumulate)), 1):
                step(x, y, *clock.window(i))
        return model, len(updates)

    (large, one_batch), (small, four_batches) = trained(1), trained(4)
    assert one_batch == four_batches == 2  # the hooks (schedule, averaging) follow updates, not batches
    for a, b in zip(large.parameters(), small.parameters()):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_the_clock_counts_updates_and_windows_under_accumulation():
    clock = Clock(epochs=2, batches=10, accumulate=4)
    assert clock.total_updates == 6  # 4 + 4 + 2 batches an epoch
    assert [clock.window(i) for i in (1, 4, 5, 9, 10)] == [(0.25, False), (0.25, True), (0.25, False), (0.5, False),
                                                           (0.5, True)]


@pytest.mark.parametrize("compile_on,mode,expected", [(True, "reduce-overhead", "reduce-overhead"),
                                                      (True, "default", "default"), (False, "max-autotune", None)])
def test_trainer_compile_mode_reaches_torch_compile(monkeypatch, compile_on, mode, expected):
    from trainlab.distributed import Ranks
    from trainlab.training.recipe import placed

    cfg = compose(f"trainer.compile={compile_on}", f"trainer.compile_mode={mode}")
    asked = []
    monkeypatch.setattr(torch, "compile", lambda model, mode: asked.append(mode) or model)
    t = cfg.trainer
    model = nn.Linear(2, 2)
    net = placed(model, Numerics.choose(torch.device("cpu"), "fp32", False), t.compile and t.compile_mode,
                 Ranks(0, 1), torch.device("cpu"))
    assert net is model and asked == ([expected] if expected else [])

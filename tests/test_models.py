"""Models from blocks: the residual block against the same network written by hand in torch, each block kind with
its keys, and the mistakes a model file can make, each one line."""
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose, needs_extra
from trainlab.errors import TrainlabError
from trainlab.models.blocks import summary_table
from trainlab.models.build import build_model


def model_of(*blocks, name="mine"):
    return OmegaConf.create({"name": name, "blocks": list(blocks)})


def conv_bn(out, stride=1):
    return [{"type": "conv", "out_channels": out, "kernel_size": 3, "stride": stride, "padding": 1, "bias": False},
            {"type": "batchnorm"}]


class BasicBlock(nn.Module):
    """ResNet's basic block, by hand: two 3x3 convs with batchnorm, the shortcut a 1x1 conv where the shape changes."""

    def __init__(self, inputs, outputs, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs)
        self.conv2, self.bn2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False), nn.BatchNorm2d(outputs)
        self.shortcut = nn.Identity() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)


def test_a_residual_block_is_resnets_basic_block_written_by_hand():
    blocks = [{"type": "residual", "blocks": [*conv_bn(8), {"type": "relu"}, *conv_bn(8)]}, {"type": "relu"},
              {"type": "residual", "blocks": [*conv_bn(16, stride=2), {"type": "relu"}, *conv_bn(16)]}, {"type": "relu"},
              {"type": "adaptive_avgpool"}, {"type": "flatten"}, {"type": "linear"}]
    ours = build_model(model_of(*blocks), (8, 16, 16), 10)
    by_hand = nn.Sequential(BasicBlock(8, 8, 1), nn.ReLU(), BasicBlock(8, 16, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(16, 10))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in by_hand.parameters()) == 5_034
    for mine, theirs in zip(ours.parameters(), by_hand.parameters()):  # the same order: the same weights
        theirs.data.copy_(mine.data)
    for mine, theirs in zip(ours.buffers(), by_hand.buffers()):
        theirs.data.copy_(mine.data)
    x = torch.randn(4, 8, 16, 16)
    ours.train(), by_hand.train()
    assert torch.allclose(ours(x), by_hand(x), atol=1e-6)
    ours.eval(), by_hand.eval()
    assert torch.allclose(ours(x), by_hand(x), atol=1e-6)


def test_residual_blocks_nest_and_the_table_indents_their_inner_blocks():
    inner = {"type": "residual", "blocks": [{"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "same"},
                                            {"type": "relu"}]}
    model = build_model(model_of({"type": "residual", "blocks": [inner, {"type": "identity"}]}, {"type": "flatten"},
                                 {"type": "linear"}), (4, 6, 6), 3)
    x = torch.randn(1, 4, 6, 6)
    assert torch.allclose(model[0](x), model[0].blocks[0].blocks(x) + 2 * x)  # (f(x) + x) + x
    table = summary_table(model, (4, 6, 6))
    assert "\n0      residual" in table and "\n0.0      residual" in table and "\n0.0.0      conv 4->4 k3 s1 same" \
        in table, table


@pytest.mark.parametrize("block,shape,kind,out", [
    ({"type": "conv", "out_channels": 6, "kernel_size": 3, "padding": "same", "bias": False, "groups": 2,
      "dilation": 2}, (4, 9, 9), nn.Conv2d, (6, 9, 9)),
    ({"type": "maxpool", "kernel_size": 2, "ceil_mode": True}, (4, 9, 9), nn.MaxPool2d, (4, 5, 5)),
    ({"type": "adaptive_avgpool", "output_size": 2}, (4, 9, 9), nn.AdaptiveAvgPool2d, (4, 2, 2)),
    ({"type": "leaky_relu", "negative_slope": 0.2}, (4, 9, 9), nn.LeakyReLU, (4, 9, 9)),
    ({"type": "silu"}, (5,), nn.SiLU, (5,)),
    ({"type": "tanh"}, (5,), nn.Tanh, (5,)),
    ({"type": "hardswish"}, (5,), nn.Hardswish, (5,)),
    ({"type": "identity"}, (5,), nn.Identity, (5,)),
    ({"type": "layernorm"}, (4, 9, 9), nn.LayerNorm, (4, 9, 9)),
    ({"type": "dropout2d", "p": 0.1}, (4, 9, 9), nn.Dropout2d, (4, 9, 9)),
    ({"type": "batchnorm", "momentum": 0.4, "eps": 1e-12, "frozen_scale": True}, (4, 9, 9), nn.BatchNorm2d, (4, 9, 9)),
    ({"type": "scale", "factor": 0.125}, (5,), nn.Module, (5,)),
])
def test_each_block_kind_builds_with_its_keys(block, shape, kind, out):
    tail = [{"type": "flatten"}] if len(shape) == 3 else []
    model = build_model(model_of(block, *tail, {"type": "linear"}), shape, 3)
    layer = model[0]
    assert isinstance(layer, kind) and tuple(layer(torch.zeros(2, *shape)).shape[1:]) == out
    if kind is nn.Conv2d:
        assert layer.bias is None and layer.groups == 2 and layer.dilation == (2, 2)
    if kind is nn.BatchNorm2d:  # PyTorch's momentum; the scale held at 1, the shift trains
        assert (layer.momentum, layer.eps) == (0.4, 1e-12) and not layer.weight.requires_grad and layer.bias.requires_grad
        assert "batchnorm 4 scale 1" in summary_table(model, shape)
    if block["type"] == "scale":
        assert torch.equal(layer(torch.full((1, 5), 8.0)), torch.ones(1, 5)) and "scale x0.125" in \
            summary_table(model, shape)


def test_a_frozen_scale_stays_frozen_and_out_of_the_optimizer_when_other_layers_are_frozen():
    from trainlab.training.optim import param_groups

    model = build_model(model_of({"type": "conv", "out_channels": 4, "kernel_size": 3},
                                 {"type": "batchnorm", "frozen_scale": True}, {"type": "flatten"}, {"type": "linear"}),
                        (3, 8, 8), 3, train=True)
    from trainlab.models.weights import freeze

    freeze(model, ["0"])
    trainable = {id(p) for group in param_groups(model, 0.1) for p in group["params"]}
    assert id(model[1].weight) not in trainable and id(model[1].bias) in trainable and id(model[0].weight) not in \
        trainable


@pytest.mark.parametrize("blocks,message", [
    ([{"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": "sometimes"}],
     "conv: padding must be a number, same or valid, not 'sometimes'"),
    ([{"type": "conv", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": "same"}],
     "padding: same needs stride 1"),
    ([{"type": "residual", "blocks": [{"type": "flatten"}]}], "model block 0: its blocks turn 3x8x8 into 192"),
    ([{"type": "residual", "blocks": [{"type": "relu", "p": 1}]}], "model block 0.0 (relu): 'p' does not apply"),
    ([{"type": "residual", "blocks": [{"type": "flatten"}, {"type": "linear"}]}],
     "model block 0.1 (linear): set out_features"),
    ([{"type": "residual"}], "model block 0 (residual): set blocks"),
    ([{"type": "residual", "blocks": ["relu"]}], "model block 0.0: a block is a mapping with a type"),
    ([{"type": "maxpool", "kernel_size": 2, "ceil_mode": "yes"}], "ceil_mode must be true or false"),
])
def test_a_model_files_mistakes_are_one_line_each(blocks, message):
    with pytest.raises(TrainlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_model(model_of(*blocks, {"type": "flatten"}, {"type": "linear"}), (3, 8, 8), 3)


def test_resnet_small_is_a_resnet_for_32x32_images():
    model = build_model(compose("model=resnet_small").model, (3, 32, 32), 10)
    assert sum(p.numel() for p in model.parameters()) == 696_618
    projections = [m for m in model if hasattr(m, "shortcut") and not isinstance(m.shortcut, nn.Identity)]
    assert len(projections) == 2  # where a stage halves the resolution and widens
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_torchvision_classifier_is_sized_to_the_classes_and_channels(channels):
    model = build_model(compose("model=resnet18").model, (channels, 32, 32), 10)
    assert model.conv1.in_channels == channels and model.fc.out_features == 10
    assert sum(p.numel() for p in model.parameters()) == 11_181_642 - (3 - channels) * 64 * 7 * 7
    small = build_model(compose("model=resnet18", "model.small_input=true").model, (channels, 32, 32), 10)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    assert small(torch.zeros(2, channels, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("overrides,message", [
    (["model=torchvision", "model.arch=resnet81"], "model.arch=resnet81 is not a classification model torchvision "
                                                   "builds: did you mean model.arch=resnet18?"),
    (["model=torchvision", "model.arch=os.system"], "model.arch=os.system is not a classification model"),
    (["model=mobilenet_v3_small", "model.small_input=true"], "model.small_input=true is for torchvision's ResNets"),
    (["model=tudui", "model.small_input=true"], "model.small_input is for model=torchvision or model=timm; a model of blocks sets its own first conv"),
    (["model=tudui", "+model.arch=resnet18"], "model tudui needs either blocks"),
])
def test_a_torchvision_choice_that_cannot_work_is_one_line(overrides, message):
    with pytest.raises(TrainlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_model(compose(*overrides).model, (3, 32, 32), 10)


def test_a_run_of_a_torchvision_resnet_trains_and_shows_its_table(tmp_path, caplog):
    from conftest import QUICK
    from trainlab.training.recipe import run

    caplog.set_level("INFO", logger="trainlab")
    best = run(compose("data=shapes", "data.num_train=60", "data.num_test=20", "model=resnet18",
                       "model.small_input=true", "trainer.epochs=1", *QUICK, "trainer.log_images=false"), tmp_path)
    assert best is not None and "layer4   sequential" in caplog.text and "fc       linear 512->10" in caplog.text


@pytest.mark.parametrize("size", [8, 16, 24])
def test_small_shapes_images_are_drawn_inside_the_image(size):
    from trainlab.data.shapes import ShapesDataset

    images = ShapesDataset(20, size, 0, "train")
    assert all(image.size == (size, size) for image, _ in (images[i] for i in range(20)))


def test_weights_load_from_a_torchvision_style_file_the_head_left_and_named(tmp_path, caplog):
    import torchvision

    caplog.set_level("INFO", logger="trainlab")
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18(num_classes=1000)  # a torchvision weight file is its state dict
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    model = build_model(compose("model=resnet18", f"model.weights={tmp_path / 'resnet18.pth'}").model, (3, 32, 32),
                        10, train=True, new=True)
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert model.fc.out_features == 10
    assert ("weights: 120 of the model's 122 tensors from " in caplog.text
            and "; left as initialised: fc.weight, fc.bias (another shape in the file)\n" in caplog.text)
    again = build_model(compose("model=resnet18", f"model.weights={tmp_path / 'resnet18.pth'}").model, (3, 32, 32), 10)
    assert not torch.equal(again.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)  # predict: the checkpoint's


@pytest.mark.parametrize("saved,message", [
    ({"other.weight": torch.zeros(3)}, "shares no weight with the model: the file's names begin other.weight, the "
                                       "model's 1.weight, 1.bias"),
    ([1, 2, 3], "holds no state dict"),
    (nn.Linear(2, 2), "cannot be read as weights"),  # a pickled module would run code to load: refused
])
def test_weights_that_cannot_fit_are_one_line(tmp_path, saved, message):
    torch.save(saved, tmp_path / "w.pt")
    with pytest.raises(TrainlabError, match=message):
        build_model(compose("model=mlp", f"+model.weights={tmp_path / 'w.pt'}").model, (3, 32, 32), 10, train=True,
                    new=True)


def test_a_run_from_a_checkpoints_weights_with_the_backbone_frozen_trains_the_head_only(tmp_path):
    from conftest import QUICK
    from trainlab.runs.checkpoint import load_checkpoint, save_checkpoint
    from trainlab.training.recipe import run

    torch.manual_seed(3)
    start = build_model(compose("model=mlp").model, (3, 32, 32), 10).state_dict()
    save_checkpoint(tmp_path / "start.pt", {"model": start, "config": {}, "classes": [], "image_shape": []})
    settings = ["data=shapes", "data.num_train=80", "data.num_test=20", "model=mlp", "trainer.epochs=1", *QUICK,
                "trainer.log_images=false", f"+model.weights={tmp_path / 'start.pt'}", "+model.freeze=[backbone]"]
    run(compose(*settings), tmp_path / "run")
    trained = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert torch.equal(trained["1.weight"], start["1.weight"]) and torch.equal(trained["1.bias"], start["1.bias"])
    assert not torch.equal(trained["4.weight"], start["4.weight"])  # the head trained


def test_freezing_a_name_the_model_lacks_is_one_line():
    with pytest.raises(TrainlabError, match="model.freeze: the model has no module or parameter 'layer9'"):
        build_model(compose("model=resnet18", "model.freeze=[layer9]").model, (3, 32, 32), 10, train=True)


def test_freezing_a_module_by_name_takes_that_module_only(caplog):
    caplog.set_level("INFO", logger="trainlab")
    model = build_model(compose("model=resnet18", "model.freeze=[conv1,layer1]").model, (3, 32, 32), 10, train=True)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "conv1.weight" in frozen and "layer1.0.conv1.weight" in frozen and "bn1.weight" not in frozen
    assert "frozen: conv1, layer1 (157,376 parameters); training bn1, layer2, layer3, layer4, fc" in caplog.text


def torchvision_default_file(home):
    """What model.pretrained=true finds in torch's cache: a resnet18 ImageNet weight file by torchvision's name."""
    import torchvision

    torch.manual_seed(2)
    imagenet = torchvision.models.resnet18(num_classes=1000)
    path = home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), path)
    return imagenet


def test_pretrained_takes_torchvisions_default_weights_from_torchs_cache(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="trainlab")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    imagenet = torchvision_default_file(tmp_path)
    model = build_model(compose("model=resnet18", "model.pretrained=true").model, (3, 32, 32), 10, train=True,
                        new=True)
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert "weights: 120 of the model's 122 tensors" in caplog.text and "fc.weight, fc.bias" in caplog.text


def test_pretrained_offline_is_one_line_naming_model_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache, and no way out: a proxy that refuses at once
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(TrainlabError, match=r"model.pretrained=true could not fetch https://download.pytorch.org/"
                                            r"models/resnet18-f37072fd.pth \(.*\): download that file where the "
                                            r"internet is and give model.pretrained=false model.weights=FILE"):
        build_model(compose("model=resnet18", "model.pretrained=true").model, (3, 32, 32), 10, train=True, new=True)
    assert not list(tmp_path.rglob("*.pth"))  # nothing half-written left in the cache


@pytest.mark.parametrize("overrides,message", [
    (["model=resnet18", "model.pretrained=true", "model.weights=w.pt"], "model.pretrained=true and model.weights "
                                                                          "both name the weights"),
    (["model=mlp", "+model.pretrained=true"], "model.pretrained is for model=torchvision or model=timm; a model of "
                                              "blocks has no library weights: give model.weights=FILE"),
    (["model=resnet18", "model.head_lr_scale=0"], "model.head_lr_scale"),
])
def test_pretrained_and_head_mistakes_are_one_line(overrides, message):
    from trainlab.config.schema import check_values

    with pytest.raises(TrainlabError, match=message):
        cfg = compose(*overrides)
        check_values(cfg)
        build_model(cfg.model, (3, 32, 32), 10, train=True, new=True)


def test_head_lr_scale_puts_the_head_in_a_group_of_its_own_rate():
    from trainlab.training.optim import build_optimizer

    cfg = compose("model=resnet18", "model.head_lr_scale=10", "optimizer=sgd", "optimizer.lr=0.01")
    model = build_model(cfg.model, (3, 32, 32), 10, train=True)
    body, head = build_optimizer(cfg.optimizer, model, cfg.model.head_lr_scale).param_groups
    assert (body["lr"], head["lr"]) == (0.01, pytest.approx(0.1))
    assert [p.shape for p in head["params"]] == [(10, 512), (10,)] and len(body["params"]) == 60
    frozen = build_model(compose("model=resnet18", "model.freeze=[backbone]").model, (3, 32, 32), 10, train=True)
    only, = build_optimizer(cfg.optimizer, frozen, 10).param_groups  # a frozen backbone: the head's group alone
    assert only["lr"] == pytest.approx(0.1) and len(only["params"]) == 2


@pytest.mark.parametrize("channels", [1, 3])
def test_a_timm_architecture_is_sized_by_timm_to_the_classes_and_channels(channels):
    timm = needs_extra("timm", "timm")
    model = build_model(compose("model=timm", "model.arch=resnet18").model, (channels, 32, 32), 10)
    assert isinstance(model, timm.models.ResNet) and model.conv1.in_channels == channels
    assert model(torch.zeros(2, channels, 32, 32)).shape == (2, 10)
    assert "fc" in summary_table(model, (channels, 32, 32))


def test_a_timm_name_is_checked_against_timms_list_and_a_missing_timm_named(monkeypatch):
    needs_extra("timm", "timm")
    with pytest.raises(TrainlabError, match="model.arch=resnet181 is not an architecture timm builds: did you mean "
                                            "model.arch=resnet18"):
        build_model(compose("model=timm", "model.arch=resnet181").model, (3, 32, 32), 10)
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # as on a machine without the extra
    with pytest.raises(TrainlabError, match=r"timm is not installed: pip install -e .\[timm\]"):
        build_model(compose("model=timm").model, (3, 32, 32), 10)


def test_a_plus_on_a_key_the_model_has_is_one_line_saying_to_drop_it():
    from trainlab.config.mistakes import composition_error

    with pytest.raises(Exception) as raised:
        compose("model=resnet18", "+model.pretrained=true")
    assert composition_error(raised.value) == ("model.pretrained is already a key: set it without the +, "
                                               "model.pretrained=...")


def test_finetune_folder_from_a_torchvision_weight_file_trains_the_head_alone(ants_bees, tmp_path, caplog):
    """The experiment as a user offline runs it: torchvision's file given as model.weights, the backbone frozen; the
    folder's val/ is the test split, scored once."""
    import torchvision
    from conftest import QUICK
    from trainlab.runs.checkpoint import load_checkpoint
    from trainlab.training.recipe import run

    caplog.set_level("INFO", logger="trainlab")
    torch.manual_seed(4)
    imagenet = torchvision.models.resnet18(num_classes=1000).state_dict()
    torch.save(imagenet, tmp_path / "resnet18-f37072fd.pth")
    run(compose("experiment=finetune_folder", f"data.root={ants_bees}", "data.image_size=32", "model.pretrained=false",
                f"model.weights={tmp_path / 'resnet18-f37072fd.pth'}", "model.freeze=[backbone]", "trainer.epochs=1",
                "trainer.log_images=false", *QUICK), tmp_path / "run")
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    trained = saved["model"]
    assert all(torch.equal(trained[k], imagenet[k]) for k in trained if "weight" in k and not k.startswith("fc."))
    assert trained["fc.weight"].shape == (2, 512) and saved["test"] is not None  # val/ scored as the test split
    assert "weights: 120 of the model's 122 tensors" in caplog.text
    assert "frozen: conv1, bn1, layer1, layer2, layer3, layer4 (11,176,512 parameters); training fc (1,026 " \
           "parameters)" in caplog.text


def test_one_cycle_keeps_the_heads_own_rate():
    from trainlab.training.optim import build_optimizer
    from trainlab.training.schedule import build_schedule

    cfg = compose("model=resnet18", "model.head_lr_scale=10", "optimizer=sgd", "optimizer.lr=0.01",
                  "scheduler=onecycle")
    optimizer = build_optimizer(cfg.optimizer, build_model(cfg.model, (3, 32, 32), 10, train=True), 10)
    schedule = build_schedule(cfg.scheduler, optimizer, total_steps=8)
    peaks = [group["max_lr"] for group in optimizer.param_groups]
    assert peaks == [pytest.approx(0.01), pytest.approx(0.1)]  # one peak would have been 0.01 for both
    for _ in range(4):  # up to the peak and down: the head at ten times the rest's rate throughout
        optimizer.step()
        schedule.after_step()
        body, head = (group["lr"] for group in optimizer.param_groups)
        assert head == pytest.approx(10 * body)

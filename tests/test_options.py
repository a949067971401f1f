"""The options that land through the training core's owners: warm-up in front of any schedule (the Schedule, a step
hook) and gradient-norm clipping (the TrainStep, before the update). Each is a config value, tested on its own."""
import pytest
import torch
from omegaconf import OmegaConf

from conftest import QUICK, assert_one_clear_line, compose, run_forked
from trainlab.runs.folder import read_metrics
from trainlab.training.numerics import Numerics
from trainlab.training.recipe import run
from trainlab.training.schedule import Schedule, build_schedule
from trainlab.training.step import OptimizerPart, TrainStep

CPU = torch.device("cpu")


def sgd(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def rates(schedule, steps):
    """The rate each of `steps` steps uses, the schedule's hook called after each, as a TrainStep does."""
    seen = []
    for _ in range(steps):
        seen.append(schedule.lr)
        schedule.optimizer.step()  # no gradients: the weights stay; the scheduler sees the update it follows
        schedule.after_step()
    return seen


def test_warmup_rises_linearly_to_the_rate_then_holds_it_without_a_scheduler():
    schedule = build_schedule(compose("scheduler=none", "scheduler.warmup_steps=4").scheduler, sgd(0.1), 100)
    assert rates(schedule, 6) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_warmup_scales_a_per_step_schedule_which_goes_on_from_its_own_rate():
    cfg = compose("scheduler=cosine", "scheduler.interval=step", "scheduler.T_max=10", "scheduler.warmup_steps=4")
    warmed = build_schedule(cfg.scheduler, sgd(0.1), 100)
    plain = build_schedule(compose("scheduler=cosine", "scheduler.interval=step", "scheduler.T_max=10").scheduler,
                           sgd(0.1), 100)
    cosine = rates(plain, 10)
    assert rates(warmed, 10) == pytest.approx([cosine[i] * min(1, (i + 1) / 4) for i in range(10)])


def test_warmup_in_front_of_an_epoch_schedule_counts_steps():
    cfg = compose("scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5", "scheduler.warmup_steps=3")
    schedule = build_schedule(cfg.scheduler, sgd(0.1), 100)
    first = rates(schedule, 2)  # epoch 1: 2 steps
    schedule.end_epoch()
    second = rates(schedule, 2)  # epoch 2 at half the rate, its first step still warming up
    assert first + second == pytest.approx([0.1 / 3, 0.2 / 3, 0.05, 0.05])


def test_a_schedule_restored_mid_warmup_goes_on_with_the_same_rates():
    cfg = compose("scheduler=onecycle", "scheduler.warmup_steps=5").scheduler
    whole = rates(build_schedule(cfg, sgd(0.1), 12), 12)
    first_optimizer = sgd(0.1)
    first = build_schedule(cfg, first_optimizer, 12)
    head = rates(first, 3)
    saved, optimizer_state = first.state_dict(), OptimizerPart(first_optimizer).state_dict()
    optimizer = sgd(0.1)
    again = build_schedule(cfg, optimizer, 12)
    OptimizerPart(optimizer).load_state_dict(optimizer_state)
    again.load_state_dict(saved)
    assert head + rates(again, 9) == whole  # exactly: the same floats


def test_the_rate_is_set_in_place_where_it_is_a_tensor_a_cuda_graph_reads():
    optimizer = sgd(0.1)
    optimizer.param_groups[0]["lr"] = rate = torch.tensor(0.1)  # as rates_on_device makes it
    schedule = Schedule(optimizer, None, "step", warmup_steps=2)
    schedule.after_step()
    assert optimizer.param_groups[0]["lr"] is rate and rate.item() == pytest.approx(0.1)
    state = OptimizerPart(optimizer).state_dict()
    assert isinstance(state["param_groups"][0]["lr"], float)  # a checkpoint holds a number, not a device tensor
    rate.fill_(0.5)
    OptimizerPart(optimizer).load_state_dict(state)
    assert optimizer.param_groups[0]["lr"] is rate and rate.item() == pytest.approx(0.1)


def step_of(clip, precision="fp32"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    return TrainStep(model, torch.nn.CrossEntropyLoss(), optimizer, Numerics(CPU, precision), clip_grad_norm=clip)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_clipping_bounds_the_update_by_the_gradient_norm(precision):
    images, targets = torch.randn(8, 3, 2, 2) * 50, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for clip, bounded in ((None, False), (0.01, True)):
        step = step_of(clip, precision)
        before = [p.detach().clone() for p in step.model.parameters()]
        step(images, targets)
        moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(step.model.parameters(), before)]).norm()
        assert (moved <= 0.01 * (1 + 1e-4)) == bounded, float(moved)  # SGD at lr 1: the update is the gradient


def test_hooks_follow_every_step_in_order():
    called = []
    step = step_of(None)
    step.hooks = [lambda: called.append("schedule"), lambda: called.append("average")]
    step(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]))
    assert called == ["schedule", "average"]


def test_a_run_with_warmup_and_clipping_logs_the_warmed_rate(tmp_path):
    cfg = compose("data=shapes", "data.num_train=100", "data.num_test=20", "data.batch_size=20", "model=mlp",
                  "trainer.epochs=2", "scheduler=none", "scheduler.warmup_steps=8", "trainer.clip_grad_norm=1.0",
                  *QUICK, "trainer.log_images=false", "optimizer=sgd", "optimizer.lr=0.08")
    run(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    # 90 training images at 20 a batch: 5 steps an epoch; each epoch reports the rate it began at
    assert [row["lr"] for row in rows[:2]] == pytest.approx([0.01, 0.06])


@pytest.mark.parametrize("setting,expected", [
    ("trainer.clip_grad_norm=0", "trainer.clip_grad_norm=0.0 cannot work: it must be above 0, or null (off)"),
    ("scheduler.warmup_steps=-1", "scheduler.warmup_steps=-1 cannot work: it must be 0 (none) or more"),
])
def test_a_setting_that_cannot_work_is_one_line(setting, expected):
    assert_one_clear_line(run_forked("data=shapes", setting), expected)


def test_every_scheduler_option_takes_warmup_steps():
    for option in ("none", "step", "cosine", "onecycle"):
        assert OmegaConf.select(compose(f"scheduler={option}", "scheduler.warmup_steps=3"),
                                "scheduler.warmup_steps") == 3


def test_accuracy_and_the_onehot_losses_take_soft_targets_as_mixup_makes():
    from trainlab.training.evaluator import correct
    from trainlab.training.losses import SoftmaxL1Loss, SoftmaxMSELoss

    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    hard, soft = torch.tensor([0, 1]), torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.6, 0.4]])
    assert correct(logits, hard).item() == correct(logits, soft).item() == 1  # soft: against the class weighed most
    for loss in (SoftmaxMSELoss(), SoftmaxL1Loss()):
        one_hot = torch.nn.functional.one_hot(hard, 3).float()
        assert loss(logits, hard).item() == pytest.approx(loss(logits, one_hot).item())
        assert loss(logits, soft).item() != pytest.approx(loss(logits, hard).item())


def test_the_summary_table_reads_any_module_not_only_a_sequential():
    from trainlab.models.blocks import summary_table

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.head = torch.nn.Linear(4 * 8 * 8, 2)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))

    table = summary_table(Net(), (3, 8, 8))
    assert "features  conv 3->4 k3 s1 p1  4x8x8" in table and "head      linear 256->2       2" in table, table


def test_metrics_csv_takes_a_new_figure_by_widening_its_header(tmp_path):
    from trainlab.runs.folder import METRICS_COLUMNS, MetricsFile

    metrics = MetricsFile(tmp_path)
    metrics.append(epoch=1, step=5, train_loss=2.0, lr=0.1)
    metrics.append(epoch=2, step=10, train_loss=1.5, lr=0.1, ema_acc=0.5)  # a sink with a figure of its own
    rows = read_metrics(tmp_path)
    assert [(row["epoch"], row["train_loss"], row.get("ema_acc")) for row in rows] == [(1, 2.0, None), (2, 1.5, 0.5)]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join([*METRICS_COLUMNS, "ema_acc"])
    resumed = MetricsFile(tmp_path)  # a resumed run keeps the wider header
    resumed.rewrite_with(resumed.rows_covered(1))
    assert [row.get("ema_acc", "absent") for row in read_metrics(tmp_path)] == [None]

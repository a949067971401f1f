"""The recipe for one run: data, model, optimizer, then the epochs, logging to the terminal, a file and TensorBoard."""
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab import __version__
from trainlab.checkpoint import save_checkpoint
from trainlab.config import check_values
from trainlab.data import build_data, build_loaders
from trainlab.errors import TrainlabError
from trainlab.engine import TrainStep, evaluate, resolve_device, seconds_since_launch, seed_everything, train_epoch
from trainlab.models import build_model, check_blocks, summary_table
from trainlab.resident import NotResident, build_resident
from trainlab.optim import build_loss, build_optimizer, build_scheduler
from trainlab.tensorboard import BEST_METRIC, RunWriter
from trainlab.transforms import build_transforms, check_transforms, normalization

log = logging.getLogger("trainlab")


def run(cfg: DictConfig, run_dir=None) -> float:
    """Train as `cfg` says, writing into `run_dir` (Hydra's output folder by default); -> the best test accuracy."""
    run_dir = Path(run_dir) if run_dir is not None else _hydra_output_dir()
    check_values(cfg)
    t = cfg.trainer
    device = resolve_device(t.device)

    transforms = check_transforms(cfg.transform)  # order and keys checked; torchvision not needed yet
    check_blocks(cfg.model)  # a misspelt block key fails now, not after the data has loaded
    data, train_loader, test_loader, path = _build_data(cfg, transforms, device)
    shape = "x".join(map(str, data.image_shape))
    log.info(f"data {cfg.data.name}: {len(data.train):,} train / {len(data.test):,} test images, "
             f"{len(data.classes)} classes, {shape} · {path} · device {device} · trainlab {__version__}")

    seed_everything(t.seed, t.deterministic)  # here: decoding draws from the global generator, a cache hit does not
    model = build_model(cfg.model, data.image_shape, len(data.classes))
    log.info(f"model {cfg.model.name}\n{summary_table(model, data.image_shape)}")
    channels_last = t.channels_last if t.channels_last is not None else (device.type == "cpu" or t.precision == "bf16")
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    net = torch.compile(model) if t.compile else model  # `model` keeps the plain state_dict keys for checkpoints
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    scheduler, interval = build_scheduler(cfg.scheduler, optimizer, t.epochs * len(train_loader))
    loss_fn = build_loss(cfg.loss).to(device)
    graphs = t.cuda_graphs and (scheduler is None or interval == "epoch")  # a per-step lr cannot live in a graph
    step = TrainStep(net, loss_fn, optimizer, device, t.precision, channels_last, cuda_graph=graphs)

    writer = RunWriter(run_dir)
    writer.hparams(_hparams(cfg), [BEST_METRIC, "test/acc", "test/loss", "train/loss"])
    first_batch = next(iter(train_loader))[0]
    if t.log_images:
        writer.image_grid(first_batch, normalization(transforms["train"]))
    if t.log_graph:
        writer.graph(model, first_batch[:1].to(device))

    launch = seconds_since_launch()
    if launch is not None:
        log.info(f"start-up {launch:.1f}s (from the command to the first training step)")
        writer.scalars({"time/startup_s": launch}, 0)
    steps_per_epoch, best_acc, best_epoch, start = len(train_loader), -1.0, 0, time.perf_counter()
    try:
        for epoch in range(1, t.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            first_step = (epoch - 1) * steps_per_epoch
            train = train_epoch(
                step, train_loader, device,
                scheduler=scheduler if interval == "step" else None, log_every=t.log_every_n_steps,
                on_log=lambda i, loss: writer.scalars({"train/loss": loss}, first_step + i),
                progress=t.progress_bar, desc=f"epoch {epoch}/{t.epochs}")
            if scheduler is not None and interval == "epoch":
                scheduler.step()
            test = evaluate(net, test_loader, loss_fn, device, t.precision, channels_last)
            if test.acc > best_acc:
                best_acc, best_epoch = test.acc, epoch
            writer.scalars({"train/acc": train.acc, "test/loss": test.loss, "test/acc": test.acc, "lr": lr,
                            "train/images_per_s": train.images / train.seconds, BEST_METRIC: best_acc}, epoch)
            log.info(f"epoch {epoch:>{len(str(t.epochs))}}/{t.epochs}  train loss {train.loss:.4f} "
                     f"acc {train.acc:6.2%}  test loss {test.loss:.4f} acc {test.acc:6.2%}  lr {lr:.3g}  "
                     f"{train.seconds + test.seconds:.1f}s ({train.images / train.seconds:,.0f} img/s)")
            if t.checkpoint:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict() if scheduler is not None else None,
                         "epoch": epoch, "test_acc": test.acc, "best_acc": best_acc,
                         "config": OmegaConf.to_container(cfg, resolve=True), "classes": list(data.classes),
                         "image_shape": list(data.image_shape), "trainlab_version": __version__}
                save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
                if best_epoch == epoch:
                    save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
    finally:
        writer.close()
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    log.info(f"best test acc {best_acc:.2%} at epoch {best_epoch} · {t.epochs} epochs in "
             f"{int(minutes)}m{seconds:04.1f}s · {run_dir}")
    return best_acc


def _build_data(cfg: DictConfig, transforms: dict, device) -> tuple:
    """-> (DataSplits, train loader, test loader, which path and why): resident on the device when the pipelines
    allow it and the data fits (trainer.data_path=auto), else the DataLoader."""
    t = cfg.trainer
    reason = "trainer.data_path=loader"
    if t.data_path != "loader":
        try:
            return (*build_resident(cfg.data, transforms, device, t.seed, t.progress_bar), "resident on the device")
        except NotResident as e:
            if t.data_path == "resident":
                raise TrainlabError(f"trainer.data_path=resident cannot be used: {e}; use auto or loader") from None
            reason = str(e)
    data = build_data(cfg.data, *build_transforms(transforms))
    return (data, *build_loaders(cfg.data, data, t.seed), f"DataLoader ({reason})")


def _hparams(cfg: DictConfig) -> dict:
    """The settings that tell runs apart, for TensorBoard's HPARAMS tab: the main ones and every overridden value
    (so each job of a sweep shows the keys the sweep varies)."""
    def short(target):
        return target.rsplit(".", 1)[-1] if target else "none"

    values = {"data": cfg.data.name, "model": cfg.model.name, "optimizer": short(cfg.optimizer.get("_target_")),
              "scheduler": short(cfg.scheduler.get("_target_")), "loss": short(cfg.loss.get("_target_")),
              "lr": cfg.optimizer.get("lr", 0.0), "weight_decay": cfg.optimizer.get("weight_decay", 0.0),
              "batch_size": cfg.data.batch_size, "epochs": cfg.trainer.epochs, "seed": cfg.trainer.seed}
    for override in _hydra_overrides():
        key = override.split("=", 1)[0].lstrip("+~")
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (int, float, str, bool)):
            values[key] = value
    return values


def _hydra_overrides() -> list:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path("outputs/runs") / time.strftime("%Y-%m-%d_%H-%M-%S")

"""The recipe for one run: data, model, optimizer, then the epochs, logging to the terminal, a file and TensorBoard."""
import gc
import logging
import signal
import threading
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab import __version__, distributed
from trainlab.allowlist import check_config
from trainlab.checkpoint import Checkpointer, load_checkpoint, load_latest, set_rng_states
from trainlab.config import check_values
from trainlab.data import build_run_data
from trainlab.engine import (Loop, NonFiniteLoss, TrainState, evaluate, resolve_device, seconds_since_launch,
                             seed_everything, train_epoch)
from trainlab.errors import Interrupted, TrainlabError
from trainlab.launch import Launch
from trainlab.models import build_model, check_blocks, summary_table
from trainlab.optim import build_loss, build_optimizer, build_scheduler
from trainlab.step import Numerics, make_train_step
from trainlab.run_folder import (BEST_METRIC, CHECKPOINTS, IMAGES_PER_S, LR, STARTUP_S, TEST_ACC, TEST_LOSS,
                                 TRAIN_ACC, TRAIN_LOSS, run_of)
from trainlab.tensorboard import RunWriter
from trainlab.transforms import check_transforms, normalization

log = logging.getLogger("trainlab")


def run(cfg: DictConfig, launch=None) -> float:
    """Train as `cfg` says; -> the best test accuracy. `launch` says where the run writes and what launched it: a
    Launch (src/run.py passes Hydra's), or just a run folder, or None for a new one under outputs/runs.

    A run folder that already holds a checkpoint is resumed where it stopped (trainer.resume=auto), as is the run
    folder or checkpoint that trainer.resume names; the result is the same, bit for bit, as a run never stopped.
    """
    # settings, device, and the checkpoint to resume from
    launch = Launch.of(launch)
    check_values(cfg)
    check_config(cfg)  # nothing outside the allow-list (trainlab/allowlist.py), before anything runs
    t = cfg.trainer
    ranks, device = distributed.setup(t.device)  # under torchrun: this process's rank and device
    if not ranks.main:
        log.setLevel(logging.WARNING)  # one process speaks for all
    device = device or resolve_device(t.device, launch.job, launch.jobs_at_once)
    saved, run_dir = _resume_state(t.resume, launch.run_dir)  # a checkpoint to resume from, or None
    transforms = check_transforms(cfg.transform)  # order and keys checked; torchvision not needed yet
    check_blocks(cfg.model)  # a misspelt block key fails now, not after the data has loaded
    config = OmegaConf.to_container(cfg, resolve=True)  # plain: what checkpoints carry and resuming compares
    if saved is not None:
        _check_resumable(saved, config)

    # data
    data, train_loader, test_loader, path = build_run_data(cfg, transforms, device, ranks)
    shape = "x".join(map(str, data.image_shape))
    log.info(f"data {cfg.data.name}: {len(data.train):,} train / {len(data.test):,} test images, "
             f"{len(data.classes)} classes, {shape} · {path} · device {device}"
             + (f" ({torch.get_num_threads()} threads: job {launch.job}, {launch.jobs_at_once} at once)"
                if launch.jobs_at_once > 1 else "")
             + f" · trainlab {__version__}")
    if saved is not None and saved["classes"] != list(data.classes):
        raise TrainlabError(f"the checkpoint was trained on classes {saved['classes'][:5]}..., this data has "
                            f"{list(data.classes)[:5]}...: resume on the same data, or start a new run folder")

    # model
    seed_everything(t.seed, t.deterministic)  # here: decoding draws from the global generator, a cache hit does not
    model = build_model(cfg.model, data.image_shape, len(data.classes))
    log.info(f"model {cfg.model.name}\n{summary_table(model, data.image_shape)}")
    numerics = Numerics.choose(device, t.precision, t.channels_last)
    model.to(device, memory_format=numerics.memory_format)
    net = torch.compile(model) if t.compile else model  # `model` keeps the plain state_dict keys for checkpoints
    if ranks.world > 1:  # gradients averaged over the processes in backward
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)

    # optimizer, schedule, loss and the step
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    steps_per_epoch = train_loader.batches
    scheduler, interval = build_scheduler(cfg.scheduler, optimizer, t.epochs * steps_per_epoch)
    loss_fn = build_loss(cfg.loss).to(device)
    per_step = scheduler if interval == "step" else None
    step = make_train_step(net, loss_fn, optimizer, numerics, cuda_graphs=t.cuda_graphs,
                           batch_shape=(cfg.data.batch_size // ranks.world, *data.image_shape),
                           skip_nonfinite=t.nonfinite == "skip", per_step_schedule=per_step is not None,
                           distributed=ranks.world > 1)
    loop = Loop(t.epochs, steps_per_epoch, t.log_every_n_steps, t.progress_bar and ranks.main, per_step,
                distributed.all_sum if ranks.world > 1 else None)

    # where the run stands: a new run, or the checkpoint's state
    state = TrainState()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved["scheduler"] is not None:
            scheduler.load_state_dict(saved["scheduler"])
        state = TrainState.from_state_dict(saved, device)
        log.info(f"resuming {run_dir} at epoch {state.epoch}, batch {state.batch}")
    if state.epoch > t.epochs:
        log.info(f"nothing to do: {run_dir} finished its {t.epochs} epochs (raise trainer.epochs to train on); "
                 f"best test acc {state.best_acc:.2%} at epoch {state.best_epoch}")
        return state.best_acc

    # logging and checkpoints
    first_step = (state.epoch - 1) * steps_per_epoch + state.batch
    writer = RunWriter(run_dir, purge_step=first_step + 1 if saved is not None else None, enabled=ranks.main)
    checkpointer = Checkpointer(run_dir / CHECKPOINTS, model, optimizer, scheduler, writer,
                                {"config": config, "classes": list(data.classes), "image_shape": list(data.image_shape),
                                 "trainlab_version": __version__},
                                t.checkpoint_every_n_steps, enabled=t.checkpoint and ranks.main)
    if saved is None:
        writer.hparams(_hparams(cfg, launch.overrides), [BEST_METRIC, TEST_ACC, TEST_LOSS, TRAIN_LOSS])
        # drawn only for what logs it: on the DataLoader path it decodes a batch (and starts the workers)
        first_batch = next(iter(train_loader))[0] if t.log_images or t.log_graph else None
        if t.log_images:
            writer.image_grid(first_batch, normalization(transforms["train"]))
        if t.log_graph:
            writer.graph(model, first_batch[:1].to(device))
    _log_startup(writer)
    if saved is not None:
        set_rng_states(saved["rng"])  # last: everything above may draw from the generators

    # the loop
    log_loss = lambda step, loss: writer.scalars({TRAIN_LOSS: loss}, step)  # noqa: E731 (train_epoch's on_log)
    first_epoch, start = state.epoch, time.perf_counter()
    try:
        with StopOnSignal() as stop:
            for epoch in range(first_epoch, t.epochs + 1):
                lr = optimizer.param_groups[0]["lr"]
                done_before = (epoch - 1) * steps_per_epoch
                train_loader.start(epoch, state.batch)
                steps = train_epoch(step, train_loader, state, loop, on_log=log_loss)
                for batch in steps:
                    stopping = stop.requested(device, ranks.world)
                    if checkpointer.enabled and (stopping or checkpointer.due(done_before + batch)):
                        steps.check_finite()  # no checkpoint holds weights that a non-finite step made
                        checkpointer.save(state)
                    if stopping:
                        stop.hand_on()
                        how = (f"checkpoint written: rerun the same command, or add trainer.resume={run_dir}"
                               if t.checkpoint else "trainer.checkpoint=false: nothing was saved")
                        raise Interrupted(f"stopped by {stop.signal or 'a signal to another process'} at epoch "
                                          f"{epoch}, batch {batch}; {how}")
                train = steps.stats()
                if scheduler is not None and interval == "epoch":
                    scheduler.step()
                test = evaluate(net, test_loader, loss_fn, numerics)
                best = state.record(test.acc, epoch)
                writer.scalars({TRAIN_ACC: train.acc, TEST_LOSS: test.loss, TEST_ACC: test.acc, LR: lr,
                                IMAGES_PER_S: train.images / train.seconds, BEST_METRIC: state.best_acc},
                               epoch * steps_per_epoch)
                skipped = f"  {train.skipped} non-finite steps skipped" if train.skipped else ""
                log.info(f"epoch {epoch:>{len(str(t.epochs))}}/{t.epochs}  train loss {train.loss:.4f} "
                         f"acc {train.acc:6.2%}  test loss {test.loss:.4f} acc {test.acc:6.2%}  lr {lr:.3g}  "
                         f"{train.seconds + test.seconds:.1f}s ({train.images / train.seconds:,.0f} img/s){skipped}")
                state.end_epoch()
                checkpointer.save(state, best=best)
    except NonFiniteLoss as e:
        global_step = (state.epoch - 1) * steps_per_epoch + e.step
        raise TrainlabError(
            f"the loss became NaN or infinite at step {global_step} (epoch {state.epoch}, batch {e.step}); no "
            "checkpoint holds those weights: lower optimizer.lr, or set trainer.nonfinite=skip to skip such steps"
        ) from None
    finally:
        writer.close()
        distributed.teardown()
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    log.info(f"best test acc {state.best_acc:.2%} at epoch {state.best_epoch} · epochs {first_epoch}-{t.epochs} in "
             f"{int(minutes)}m{seconds:04.1f}s · {run_dir}")
    return state.best_acc


class StopOnSignal:
    """SIGTERM or SIGINT asks the loop to stop after the current step (a second SIGINT stops at once). A cluster
    launcher's preemption signal (submitit's SIGUSR2) does too, and is then handed on to the launcher's own handler,
    which requeues the job: it resumes from the checkpoint just written."""

    HANDED_ON = (signal.SIGUSR2,)

    def __enter__(self):
        self.signal, self.number, self.previous = None, None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, *self.HANDED_ON):
                if sig in self.HANDED_ON and not callable(signal.getsignal(sig)):
                    continue  # nobody to hand it on to: leave it alone
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, number, frame):
        if self.signal is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal, self.number = signal.Signals(number).name, number

    def requested(self, device, processes: int = 1) -> bool:
        """Whether a signal asked to stop, in this process or, in a distributed run, in any of them."""
        if processes > 1:
            return distributed.any_process(self.signal is not None, device)
        return self.signal is not None

    def hand_on(self) -> None:
        """After the checkpoint: let the launcher whose signal it was act on it (it may requeue and exit)."""
        previous = self.previous.get(self.number)
        if self.number in self.HANDED_ON and callable(previous):
            previous(self.number, None)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _resume_state(resume: str, run_dir: Path) -> tuple:
    """trainer.resume -> (checkpoint state or None, the run folder to write into)."""
    if resume == "never":
        return None, run_dir
    if resume == "auto":
        state, _ = load_latest(run_dir / CHECKPOINTS)
        return state, run_dir
    target = Path(resume).expanduser()
    if target.is_file():
        state = load_checkpoint(target)
        folder = run_of(target) or run_dir
    elif target.is_dir():
        state, _ = load_latest(target / CHECKPOINTS)
        folder = target
    else:
        raise TrainlabError(f"trainer.resume={resume}: no such run folder or checkpoint")
    if state is None or "position" not in state:
        raise TrainlabError(f"trainer.resume={resume}: no checkpoint to resume from there")
    return state, folder


def _check_resumable(state: dict, current: dict) -> None:
    """The checkpoint must come from the same model and data set as this (plain) config."""
    saved = state["config"]
    for key in ("model", "data"):
        before, now = saved[key]["name"], current[key]["name"]
        if before != now or (key == "model" and saved[key]["blocks"] != current[key]["blocks"]):
            raise TrainlabError(f"the checkpoint comes from {key} {before}, this run uses {key} {now} (or other "
                                f"blocks): resume with the same {key}, or start a new run folder")


def _log_startup(writer) -> None:
    """Start-up ends: its time is logged once a process, and the garbage collector that src/run.py turned off for it
    comes back on."""
    global _startup_logged
    if not gc.isenabled():
        # What start-up made lives to the end: frozen, no later collection scans it, the one at exit included (that
        # one took 1 s). Frozen too: start-up's few MB of cyclic garbage, which costs less than a full collection.
        gc.freeze()
        gc.enable()
    launch = seconds_since_launch()
    if launch is not None and not _startup_logged:  # once a process: later jobs of a sweep start much later
        _startup_logged = True
        log.info(f"start-up {launch:.1f}s (from the command to the first training step)")
        writer.scalars({STARTUP_S: launch}, 0)


_startup_logged = False


def _hparams(cfg: DictConfig, overrides) -> dict:
    """The settings that tell runs apart, for TensorBoard's HPARAMS tab: the main ones and every overridden value
    (so each job of a sweep shows the keys the sweep varies)."""
    def short(target):
        return target.rsplit(".", 1)[-1] if target else "none"

    values = {"data": cfg.data.name, "model": cfg.model.name, "optimizer": short(cfg.optimizer.get("_target_")),
              "scheduler": short(cfg.scheduler.get("_target_")), "loss": short(cfg.loss.get("_target_")),
              "lr": cfg.optimizer.get("lr", 0.0), "weight_decay": cfg.optimizer.get("weight_decay", 0.0),
              "batch_size": cfg.data.batch_size, "epochs": cfg.trainer.epochs, "seed": cfg.trainer.seed}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (int, float, str, bool)):
            values[key] = value
    return values

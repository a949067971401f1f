"""The recipe for one run: data, model, optimizer, then the epochs (each validated) and the test split once, logging
to the terminal, a file, metrics.csv and TensorBoard."""
import gc
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab import __version__, distributed
from trainlab.allowlist import check_config
from trainlab.checkpoint import Checkpointer, set_rng_states
from trainlab.config import check_values
from trainlab.data import build_run_data
from trainlab.resident import files_fingerprint
from trainlab.image_folder import settle_image_size
from trainlab.engine import (Loop, NonFiniteLoss, TrainState, evaluate, resolve_device, seconds_since_launch,
                             seed_everything, show_progress, train_epoch)
from trainlab.errors import Interrupted, TrainlabError, printable
from trainlab.launch import Launch
from trainlab.models import build_model, check_blocks, summary_table
from trainlab.optim import build_loss, build_optimizer, build_scheduler
from trainlab.resume import (check_resumable, check_same_files, continued_config, longer_hint, resume_command,
                             resume_state)
from trainlab.step import Numerics, make_train_step
from trainlab.run_folder import (CHECKPOINTS, ERROR_LOG, IMAGES_PER_S, LR, STARTUP_S, TEST_ACC, TEST_EPOCH_ACC,
                                 TEST_EPOCH_LOSS, TEST_LOSS, TEST_ROW, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS,
                                 MetricsFile, RunFolderLock, RunLogging, best_metric, read_scalars, shown_path)
from trainlab.splits import sizes_text
from trainlab.tensorboard import RunWriter
from trainlab.transforms import check_transforms, normalization

log = logging.getLogger("trainlab")


@RunLogging.around  # called from Python (a notebook), the run's lines still show, and go to run.log
def run(cfg: DictConfig, launch=None) -> Optional[float]:
    """Train as `cfg` says; -> the best validation value of trainer.monitor (None without a validation split): what
    a search optimises. `launch` says where the run writes and what launched it: a Launch (src/run.py passes
    Hydra's), or just a run folder, or None for a new one under outputs/runs.

    Validation makes every choice (best.pt, early stopping); the test split is scored once, at the end, with the
    weights best.pt holds. A run folder that already holds a checkpoint is resumed where it stopped
    (trainer.resume=auto), as is the run folder or checkpoint that trainer.resume names; the result is the same, bit
    for bit, as a run never stopped.
    """
    # settings, device, and the checkpoint to resume from
    launch = Launch.of(launch)
    check_values(cfg)
    check_config(cfg)  # nothing outside the allow-list (trainlab/allowlist.py), before anything runs
    saved, run_dir = resume_state(cfg.trainer.resume, launch.run_dir)  # a checkpoint to resume from, or None
    RunLogging.write_into(run_dir)
    if saved is not None and cfg.trainer.resume != "auto":  # resumed by name: on with the config it was made with
        cfg = continued_config(saved["config"], cfg, launch.overrides)
        check_values(cfg)
        check_config(cfg)
    resizing = settle_image_size(cfg)  # data=folder's data.image_size=null: the images' own size, where they share one
    t = cfg.trainer
    ranks, device = distributed.setup(t.device)  # under torchrun: this process's rank and device
    if not ranks.main:
        log.setLevel(logging.WARNING)  # one process speaks for all
    device = device or resolve_device(t.device, launch.job, launch.jobs_at_once)
    transforms = check_transforms(cfg.transform)  # order and keys checked; torchvision not needed yet
    check_blocks(cfg.model)  # a misspelt block key fails now, not after the data has loaded
    config = OmegaConf.to_container(cfg, resolve=True)  # plain: what checkpoints carry and resuming compares
    changed = check_resumable(saved, config) if saved is not None else []  # what the command changes, said below
    files = files_fingerprint(cfg.data)  # which files the splits were drawn from: a resume must find the same
    check_same_files(saved, files, cfg.data)

    # data: train, validation and test splits (trainlab/splits.py)
    data, loaders, path = build_run_data(cfg, transforms, device, ranks)
    shape = "x".join(map(str, data.image_shape))
    log.info(f"data {printable(cfg.data.name)}: {sizes_text(data.train, data.val, data.test)}, {len(data.classes)} classes, "
             f"{shape} · {path} · device {device}"
             + (f" ({torch.get_num_threads()} threads: job {launch.job}, {launch.jobs_at_once} at once)"
                if launch.jobs_at_once > 1 else "")
             + f" · trainlab {__version__}")
    if resizing:
        log.info(resizing)
    if data.val is None:
        log.info("no validation split (data.val_split=0): nothing is chosen; best.pt holds the last epoch's weights")
    if data.test is None:
        log.info(f"no test split: {_no_test_reason(cfg.data)}; the run ends with its validation score only")
    if saved is not None and saved["classes"] != list(data.classes):
        raise TrainlabError(f"the checkpoint was trained on classes {saved['classes'][:5]}..., this data has "
                            f"{list(data.classes)[:5]}...: resume on the same data, or start a new run folder")

    # model
    seed_everything(t.seed, t.deterministic)  # here: decoding draws from the global generator, a cache hit does not
    model = build_model(cfg.model, data.image_shape, len(data.classes))
    log.info(_model_lines(cfg.model, model, data.image_shape))
    numerics = Numerics.choose(device, t.precision, t.channels_last)
    model.to(device, memory_format=numerics.memory_format)
    net = torch.compile(model) if t.compile else model  # `model` keeps the plain state_dict keys for checkpoints
    if ranks.world > 1:  # gradients averaged over the processes in backward
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)

    # optimizer, schedule, loss and the step
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    steps_per_epoch = loaders.train.batches
    scheduler, interval = build_scheduler(cfg.scheduler, optimizer, t.epochs * steps_per_epoch)
    loss_fn = build_loss(cfg.loss).to(device)
    per_step = scheduler if interval == "step" else None
    step = make_train_step(net, loss_fn, optimizer, numerics, cuda_graphs=t.cuda_graphs,
                           batch_shape=(cfg.data.batch_size // ranks.world, *data.image_shape),
                           skip_nonfinite=t.nonfinite == "skip", per_step_schedule=per_step is not None,
                           distributed=ranks.world > 1)
    loop = Loop(t.epochs, steps_per_epoch, t.log_every_n_steps, show_progress(t.progress_bar) and ranks.main, per_step,
                distributed.all_sum if ranks.world > 1 else None)

    # where the run stands: a new run, or the checkpoint's state
    state = TrainState(monitor=t.monitor)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved["scheduler"] is not None:
            scheduler.load_state_dict(saved["scheduler"])
        state = TrainState.from_state_dict(saved, device)
    to_train = state.epoch <= t.epochs and not _stopped_early(state, t.early_stopping_patience)
    if saved is not None and (to_train or state.test is None and data.test is not None):
        log.info(f"resuming {shown_path(run_dir)} at epoch {state.epoch}, batch {state.batch}"
                 + (f" ({', '.join(changed)})" if changed else ""))
    if to_train:
        state.test = state.stopped = None  # training on: the test is scored again at the end
    elif state.test is not None or data.test is None:
        how = (longer_hint(config) if state.epoch > t.epochs else
               f"it stopped early: no better {t.monitor} for {state.bad_epochs} epochs; raise "
               "trainer.early_stopping_patience to train on")
        log.info(f"nothing to do: {shown_path(run_dir)} finished training ({how}); "
                 f"{_result(state, data.val is not None)}")
        return state.best

    # logging, metrics.csv and checkpoints, in a folder no other live run writes into (a second one is refused)
    metrics = MetricsFile(run_dir, enabled=ranks.main)
    kept = metrics.kept_rows(state.epochs_done)  # what the checkpoint covers; a damaged file is refused here, unwritten
    folder_lock = RunFolderLock(run_dir).acquire() if ranks.main else None
    first_step = (state.epoch - 1) * steps_per_epoch + state.batch
    writer = RunWriter(run_dir, purge_step=first_step + 1 if saved is not None else None, enabled=ranks.main)
    metrics.keep(kept)
    checkpointer = Checkpointer(run_dir / CHECKPOINTS, model, optimizer, scheduler, writer,
                                {"config": config, "classes": list(data.classes), "image_shape": list(data.image_shape),
                                 "data_files": files,
                                 "trainlab_version": __version__},
                                t.checkpoint_every_n_steps, enabled=t.checkpoint and ranks.main)
    if saved is None:
        writer.hparams(_hparams(cfg, launch),
                       [best_metric(t.monitor), TEST_ACC, VAL_ACC, VAL_LOSS, TRAIN_LOSS, TEST_LOSS], launch.swept)
        # drawn only for what logs it: on the DataLoader path it decodes a batch (and starts the workers)
        first_batch = next(iter(loaders.train))[0] if t.log_images or t.log_graph else None
        if t.log_images:
            writer.image_grid(first_batch, normalization(transforms["train"]))
        if t.log_graph:
            writer.graph(model, first_batch[:1].to(device))
    _log_startup(writer)
    if saved is not None:
        set_rng_states(saved["rng"])  # last: everything above may draw from the generators

    # the loop
    log_loss = lambda step, loss: writer.scalars({TRAIN_LOSS: loss}, step)  # noqa: E731 (train_epoch's on_log)
    best_weights = None  # the best epoch's weights, when this process trained it
    first_epoch, start = state.epoch, time.perf_counter()
    budget = Budget(t.max_minutes, start)
    try:
        with StopOnSignal() as stop:
            for epoch in range(first_epoch, t.epochs + 1 if to_train else first_epoch):
                lr = state.begin_epoch(optimizer.param_groups[0]["lr"])
                done_before = (epoch - 1) * steps_per_epoch
                loaders.train.start(epoch, state.batch)
                steps = train_epoch(step, loaders.train, state, loop, on_log=log_loss)
                for batch in steps:
                    out_of_time = budget.spent()
                    stopping = stop.requested(device, ranks.world, out_of_time)
                    if checkpointer.enabled and (stopping or checkpointer.due(done_before + batch)):
                        steps.check_finite()  # no checkpoint holds weights that a non-finite step made
                        checkpointer.save(state)
                    if stopping and not out_of_time:
                        stop.hand_on()
                        how = (f"checkpoint written; to resume: {resume_command(run_dir)}"
                               if t.checkpoint else "trainer.checkpoint=false: nothing was saved")
                        raise Interrupted(f"stopped by {stop.signal or 'a signal to another process'} at epoch "
                                          f"{epoch}, batch {batch}; {how}")
                    if stopping:
                        state.stopped = "time budget"
                        break
                if state.stopped:
                    log.info(f"time budget: trainer.max_minutes={t.max_minutes} spent at epoch {epoch}, batch "
                             f"{state.batch}; checkpointed; to go on: {resume_command(run_dir)}")
                    break
                train = steps.stats()
                if scheduler is not None and interval == "epoch":
                    scheduler.step()
                val = evaluate(net, loaders.val, loss_fn, numerics) if loaders.val is not None else None
                watched = (evaluate(net, loaders.test, loss_fn, numerics)  # to watch, never to choose
                           if t.test_every_epoch and loaders.test is not None else None)
                best = state.record({"loss": val.loss, "acc": val.acc} if val is not None else None, epoch)
                if best and val is not None:
                    best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                _report_epoch(writer, metrics, state, epoch, epoch * steps_per_epoch, lr, train, val, watched, t)
                if _stopped_early(state, t.early_stopping_patience):
                    state.stopped = "early stopping"
                state.end_epoch()
                checkpointer.save(state, best=best)
                if state.stopped:
                    log.info(f"early stopping: no better {t.monitor} in the {state.bad_epochs} epochs after epoch "
                             f"{state.best_epoch} (trainer.early_stopping_patience={t.early_stopping_patience})")
                    break
                if epoch < t.epochs and budget.spent():
                    state.stopped = "time budget"
                    log.info(f"time budget: trainer.max_minutes={t.max_minutes} spent after epoch {epoch}; "
                             f"checkpointed; to go on: {resume_command(run_dir)}")
                    break

        # the test split, once, with the weights validation chose; the test row ends metrics.csv even without one.
        # A signal now waits for the end to be written (seconds): killed in the middle of it, best.pt would lack its
        # test score and a checkpoint's write would be left half done.
        with StopOnSignal() as ending:
            last_step = (state.epoch - 1) * steps_per_epoch + state.batch
            if loaders.test is not None:
                state.test = _test(net, model, loaders.test, loss_fn, numerics, state, best_weights, checkpointer)
                if not (saved is not None and not to_train and _logged(run_dir, TEST_ACC, last_step)):
                    writer.scalars({TEST_LOSS: state.test["loss"], TEST_ACC: state.test["acc"]}, last_step)
            chosen, test = state.best_val or {}, state.test or {}
            metrics.append(epoch=TEST_ROW, step=last_step, val_loss=chosen.get("loss"), val_acc=chosen.get("acc"),
                           test_loss=test.get("loss"), test_acc=test.get("acc"))
            if state.test is not None:
                checkpointer.save(state)
                checkpointer.add_test(state.test)
        if ending.signal:
            log.info(f"{ending.signal} came while the run was writing its end: it finished first, nothing is left to "
                     "resume")
        if ranks.main:  # an earlier attempt's error is over: report.py shows the run done, not failed
            (run_dir / ERROR_LOG).unlink(missing_ok=True)
    except NonFiniteLoss as e:
        global_step = (state.epoch - 1) * steps_per_epoch + e.step
        raise TrainlabError(
            f"the loss became NaN or infinite at step {global_step} (epoch {state.epoch}, batch {e.step}); no "
            "checkpoint holds those weights: lower optimizer.lr, or set trainer.nonfinite=skip to skip such steps"
        ) from None
    finally:
        writer.close()
        distributed.teardown()
        if folder_lock is not None:
            folder_lock.release()
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    last_epoch = state.epoch - (state.batch == 0)
    trained = (f"epochs {first_epoch}-{last_epoch} in {int(minutes)}m{seconds:04.1f}s" if last_epoch >= first_epoch
               else "no epoch left to train")
    log.info(f"{_result(state, data.val is not None)} · {trained} · {shown_path(run_dir)}")
    return state.best


class Budget:
    """trainer.max_minutes, counted from the first step of this process's training."""

    def __init__(self, minutes: Optional[float], start: float):
        self.end = start + 60 * minutes if minutes else None

    def spent(self) -> bool:
        return self.end is not None and time.perf_counter() > self.end


def _report_epoch(writer, metrics, state: TrainState, epoch: int, step: int, lr: float, train, val, watched,
                  t) -> None:
    """An epoch's figures, the same in TensorBoard, on the terminal and in metrics.csv: train, validation (None
    without a validation split) and, with trainer.test_every_epoch, the test split."""
    images_per_s = train.images_per_s
    trained = train.images > 0  # with trainer.nonfinite=skip every step of an epoch may have been skipped
    scalars = {TRAIN_ACC: train.acc, LR: lr, IMAGES_PER_S: images_per_s} if trained else {LR: lr}
    if val is not None:
        scalars.update({VAL_LOSS: val.loss, VAL_ACC: val.acc, best_metric(t.monitor): state.best})
    if watched is not None:
        scalars.update({TEST_EPOCH_LOSS: watched.loss, TEST_EPOCH_ACC: watched.acc})
    writer.scalars(scalars, step)
    seconds = train.seconds + sum(e.seconds for e in (val, watched) if e is not None)
    shown = f"  val loss {val.loss:.4f} acc {val.acc:6.2%}" if val is not None else ""
    shown += f"  (test acc {watched.acc:6.2%})" if watched is not None else ""
    skipped = f"  {train.skipped} non-finite steps skipped" if train.skipped else ""
    fitted = (f"train loss {train.loss:.4f} acc {train.acc:6.2%}" if trained else
              f"trained nothing: all {train.skipped} steps were skipped (their loss or gradients were not finite)")
    log.info(f"epoch {epoch:>{len(str(t.epochs))}}/{t.epochs}  {fitted}{shown}  lr {lr:.3g}  {seconds:.1f}s"
             + (f" ({images_per_s:,.0f} img/s){skipped}" if trained else ""))
    metrics.append(epoch=epoch, step=step, train_loss=train.loss if trained else None,
                   train_acc=train.acc if trained else None,
                   val_loss=val and val.loss, val_acc=val and val.acc, test_loss=watched and watched.loss,
                   test_acc=watched and watched.acc, lr=lr, seconds=seconds, images_per_s=images_per_s)


def _logged(run_dir: Path, tag: str, step: int) -> bool:
    """Whether the run's events hold `tag` at `step`: a run killed after logging its test score but before
    checkpointing it scores the test again when resumed, and must not log it twice. (Reading events takes a second:
    only on that path.)"""
    return any(at == step for at, _ in read_scalars(run_dir).get(tag, []))


def _stopped_early(state: TrainState, patience: Optional[int]) -> bool:
    return patience is not None and state.best_epoch > 0 and state.bad_epochs >= patience


@torch.no_grad()
def _test(net, model, loader, loss_fn, numerics, state: TrainState, best_weights, checkpointer) -> dict:
    """The test split scored with the weights of the best epoch (the model's own where those are the latest, or no
    epoch was validated) -> {"loss", "acc", "epoch"}; the model ends with the weights it had."""
    current = state.epoch - (state.batch == 0)  # the epoch the model's weights come from
    mine = state.best_epoch == 0 or (state.best_epoch == current and state.batch == 0)
    kept = None
    if not mine:
        weights = best_weights if best_weights is not None else checkpointer.best_weights(state.best_epoch)
        kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(weights)
    result = evaluate(net, loader, loss_fn, numerics)
    if kept is not None:
        model.load_state_dict(kept)
    return {"loss": result.loss, "acc": result.acc, "epoch": state.best_epoch or current}


def _result(state: TrainState, validated: bool) -> str:
    """The run's result in words: its best validation value and epoch, and its test score with those weights."""
    if not validated:
        text = f"no validation split: the weights of epoch {state.best_epoch}"
    elif state.best_val is None:
        text = "no epoch finished: nothing validated"
    else:
        name = state.monitor.replace("/", " ")
        value = f"{state.best:.2%}" if state.monitor == "val/acc" else f"{state.best:.4f}"
        text = f"best {name} {value} at epoch {state.best_epoch}"
    if state.test is not None:
        text += f" · test acc {state.test['acc']:.2%} (loss {state.test['loss']:.4f}) with the weights of epoch " \
                f"{state.test['epoch']}"
    return text


def _no_test_reason(data_cfg) -> str:
    if data_cfg.name == "folder" and data_cfg.split is None:
        return f"{Path(data_cfg.root) / (data_cfg.test_dir or '')} does not exist"
    return f"{data_cfg.name} has none"


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

    def requested(self, device, processes: int = 1, also: bool = False) -> bool:
        """Whether a signal (or `also`: the time budget) asks to stop, in this process or, in a distributed run, in
        any of them: all stop at the same step."""
        if processes > 1:
            return distributed.any_process(self.signal is not None or also, device)
        return self.signal is not None or also

    def hand_on(self) -> None:
        """After the checkpoint: let the launcher whose signal it was act on it (it may requeue and exit)."""
        previous = self.previous.get(self.number)
        if self.number in self.HANDED_ON and callable(previous):
            previous(self.number, None)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


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
_tables_shown = set()  # the models whose table this process has shown: a sweep's later jobs name theirs in a line


def _model_lines(model_cfg, model, image_shape) -> str:
    key = repr(OmegaConf.to_container(model_cfg, resolve=True))
    if key in _tables_shown:
        count = sum(p.numel() for p in model.parameters())
        return f"model {printable(model_cfg.name)}: {count:,} parameters (its table is above)"
    _tables_shown.add(key)
    return f"model {printable(model_cfg.name)}\n{summary_table(model, image_shape)}"


# What HPARAMS shows of every run, by dotted key, beside the keys a command line sets; a group shows its option.
HPARAMS = ("data", "transform", "model", "optimizer", "optimizer.lr", "optimizer.weight_decay", "scheduler", "loss",
           "data.batch_size", "trainer.epochs", "trainer.seed")


def _hparams(cfg: DictConfig, launch: Launch) -> dict:
    """The settings that tell runs apart, for TensorBoard's HPARAMS tab, each once under its dotted key: HPARAMS and
    every key the command line set, so a sweep's job shows what the sweep varies. A config group shows the option's
    name (optimizer: adam, loss: cross_entropy): Hydra's choice, else the command line's, else the name the config
    holds or its class (a run composed without them, in a notebook). Numbers stay numbers; null reads "null"."""
    given = {}
    for override in launch.overrides:
        key, _, value = override.partition("=")
        if not key.startswith("~"):
            given[key.lstrip("+")] = value
    values = {}
    for key in dict.fromkeys([*HPARAMS, *given]):
        value = OmegaConf.select(cfg, key, default=None)
        if key in launch.choices:
            value = launch.choices[key]
        elif isinstance(value, DictConfig):  # a group Hydra's choices do not name
            target = value.get("_target_")
            value = given.get(key) or value.get("name") or (target.rsplit(".", 1)[-1] if target else None)
            value = value or ("none" if key == "scheduler" else None)
        elif value is not None and not isinstance(value, (int, float, str, bool)):  # a list
            value = given.get(key) or str(OmegaConf.to_container(value))
        elif value is None and key in given:
            value = "null"
        if value is not None:
            values[key] = value
    return values

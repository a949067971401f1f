"""The recipe for one run: settings, data, model, the step, then the epochs (each validated) and the test split once,
logging to the terminal, run.log, metrics.csv and TensorBoard.

Each concept has its owner (trainlab/training/): the Clock says where training stands, the Schedule sets the
learning rate, the TrainStep updates the weights and calls its hooks, the Evaluator scores, Best keeps the chosen
epoch, the StopPolicy says when to stop; runs/ holds the Metrics sinks and the Checkpointer of named parts."""
import gc
import logging
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab import __version__, distributed
from trainlab.config.allowlist import check_config
from trainlab.config.resume_rules import check_resumable, continued_config
from trainlab.config.schema import check_values
from trainlab.data.build import build_run_data
from trainlab.data.image_folder import settle_image_size
from trainlab.data.resident import files_fingerprint
from trainlab.data.splits import sizes_text
from trainlab.data.transforms import check_transforms, normalization
from trainlab.errors import Interrupted, TrainlabError, printable, shape_text
from trainlab.launch import Launch, first_process, seconds_since_launch
from trainlab.models.blocks import summary_table
from trainlab.models.build import build_model, check_model
from trainlab.runs.checkpoint import Checkpointer, Generators
from trainlab.runs.folder import (CHECKPOINTS, ERROR_LOG, TEST_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS, TEST_LOSS,
                                  best_metric, higher_is_better, shown_path)
from trainlab.runs.logs import RunLogging
from trainlab.runs.metrics import EpochReport, Metrics, show_progress
from trainlab.runs.provenance import record_attempt, short_commit
from trainlab.runs.tensorboard import hparams_values
from trainlab.runs.trackers import Tracking, check_trackers
from trainlab.runs.trial import Pruning
from trainlab.runs.resume import check_same_files, resume_command, resume_state
from trainlab.models.whitening import begin_epoch, fit_whitening
from trainlab.training.averaging import build_average
from trainlab.training.best import Best, swapped_weights
from trainlab.training.clock import Clock
from trainlab.training.device import resolve_device, seed_everything
from trainlab.training.epoch import Epoch, EpochProgress, NonFiniteLoss
from trainlab.training.evaluator import Evaluator
from trainlab.training.optim import build_loss, build_optimizer
from trainlab.training.schedule import build_schedule, check_resume, longer_hint
from trainlab.training.numerics import Numerics
from trainlab.training.step import make_train_step
from trainlab.training.stop import PRUNED, TIME, StopOnSignal, StopPolicy

log = logging.getLogger("trainlab")


@RunLogging.around  # called from Python (a notebook), the run's lines still show, and go to run.log
def run(cfg: DictConfig, launch=None) -> Optional[float]:
    """Train as `cfg` says -> the best validation value of trainer.monitor (None without a validation split), what a
    search optimises. `launch`: a Launch (src/run.py passes Hydra's), a run folder, or None for a new one. Validation
    chooses; the test is scored once, at the end; a stopped run resumes bit for bit (trainlab/runs/resume.py)."""
    # settings, and the checkpoint to resume from
    launch = Launch.of(launch)
    settings = Settings.of(cfg, launch)  # every value checked; a run resumed by name goes on with its own config
    cfg, saved, run_dir, t = settings.cfg, settings.saved, settings.run_dir, settings.cfg.trainer
    ranks, device = processes(settings, launch)

    # data: train, validation and test splits (trainlab/data/splits.py)
    data, loaders, path = build_run_data(cfg.data, settings.transforms, device, ranks, t.data_path, t.seed,
                                         show_progress(t.progress_bar))
    log_data(cfg.data, data, path, device, launch, settings.resizing)
    check_same_classes(saved, data.classes)

    # model
    seed_everything(distributed.process_seed(t.seed, ranks), t.deterministic)  # after decoding, which draws
    model = build_model(cfg.model, data.image_shape, len(data.classes), train=True, new=saved is None)
    log.info(model_lines(cfg.model, model, data.image_shape))
    numerics = Numerics.choose(device, t.precision, t.channels_last)
    net = placed(model, numerics, t.compile and t.compile_mode, ranks, device)  # `model`: the plain state_dict keys
    log_line(saved is None and fit_whitening(model, loaders.train, ranks=ranks))  # a new run's, from training images

    # optimizer, schedule, loss and the step; the evaluator, the chosen epoch and when to stop
    optimizer = build_optimizer(cfg.optimizer, model, cfg.model.get("head_lr_scale"))
    clock = Clock(t.epochs, loaders.train.batches, t.accumulate_grad_batches)
    schedule = build_schedule(cfg.scheduler, optimizer, clock.total_updates)
    average = build_average(model, t.average, t.average_every, t.average_decay, t.average_ramp, clock.total_updates)
    loss_fn = build_loss(cfg.loss).to(device)
    step = make_train_step(net, loss_fn, optimizer, numerics, cuda_graphs=t.cuda_graphs,
                           hooks=[schedule.after_step, *average.hooks],
                           batch_shape=(cfg.data.batch_size // ranks.world, *data.image_shape),
                           skip_nonfinite=t.nonfinite == "skip", clip_grad_norm=t.clip_grad_norm,
                           per_step_rates=schedule.per_step, processes=ranks.world,
                           accumulate=t.accumulate_grad_batches)
    evaluator, best, progress = Evaluator(net, numerics, loss_fn, t.tta), Best(t.monitor), EpochProgress(device)
    stop = StopPolicy(t.max_minutes, t.early_stopping_patience, device, ranks.world, Pruning(launch.trial, ranks.main))

    # where the run stands: a new run, or the checkpoint's (the generators restored last: all above may draw)
    tracking = Tracking(cfg.logger, settings.config, run_dir, launch)  # the logger group; its tracker runs' ids
    parts = Checkpointer(run_dir / CHECKPOINTS, settings.about(data), t.checkpoint_every_n_steps,
                         t.checkpoint, ranks.main, **average.parts, **step.parts, scheduler=schedule, position=clock,
                         best=best, stopped=stop, totals=progress, tracking=tracking, rng=Generators())
    parts.restore(saved)
    to_train = clock.to_train and not best.out_of_patience(t.early_stopping_patience)
    if not to_train and nothing_to_do(settings, clock, best, data):
        return best.value
    going_on(settings, clock, best, stop, to_train)

    # logging, metrics.csv and checkpoints, in a folder no other live run writes into (a second one is refused)
    metrics = Metrics.open(run_dir, ranks.main, clock.epochs_done, clock.step + 1 if saved is not None else None,
                           rescoring=saved is not None and not to_train, tracking=tracking)
    parts.before_save = metrics.flush  # what was logged reaches the disk before the checkpoint that covers it
    log_start(metrics, settings, launch, loaders.train, model, device)  # start-up's time; a new run's extras
    try:
        with stop:
            for epoch in clock.epochs_left() if to_train else ():
                progress.begin(schedule.lr)
                begin_epoch(model, epoch)
                loaders.train.start(epoch, clock.batch)
                steps = Epoch(step, loaders.train, clock, progress, t.log_every_n_steps,
                              show_progress(t.progress_bar) and ranks.main, metrics.step,
                              distributed.all_sum if ranks.world > 1 else None)
                for _ in steps:
                    if between_steps(stop, parts, steps, run_dir, t):  # a signal raises; the time budget: True
                        break
                if stop.reason == TIME:
                    break
                train = steps.scores()
                schedule.end_epoch()
                val, epoch_test, is_best = score_epoch(evaluator, loaders, average, best, epoch, model,
                                                       t.test_every_epoch)
                metrics.epoch(EpochReport(epoch, t.epochs, clock.step, progress.lr, train, val, epoch_test, t.monitor,
                                          best.value))
                ended = stop.after_epoch(best, epoch, last=epoch == t.epochs)
                clock.end_epoch()
                progress.end()
                parts.save(best=is_best)
                if ended:
                    log.info(ended_line(ended, epoch, best, t, run_dir))
                    break
        finish(evaluator, model, stop.to_test(loaders), best, clock, parts, metrics, average, ranks.main)
    except NonFiniteLoss as e:
        raise nonfinite_error(e, clock) from None
    finally:
        metrics.close()
    distributed.teardown()  # after a failure, report_errors leaves the group once this process has said why
    log.info(last_line(best, data.val is not None, clock, stop, run_dir, metrics))
    return best.value


class Settings:
    """The run's config, checked (values, the allow-list, keys of blocks and transform steps) before anything is
    built; with the checkpoint to resume from (`saved`, None for a new run) and the run folder to write into. A run
    resumed by name goes on with the config it was made with (config/resume_rules.py)."""

    def __init__(self, cfg: DictConfig, saved: Optional[dict], run_dir: Path):
        self.cfg, self.saved, self.run_dir = cfg, saved, run_dir
        self.resizing = settle_image_size(cfg)  # data=folder's image_size=null: the images' own size if they share one
        self.transforms = check_transforms(cfg.transform)  # order and keys checked; torchvision not needed yet
        check_model(cfg.model)  # a misspelt block key or arch fails now, not after the data has loaded
        check_trackers(cfg.logger)  # a chosen tracker's library is installed
        self.config = OmegaConf.to_container(cfg, resolve=True)  # plain: what checkpoints carry and resuming compares
        changed = check_resumable(saved, self.config) if saved is not None else []
        if saved is not None:
            check_resume(saved["config"], self.config)
        self.changes = f" ({', '.join(changed)})" if changed else ""  # what the command changes of a resumed run
        self.files = files_fingerprint(cfg.data)  # which files the splits were drawn from: a resume must find the same
        check_same_files(saved, self.files, cfg.data)

    @classmethod
    def of(cls, cfg: DictConfig, launch: Launch) -> "Settings":
        cfg = cfg.copy()  # settled here (data.image_size), never in the caller's config
        check_values(cfg)
        check_config(cfg)  # nothing outside the allow-list (trainlab/config/allowlist.py), before anything runs
        saved, run_dir = resume_state(cfg.trainer.resume, launch.run_dir)
        RunLogging.write_into(run_dir)
        if saved is not None and cfg.trainer.resume != "auto":  # resumed by name: on with the config it was made with
            cfg = continued_config(saved["config"], cfg, launch.overrides)
            check_values(cfg)
            check_config(cfg)
        return cls(cfg, saved, run_dir)

    def about(self, data) -> dict:
        """What a checkpoint says of its run besides the parts' state: what evaluate.py and predict.py read."""
        return {"config": self.config, "classes": list(data.classes), "image_shape": list(data.image_shape),
                "data_files": self.files, "trainlab_version": __version__}


def processes(settings: Settings, launch: Launch) -> tuple:
    """-> (this process's Ranks, its device): under torchrun or in a submitit job of several tasks, its rank's, all
    in one run folder and from one checkpoint; one process speaks for all."""
    device_name = settings.cfg.trainer.device
    ranks, device = distributed.setup(device_name)
    if not ranks.main:
        log.setLevel(logging.WARNING)
    distributed.check_one_run(settings.run_dir, settings.saved and settings.saved["position"])
    return ranks, device or resolve_device(device_name, launch.job, launch.jobs_at_once)


def log_line(line: Optional[str]) -> None:
    if line:
        log.info(line)


def log_data(data_cfg, data, path: str, device, launch: Launch, resizing: Optional[str]) -> None:
    threads = (f" ({torch.get_num_threads()} threads: job {launch.job}, {launch.jobs_at_once} at once)"
               if launch.jobs_at_once > 1 else "")
    lines = [f"data {printable(data_cfg.name)}: {sizes_text(data.train, data.val, data.test)}, {len(data.classes)} "
             f"classes, {shape_text(data.image_shape)} · {path} · device {device}{threads} · trainlab {__version__}"]
    lines += [resizing] if resizing else []
    if data.val is None:
        lines.append("no validation split (data.val_split=0): nothing is chosen; best.pt holds the last epoch's weights")
    if data.test is None:
        lines.append(f"no test split: {_no_test_reason(data_cfg)}; the run ends with its validation score only")
    for line in lines:
        log.info(line)


def _no_test_reason(data_cfg) -> str:
    if data_cfg.name == "folder" and data_cfg.split is None:
        return f"{Path(data_cfg.root) / (data_cfg.test_dir or '')} does not exist"
    return f"{data_cfg.name} has none"


def check_same_classes(saved: Optional[dict], classes) -> None:
    if saved is not None and saved["classes"] != list(classes):
        raise TrainlabError(f"the checkpoint was trained on classes {saved['classes'][:5]}..., this data has "
                            f"{list(classes)[:5]}...: resume on the same data, or start a new run folder")


def placed(model, numerics: Numerics, compile_mode, ranks, device):
    """The model on the device, in the run's layout; compiled in `compile_mode` (trainer.compile_mode where
    trainer.compile is on; False: not compiled) and, in a data-parallel run, wrapped so gradients are averaged over
    the processes in backward -> what the step and the evaluator call."""
    model.to(device, memory_format=numerics.memory_format)
    net = torch.compile(model, mode=compile_mode) if compile_mode else model
    if ranks.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    return net


def nothing_to_do(settings: Settings, clock: Clock, best: Best, data) -> bool:
    """A resumed run with no epoch left to train and its test scored (or none to score): says so -> True."""
    if best.test is None and data.test is not None:
        return False
    t, run_dir = settings.cfg.trainer, settings.run_dir
    how = (longer_hint(settings.config) if not clock.to_train else
           f"it stopped early: no better {t.monitor} for {best.bad_epochs} epochs; raise "
           "trainer.early_stopping_patience to train on")
    log.info(f"nothing to do: {shown_path(run_dir)} finished training ({how}); {result_text(best, data.val is not None)}")
    return True


def going_on(settings: Settings, clock: Clock, best: Best, stop: StopPolicy, to_train: bool) -> None:
    """A resumed run says where it goes on from; one that trains on scores the test again at the end."""
    if settings.saved is not None:
        log.info(f"resuming {shown_path(settings.run_dir)} at epoch {clock.epoch}, batch {clock.batch}"
                 f"{settings.changes}")
    if to_train:
        best.test = stop.reason = None


def between_steps(stop: StopPolicy, parts: Checkpointer, steps: Epoch, run_dir: Path, t) -> bool:
    """Between two steps: checkpoint when due or when training must stop; a signal raises Interrupted (after the
    checkpoint), the spent time budget -> True (training ends here, then the test)."""
    clock = steps.clock
    why = stop.after_step()
    if parts.enabled and (why or parts.due(clock.step)):
        steps.check_finite()  # no checkpoint holds weights that a non-finite step made
        parts.save()
    if why == TIME:
        log.info(f"time budget: trainer.max_minutes={t.max_minutes} spent at epoch {clock.epoch}, batch "
                 f"{clock.batch}; checkpointed; to go on: {resume_command(run_dir)}")
        return True
    if why is not None:
        stop.pass_to_launcher(why)  # the launcher's (submitit's) signal: it requeues the job, every task
        how = (f"checkpoint written; to resume: {resume_command(run_dir)}" if t.checkpoint
               else "trainer.checkpoint=false: nothing was saved")
        raise Interrupted(f"stopped by {stop.signals.signal or 'a signal to another process'} at epoch "
                          f"{clock.epoch}, batch {clock.batch}; {how}")
    return False


def score_epoch(evaluator: Evaluator, loaders, average, best: Best, epoch: int, model, test_every_epoch: bool):
    """The epoch's validation score (and the test's, to watch, never to choose) with the weights that are scored (an
    average kept beside the model's, trainer.average=ema), and whether it is the best so far -> (val, test, is_best)."""
    with average.applied():
        val = evaluator.score(loaders.val) if loaders.val is not None else None
        test = evaluator.score(loaders.test) if test_every_epoch and loaders.test is not None else None
        return val, test, best.update(val and val.as_dict(), epoch, model)


def ended_line(why: str, epoch: int, best: Best, t, run_dir: Path) -> str:
    if why == TIME:
        return (f"time budget: trainer.max_minutes={t.max_minutes} spent after epoch {epoch}; checkpointed; to go "
                f"on: {resume_command(run_dir)}")
    if why == PRUNED:
        return (f"pruned after epoch {epoch}: its best {t.monitor} so far falls behind the search's other trials at "
                "that epoch; the test split is not scored")
    return (f"early stopping: no better {t.monitor} in the {best.bad_epochs} epochs after epoch {best.epoch} "
            f"(trainer.early_stopping_patience={t.early_stopping_patience})")


def finish(evaluator: Evaluator, model, test_loader, best: Best, clock: Clock, parts: Checkpointer,
           metrics: Metrics, average, main: bool) -> None:
    """The test split, once, with the weights validation chose; the test row ends metrics.csv even without one.
    A signal now waits for the end to be written (seconds): killed in the middle of it, best.pt would lack its test
    score and a checkpoint's write would be left half done. `main` (the first process): the run folder's error.log,
    an earlier attempt's, is removed, so report.py shows the run done, not failed."""
    with StopOnSignal() as ending, average.applied():  # the weights that were scored
        if test_loader is not None:
            with swapped_weights(model, best.test_weights(clock.weights_epoch, clock.batch > 0, parts.folder)):
                best.test = {**evaluator.score(test_loader).as_dict(), "epoch": best.epoch or clock.weights_epoch}
        metrics.test(best.test, best.val, clock.step)
        if best.test is not None:
            parts.save()
            parts.add_test(best.test)
    if ending.signal:
        log.info(f"{ending.signal} came while the run was writing its end: it finished first, nothing is left to "
                 "resume")
    if main:
        (parts.folder.parent / ERROR_LOG).unlink(missing_ok=True)  # parts.folder: <run>/checkpoints


def nonfinite_error(e: NonFiniteLoss, clock: Clock) -> TrainlabError:
    return TrainlabError(
        f"the loss became NaN or infinite at step {clock.step_at(e.batch)} (epoch {clock.epoch}, batch {e.batch}); "
        "no checkpoint holds those weights: lower optimizer.lr, or set trainer.nonfinite=skip to skip such steps")


def last_line(best: Best, validated: bool, clock: Clock, stop: StopPolicy, run_dir: Path, metrics: Metrics) -> str:
    """The run's last line: its result, what it trained, its folder, and what a tracker missed."""
    pruned = stop.pruning.line() if stop.reason == PRUNED else ""
    return f"{result_text(best, validated)} · {trained_text(clock, stop)}{pruned} · {shown_path(run_dir)}" \
           f"{metrics.missed()}"


def result_text(best: Best, validated: bool) -> str:
    """The run's result in words: its best validation value and epoch, and its test score with those weights."""
    if not validated:
        text = f"no validation split: the weights of epoch {best.epoch}"
    elif best.val is None:
        text = "no epoch finished: nothing validated"
    else:
        name = best.monitor.replace("/", " ")
        value = f"{best.value:.2%}" if higher_is_better(best.monitor) else f"{best.value:.4f}"
        text = f"best {name} {value} at epoch {best.epoch}"
    if best.test is not None:
        text += f" · test acc {best.test['acc']:.2%} (loss {best.test['loss']:.4f}) with the weights of epoch " \
                f"{best.test['epoch']}"
    return text


def trained_text(clock: Clock, stop: StopPolicy) -> str:
    minutes, seconds = divmod(time.perf_counter() - (stop.started or time.perf_counter()), 60)
    last = clock.weights_epoch
    if last < clock.first_epoch:
        return "no epoch left to train"
    return f"epochs {clock.first_epoch}-{last} in {int(minutes)}m{seconds:04.1f}s"


def log_start(metrics: Metrics, settings: Settings, launch: Launch, train_loader, model, device) -> None:
    """This attempt's provenance (the first process's: runs/provenance.py), start-up's time (log_startup); and a new
    run's TensorBoard extras: its HPARAMS row, the first batch as the model sees it, the model's graph. The batch is
    drawn only for what logs it: on the DataLoader path it decodes a batch (and starts the workers)."""
    record = record_attempt(settings.run_dir, launch.overrides, settings.cfg.data, settings.files, device,
                            metrics.writer, sum(p.numel() for p in model.parameters())) if first_process() else None
    if settings.saved is None:
        _log_extras(metrics.writer, settings.cfg, launch, train_loader, model, settings.transforms, device,
                    short_commit(record))
    log_startup(metrics)


def _log_extras(writer, cfg: DictConfig, launch: Launch, train_loader, model, transforms: dict, device,
                commit: Optional[str]) -> None:
    t = cfg.trainer
    values = hparams_values(cfg, launch)
    if commit is not None:
        values["code.commit"] = commit  # the code beside the settings: 12 hex digits, +dirty
    writer.hparams(values, [best_metric(t.monitor), TEST_ACC, VAL_ACC, VAL_LOSS, TRAIN_LOSS, TEST_LOSS], launch.swept)
    first_batch = next(iter(train_loader))[0] if t.log_images or t.log_graph else None
    if t.log_images:
        writer.image_grid(first_batch, normalization(transforms["train"]))
    if t.log_graph:
        writer.graph(model, first_batch[:1].to(device))


def log_startup(metrics: Metrics) -> None:
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
        metrics.startup(launch)


_startup_logged = False
_tables_shown = set()  # the models whose table this process has shown: a sweep's later jobs name theirs in a line


def model_lines(model_cfg, model, image_shape) -> str:
    key = repr(OmegaConf.to_container(model_cfg, resolve=True))
    if key in _tables_shown:
        count = sum(p.numel() for p in model.parameters())
        return f"model {printable(model_cfg.name)}: {count:,} parameters (its table is above)"
    _tables_shown.add(key)
    return f"model {printable(model_cfg.name)}\n{summary_table(model, image_shape)}"

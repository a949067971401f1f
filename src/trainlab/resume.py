"""What a run continues from: trainer.resume -> the run folder and its checkpoint, the config it goes on with, and
the command that resumes a stopped run.

    trainer.resume=auto      the run's own folder, where it holds a checkpoint (a rerun sweep job), else a new run
    trainer.resume=never     a new run, always
    trainer.resume=latest    the run (a single run or a sweep job under outputs/) that wrote a checkpoint last
    trainer.resume=FOLDER    that run folder; or a .pt file: that checkpoint, in its own run's folder

Resuming writes into the resumed run's own folder (conf/config.yaml names hydra.run.dir by resume_folder), and goes
on with the config the run was made with: the command may change only how it goes on (ON_RESUME), so
`python src/run.py trainer.resume=latest` is enough, with or without the run's first overrides.
"""
import shlex
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from trainlab.errors import TrainlabError
from trainlab.errors import printable
from trainlab.launch import first_process, script
from trainlab.run_folder import BEST, CHECKPOINTS, EVENTS, LAST, METRICS_CSV, check_run_folder, run_of, shown_path

OUTPUTS = Path("outputs")  # where conf/config.yaml puts runs (runs/<time>) and sweeps (multirun/<time>/<job>)
# Settings that say how the run goes on, not what it is: a resume takes them from the command where it sets them.
ON_RESUME = ("trainer.resume", "trainer.epochs", "trainer.device", "trainer.progress_bar", "trainer.max_minutes",
             "trainer.early_stopping_patience", "trainer.checkpoint_every_n_steps", "trainer.log_every_n_steps",
             "trainer.test_every_epoch", "trainer.compile", "trainer.cuda_graphs", "data.root", "data.num_workers",
             "data.pin_memory", "data.eval_batch_size")


NEWER_KEYS = ("data", "trainer")  # parts whose schema holds every option's keys: a key added later is safe to fill


def newest_run(outputs: Path = OUTPUTS) -> Optional[Path]:
    """The run folder, a single run's or a sweep job's, whose last checkpoint was written last; None if none."""
    found = [*outputs.glob(f"runs/*/{CHECKPOINTS}/{LAST}"), *outputs.glob(f"multirun/*/*/{CHECKPOINTS}/{LAST}")]
    return max(found, key=lambda p: p.stat().st_mtime).parent.parent if found else None


def run_traces(run_dir: Path) -> list:
    """What a folder holds of a run beyond a start's (.hydra/, run.log, error.log): checkpoints, metrics.csv, events.
    Any of them is a run that a new one there would overwrite or mix with."""
    found = [f"{CHECKPOINTS}/{p.name}" for p in sorted((Path(run_dir) / CHECKPOINTS).glob("*.pt"))]
    found += [METRICS_CSV] if (Path(run_dir) / METRICS_CSV).exists() else []
    return found + (["TensorBoard events"] if any(Path(run_dir).glob(f"{EVENTS}*")) else [])


def resume_folder(resume: str) -> Optional[Path]:
    """The existing run folder trainer.resume continues, or None (auto, never, or nothing found there)."""
    if resume in ("auto", "never"):
        return None
    if resume == "latest":
        return newest_run()
    target = Path(resume).expanduser()
    return target if target.is_dir() else run_of(target) if target.is_file() else None


def resume_state(resume: str, run_dir: Path) -> tuple:
    """trainer.resume -> (the checkpoint's state or None, the run folder to write into), each folder it reads
    checked first: ours or refused (run_folder.check_run_folder; under torchrun the first process checks)."""
    if first_process():
        check_run_folder(run_dir)
    state, folder = _resume_state(resume, Path(run_dir))
    if folder != Path(run_dir) and first_process():
        check_run_folder(folder)
    return state, folder


def check_same_files(saved, files, data_cfg) -> None:
    """`files`, the data's fingerprint (resident.files_fingerprint), must be the run's when it is resumed: its splits
    were drawn from them, and other files would be split otherwise (images it trained on could become validation
    images). TrainlabError where they differ."""
    if saved is not None and saved.get("data_files", files) != files:
        raise TrainlabError(f"the files in data.root={printable(data_cfg.root)} are not those the run began with "
                            "(files added, removed or renamed): its train and validation splits would change, and "
                            "images it trained on could be validated on; resume with the same files, or start a new "
                            "run (hydra.run.dir=...)")


def _resume_state(resume: str, run_dir: Path) -> tuple:
    from trainlab.checkpoint import load_checkpoint, load_latest  # torch: only where a run is continued

    if resume == "never":
        if any((run_dir / CHECKPOINTS / name).exists() for name in (LAST, BEST)):  # a new run would replace them
            raise TrainlabError(f"trainer.resume=never, but {shown_path(run_dir)} holds a run ({CHECKPOINTS}/): a new "
                                "run there would overwrite it; give the new run a folder of its own "
                                "(hydra.run.dir=...), or move that one away")
        return None, run_dir
    if resume == "auto":
        state, _ = load_latest(run_dir / CHECKPOINTS)
        traces = run_traces(run_dir) if state is None else []
        if traces:  # a run that cannot be continued is still not overwritten
            raise TrainlabError(f"{shown_path(run_dir)} holds a run ({', '.join(traces)}) but no "
                                f"{CHECKPOINTS}/{LAST} to continue it from: a new run there would replace it; give "
                                f"the new run a folder of its own (hydra.run.dir=...), continue from a checkpoint it "
                                f"has (trainer.resume=PATH.pt), or move the folder away")
        return state, run_dir
    if resume == "latest":
        folder = newest_run()
        if folder is None:
            raise TrainlabError(f"trainer.resume=latest: no run under {OUTPUTS}/ holds a checkpoint to resume")
        state, _ = load_latest(folder / CHECKPOINTS)
        return state, folder
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


def continued_config(saved: dict, cfg: DictConfig, overrides) -> DictConfig:
    """The config a resumed run goes on with: the one it was made with (`saved`, from its checkpoint), with the
    ON_RESUME settings the command sets. Any other setting the command sets must be the run's own: a resumed run that
    trained on with another optimizer would be neither the old run nor a new one."""
    continued = OmegaConf.create(saved)
    for part in NEWER_KEYS:  # a setting the run's trainlab did not have yet (data.max_pixels) takes the command's value
        news = {k: v for k, v in OmegaConf.to_container(cfg[part], resolve=True).items() if k not in saved[part]}
        continued[part] = OmegaConf.merge(continued[part], news)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        now = OmegaConf.select(cfg, key, default=None)
        if key in ON_RESUME:
            OmegaConf.update(continued, key, now, force_add=True)
            continue
        before = OmegaConf.select(continued, key, default=None)
        # a group (optimizer=adam) or a key (optimizer.lr=0.1); a choice that is not a part (experiment=...) is not
        if key.split(".")[0] in cfg and _plain(now) != _plain(before):
            raise TrainlabError(f"{override}: the run being resumed was made with {key}={_shown(before)}; a resume "
                                f"goes on as the run was made, so drop {override} (or start a new run to change it)")
    return continued


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _shown(value) -> str:
    if isinstance(value, DictConfig):
        return value.get("name") or str(value.get("_target_", "...")).rsplit(".", 1)[-1].lower()  # torch.optim.SGD: sgd
    return str(value)


def check_resumable(state: dict, current: dict) -> list:
    """The run in `state` (a checkpoint) can go on as `current` (the plain config) says: the same settings but how it
    goes on (ON_RESUME), the same way of choosing its best epoch, a schedule still laid out for its length.
    -> the ON_RESUME settings that change, as lines to say; raises naming the first other setting that differs."""
    from trainlab.checkpoint import FORMAT

    if state.get("format", 0) < FORMAT:
        raise TrainlabError("the checkpoint was written before validation splits (its best.pt was chosen on the test "
                            "split) and cannot be trained on: start a new run folder")
    saved = state["config"]
    changed = []
    for key, before, now in _differences(saved, current):
        if key in ON_RESUME:
            if key != "trainer.resume":
                changed.append(f"{key} {before} -> {now}")
            continue
        raise TrainlabError(f"{key} is {now!r} in this command but {before!r} in the run being resumed: a resume goes "
                            f"on as the run was made; drop the change, or start a new run in another folder "
                            f"(hydra.run.dir=...)")
    scheduler = current.get("scheduler", {})
    epochs_before, epochs_now = saved["trainer"]["epochs"], current["trainer"]["epochs"]
    if epochs_before != epochs_now and "total_steps" in scheduler and scheduler["total_steps"] is None:
        raise TrainlabError(f"trainer.epochs {epochs_before} -> {epochs_now}: the one-cycle schedule was laid out "
                            f"over {epochs_before} epochs and cannot be stretched; start a new run to train longer")
    return changed


def longer_hint(config: dict) -> str:
    """How to train a finished run longer: raise trainer.epochs, unless its schedule was laid out over them (cosine's
    T_max follows trainer.epochs; one-cycle spans the whole run), which a resume refuses to stretch."""
    scheduler, epochs = config.get("scheduler", {}), config["trainer"]["epochs"]
    if scheduler.get("T_max") == epochs or ("total_steps" in scheduler and scheduler["total_steps"] is None):
        return f"its schedule was laid out over {epochs} epochs: start a new run to train longer"
    return "raise trainer.epochs to train on"


def _differences(before, now, prefix: str = ""):
    """(dotted key, saved value, current value) for each setting both configs have and that differs (a key only one
    of them has is a setting from another trainlab version: not compared); lists of one length item by item, so a
    changed model names its block (model.blocks.3.out_channels), not both lists."""
    if isinstance(before, dict) and isinstance(now, dict):
        for key in (k for k in before if k in now):  # in the config's order: the first difference is named
            yield from _differences(before[key], now[key], f"{prefix}{key}.")
    elif isinstance(before, list) and isinstance(now, list) and len(before) == len(now):
        for i, (old, new) in enumerate(zip(before, now)):
            yield from _differences(old, new, f"{prefix}{i}.")
    elif before != now:
        yield prefix.rstrip("."), _brief(before), _brief(now)


def _brief(value):
    """A setting as a one-line message shows it: a long list or mapping by its size."""
    if isinstance(value, (list, dict)) and len(repr(value)) > 60:
        return _Said(f"a list of {len(value)}" if isinstance(value, list) else f"a mapping of {len(value)} keys")
    return value


class _Said(str):
    def __repr__(self):
        return str(self)


def resume_command(run_dir: Path) -> str:
    """The command that resumes the run in `run_dir`, to paste into a shell."""
    return f"python {shlex.quote(script())} {shlex.quote(f'trainer.resume={shown_path(run_dir)}')}"

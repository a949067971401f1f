"""What a run continues from: trainer.resume -> the run folder and its checkpoint, the config it goes on with, and
the command that resumes a stopped run. What the resumed run may change: trainlab/config/resume_rules.py.

    trainer.resume=auto      the run's own folder, where it holds a checkpoint (a rerun sweep job), else a new run
    trainer.resume=never     a new run, always
    trainer.resume=latest    the run (a single run or a sweep job under outputs/) that wrote a checkpoint last
    trainer.resume=FOLDER    that run folder; or a .pt file: that checkpoint, in its own run's folder

Resuming writes into the resumed run's own folder (conf/config.yaml names hydra.run.dir by resume_folder), and goes
on with the config the run was made with: the command may change only how it goes on (config/resume_rules.py), so
`python src/run.py trainer.resume=latest` is enough, with or without the run's first overrides.
"""
import shlex
from pathlib import Path
from typing import Optional

from trainlab.errors import TrainlabError, printable
from trainlab.launch import first_process, script
from trainlab.runs.folder import BEST, CHECKPOINTS, EVENTS, LAST, METRICS_CSV, check_run_folder, run_of, shown_path

OUTPUTS = Path("outputs")  # where conf/config.yaml puts runs (runs/<time>) and sweeps (multirun/<time>/<job>)


def newest_run(outputs: Path = OUTPUTS) -> Optional[Path]:
    """The run folder, a single run's or a sweep job's, whose last checkpoint was written last; None if none."""
    found = [*outputs.glob(f"runs/*/{CHECKPOINTS}/{LAST}"), *outputs.glob(f"multirun/*/*/{CHECKPOINTS}/{LAST}")]
    return max(found, key=lambda p: p.stat().st_mtime).parent.parent if found else None


def run_traces(run_dir: Path) -> list:
    """What a folder holds of a run beyond a start's (.hydra/, run.log, error.log): checkpoints, metrics.csv, events.
    Any of them is a run that a new one there would overwrite or mix with."""
    found = [str(p.relative_to(run_dir)) for p in trace_files(run_dir) if not p.name.startswith(EVENTS)]
    return found + (["TensorBoard events"] if any(Path(run_dir).glob(f"{EVENTS}*")) else [])


def trace_files(run_dir: Path) -> list:
    """run_traces' files: checkpoints/*.pt, metrics.csv, the TensorBoard event files."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / CHECKPOINTS).glob("*.pt"))
    found += [run_dir / METRICS_CSV] if (run_dir / METRICS_CSV).exists() else []
    return found + sorted(run_dir.glob(f"{EVENTS}*"))


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
    from trainlab.runs.checkpoint import load_checkpoint, load_latest  # torch: only where a run is continued

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


def resume_command(run_dir: Path) -> str:
    """The command that resumes the run in `run_dir`, to paste into a shell."""
    return f"python {shlex.quote(script())} {shlex.quote(f'trainer.resume={shown_path(run_dir)}')}"

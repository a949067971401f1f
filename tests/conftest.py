"""Shared helpers: compose the real conf/, run the real src/run.py, read back the TensorBoard events."""
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# pytest-xdist runs a worker per core: each worker, and each run it starts, takes its share of the cores. Two workers
# of two threads each on two cores made every run wait on the other's threads (the suite took 4m53s; one thread each:
# see the commit). Before torch is imported, so runs in this process and in subprocesses use the same number.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
sys.path.insert(0, str(ROOT / "src"))  # importable from a fresh clone before `pip install -e .`

import trainlab  # noqa: E402,F401 (importing it registers the schemas conf/ refers to)

# Keep subprocess runs small and quiet; each test adds what it is about.
QUICK = ["trainer.progress_bar=false", "trainer.log_graph=false"]


def needs_shared(path: Path) -> Path:
    """`path` under ../shared, or a skip with the reason; CI (TRAINLAB_REQUIRE_SHARED=1) fails instead of skipping."""
    if path.exists():
        return path
    reason = f"{path} is absent: ../shared comes with the project's CI, not with a fresh clone"
    if os.environ.get("TRAINLAB_REQUIRE_SHARED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def needs_extra(module: str, extra: str):
    """An optional extra's module, or a skip naming how to install it; CI (TRAINLAB_REQUIRE_EXTRAS=1), which installs
    every extra, fails instead of skipping."""
    try:
        return importlib.import_module(module)
    except ImportError:
        reason = f"{module} is an optional extra: pip install -e .[{extra}] (CI installs it)"
        if os.environ.get("TRAINLAB_REQUIRE_EXTRAS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def ants_bees(tmp_path_factory) -> Path:
    """A small slice of the tutorial's ants and bees, the GIF among the JPEGs included: train/ and val/, 2 classes."""
    source = needs_shared(SHARED / "data" / "hymenoptera_data")
    root = tmp_path_factory.mktemp("hymenoptera")
    for split, count in (("train", 6), ("val", 3)):
        for cls in ("ants", "bees"):
            files = sorted((source / split / cls).iterdir())
            picked = files[:count]
            if split == "train" and cls == "ants":
                picked += [f for f in files if f.suffix == ".gif"]
            (root / split / cls).mkdir(parents=True)
            for f in picked:
                shutil.copy(f, root / split / cls / f.name)
    return root


def assert_one_clear_line(result, *expected):
    """The CLI's answer to a mistake: status 2, no traceback, one `error:` line holding each of `expected`."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for text in expected:
        assert text in errors[0], errors[0]


def options(group: str) -> list:
    """The options of a config group, as conf/ holds them now (a user's own file included), sorted."""
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def compose(*overrides, config: str = "config"):
    """The real conf/ composed with `overrides`, as src/run.py (or src/<config>.py) would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config, overrides=list(overrides))


def entry_config(config: str, **values):
    """src/predict.py's or src/evaluate.py's config as conf/ ships it, with `values` set: for calling them in-process."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(compose(config=config), values)


# A refusal is answered before a run imports torch, in about 0.6 s; about half of it is the interpreter's start and
# the imports of Hydra and trainlab. A whole run spends about 2.3 s of its 3.3 s importing torch and torchvision (on 2
# cores; a tiny run of the shapes). run_forked runs an entrypoint in a process forked from a server that has made those
# imports once (multiprocessing's forkserver, single-threaded, so the fork is clean: torch starts its threads on first
# use, in the child): the same script, argv, working folder, environment, output streams and exit status as
# `python src/run.py ...`, in a third of the time. Third-party modules only: trainlab itself is imported in the child,
# from this checkout's src/ (the server's sys.path is not the tests': an installed trainlab could be another copy).
FORK_PRELOAD = ["hydra", "hydra.main", "hydra._internal.hydra", "hydra._internal.config_loader_impl",
                "hydra._internal.utils", "hydra.core.plugins", "omegaconf", "yaml", "torch", "torchvision",
                "torch.utils.tensorboard"]
_forkserver = None


def _forked_main(script, argv0, args, cwd, env, out, err, signal_at=None):
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]  # as the interpreter reads it
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
    sys.argv = [argv0, *args]  # as typed: the script's path from the project root, or in full from elsewhere
    sys.path.insert(0, os.path.dirname(script))
    if signal_at:
        signal_when_logged(*signal_at)
    import types

    # runpy.run_path would set argv[0] to the full path; `python src/run.py` keeps it as typed (the resume line's)
    main = sys.modules["__main__"] = types.ModuleType("__main__")
    main.__file__ = script
    with open(script) as f:
        exec(compile(f.read(), script, "exec"), main.__dict__)


def run_forked(*args, script="run.py", env=None, timeout=120, cwd=None,
               signal_at=None) -> subprocess.CompletedProcess:
    """run_cli's `python src/<script> ARGS` (from `cwd`), in a process forked from a warmed-up server; `signal_at`:
    signal_when_logged's arguments, for run_signalled."""
    global _forkserver
    import multiprocessing
    import tempfile

    if _forkserver is None:
        _forkserver = multiprocessing.get_context("forkserver")
        _forkserver.set_forkserver_preload(FORK_PRELOAD)
    with tempfile.TemporaryDirectory() as scratch:
        out, err = os.path.join(scratch, "out"), os.path.join(scratch, "err")
        process = _forkserver.Process(target=_forked_main, args=(
            str(ROOT / "src" / script), f"src/{script}" if cwd is None else str(ROOT / "src" / script), list(args),
            str(cwd or ROOT), {**os.environ, **(env or {})}, out, err, signal_at))
        process.start()
        process.join(timeout)
        if process.exitcode is None:  # as subprocess.run answers a run past its time
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired([script, *args], timeout)
        with open(out) as f_out, open(err) as f_err:
            return subprocess.CompletedProcess([script, *args], process.exitcode, f_out.read(), f_err.read())


def launches_processes(args) -> bool:
    """Whether a command's sweep runs its jobs in processes of a launcher (parallel, submitit), not in its own."""
    return bool({"-m", "--multirun"} & set(args)) and any(a.startswith("hydra/launcher=") for a in args)


def run_cli(*args, env=None, timeout=240, cwd=None, fresh=False) -> subprocess.CompletedProcess:
    """`python src/run.py ARGS` from the project root, as a user types it; or from `cwd`, which then holds the
    outputs/ folder (src/run.py named by its full path). Forked from the warmed-up server (run_forked), unless `fresh`:
    a new interpreter, for what a fork cannot show (exit-time handlers, which a forked process skips); a sweep on
    another launcher than Hydra's basic one always is (joblib's workers hang under a forked parent)."""
    if not fresh and not launches_processes(args):
        return run_forked(*args, env=env, timeout=timeout, cwd=cwd)
    script = "src/run.py" if cwd is None else str(ROOT / "src" / "run.py")
    return subprocess.run([sys.executable, script, *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# `python src/run.py ARGS`, but the process sends itself `signal` once it has logged train/loss at global step `step`
# or later: a kill or a stop at a known point of the run, whatever the load on the machine. (Watching the run from the
# test and signalling it raced: on a loaded machine the run could end before the signal landed.)
def signal_when_logged(sig: int, step: int, times: int, tag: str) -> None:
    """From now on, this process signals itself `times` times once its run logs `tag` at `step` or later."""
    from trainlab.runs.tensorboard import RunWriter

    scalars, sent = RunWriter.scalars, []

    def scalars_then_signal(self, values, at):
        scalars(self, values, at)
        if tag in values and at >= step and not sent:
            sent.append(at)
            self.flush()  # the worst case: all that was logged is on disk
            for _ in range(times):  # as from outside: SIGKILL ends it here, SIGTERM is handled after this step
                os.kill(os.getpid(), sig)
    RunWriter.scalars = scalars_then_signal


SIGNAL_AT_STEP = f"""
import os, runpy, sys
sig, step, times, tag, sys.argv = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
sys.path.insert(0, {str(ROOT / "tests")!r})
from conftest import signal_when_logged
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # src/, as `python src/run.py` has it
signal_when_logged(sig, step, times, tag)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_signalled(sig: int, step: int, *args, timeout=240, cwd=None, times=1,
                  tag="train/loss") -> subprocess.CompletedProcess:
    """run_cli's run, signalled by itself `times` times once it logs `tag` at step `step` or later; forked as run_cli
    forks, or in a new interpreter (SIGNAL_AT_STEP)."""
    if not launches_processes(args):
        return run_forked(*args, env=None, timeout=timeout, cwd=cwd, signal_at=(int(sig), step, times, tag))
    script = "src/run.py" if cwd is None else str(ROOT / "src" / "run.py")
    return subprocess.run([sys.executable, "-c", SIGNAL_AT_STEP, str(int(sig)), str(step), str(times), tag, script,
                           *args],
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)


# A submitit job's tasks are new interpreters (python -m submitit.core._submit) that no patch made by the test or the
# sweep's process reaches. Each imports sitecustomize.py from the first folder of PYTHONPATH as it starts: there, task
# 0 (the one that logs) preempts the whole job once it has logged train/loss at `step` or later, as SLURM does:
# SIGUSR2 to every task of the job (the children of submitit's controller), once (the marker file: the requeued tasks
# run on undisturbed). At a known step, whatever the load on the machine.
PREEMPT_JOB_SITE = """
import os
if os.environ.get("SUBMITIT_LOCAL_GLOBALID") == "0" and not os.path.exists({marker!r}):
    import signal
    from pathlib import Path
    from trainlab.runs.tensorboard import RunWriter

    scalars = RunWriter.scalars

    def scalars_then_preempt(self, values, at):
        scalars(self, values, at)
        if "train/loss" in values and at >= {step} and not os.path.exists({marker!r}):
            Path({marker!r}).touch()
            self.flush()
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if parent == os.getppid():
                    os.kill(int(stat.parent.name), signal.SIGUSR2)
    RunWriter.scalars = scalars_then_preempt
"""


def preempting_env(folder: Path, step: int) -> dict:
    """The environment for a sweep on hydra/launcher=submitit_local whose job is preempted once, when its run logs
    train/loss at `step` (PREEMPT_JOB_SITE, written into `folder`); its processes import trainlab from src/."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(PREEMPT_JOB_SITE.format(marker=str(folder / "preempted"), step=step))
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(ROOT / "src")])}


def free_port() -> int:
    """A TCP port nothing listens on now, the kernel's choice: for a rendezvous of a test's processes, so that tests
    running at once never meet on one."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_dir(sweep: Path, number: int) -> Path:
    """The folder of job `number` of a sweep: <number>_<what the sweep gave it> (conf/config.yaml), or <number>."""
    [folder] = [p for p in Path(sweep).iterdir() if p.is_dir() and p.name.partition("_")[0] == str(number)]
    return folder


def scalars(run_dir: Path) -> dict:
    """{tag: [(step, value), ...]} from the run folder's TensorBoard event files, as trainlab reads them back."""
    from trainlab.runs.folder import read_scalars

    return read_scalars(run_dir)


def event_tags(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {**events.Tags(), "hparams": sorted(events.PluginTagToContent("hparams"))}

"""Which code, command, packages, machine and data made a run: <run>/provenance.json holds a record per attempt (the
start, then one per resume), and beside it the uncommitted changes of each attempt made from a dirty checkout.

    {"attempts": [{"time", "command", "overrides", "cwd", "git", "versions", "device", "host", "data"}, ...]}
    git: {"commit", "dirty", "diff": "provenance.diff" (provenance.2.diff for the second attempt...) or null,
          "untracked": [...]}; or null, with "git_missing": why (an installed trainlab, no git)

`dirty` is git's own sense (`git describe --dirty`): tracked files differ from the commit; untracked files are listed
beside it, never diffed. Recording never stops a run: git is asked with a time limit, and any failure is a reason."""
import hashlib
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import trainlab
from trainlab.errors import TrainlabError, one_line
from trainlab.runs.folder import PROVENANCE, PROVENANCE_DIFF, open_own, temporary_name

log = logging.getLogger("trainlab")

TAG = "provenance"  # TensorBoard's TEXT tab: the latest attempt, at step = its number from 0
PACKAGES = ("torch", "torchvision", "hydra-core", "omegaconf", "numpy", "Pillow", "trainlab")
GIT_SECONDS = 5  # a git held up (a network file system, a huge tree) must not hold the run up
MAX_UNTRACKED = 50


def code_root() -> Path:
    """The checkout trainlab was imported from: src/trainlab/__init__.py's grandparent (an editable install). Not the
    working directory: a run started from elsewhere is still made by this code."""
    return Path(trainlab.__file__).resolve().parents[2]


def record_attempt(run_dir: Path, overrides, data_cfg, files: Optional[str], device, writer,
                   parameters: Optional[int] = None) -> dict:
    """This attempt's record appended to <run_dir>/provenance.json (rewritten whole, atomically), its diff written
    beside it, and shown in TensorBoard's TEXT tab by `writer` (a RunWriter) -> the record. `files`: the data's
    fingerprint (resident.files_fingerprint), as the run computed it; `parameters`: the model's, as built (a search
    of several objectives reads them)."""
    root = data_cfg.get("root")  # none, or "", for generated data (data=shapes)
    run_dir, root = Path(run_dir), str(Path(root).expanduser().resolve()) if root else None
    attempts = read_attempts(run_dir, warn=True)
    record = {"time": datetime.now().astimezone().isoformat(timespec="seconds"), "command": command_line(),
              "overrides": list(overrides), "cwd": os.getcwd(), **git_record(code_root(), run_dir, len(attempts) + 1),
              "versions": versions(), "device": device_record(device), "host": socket.gethostname(),
              "data": {"name": data_cfg.name, "root": root, "files": files}, "model": {"parameters": parameters}}
    attempts.append(record)
    _write(run_dir / PROVENANCE, json.dumps({"attempts": attempts}, indent=2).encode() + b"\n")
    writer.text(TAG, markdown(record), len(attempts) - 1)
    return record


def read_attempts(run_dir: Path, warn: bool = False) -> list:
    """provenance.json's records, oldest first; [] where there is none or it cannot be read (`warn`: say so)."""
    try:
        with open_own(Path(run_dir) / PROVENANCE, "r") as f:
            attempts = json.load(f)["attempts"]
        if not isinstance(attempts, list) or not all(isinstance(a, dict) for a in attempts):
            raise ValueError("its attempts are not a list of records")
        return attempts
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError, TrainlabError) as e:  # TrainlabError: a link, not a file
        if warn:
            log.warning(f"{PROVENANCE} could not be read ({one_line(e, 120)}): it starts again with this attempt")
        return []


def command_line() -> str:
    """The command as typed: `python src/run.py ...` for a script (launch.script()'s convention), else argv itself."""
    argv = sys.argv or [""]
    return ("python " if argv[0].endswith(".py") else "") + shlex.join(argv)


def git_record(root: Path, run_dir: Path, attempt: int) -> dict:
    """{"git": {...}} for the checkout at `root`, its diff written into `run_dir` when dirty; else {"git": None,
    "git_missing": why}, said in one info line."""
    try:
        if not (root / ".git").exists():  # an installed trainlab: its parents may be some other repository's
            raise LookupError(f"{root} is not a git checkout (trainlab is installed, not cloned)")
        commit = _git(root, "rev-parse", "HEAD").decode().strip()
        diff = _git(root, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff")
        untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z").decode(errors="replace")
    except (LookupError, OSError, subprocess.SubprocessError) as e:
        reason = _reason(e)
        log.info(f"provenance: no git record ({reason})")
        return {"git": None, "git_missing": reason}
    name = None
    if diff:  # provenance.diff for the first attempt, provenance.<n>.diff for the n-th; a name taken is never reused
        names = ("provenance.diff" if n == 1 else f"provenance.{n}.diff" for n in itertools.count(attempt))
        name = next(name for name in names if not os.path.lexists(run_dir / name))
        _write(run_dir / name, diff)
    return {"git": {"commit": commit, "dirty": bool(diff), "diff": name,
                    "untracked": [path for path in untracked.split("\0") if path][:MAX_UNTRACKED]}}


def versions() -> dict:
    """Python's version and each of PACKAGES' installed distribution's (None where it is not installed)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_record(device) -> dict:
    """The run's device, the CPU's model (/proc/cpuinfo's, else platform's) and cores, and the GPU's under CUDA."""
    import torch  # here: report.py reads records without torch

    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.partition(":")[2].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux; an ARM board's lists no model name
        cpu = platform.processor() or None
    device = torch.device(device)
    record = {"torch_device": str(device), "cpu": cpu, "cpus": os.cpu_count()}
    if device.type == "cuda":
        gpu = torch.cuda.get_device_properties(device)
        record.update(gpu=gpu.name, gpu_memory_gib=round(gpu.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                      cudnn=torch.backends.cudnn.version())
    return record


def short_commit(record: Optional[dict]) -> Optional[str]:
    """A record's commit as tables show it: 12 hex digits, `+dirty` where the checkout was; None where unknown."""
    git = (record or {}).get("git")
    known = isinstance(git, dict) and isinstance(git.get("commit"), str)  # a record from a file: anyone's
    return git["commit"][:12] + ("+dirty" if git.get("dirty") else "") if known else None


def code_version(run_dir: Path, record: dict) -> Optional[tuple]:
    """What tells two runs' code apart: (commit, dirty, the first 8 hex digits of the diff's sha256); None: unknown."""
    if short_commit(record) is None:
        return None
    git, digest = record["git"], None
    if git.get("dirty") and PROVENANCE_DIFF.fullmatch(str(git.get("diff"))):  # a plain name: it comes from a file
        try:
            with open_own(Path(run_dir) / git["diff"], "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:8]
        except (OSError, TrainlabError):  # TrainlabError: a link
            digest = "unreadable"
    return git["commit"], bool(git.get("dirty")), digest


def markdown(record: dict) -> str:
    """The record as a two-column table, for TensorBoard's TEXT tab."""
    git, device, data = record["git"], record["device"], record["data"]
    if git is None:
        commit = f"unknown: {record['git_missing']}"
    else:
        commit = short_commit(record) + (f" (diff: {git['diff']})" if git["diff"] else "")
        commit += f", {len(git['untracked'])} untracked files" if git["untracked"] else ""
    on = [device["torch_device"], device["cpu"], f"{device['cpus']} CPUs", device.get("gpu")]
    rows = [("commit", commit), ("command", record["command"]), ("started", f"{record['time']} in {record['cwd']}"),
            ("versions", ", ".join(f"{name} {version or '-'}" for name, version in record["versions"].items())),
            ("device", " · ".join(str(part) for part in on if part)), ("host", record["host"]),
            ("data", " · ".join([data["name"], data["root"] or "generated", f"files {data['files'] or '-'}"]))]
    parameters = (record.get("model") or {}).get("parameters")
    rows += [("model", f"{parameters:,} parameters")] if parameters is not None else []
    cells = [f"| {name} | {str(value).replace('|', chr(92) + '|')} |" for name, value in rows]  # a bare | ends a cell
    return "\n".join(["| | |", "| --- | --- |", *cells])


def _git(root: Path, *args) -> bytes:
    # GIT_OPTIONAL_LOCKS=0: asking must not take the index's lock from the user's own git commands
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True, timeout=GIT_SECONDS,
                          env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout


def _reason(error: Exception) -> str:
    if isinstance(error, subprocess.CalledProcessError):  # git's own first line says why
        said = error.stderr.decode(errors="replace").strip() or f"exit status {error.returncode}"
        return one_line(f"git {error.cmd[3]} failed: {said.splitlines()[0]}", 200)
    if isinstance(error, subprocess.TimeoutExpired):
        return f"git took more than {GIT_SECONDS}s"
    return "git is not installed" if getattr(error, "filename", None) == "git" else one_line(error, 200)


def _write(path: Path, content: bytes) -> None:
    """Written to a name of this process's own, then renamed: a kill leaves the old file or the new, never half."""
    tmp = temporary_name(path)
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666), "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


"""Experiment trackers, chosen by the logger group: one more sink of the run's figures (runs/metrics.py), and the ids
of their runs one more checkpointed part, so a resumed run goes on in the same tracker run.

A tracker only mirrors what the run folder holds: one that fails (a server out of reach, a full disk under its store)
is warned of once and left; training goes on, the event files and metrics.csv keep everything, and the run's last
line says what the tracker missed. Each tracker's library is an optional extra, imported only when chosen."""
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from trainlab.errors import Interrupted, TrainlabError, one_line
from trainlab.launch import script
from trainlab.runs.folder import BEST, CHECKPOINTS, LAST, METRICS_CSV, PROVENANCE, PROVENANCE_DIFF
from trainlab.runs.metrics import Sink
from trainlab.runs.provenance import command_line, read_attempts

log = logging.getLogger("trainlab")

EXTRAS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}  # logger option: (its module, its extra)
CHECKPOINTS_SENT = {"best": [BEST], "last": [LAST], "all": [BEST, LAST], "none": []}  # a tracker's log_checkpoint


def check_trackers(logger_cfg) -> None:
    """Each chosen tracker's library is installed: else one line naming the extra, before any data is read."""
    import importlib.util

    for name, (module, extra) in EXTRAS.items():
        if logger_cfg.get(name) is not None and importlib.util.find_spec(module) is None:
            raise TrainlabError(f"logger={name} needs {module}, which is not installed: pip install -e .[{extra}] "
                                "(or leave it out of logger)")


class Tracking:
    """The logger group's choice for one run, and the run's id in each tracker (a checkpointed part: a resumed run
    logs on into the same tracker run)."""

    def __init__(self, logger_cfg, config: dict, run_dir: Path, launch):
        self.cfg, self.ids = logger_cfg, {}
        self.about = RunAbout(config, run_dir, launch)
        self.tensorboard = logger_cfg.get("tensorboard") is not None

    def state_dict(self) -> dict:
        return dict(self.ids)

    def load_state_dict(self, state: dict) -> None:
        self.ids = dict(state)

    def sinks(self) -> list:
        """The chosen trackers' sinks (TensorBoard is not one: runs/metrics.py writes its event files)."""
        kinds = {"mlflow": MlflowSink, "wandb": WandbSink}
        return [kind(self.cfg[name], self.about, self.ids) for name, kind in kinds.items()
                if self.cfg.get(name) is not None]


class RunAbout:
    """What a tracker shows of the run beside its figures: its config (plain), folder, command and sweep."""

    def __init__(self, config: dict, run_dir: Path, launch):
        self.config, self.run_dir, self.launch = config, Path(run_dir), launch

    def tags(self) -> dict:
        tags = {"trainlab.run_dir": str(self.run_dir.resolve()), "trainlab.overrides": " ".join(self.launch.overrides),
                "trainlab.command": command_line(), "mlflow.source.name": script(), "mlflow.source.type": "LOCAL"}
        if self.launch.sweep:
            tags.update({"trainlab.sweep": str(self.run_dir.parent.resolve()), "trainlab.job": str(self.launch.job)})
        return tags


class TrackerSink(Sink):
    """A tracker's sink: each call to its library guarded (`guarded`): the first failure is warned of and the
    tracker is left, with what it missed kept for the run's last line."""

    name = "tracker"

    def __init__(self):
        self.failed = None  # the first failure's reason: from then on the tracker is left

    def guarded(self, what: str, call, *args, **kwargs):
        if self.failed is not None:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as e:  # any failure of a tracker's library or its server: the run itself goes on
            self.failed = what
            log.warning(f"warning: logger.{self.name} failed {what} ({one_line(e, 200)}); training goes on without "
                        "it, and the run folder's event files and metrics.csv keep every figure")
            return None

    def missed(self) -> Optional[str]:
        return None if self.failed is None else f"logger.{self.name} missed what came after it failed {self.failed}"


class MlflowSink(TrackerSink):
    """An MLflow run: the config as params (dotted keys), each scalar a metric at its step, tags for the folder, the
    command and the sweep; at the end metrics.csv, the provenance files and the chosen checkpoints as artifacts and
    the run's status: FINISHED, FAILED (an error) or KILLED (a signal). Figures are sent in batches: at each flush
    (before every checkpoint) and at the end. A resumed run skips the steps its tracker run already holds (a killed
    attempt may have sent figures past its last checkpoint; the resumed run logs the same values again)."""

    name = "mlflow"

    def __init__(self, cfg, about: RunAbout, ids: dict):
        super().__init__()
        # a server out of reach: fail within seconds, not after MLflow's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (a new store's tables) are not ours
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.cfg, self.about, self.ids = cfg, about, ids  # ids: Tracking's, checkpointed
        self.pending, self.held = [], None  # metrics not sent yet; a resumed run's last step held per key
        self.client = MlflowClient(tracking_uri=self._uri())
        self.run_id = self.guarded("to start its run", self._start)

    def _uri(self) -> str:
        if self._store() is not None:  # the store's folder must exist (outputs/ on a first run)
            self._store().parent.mkdir(parents=True, exist_ok=True)
        return self.cfg.tracking_uri

    def _store(self) -> Optional[Path]:
        """A sqlite:/// store's file; None for a server or a database."""
        uri = self.cfg.tracking_uri
        return Path(uri[len("sqlite:///"):]).expanduser().resolve() if uri.startswith("sqlite:///") else None

    def _start(self) -> str:
        resumed = self.ids.get(self.name)
        if resumed is not None:
            self.client.update_run(resumed, status="RUNNING")
            logged = self.client.get_run(resumed).data.params
            self._log_params({k: v for k, v in flat_params(self.about.config).items() if k not in logged}, resumed)
            self.held = {}  # filled per key, on its first value
            return resumed
        run = self.client.create_run(self._experiment(), run_name=self.about.run_dir.name, tags=self.about.tags())
        self.ids[self.name] = run.info.run_id
        self._log_params(flat_params(self.about.config), run.info.run_id)
        log.info(f"logger.mlflow: run {run.info.run_id} in experiment '{self._experiment_name()}' at "
                 f"{self.cfg.tracking_uri}")
        return run.info.run_id

    def _experiment_name(self) -> str:
        if self.cfg.experiment:
            return self.cfg.experiment
        return f"trainlab/{self.about.run_dir.parent.name}" if self.about.launch.sweep else "trainlab"

    def _experiment(self) -> str:
        """The experiment's id, made on first use; two jobs of a sweep making it at once: the second reads it."""
        name = self._experiment_name()
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = self.cfg.artifact_location
        if location is None and self._store() is not None:
            location = (self._store().parent / "mlartifacts").as_uri()
        try:  # the kind: MLflow's UI opens it on its table of training runs, not on GenAI traces
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags={"mlflow.experimentKind": "custom_model_development"})
        except Exception:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_params(self, params: dict, run_id: str) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(run_id, params=items[i:i + 100])

    def scalars(self, values: dict, step: int) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in values.items():
            if value is not None and step > self._held(key):
                self.pending.append(Metric(key, float(value), now, step))

    def _held(self, key: str) -> int:
        """The last step of `key` the tracker run holds from an earlier attempt (-1 for none, and for a new run)."""
        if self.held is None:
            return -1
        if key not in self.held:
            history = self.guarded("to read its run", self.client.get_metric_history, self.run_id, key) or []
            self.held[key] = max((m.step for m in history), default=-1)
        return self.held[key]

    def flush(self) -> None:
        sent, self.pending = self.pending, []
        for i in range(0, len(sent), 1000):  # MLflow takes at most 1000 metrics a call
            self.guarded("to log metrics", self.client.log_batch, self.run_id, metrics=sent[i:i + 1000])

    def close(self) -> None:
        if self.run_id is None:
            return
        ending = sys.exc_info()[1]  # close() runs in the recipe's `finally`: the exception ending the run, if any
        self.flush()
        folder = self.about.run_dir
        git = (read_attempts(folder) or [{}])[-1].get("git")  # this attempt's code (runs/provenance.py)
        if git:  # MLflow's own tag for the commit: its UI shows it as the run's source version
            self.guarded("to tag its run", self.client.set_tag, self.run_id, "mlflow.source.git.commit",
                         git["commit"])
            self.guarded("to tag its run", self.client.set_tag, self.run_id, "trainlab.git_dirty",
                         str(git["dirty"]).lower())
        for path in files_at_end(folder, self.cfg.log_checkpoint, ending):  # checkpoints under checkpoints/
            within = str(path.parent.relative_to(folder)) if path.parent != folder else None
            self.guarded("to upload artifacts", self.client.log_artifact, self.run_id, str(path), within)
        self.guarded("to end its run", self.client.set_terminated, self.run_id, ended_as(ending))


class WandbSink(TrackerSink):
    """A Weights & Biases run, offline by default (nothing leaves the machine unless logger.wandb.mode=online): the
    config as its config, each scalar at its step, metrics.csv, the provenance files and the chosen checkpoints saved
    with it at the end, in wandb/ inside the run folder. A resumed run goes on under the same run id (`wandb sync`
    joins an offline run's attempts). Figures are sent at each flush (before every checkpoint), so an attempt killed
    after its last checkpoint has sent none of the steps its resumed run logs again."""

    name = "wandb"

    def __init__(self, cfg, about: RunAbout, ids: dict):
        super().__init__()
        import wandb

        self.wandb, self.cfg, self.about, self.ids, self.pending = wandb, cfg, about, ids, []
        self.run = self.guarded("to start its run", self._start)

    def _start(self):
        folder, launch = self.about.run_dir, self.about.launch
        group = self.cfg.group or (folder.parent.name if launch.sweep else None)  # a sweep's jobs: one group
        settings = self.wandb.Settings(silent=True, console="off", x_disable_stats=True)  # the run's own lines only
        run = self.wandb.init(project=self.cfg.project, entity=self.cfg.entity, mode=self.cfg.mode, dir=str(folder),
                              id=self.ids.get(self.name) or uuid.uuid4().hex[:8], resume="allow",
                              name=folder.name, group=group, tags=list(self.cfg.tags), config=self.about.config,
                              settings=settings, reinit="create_new")
        self.ids[self.name] = run.id
        log.info(f"logger.wandb: run {run.id} ({self.cfg.mode}) in {shown(Path(run.dir).parent)}")
        return run

    def scalars(self, values: dict, step: int) -> None:
        if self.run is not None:
            self.pending.append((step, {k: v for k, v in values.items() if v is not None}))

    def flush(self) -> None:
        sent, self.pending = self.pending, []
        for step, values in sent:
            self.guarded("to log metrics", self.run.log, values, step=step)

    def close(self) -> None:
        if self.run is None:
            return
        ending = sys.exc_info()[1]
        self.flush()
        folder = self.about.run_dir
        for path in files_at_end(folder, self.cfg.log_checkpoint, ending):  # a file in the run's files/ goes up
            self.guarded("to save files", copy_into, path, Path(self.run.dir) / path.relative_to(folder))  # with it
        code = {"FINISHED": 0, "KILLED": 130, "FAILED": 1}[ended_as(ending)]
        self.guarded("to end its run", self.run.finish, exit_code=code)


def files_at_end(folder: Path, log_checkpoint: str, ending) -> list:
    """What a tracker keeps of the run folder at its end: metrics.csv, the provenance files and, after a clean end
    (`ending` None), the checkpoints log_checkpoint names; those that exist."""
    diffs = sorted(p.name for p in folder.glob("provenance*.diff") if PROVENANCE_DIFF.fullmatch(p.name))
    names = [METRICS_CSV, PROVENANCE, *diffs]
    paths = [folder / name for name in names]
    paths += [folder / CHECKPOINTS / name for name in CHECKPOINTS_SENT[log_checkpoint]] if ending is None else []
    return [path for path in paths if path.is_file()]


def ended_as(ending) -> str:
    """A run's end in MLflow's words, from the exception ending it (None: a clean end)."""
    return ("FINISHED" if ending is None else
            "KILLED" if isinstance(ending, (Interrupted, KeyboardInterrupt)) else "FAILED")


def tag_trial(folder: Path, logger_cfg, number: int, state: str) -> None:
    """An Optuna trial's number and state on its job's MLflow run: the search learns the state once the job has
    ended (COMPLETE, FAIL). A job that made no run, or a tracker out of reach, is passed over with a warning."""
    if logger_cfg is None or logger_cfg.get("mlflow") is None:
        return
    from trainlab.runs.checkpoint import load_checkpoint

    try:
        run_id = load_checkpoint(folder / CHECKPOINTS / LAST).get("tracking", {}).get("mlflow")
    except Exception:  # noqa: BLE001 (a job that failed before its first checkpoint: no run to tag)
        return
    if run_id is None:
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=logger_cfg.mlflow.tracking_uri)
        client.set_tag(run_id, "optuna.trial", str(number))
        client.set_tag(run_id, "optuna.state", state)
    except Exception as e:  # noqa: BLE001 (the search goes on)
        log.warning(f"warning: logger.mlflow: trial #{number}'s state was not tagged ({one_line(e, 200)})")


def copy_into(path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)


def shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def flat_params(config: dict, prefix: str = "") -> dict:
    """A plain config as MLflow params: {dotted key: text}, lists by index (model.blocks.0.type); values as YAML
    writes them (null, true), cut to MLflow's 6,000 characters."""
    flat = {}
    items = config.items() if isinstance(config, dict) else enumerate(config)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and value:
            flat.update(flat_params(value, name + "."))
        else:
            text = ("null" if value is None else str(value).lower() if isinstance(value, bool) else
                    "[]" if value == [] else "{}" if value == {} else str(value))
            flat[name] = text[:6000]
    return flat

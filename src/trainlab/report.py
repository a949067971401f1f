"""The report of a sweep, or of any folder of runs: one row per job with the settings that vary between the jobs and
the metrics each reached, best first; written beside the runs as report.csv, with test_acc.png drawing every job's
test accuracy per epoch.

Made to be run while a sweep is still going or after some of its jobs failed: each job is done, running (fewer epochs
logged than trainer.epochs and no error: a job stopped by a kill looks the same), failed (it left error.log) or
missing (the sweep plans it but it has no folder yet).
"""
import csv
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trainlab.errors import TrainlabError
from trainlab.run_folder import ERROR_LOG, TEST_ACC, TRAIN_LOSS, read_scalars

CSV_NAME = "report.csv"
PLOT_NAME = "test_acc.png"
METRICS = ["epochs_done", "epochs", "best_test_acc", "best_epoch", "final_test_acc", "final_train_loss"]
DEFAULT_SORT = "best_test_acc"  # the sweep's objective, hparams/best_test_acc in TensorBoard
DESCENDING = {"best_test_acc", "final_test_acc", "epochs_done"}  # higher is better; other columns sort lowest first
STATUSES = ["done", "running", "failed", "missing"]


@dataclass
class Job:
    """One row of the report: a run folder, or a job of a sweep that has no folder yet."""

    name: str  # the folder, relative to the folder reported on: "3" in a sweep
    overrides: dict  # {key: value} as given on the command line; a group choice under the group's name
    status: str = "missing"
    epochs: int | None = None  # planned: trainer.epochs
    test_acc: list = field(default_factory=list)  # one value per epoch finished, in order
    train_loss: float | None = None  # the last one logged
    error: str = ""  # why a failed job failed: error.log's first line
    config: dict = field(default_factory=dict)  # the composed config, for the value of a setting not overridden
    choices: dict = field(default_factory=dict)  # {group: option} as Hydra composed them

    def setting(self, key: str) -> str:
        """The value of `key` in this job, as an override would write it; "" when unknown (a missing job)."""
        if key in self.overrides:
            return self.overrides[key]
        if self.choices.get(key) is not None:
            return str(self.choices[key])
        value = _lookup(self.config, key)
        return "" if value is None else str(value)


def report(folder, sort: str = DEFAULT_SORT, plot: bool = True) -> None:
    """Print the table of `folder`'s jobs sorted by the column `sort`, and write report.csv and test_acc.png there."""
    root = Path(folder)
    jobs = find_jobs(root)
    keys = varied_settings(jobs)
    jobs = sort_jobs(jobs, keys, sort)
    rows = [job_row(job, keys) for job in jobs]
    counts = ", ".join(f"{n} {s}" for s in STATUSES if (n := sum(job.status == s for job in jobs)))
    print(f"{root}: {len(jobs)} job{'s' if len(jobs) != 1 else ''}, {counts}")
    print(format_table(rows))
    for job in jobs:
        if job.error:
            print(f"job {job.name} failed: {job.error}")
    write_csv(rows, root / CSV_NAME)
    written = [root / CSV_NAME]
    if plot:
        if draw_test_acc(jobs, keys, root / PLOT_NAME):
            written.append(root / PLOT_NAME)
        else:
            print(f"{PLOT_NAME} not drawn: no job has finished an epoch yet")
    print("wrote " + ", ".join(str(path) for path in written))


def find_jobs(root: Path) -> list:
    """Every run folder under `root` (one holding .hydra/config.yaml, at any depth, `root` itself included) and every
    job a sweep under `root` plans but has not started."""
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise TrainlabError(f"{root} {problem}: give a sweep's folder (outputs/multirun/<date>_<time>) "
                            "or a folder of runs (outputs)")
    folders = sorted(config.parent.parent for config in root.glob("**/.hydra/config.yaml"))
    jobs = [read_run(folder, _name(folder, root)) for folder in folders]
    for sweep in sorted(path.parent for path in root.glob("**/multirun.yaml")):
        started = {folder.name for folder in folders if folder.parent == sweep}
        for number, overrides in enumerate(planned_jobs(sweep)):
            if str(number) not in started:
                jobs.append(Job(_name(sweep / str(number), root), _parse_overrides(overrides)))
    if not jobs:
        raise TrainlabError(f"no runs in {root}: a run's folder holds .hydra/config.yaml; give a sweep's folder "
                            "(outputs/multirun/<date>_<time>) or a folder of runs (outputs)")
    return jobs


def read_run(folder: Path, name: str) -> Job:
    """The job in `folder`: its settings from .hydra/, its metrics from the TensorBoard events, its status."""
    hydra_dir = folder / ".hydra"
    config = _read_yaml(hydra_dir / "config.yaml") or {}
    hydra_config = _read_yaml(hydra_dir / "hydra.yaml") or {}
    job = Job(name, _parse_overrides(_read_yaml(hydra_dir / "overrides.yaml") or []),
              epochs=_lookup(config, "trainer.epochs"), config=config,
              choices=_lookup(hydra_config, "hydra.runtime.choices") or {})
    scalars = read_scalars(folder)
    job.test_acc = [value for _, value in scalars.get(TEST_ACC, [])]
    job.train_loss = scalars[TRAIN_LOSS][-1][1] if scalars.get(TRAIN_LOSS) else None
    error_log = folder / ERROR_LOG
    if error_log.exists():
        job.status = "failed"
        job.error = error_log.read_text().partition("\n")[0].removeprefix("error: ")
    elif job.epochs is not None and len(job.test_acc) >= job.epochs:
        job.status = "done"
    else:
        job.status = "running"
    return job


def planned_jobs(sweep: Path) -> list:
    """Each job's overrides, in job order, as Hydra's basic sweeper expands the sweep in multirun.yaml: the product
    of the comma-separated values; [] when the jobs cannot be known in advance."""
    hydra_config = _read_yaml(sweep / "multirun.yaml")["hydra"]
    if not hydra_config["sweeper"]["_target_"].endswith(".BasicSweeper"):
        return []  # Optuna and the like pick each job from the results so far
    if hydra_config["sweep"]["subdir"] != "${hydra.job.num}":
        return []  # job folders named otherwise: which one is missing cannot be told
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    params = [f"{key}={value}" for key, value in (hydra_config["sweeper"].get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides(params + hydra_config["overrides"]["task"])
        values = {}  # key -> its values, in the order first given; a later override of a key replaces the earlier
        for override in overrides:
            key = override.get_key_element()
            if not override.is_sweep_override():
                values[key] = [override.get_value_element_as_str()]
            elif override.is_discrete_sweep():
                values[key] = list(override.sweep_string_iterator())
            else:
                return []  # a range or interval: not the basic sweeper's
    except HydraException:
        return []  # glob(...) needs the config groups to expand
    # The basic sweeper's expansion: the product, the last key varying fastest, so job numbers match its folders.
    return [[f"{key}={value}" for key, value in zip(values, chosen)] for chosen in itertools.product(*values.values())]


def varied_settings(jobs: list) -> list:
    """The keys overridden in any job whose value is not the same in every job, in the order first given."""
    keys = dict.fromkeys(key for job in jobs for key in job.overrides)
    return [key for key in keys if len({job.setting(key) for job in jobs}) > 1]


def job_row(job: Job, keys: list) -> dict:
    """The job's row, as report.csv holds it: accuracies as fractions, None where there is no value."""
    best = max(job.test_acc, default=None)
    return {"job": job.name, "status": job.status, **{key: job.setting(key) for key in keys},
            "epochs_done": None if job.status == "missing" else len(job.test_acc),
            "epochs": job.epochs,
            "best_test_acc": best,
            "best_epoch": None if best is None else job.test_acc.index(best) + 1,  # the first epoch that reached it
            "final_test_acc": job.test_acc[-1] if job.test_acc else None,
            "final_train_loss": job.train_loss}


def sort_jobs(jobs: list, keys: list, column: str) -> list:
    """`jobs` ordered by `column` (best first for accuracies), ties in job order; jobs with no value last."""
    columns = list(job_row(jobs[0], keys))
    if column not in columns:
        raise TrainlabError(f"cannot sort by {column!r}: pick one of the columns {', '.join(columns)}")
    jobs = sorted(jobs, key=lambda job: _order(job.name))
    values = {job.name: job_row(job, keys)[column] for job in jobs}
    known = [job for job in jobs if _has_value(values[job.name])]
    unknown = [job for job in jobs if not _has_value(values[job.name])]
    return sorted(known, key=lambda job: _order(values[job.name]), reverse=column in DESCENDING) + unknown


def format_table(rows: list) -> str:
    """`rows` as aligned text: accuracies in percent, numbers to the right, "-" where there is no value."""
    columns = list(rows[0])
    cells = [columns] + [[_cell(column, row[column]) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for line in cells:
        padded = [text.rjust(width) if column in METRICS else text.ljust(width)
                  for column, text, width in zip(columns, line, widths)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def write_csv(rows: list, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_value(value) for column, value in row.items()})


def draw_test_acc(jobs: list, keys: list, path: Path) -> bool:
    """Each job's test accuracy against epoch, one line per job labelled with its settings; False if none has any."""
    drawn = [job for job in jobs if job.test_acc]
    if not drawn:
        return False
    # matplotlib takes most of a second to import: only when drawing. A bare Figure renders with Agg, so nothing
    # needs a display and pyplot's global state is left alone.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axes = figure.subplots()
    for job in drawn:
        label = " ".join([f"{job.name}:", *(f"{key}={_short(job.setting(key))}" for key in keys)])
        axes.plot(range(1, len(job.test_acc) + 1), [100 * acc for acc in job.test_acc], marker="o", label=label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes.set(xlabel="epoch", ylabel="test accuracy (%)", title=str(path.parent))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    figure.savefig(path, dpi=100)
    return True


def _name(folder: Path, root: Path) -> str:
    relative = folder.relative_to(root)
    return folder.name if relative == Path(".") else relative.as_posix()


def _cell(column: str, value) -> str:
    if value is None or value == "":
        return "-"
    if column in ("best_test_acc", "final_test_acc"):
        return f"{value:.2%}"
    if column == "final_train_loss":
        return f"{value:.4f}"
    return _short(value) if isinstance(value, str) else str(value)


def _csv_value(value):
    if value is None:
        return ""
    # Event files hold float32: 7 significant digits are all there is, and 0.2 reads better than 0.200000003.
    return f"{value:.7g}" if isinstance(value, float) else value


def _has_value(value) -> bool:
    """False for a job that has not got this far (None, ""), and for a NaN loss, which cannot be ordered."""
    return value not in (None, "") and not (isinstance(value, float) and math.isnan(value))


def _short(setting: str) -> str:
    """A decimal setting to 4 significant digits: Optuna's lr=0.007845577141205887 shows as 0.007846."""
    try:
        return f"{float(setting):.4g}" if "." in setting else setting
    except ValueError:
        return setting


def _parse_overrides(overrides: list) -> dict:
    """["optimizer=adam", "+trainer.x=1"] -> {"optimizer": "adam", "trainer.x": "1"}."""
    pairs = (override.partition("=") for override in overrides)
    return {key.lstrip("+~"): value for key, _, value in pairs}


def _lookup(tree: dict, dotted_key: str):
    """tree["a"]["b"] for "a.b"; None where a part is absent."""
    for part in dotted_key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _read_yaml(path: Path):
    return yaml.safe_load(path.read_text()) if path.exists() else None


def _order(value) -> tuple:
    """A sort key: numbers by value (0.01 before 0.1), text with its digits as numbers (job 2 before job 10)."""
    try:
        return 0, float(value)
    except (TypeError, ValueError):
        return 1, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(value))]

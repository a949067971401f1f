"""The report of a sweep, or of any folder of runs: one row per setting with the metrics its jobs reached, best
validation accuracy first; written beside the runs as report.csv, with val_acc.png drawing every job's validation
accuracy per epoch. It reads each run's metrics.csv (run_folder.read_metrics), not its TensorBoard events.

Jobs that differ only in trainer.seed are one row: the mean and standard deviation of their validation and test
accuracies over the n of them that are done (--no-group-seeds: a row per job). The choice between settings is made
on validation accuracy; the test accuracy stands beside it, never sorted on by default.

Made to be run while a sweep is still going or after some of its jobs failed: each job is done (tested, or all its
epochs finished and it has no test split), running (not done and no error: a job stopped by a kill looks the same),
failed (it left error.log), missing (the sweep plans it but it has no folder yet) or unreadable (its .hydra/ or
metrics.csv cannot be read: named, and the rest of the report goes on).

The last column is the code each job ran (provenance.json's last attempt: runs/provenance.py); a sweep whose jobs ran
on different commits, or on different uncommitted changes, is named in a warning line.
"""
import csv
import itertools
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trainlab.errors import TrainlabError, one_line, printable
from trainlab.runs.folder import (ERROR_LOG, MULTIRUN_YAML, SEARCH_RESULTS, TEST_ROW, VAL_ACC, csv_text,
                                  higher_is_better, open_own, read_metrics)
from trainlab.runs.provenance import code_version, read_attempts, short_commit
from trainlab.runs.trial import objective_text

CSV_NAME = "report.csv"
PLOT_NAME = "val_acc.png"
SEED = "trainer.seed"
# The table's columns after the job and its settings; the same in both modes. report.csv holds these for a row per
# job, and for a row per group the accuracies split into GROUP_STATS columns with `n` last.
METRICS = ["epochs_done", "epochs", "best_val_acc", "best_epoch", "test_acc", "final_train_loss"]
GROUP_STATS = {"best_val_acc": ["best_val_acc_mean", "best_val_acc_std"], "test_acc": ["test_acc_mean", "test_acc_std"]}
DEFAULT_SORT = "best_val_acc"  # the choice is made on validation; test is scored once and never chosen on
DESCENDING = {"best_val_acc", "best_val_acc_mean", "test_acc", "test_acc_mean", "epochs_done", "n"}  # higher first
STATUSES = ["done", "pruned", "running", "failed", "missing", "unreadable"]
MONITOR_DEFAULT = VAL_ACC  # trainer.monitor, for a config that predates it
JOB_FOLDERS = ("${sweep_job_folder:}", "${hydra.job.num}")  # hydra.sweep.subdir: <number>_<its values>, <number>


@dataclass
class Job:
    """A run folder, or a job of a sweep that has no folder yet."""

    name: str  # the folder, relative to the folder reported on: "3" in a sweep
    overrides: dict  # {key: value} as given on the command line; a group choice under the group's name
    status: str = "missing"
    epochs: int | None = None  # planned: trainer.epochs
    monitor: str = MONITOR_DEFAULT  # trainer.monitor: what chose best.pt
    history: list = field(default_factory=list)  # metrics.csv's epoch rows, in order
    test: dict | None = None  # metrics.csv's test row, once the test split was scored
    error: str = ""  # why a failed job failed (error.log's first line), or why an unreadable one cannot be read
    config: dict = field(default_factory=dict)  # the composed config, for the value of a setting not overridden
    choices: dict = field(default_factory=dict)  # {group: option} as Hydra composed them
    commit: str | None = None  # the code it ran, as the table shows it: 12 hex digits, +dirty; None: unknown
    code: tuple | None = None  # what tells its code from another job's: commit, dirty, the diff's digest
    sweep: Path | None = None  # the sweep folder it is a job of

    def setting(self, key: str) -> str:
        """The value of `key` in this job, as an override would write it; "" when unknown (a missing job)."""
        if key in self.overrides:
            return self.overrides[key]
        if self.choices.get(key) is not None:
            return str(self.choices[key])
        value = _lookup(self.config, key)
        return "" if value is None else str(value)

    def best(self) -> dict | None:
        """The epoch row trainer.monitor chose (best.pt's): the first with the highest val_acc, or with the lowest
        val_loss; None before an epoch was validated (or with no validation split)."""
        higher = higher_is_better(self.monitor)
        column = "val_acc" if higher else "val_loss"
        scored = [row for row in self.history if _has_value(row.get(column))]
        if not scored:
            return None
        pick = max if higher else min
        return pick(scored, key=lambda row: row[column])  # min and max keep the first of equals

    def values(self) -> dict:
        """The job's metrics, as its row shows them: accuracies as fractions, None where there is no value."""
        best = self.best()
        return {"epochs_done": None if self.status == "missing" else len(self.history),
                "epochs": self.epochs,
                "best_val_acc": best and best["val_acc"],  # the val acc of the epoch the monitor chose
                "best_epoch": best and best["epoch"],
                "test_acc": self.test and self.test["test_acc"],
                "final_train_loss": self.history[-1]["train_loss"] if self.history else None}


@dataclass
class Row:
    """A row of the report: one job, or the jobs of one setting that differ only in trainer.seed."""

    jobs: list
    record: dict  # as report.csv holds it

    @property
    def grouped(self) -> bool:
        return "n" in self.record


def report(folder, sort: str = DEFAULT_SORT, plot: bool = True, group_seeds: bool = True) -> None:
    """Print the table of `folder`'s jobs sorted by the column `sort`, and write report.csv and val_acc.png there.
    `group_seeds`: a row per setting, over the jobs that differ only in trainer.seed; else a row per job."""
    root = Path(folder)
    jobs = sorted(find_jobs(root), key=lambda job: _order(job.name))
    fronts = search_outcomes(jobs)
    keys = varied_settings(jobs)
    groups = group_jobs(jobs, keys) if group_seeds else [[job] for job in jobs]
    shown = [key for key in keys if key != SEED] if group_seeds else keys
    rows = sort_rows([make_row(group, shown, group_seeds) for group in groups], sort)
    counts = ", ".join(f"{n} {s}" for s in STATUSES if (n := sum(job.status == s for job in jobs)))
    print(f"{printable(root)}: {len(jobs)} job{'s' if len(jobs) != 1 else ''}, {counts}")
    print(format_table(rows))
    if any(len(row.jobs) > 1 for row in rows):
        print(f"jobs that differ only in {SEED} share a row: mean ± std over its n done jobs; "
              "--no-group-seeds lists each job")
    for job in jobs:
        if job.error:
            print(f"job {printable(job.name)} {job.status}: {printable(job.error)}")
    for line in fronts + code_warnings(jobs):
        print(line)
    for name in (CSV_NAME, PLOT_NAME):  # both checked before either is written
        if (root / name).is_symlink():
            raise TrainlabError(f"{printable(root / name)} is a symbolic link: the report writes {name} only as a plain "
                                "file in the folder it reports on; remove the link")
    write_csv(rows, root / CSV_NAME)
    written = [root / CSV_NAME]
    if plot:
        if draw_val_acc(groups, shown, root / PLOT_NAME):
            written.append(root / PLOT_NAME)
        else:
            print(f"{PLOT_NAME} not drawn: no job has a validated epoch yet")
    print("wrote " + ", ".join(printable(path) for path in written))


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
        started = {_name(folder, root) for folder in folders if folder.parent == sweep}
        for number, overrides in enumerate(planned_jobs(sweep)):
            if _name(sweep / str(number), root) not in started:
                jobs.append(Job(_name(sweep / str(number), root), _parse_overrides(overrides)))
    if not jobs:
        raise TrainlabError(f"no runs in {root}: a run's folder holds .hydra/config.yaml; give a sweep's folder "
                            "(outputs/multirun/<date>_<time>) or a folder of runs (outputs)")
    return jobs


def read_run(folder: Path, name: str) -> Job:
    """The job in `folder`: its settings from .hydra/, its metrics from metrics.csv, its status."""
    hydra_dir = folder / ".hydra"
    try:
        config = _read_yaml(hydra_dir / "config.yaml") or {}
        hydra_config = _read_yaml(hydra_dir / "hydra.yaml") or {}
        job = Job(name, _parse_overrides(_read_yaml(hydra_dir / "overrides.yaml") or []),
                  epochs=_lookup(config, "trainer.epochs"),
                  monitor=_lookup(config, "trainer.monitor") or MONITOR_DEFAULT, config=config,
                  choices=_lookup(hydra_config, "hydra.runtime.choices") or {})
        rows = read_metrics(folder)
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, KeyError, UnicodeDecodeError) as e:
        # one damaged job (an edited config, a cut metrics.csv) is shown as such; the rest of the report stands
        return Job(name, {}, status="unreadable", error=f"cannot be read ({one_line(e, 120)})")
    attempts = read_attempts(folder)
    if attempts:
        job.commit, job.code = short_commit(attempts[-1]), code_version(folder, attempts[-1])
    job.sweep = folder.parent if any((folder.parent / name).exists() for name in (MULTIRUN_YAML, SEARCH_RESULTS)) \
        else None
    job.history = [row for row in rows if row["epoch"] != TEST_ROW]
    job.test = next((row for row in rows if row["epoch"] == TEST_ROW), None)
    error_log = folder / ERROR_LOG
    if error_log.exists():
        job.status = "failed"
        job.error = error_log.read_text().partition("\n")[0].removeprefix("error: ")
    elif job.test is not None:
        job.status = "done"  # early stopping or a time budget ends with fewer epochs, then the test
    elif job.epochs is not None and len(job.history) >= job.epochs:
        # A run without a test split ends after its last epoch. One with a test split is this far only for the
        # seconds its test takes (or if it was killed in them), so it counts as done a little early.
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
    if hydra_config["sweep"]["subdir"] not in JOB_FOLDERS:
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


def search_outcomes(jobs: list) -> list:
    """An Optuna search's word on its trials (its sweep folder's optimization_results.yaml, written as it goes): the
    trials its pruner stopped take the status pruned (their figures stop short: a group's statistics leave them
    out) -> a line for each search of several objectives naming its Pareto front."""
    lines = []
    for sweep in sorted({job.sweep for job in jobs if job.sweep is not None}):
        try:
            results = _read_yaml(sweep / SEARCH_RESULTS) or {}
            pruned = {int(number) for number in results.get("pruned") or []}
            front = [(int(t["trial"]), dict(t["values"])) for t in results.get("pareto_front") or []]
        except (OSError, yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError):
            continue  # not a search's, or damaged: the jobs keep the statuses their folders show
        for job in jobs:
            if job.sweep == sweep and job.status == "done" and _trial_number(job) in pruned:
                job.status = "pruned"
        if front:
            shown = "; ".join(f"#{number} " + ", ".join(f"{name} {objective_text(name, value)}"
                                                        for name, value in values.items())
                              for number, values in front)
            lines.append(printable(f"Pareto front of {sweep} (no trial beats one of these on every objective): "
                                   f"{shown}"))
    return lines


def _trial_number(job: Job):
    number = Path(job.name).name.partition("_")[0]
    return int(number) if number.isdigit() else None


def varied_settings(jobs: list) -> list:
    """The keys overridden in any job whose value is not the same in every job, in the order first given."""
    readable = [job for job in jobs if job.status != "unreadable"]  # its settings are not known, not different
    keys = dict.fromkeys(key for job in readable for key in job.overrides)
    return [key for key in keys if len({job.setting(key) for job in readable}) > 1]


def group_jobs(jobs: list, keys: list) -> list:
    """`jobs` in groups that agree on every setting in `keys` but trainer.seed, in the order of each group's first
    job. Jobs that agree on all of them, seed included (two runs of one command under outputs/), share a group too."""
    groups = {}
    for job in jobs:
        groups.setdefault(tuple(job.setting(key) for key in keys if key != SEED), []).append(job)
    return list(groups.values())


def make_row(jobs: list, keys: list, grouped: bool) -> Row:
    """The row of one job (`grouped` False) or of a group of jobs: the job names, the settings in `keys`, the status
    and METRICS; a group's accuracies as mean, std and n (the jobs they are taken over)."""
    head = {"job": " ".join(job.name for job in jobs), **{key: jobs[0].setting(key) for key in keys},
            "status": group_status(jobs)}
    if not grouped:
        return Row(jobs, {**head, **jobs[0].values(), "commit": commit_cell(jobs)})
    # The statistics are over the done jobs; while none is, over those with a value so far, so that a group in
    # flight (or a lone running job) still shows how far it got. The status says which it is.
    done = [job for job in jobs if job.status == "done"]
    counted = done or [job for job in jobs if job.history]
    values = [job.values() for job in counted]
    record = {**head, "epochs_done": _span(job.values()["epochs_done"] for job in jobs),
              "epochs": _span(job.epochs for job in jobs)}
    for column in METRICS[2:]:
        numbers = [v[column] for v in values if _has_value(v[column])]
        if column in GROUP_STATS:
            mean, std = GROUP_STATS[column]
            record[mean] = statistics.fmean(numbers) if numbers else None
            record[std] = statistics.stdev(numbers) if len(numbers) > 1 else None  # sample std: n - 1
        elif column == "best_epoch":
            record[column] = _span(numbers)
        else:
            record[column] = statistics.fmean(numbers) if numbers else None  # final_train_loss: the mean
    record["n"] = len(counted)
    record["commit"] = commit_cell(jobs)
    return Row(jobs, record)


def commit_cell(jobs: list) -> str | None:
    """The code of a row's jobs: their commit where they share one, else how many they ran; None where unknown."""
    commits = sorted({job.commit for job in jobs if job.commit is not None})
    return commits[0] if len(commits) == 1 else f"{len(commits)} commits" if commits else None


def code_warnings(jobs: list) -> list:
    """A `warning:` line for each sweep whose jobs ran on different code: other commits, or the same commit with
    other uncommitted changes (their provenance.diff differs); jobs whose code is unknown are left out."""
    sweeps = {}
    for job in jobs:
        if job.sweep is not None and job.code is not None:
            sweeps.setdefault(job.sweep, {}).setdefault(job.code, []).append(job.name)
    lines = []
    for sweep, versions in sweeps.items():
        if len(versions) > 1:
            shown = "; ".join(f"{commit[:12]}{'+dirty' if dirty else ''}{f' (diff {diff})' if diff else ''}: "
                              f"job{'s' if len(names) > 1 else ''} {' '.join(names)}"
                              for (commit, dirty, diff), names in versions.items())
            commits = len({commit for commit, _, _ in versions})
            lines.append(printable(f"warning: the jobs of {sweep} ran on {len(versions)} versions of the code "
                                   f"({commits} commit{'s' if commits > 1 else ''}): {shown}; each job's "
                                   "provenance.json says which"))
    return lines


def group_status(jobs: list) -> str:
    """One status when the jobs share it; else how many are done and what the others are: "2/3 done, 1 running"."""
    counts = Counter(job.status for job in jobs)
    if len(counts) == 1:
        return jobs[0].status
    return ", ".join([f"{counts['done']}/{len(jobs)} done"] + [f"{counts[s]} {s}" for s in STATUSES[1:] if counts[s]])


def sort_rows(rows: list, column: str) -> list:
    """`rows` ordered by `column` (best first for accuracies), ties in job order; rows with no value last. A table
    column names its report.csv column too: best_val_acc sorts a grouped report by best_val_acc_mean."""
    record = rows[0].record
    columns = table_columns(record) + [c for c in record if c not in table_columns(record)]
    key = GROUP_STATS[column][0] if column in GROUP_STATS and column not in record else column
    if key not in record:
        grouped = f" ({SEED} varies within a row: add --no-group-seeds)" if column == SEED else ""
        raise TrainlabError(f"cannot sort by {column!r}: pick one of the columns {', '.join(columns)}{grouped}")
    rows = sorted(rows, key=lambda row: _order(row.jobs[0].name))
    known = [row for row in rows if _has_value(row.record[key])]
    unknown = [row for row in rows if not _has_value(row.record[key])]
    return sorted(known, key=lambda row: _order(row.record[key]), reverse=key in DESCENDING) + unknown


def table_columns(record: dict) -> list:
    """The printed table's columns for rows like `record`: a group's mean, std and n are one cell."""
    merged = {means: column for column, (means, _) in GROUP_STATS.items()}
    hidden = {std for _, std in GROUP_STATS.values()} | {"n"}
    return [merged.get(column, column) for column in record if column not in hidden]


def format_table(rows: list) -> str:
    """`rows` as aligned text: accuracies in percent (a group's as mean ± std (n)), numbers to the right, "-" where
    there is no value. No cell holds two spaces running: the columns are two or more apart."""
    columns = table_columns(rows[0].record)
    lines = [[printable(column) for column in columns]] + [  # settings come from other runs' files: shown escaped
        [printable(_stat_cell(row, column) if column in GROUP_STATS and row.grouped else _cell(column,
                                                                                             row.record[column]))
         for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    text = []
    for line in lines:
        padded = [cell.rjust(width) if column in METRICS else cell.ljust(width)
                  for column, cell, width in zip(columns, line, widths)]
        text.append("  ".join(padded).rstrip())
    return "\n".join(text)


def write_csv(rows: list, path: Path) -> None:
    """report.csv: never through a symbolic link, and no cell a spreadsheet would run as a formula (csv_text): the
    settings come from the runs' own files, which may be anyone's."""
    with open_own(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[csv_text(column) for column in rows[0].record])
        writer.writeheader()
        for row in rows:
            writer.writerow({csv_text(column): csv_text(_csv_value(value)) for column, value in row.record.items()})


def draw_val_acc(groups: list, keys: list, path: Path) -> bool:
    """Each job's validation accuracy against epoch, labelled with its settings; the jobs of a group (seeds) share a
    colour and a legend entry. False if no job has a validated epoch."""
    drawn = [[job for job in group if any(_has_value(row["val_acc"]) for row in job.history)] for group in groups]
    drawn = [group for group in drawn if group]
    if not drawn:
        return False
    # matplotlib takes most of a second to import: only when drawing. A bare Figure renders with Agg, so nothing
    # needs a display and pyplot's global state is left alone.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axes = figure.subplots()
    for number, group in enumerate(drawn):
        names = " ".join(job.name for job in group)
        label = " ".join([f"{names}:", *(f"{key}={_short(group[0].setting(key))}" for key in keys)])
        for job in group:
            points = [(row["epoch"], 100 * row["val_acc"]) for row in job.history if _has_value(row["val_acc"])]
            axes.plot(*zip(*points), marker="o", color=f"C{number % 10}", alpha=0.8,
                      label=label if job is group[0] else None)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes.set(xlabel="epoch", ylabel="validation accuracy (%)", title=str(path.parent))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    with open_own(path, "wb") as f:  # never through a symbolic link
        figure.savefig(f, dpi=100, format="png")
    return True


def _name(folder: Path, root: Path) -> str:
    """A job's name in the table: its folder, relative to `root`; a sweep's job by its number alone, since the rest
    of its folder's name (3_optimizer-adam+optimizer.lr-0.01) is the settings the table shows beside it."""
    relative = folder.relative_to(root)
    number, _, rest = folder.name.partition("_")
    name = number if rest and number.isdigit() and (folder.parent / "multirun.yaml").exists() else folder.name
    return name if relative == Path(".") else (relative.parent / name).as_posix()


def _cell(column: str, value) -> str:
    if value is None or value == "":
        return "-"
    if column in ("best_val_acc", "test_acc"):
        return f"{value:.2%}"
    if column == "final_train_loss":  # as many decimals as metrics.csv's 6 significant digits hold, up to 4
        digits = len(str(int(abs(value))))
        return f"{value:.{max(0, min(4, 6 - digits))}f}"
    return _short(value) if isinstance(value, str) else str(value)


def _stat_cell(row: Row, column: str) -> str:
    """A group's accuracy: "41.20 ± 0.83% (n=3)"; "41.20% (n=1)" for one done job of several; a lone job's value
    as it would show ungrouped."""
    mean_key, std_key = GROUP_STATS[column]
    mean, std, n = row.record[mean_key], row.record[std_key], row.record["n"]
    if mean is None:
        return "-"
    if len(row.jobs) == 1:
        return _cell(column, mean)
    if std is None:
        return f"{mean:.2%} (n={n})"
    return f"{100 * mean:.2f} ± {100 * std:.2f}% (n={n})"


def _span(values) -> int | str | None:
    """One number where the values agree ("2"), their range where not ("1-3"); None where there is none."""
    known = [value for value in values if value is not None]
    if not known:
        return None
    low, high = min(known), max(known)
    return low if low == high else f"{low}-{high}"


def _csv_value(value):
    if value is None:
        return ""
    # metrics.csv holds 6 significant digits; 7 keep a mean's, and 0.2 reads better than 0.20000000000000001.
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

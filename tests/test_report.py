"""src/report.py on real sweeps, as a user runs it: the table best validation accuracy first, seeds grouped into mean
± std (n), report.csv, the plot, and the jobs that failed, are still running or have not started. Every value is
checked against what the jobs wrote into their metrics.csv."""
import csv
import re
import shutil
import statistics
import subprocess

import pytest
import yaml

from conftest import QUICK, job_dir, run_cli, run_forked
from trainlab.runs.folder import METRICS_CSV, TEST_ROW, MetricsFile, read_metrics

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRICS = ["epochs_done", "epochs", "best_val_acc", "best_epoch", "test_acc", "final_train_loss"]
GROUPED_CSV = ["epochs_done", "epochs", "best_val_acc_mean", "best_val_acc_std", "best_epoch", "test_acc_mean",
               "test_acc_std", "final_train_loss", "n"]
TINY = ["data=shapes", "data.num_train=200", "data.num_test=50", "trainer.epochs=2", *QUICK]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four jobs of two epochs: sgd and adam, each at batch 16 and at batch 0, which fails (jobs 1 and 3)."""
    folder = tmp_path_factory.mktemp("sweep")
    result = run_cli("-m", *TINY, "optimizer=sgd,adam", "data.batch_size=16,0", f"hydra.sweep.dir={folder}")
    assert result.returncode == 1, result.stdout + result.stderr  # the sweep ends non-zero: two jobs failed
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [  # named by what the sweep gave them
        "0_optimizer-sgd+data.batch_size-16", "1_optimizer-sgd+data.batch_size-0",
        "2_optimizer-adam+data.batch_size-16", "3_optimizer-adam+data.batch_size-0"]
    return folder


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Six jobs of one epoch: sgd and adam under seeds 0, 1 and 2; the basic sweeper numbers them seed-major (sgd: 0,
    2, 4)."""
    folder = tmp_path_factory.mktemp("seeds")
    result = run_cli("-m", *TINY, "trainer.epochs=1", "trainer.seed=0,1,2", "optimizer=sgd,adam",
                     f"hydra.sweep.dir={folder}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name.partition("_")[0] for p in folder.iterdir() if p.is_dir()) == ["0", "1", "2", "3", "4", "5"]
    return folder


def report_cli(*args) -> subprocess.CompletedProcess:
    """`python src/report.py ARGS` from the project root, as a user types it."""
    return run_forked(*map(str, args), script="report.py")


def table(stdout: str, settings: list) -> list:
    """The printed table's rows as {column: cell}; cells are two or more spaces apart, and hold no such gap."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("job  "))
    columns = re.split(r" {2,}", lines[start])
    assert columns == ["job", *settings, "status", *METRICS, "commit"]
    rows = []
    for line in lines[start + 1:]:
        if line.startswith(("job ", "jobs that differ", "warning: ", "wrote ")):  # what comes after the table
            break
        cells = re.split(r" {2,}", line)
        assert len(cells) == len(columns), line
        rows.append(dict(zip(columns, cells)))
    return rows


def read_csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def written(job_dir) -> dict:
    """What the job wrote, as the report should show it: from its metrics.csv (trainer.monitor is val/acc)."""
    rows = read_metrics(job_dir)
    epochs = [row for row in rows if row["epoch"] != TEST_ROW]
    test = [row for row in rows if row["epoch"] == TEST_ROW]
    best = max(epochs, key=lambda row: row["val_acc"])  # the first of equals, as best.pt keeps it
    assert len(test) == 1 and test[0]["val_acc"] == best["val_acc"]  # the test row: the weights validation chose
    return {"epochs_done": len(epochs), "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
            "test_acc": test[0]["test_acc"], "final_train_loss": epochs[-1]["train_loss"]}


def percent(fraction: float) -> str:
    return f"{fraction:.2%}"


def drop_test_row(job_dir) -> None:
    """As if the job were still training: its metrics.csv without the test row."""
    path = job_dir / METRICS_CSV
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not line.startswith(TEST_ROW + ",")))


def set_epochs(job_dir, epochs: int) -> None:
    config_file = job_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["trainer"]["epochs"] = epochs
    config_file.write_text(yaml.safe_dump(config))


def test_the_report_lists_jobs_best_first_and_writes_csv_and_plot(sweep):
    result = report_cli(sweep)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.splitlines()[0] == f"{sweep}: 4 jobs, 2 done, 2 failed"
    rows = table(out, ["optimizer", "data.batch_size"])
    assert [(row["job"], row["optimizer"], row["data.batch_size"], row["status"]) for row in rows[2:]] == [
        ("1", "sgd", "0", "failed"), ("3", "adam", "0", "failed")]
    done = rows[:2]
    assert {(row["optimizer"], row["data.batch_size"], row["status"]) for row in done} == {
        ("sgd", "16", "done"), ("adam", "16", "done")}
    for row in done:
        values = written(job_dir(sweep, row["job"]))
        assert row["best_val_acc"] == percent(values["best_val_acc"]) and row["test_acc"] == percent(values["test_acc"])
        assert row["best_epoch"] == str(values["best_epoch"]) and row["epochs_done"] == row["epochs"] == "2"
        assert row["final_train_loss"] == f"{values['final_train_loss']:.4f}"
    best = [written(job_dir(sweep, row["job"]))["best_val_acc"] for row in done]
    assert best == sorted(best, reverse=True)  # by validation, never by test
    assert "jobs that differ only in" not in out  # no seeds to group
    assert "job 1 failed: data.batch_size=0 cannot work" in out and "job 3 failed:" in out
    assert f"wrote {sweep / 'report.csv'}, {sweep / 'val_acc.png'}" in out

    records = read_csv(sweep / "report.csv")
    assert list(records[0]) == ["job", "optimizer", "data.batch_size", "status", *GROUPED_CSV, "commit"]
    assert [record["job"] for record in records] == [row["job"] for row in rows]
    for record in records[:2]:
        values = written(job_dir(sweep, record["job"]))
        assert float(record["best_val_acc_mean"]) == pytest.approx(values["best_val_acc"], abs=1e-6)
        assert float(record["test_acc_mean"]) == pytest.approx(values["test_acc"], abs=1e-6)
        assert float(record["final_train_loss"]) == pytest.approx(values["final_train_loss"], abs=1e-6)
        assert int(record["best_epoch"]) == values["best_epoch"]
        assert record["best_val_acc_std"] == record["test_acc_std"] == "" and record["n"] == "1"  # one job, one seed
    assert records[2]["best_val_acc_mean"] == records[2]["test_acc_mean"] == "" and records[2]["status"] == "failed"
    assert records[2]["n"] == "0"
    assert (sweep / "val_acc.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not (sweep / "test_acc.png").exists()


def test_a_job_not_started_is_missing_an_untested_one_running_and_a_stopped_early_one_done(sweep, tmp_path):
    folder = shutil.copytree(sweep, tmp_path / "sweep")
    shutil.rmtree(job_dir(folder, 3))  # adam at batch 0, as if the sweep had not reached it
    set_epochs(job_dir(folder, 0), 3)  # two of three epochs and no test yet: still running, or stopped
    drop_test_row(job_dir(folder, 0))
    set_epochs(job_dir(folder, 2), 3)  # two of three epochs, then tested: early stopping, or a time budget

    result = report_cli(folder, "--no-plot")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"{folder}: 4 jobs, 1 done, 1 running, 1 failed, 1 missing"
    rows = table(result.stdout, ["optimizer", "data.batch_size"])
    columns = ["job", "optimizer", "data.batch_size", "status", "epochs_done", "epochs", "best_val_acc", "test_acc"]
    so_far = {job: max(row["val_acc"] for row in read_metrics(job_dir(folder, job))) for job in ("0", "2")}
    tested = written(job_dir(folder, 2))["test_acc"]
    expected = [["0", "sgd", "16", "running", "2", "3", percent(so_far["0"]), "-"],  # its best so far, untested
                ["2", "adam", "16", "done", "2", "3", percent(so_far["2"]), percent(tested)]]
    expected.sort(key=lambda row: -so_far[row[0]])  # best_val_acc first, ties in job order
    assert [[row[c] for c in columns] for row in rows] == expected + [
        ["1", "sgd", "0", "failed", "0", "2", "-", "-"],
        ["3", "adam", "0", "missing", "-", "-", "-", "-"]]  # its settings from multirun.yaml
    assert result.stdout.splitlines()[-1] == f"wrote {folder / 'report.csv'}"  # --no-plot: no val_acc.png


def test_a_job_whose_config_cannot_be_read_is_named_unreadable_and_the_report_goes_on(sweep, tmp_path):
    folder = shutil.copytree(sweep, tmp_path / "sweep")
    (job_dir(folder, 2) / ".hydra" / "config.yaml").write_text("trainer: {epochs: [2\n")  # cut by hand
    result = report_cli(folder, "--no-plot")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"{folder}: 4 jobs, 1 done, 2 failed, 1 unreadable"
    assert "job 2 unreadable: cannot be read (" in result.stdout
    assert "sgd" in table(result.stdout, ["optimizer", "data.batch_size"])[0]["optimizer"]  # job 0 still reported


def test_monitor_val_loss_shows_the_val_acc_of_the_lowest_val_loss_epoch(sweep, tmp_path):
    folder = shutil.copytree(job_dir(sweep, 0), tmp_path / "run")
    config_file = folder / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["trainer"].update(monitor="val/loss", epochs=3)
    config_file.write_text(yaml.safe_dump(config))
    (folder / METRICS_CSV).unlink()
    metrics = MetricsFile(folder)  # the lowest loss is not at the highest accuracy
    for epoch, val_loss, val_acc in [(1, 1.2, 0.40), (2, 0.9, 0.55), (3, 1.0, 0.60)]:
        metrics.append(epoch=epoch, step=10 * epoch, train_loss=1.5 - 0.1 * epoch, val_loss=val_loss, val_acc=val_acc)
    metrics.append(epoch=TEST_ROW, step=30, val_loss=0.9, val_acc=0.55, test_loss=1.0, test_acc=0.5)

    result = report_cli(folder, "--no-plot")
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = table(result.stdout, [])
    assert (row["status"], row["best_val_acc"], row["best_epoch"], row["test_acc"]) == ("done", "55.00%", "2", "50.00%")


def test_sort_by_a_setting(sweep, tmp_path):
    folder = shutil.copytree(sweep, tmp_path / "sweep")
    result = report_cli(folder, "--sort", "optimizer", "--no-plot")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [row["optimizer"] for row in table(result.stdout, ["optimizer", "data.batch_size"])] == [
        "adam", "adam", "sgd", "sgd"]


def test_jobs_that_differ_only_in_seed_are_one_row_with_mean_std_and_n(seeds):
    result = report_cli(seeds)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.splitlines()[0] == f"{seeds}: 6 jobs, 6 done"
    rows = table(out, ["optimizer"])  # trainer.seed varies within a row: not a column
    assert {(row["job"], row["optimizer"], row["status"]) for row in rows} == {
        ("0 2 4", "sgd", "done"), ("1 3 5", "adam", "done")}
    assert "jobs that differ only in trainer.seed share a row" in out
    assert f"wrote {seeds / 'report.csv'}, {seeds / 'val_acc.png'}" in out

    records = {record["optimizer"]: record for record in read_csv(seeds / "report.csv")}
    spread = []
    for row in rows:
        values = [written(job_dir(seeds, job)) for job in row["job"].split()]
        record = records[row["optimizer"]]
        assert record["n"] == "3" and record["epochs_done"] == record["epochs"] == "1"
        for column in ("best_val_acc", "test_acc"):
            per_job = [value[column] for value in values]
            mean, std = statistics.fmean(per_job), statistics.stdev(per_job)
            assert float(record[column + "_mean"]) == pytest.approx(mean, abs=1e-6)
            assert float(record[column + "_std"]) == pytest.approx(std, abs=1e-6)
            assert row[column] == f"{100 * mean:.2f} ± {100 * std:.2f}% (n=3)"
            spread.append(std)
        loss = statistics.fmean(value["final_train_loss"] for value in values)
        assert float(record["final_train_loss"]) == pytest.approx(loss, abs=1e-6)
    assert any(spread), "every seed scored the same: the mean and std are not put to the test"
    means = [float(records[row["optimizer"]]["best_val_acc_mean"]) for row in rows]
    assert means == sorted(means, reverse=True)
    assert (seeds / "val_acc.png").read_bytes().startswith(PNG_SIGNATURE)


def test_no_group_seeds_lists_each_job(seeds, tmp_path):
    folder = shutil.copytree(seeds, tmp_path / "seeds")
    result = report_cli(folder, "--no-group-seeds", "--no-plot")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout, ["trainer.seed", "optimizer"])
    assert sorted((row["job"], row["trainer.seed"], row["optimizer"]) for row in rows) == [
        ("0", "0", "sgd"), ("1", "0", "adam"), ("2", "1", "sgd"), ("3", "1", "adam"), ("4", "2", "sgd"),
        ("5", "2", "adam")]
    records = read_csv(folder / "report.csv")
    assert list(records[0]) == ["job", "trainer.seed", "optimizer", "status", *METRICS, "commit"]
    for record in records:
        values = written(job_dir(folder, record["job"]))
        assert float(record["best_val_acc"]) == pytest.approx(values["best_val_acc"], abs=1e-6)
        assert float(record["test_acc"]) == pytest.approx(values["test_acc"], abs=1e-6)
    best = [float(record["best_val_acc"]) for record in records]
    assert best == sorted(best, reverse=True)


def test_a_group_counts_only_its_done_jobs_and_says_how_many_are_done(seeds, tmp_path):
    folder = shutil.copytree(seeds, tmp_path / "seeds")
    drop_test_row(job_dir(folder, 4))  # sgd, seed 2: not tested yet
    set_epochs(job_dir(folder, 4), 3)
    shutil.rmtree(job_dir(folder, 5))  # adam, seed 2: not started

    result = report_cli(folder, "--no-plot")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"{folder}: 6 jobs, 4 done, 1 running, 1 missing"
    rows = {row["optimizer"]: row for row in table(result.stdout, ["optimizer"])}
    assert rows["sgd"]["status"] == "2/3 done, 1 running" and rows["adam"]["status"] == "2/3 done, 1 missing"
    assert rows["sgd"]["epochs"] == "1-3" and rows["adam"]["epochs_done"] == "1"
    records = {record["optimizer"]: record for record in read_csv(folder / "report.csv")}
    for optimizer, jobs in (("sgd", ["0", "2"]), ("adam", ["1", "3"])):
        per_job = [written(job_dir(folder, job))["test_acc"] for job in jobs]
        assert records[optimizer]["n"] == "2"
        assert float(records[optimizer]["test_acc_mean"]) == pytest.approx(statistics.fmean(per_job), abs=1e-6)
        assert float(records[optimizer]["test_acc_std"]) == pytest.approx(statistics.stdev(per_job), abs=1e-6)
        assert rows[optimizer]["test_acc"].endswith("(n=2)")


@pytest.mark.parametrize("case, expected", [("absent", "does not exist"), ("empty", "no runs in"),
                                            ("bad_sort", "cannot sort by 'speed': pick one of the columns job")])
def test_a_mistake_is_one_line_and_exit_status_2(sweep, tmp_path, case, expected):
    args = {"absent": [tmp_path / "absent"], "empty": [tmp_path], "bad_sort": [sweep, "--sort", "speed"]}[case]
    result = report_cli(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert result.stdout == "" and result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), output
    assert expected in result.stderr

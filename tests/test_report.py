"""src/report.py on a real sweep, as a user runs it: the table best first, report.csv, the plot, and the jobs that
failed, are still running or have not started."""
import csv
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import QUICK, ROOT, run_cli, scalars

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLUMNS = ["job", "status", "optimizer", "data.batch_size", "epochs_done", "epochs", "best_test_acc", "best_epoch",
           "final_test_acc", "final_train_loss"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four jobs of two epochs: sgd and adam, each at batch 16 and at batch 0, which fails (jobs 1 and 3)."""
    folder = tmp_path_factory.mktemp("sweep")
    result = run_cli("-m", "data=shapes", "data.num_train=64", "data.num_test=32", "trainer.epochs=2", *QUICK,
                     "optimizer=sgd,adam", "data.batch_size=16,0", f"hydra.sweep.dir={folder}")
    assert result.returncode == 1, result.stdout + result.stderr  # the sweep ends non-zero: two jobs failed
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    return folder


def report_cli(*args) -> subprocess.CompletedProcess:
    """`python src/report.py ARGS` from the project root, as a user types it."""
    return subprocess.run([sys.executable, "src/report.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def table(stdout: str) -> list:
    """The printed table's rows, each split into its cells."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("job  status"))
    assert lines[start].split() == COLUMNS
    rows = []
    for line in lines[start + 1:]:
        if line.startswith(("job ", "wrote ")):  # the failed jobs' errors and the files written come after
            break
        rows.append(line.split())
    return rows


def read_csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_report_lists_jobs_best_first_and_writes_csv_and_plot(sweep):
    result = report_cli(sweep)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.splitlines()[0] == f"{sweep}: 4 jobs, 2 done, 2 failed"
    rows = table(out)
    assert [(row[0], row[1], row[2], row[3]) for row in rows[2:]] == [("1", "failed", "sgd", "0"),
                                                                      ("3", "failed", "adam", "0")]
    done = rows[:2]
    assert {(row[1], row[2], row[3]) for row in done} == {("done", "sgd", "16"), ("done", "adam", "16")}
    best = [float(row[6].rstrip("%")) for row in done]
    assert best == sorted(best, reverse=True)
    assert "job 1 failed: data.batch_size=0 cannot work" in out and "job 3 failed:" in out
    assert f"wrote {sweep / 'report.csv'}, {sweep / 'test_acc.png'}" in out

    records = read_csv(sweep / "report.csv")
    assert list(records[0]) == COLUMNS
    assert [record["job"] for record in records] == [row[0] for row in rows]
    for record in records[:2]:
        test_acc = [value for _, value in scalars(sweep / record["job"])["test/acc"]]
        assert float(record["best_test_acc"]) == pytest.approx(max(test_acc), abs=1e-6)
        assert float(record["final_test_acc"]) == pytest.approx(test_acc[-1], abs=1e-6)
        assert record["epochs_done"] == record["epochs"] == "2" and 1 <= int(record["best_epoch"]) <= 2
    assert records[2]["best_test_acc"] == "" and records[2]["status"] == "failed"
    assert (sweep / "test_acc.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_job_not_started_is_missing_and_an_unfinished_one_running(sweep, tmp_path):
    folder = shutil.copytree(sweep, tmp_path / "sweep")
    shutil.rmtree(folder / "2")  # adam at batch 16, as if the sweep had not reached it
    config_file = folder / "0" / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["trainer"]["epochs"] = 3  # two of three epochs logged: still running, or stopped
    config_file.write_text(yaml.safe_dump(config))

    result = report_cli(folder, "--no-plot")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"{folder}: 4 jobs, 1 running, 2 failed, 1 missing"
    rows = table(result.stdout)
    assert [row[:6] for row in rows] == [["0", "running", "sgd", "16", "2", "3"],
                                         ["1", "failed", "sgd", "0", "0", "2"],
                                         ["2", "missing", "adam", "16", "-", "-"],  # settings from multirun.yaml
                                         ["3", "failed", "adam", "0", "0", "2"]]
    assert result.stdout.splitlines()[-1] == f"wrote {folder / 'report.csv'}"  # --no-plot: no test_acc.png


def test_sort_by_a_setting(sweep, tmp_path):
    folder = shutil.copytree(sweep, tmp_path / "sweep")
    result = report_cli(folder, "--sort", "optimizer", "--no-plot")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [row[2] for row in table(result.stdout)] == ["adam", "adam", "sgd", "sgd"]


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

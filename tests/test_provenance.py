"""Every run folder says which code, command, packages, machine and data made it: provenance.json, a record per attempt,
and the uncommitted diff beside it, byte for byte; TensorBoard's TEXT tab shows the latest; report.py shows each job's
commit and warns when a sweep's jobs ran on different code. The code's checkout is a small git repository made here."""
import importlib.metadata
import json
import subprocess
from datetime import datetime

import pytest

from conftest import QUICK, ROOT, compose, event_tags, job_dir, run_cli, run_forked
from trainlab.runs import provenance
from trainlab.training.recipe import run

TINY = ["data=shapes", "data.num_train=64", "data.num_test=32", "trainer.epochs=1", *QUICK, "trainer.log_images=false"]


def git(repo, *args) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=x", "-c", "user.email=x@y", "-c",
                           "commit.gpgsign=false", *args], capture_output=True, check=True).stdout


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git repository standing in for trainlab's checkout: a text and a binary file committed, then both changed
    and an untracked file added."""
    repo = tmp_path / "code"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text("lr = 0.1\n")
    (repo / "weights.bin").write_bytes(bytes(range(256)))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    (repo / "train.py").write_text("lr = 0.2\n")
    (repo / "weights.bin").write_bytes(bytes(range(255, -1, -1)))
    (repo / "notes.txt").write_text("new\n")
    monkeypatch.setattr(provenance, "code_root", lambda: repo)
    return repo


def attempts(run_dir) -> list:
    return json.loads((run_dir / "provenance.json").read_text())["attempts"]


def test_a_run_from_a_dirty_checkout_records_its_commit_and_its_diff_byte_for_byte(checkout, tmp_path):
    run_dir = tmp_path / "run"
    run(compose(*TINY), run_dir)
    [record] = attempts(run_dir)
    assert record["git"] == {"commit": git(checkout, "rev-parse", "HEAD").decode().strip(), "dirty": True,
                             "diff": "provenance.diff", "untracked": ["notes.txt"]}
    assert (run_dir / "provenance.diff").read_bytes() == git(checkout, "diff", "HEAD", "--binary")
    assert "GIT binary patch" in (run_dir / "provenance.diff").read_text()
    assert record["data"] == {"name": "shapes", "root": None, "files": None}  # generated: no files to fingerprint
    assert record["device"]["torch_device"] == "cpu" and record["device"]["cpus"] >= 1
    assert datetime.fromisoformat(record["time"]).tzinfo is not None
    assert record["cwd"] and record["host"] and record["overrides"] == []

    tags = event_tags(run_dir)  # the TEXT tab: the record, its commit first
    assert "provenance/text_summary" in tags["tensors"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir))
    events.Reload()
    text = events.Tensors("provenance/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert f"| commit | {record['git']['commit'][:12]}+dirty (diff: provenance.diff), 1 untracked files |" in text


def test_versions_are_the_installed_distributions(checkout, tmp_path):
    run(compose(*TINY), tmp_path / "run")
    versions = attempts(tmp_path / "run")[0]["versions"]
    for name in ("torch", "torchvision", "hydra-core", "omegaconf", "numpy", "Pillow", "trainlab"):
        assert versions[name] == importlib.metadata.version(name)
    assert set(versions) == {"python", *provenance.PACKAGES}


def test_code_outside_a_git_checkout_records_git_null_with_the_reason_and_the_run_goes_on(tmp_path, monkeypatch,
                                                                                            caplog):
    monkeypatch.setattr(provenance, "code_root", lambda: tmp_path / "site-packages")
    caplog.set_level("INFO", logger="trainlab")
    run(compose(*TINY), tmp_path / "run")
    [record] = attempts(tmp_path / "run")
    assert record["git"] is None and "is not a git checkout" in record["git_missing"]
    assert not list((tmp_path / "run").glob("*.diff"))
    said = [(r.levelname, r.getMessage()) for r in caplog.records
            if r.levelname != "INFO" or r.getMessage().startswith("provenance")]
    assert said == [("INFO", f"provenance: no git record ({record['git_missing']})")]  # one line, no warning


def test_a_failing_git_is_a_reason_not_an_error(tmp_path):
    (tmp_path / "code" / ".git").mkdir(parents=True)  # looks like a checkout; git disagrees
    record = provenance.git_record(tmp_path / "code", tmp_path, 1)
    assert record["git"] is None and record["git_missing"].startswith("git rev-parse failed: ")


def test_a_resume_appends_an_attempt_and_keeps_the_first_diff(checkout, tmp_path):
    run_dir = tmp_path / "run"
    run(compose(*TINY), run_dir)
    first = (run_dir / "provenance.diff").read_bytes()
    (checkout / "train.py").write_text("lr = 0.3\n")  # changed again before the resume
    run(compose(*TINY, "trainer.epochs=2"), run_dir)
    one, two = attempts(run_dir)
    assert (one["git"]["diff"], two["git"]["diff"]) == ("provenance.diff", "provenance.2.diff")
    assert (run_dir / "provenance.diff").read_bytes() == first
    assert (run_dir / "provenance.2.diff").read_bytes() == git(checkout, "diff", "HEAD", "--binary") != first
    assert one["time"] <= two["time"] and one["overrides"] == two["overrides"] == []


@pytest.mark.slow
def test_the_report_shows_each_jobs_commit_and_warns_when_a_sweeps_jobs_ran_on_different_code(tmp_path):
    result = run_cli("-m", *TINY, "optimizer=sgd,adam", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    [record] = attempts(job_dir(tmp_path, 0))  # the real checkout's: this one
    assert record["git"]["commit"] == git(ROOT, "rev-parse", "HEAD").decode().strip()
    assert record["command"].startswith("python src/run.py -m data=shapes ") and "optimizer=sgd" in record["overrides"]
    assert commits(tmp_path)[0] == provenance.short_commit(record)

    def ran_on(job, commit, diff=None):  # as if job `job` had run on that code
        path = job_dir(tmp_path, job) / "provenance.json"
        data = json.loads(path.read_text())
        data["attempts"][-1]["git"].update(commit=commit, dirty=diff is not None, diff=diff and "provenance.diff")
        path.write_text(json.dumps(data))
        if diff is not None:
            (job_dir(tmp_path, job) / "provenance.diff").write_text(diff)

    ran_on(0, "a" * 40, "one change\n")
    ran_on(1, "a" * 40, "one change\n")
    assert commits(tmp_path) == ["aaaaaaaaaaaa+dirty"] * 2 and "warning" not in report(tmp_path)
    ran_on(1, "a" * 40, "another change\n")
    [warning] = [line for line in report(tmp_path).splitlines() if line.startswith("warning: ")]
    assert warning.startswith(f"warning: the jobs of {tmp_path} ran on 2 versions of the code (1 commit): "
                              "aaaaaaaaaaaa+dirty (diff ")
    ran_on(1, "f" * 40)
    assert commits(tmp_path) == ["aaaaaaaaaaaa+dirty", "ffffffffffff"]
    [warning] = [line for line in report(tmp_path).splitlines() if line.startswith("warning: ")]
    assert "ran on 2 versions of the code (2 commits): aaaaaaaaaaaa+dirty (diff " in warning
    assert "): job 0; ffffffffffff: job 1; each job's provenance.json says which" in warning


def report(folder) -> str:
    result = run_forked(str(folder), "--no-plot", script="report.py")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def commits(folder) -> list:
    """The commit column (the last), by job number."""
    rows = [line.split() for line in report(folder).splitlines()[2:] if line[:1].isdigit()]
    return [row[-1] for row in sorted(rows)]

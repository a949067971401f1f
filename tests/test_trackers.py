"""Trackers beside TensorBoard (the logger group), read back through their own clients: MLflow's MlflowClient on the
local store a run writes; W&B's offline run files through W&B's own record type (its protobuf Record), in the log
format its writer documents."""
import json
import shutil
import signal
import struct
from pathlib import Path

import pytest

from conftest import QUICK, assert_one_clear_line, compose, job_dir, needs_extra, run_cli, run_signalled, scalars
from trainlab.errors import TrainlabError
from trainlab.runs.folder import read_metrics

pytestmark = pytest.mark.slow

TINY = ["data=shapes", "data.num_train=200", "data.num_test=50", "model=mlp", "trainer.log_every_n_steps=1",
        "trainer.log_images=false", *QUICK]
STEPS = 2 * 3  # 2 epochs of 180 training images in batches of 64


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made (about 2 s of migrations), copied by each test that needs one."""
    needs_extra("mlflow", "mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{store}").search_experiments()
    return store


@pytest.fixture
def store(empty_store, tmp_path):
    """-> (the logger settings that use a fresh copy of the store, a client on it)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path / "mlflow.db"
    shutil.copy(empty_store, path)
    uri = f"sqlite:///{path}"
    return ["logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}"], MlflowClient(uri)


def only_run(client, experiment="trainlab"):
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def rounded(points) -> list:
    return [(step, round(value, 5)) for step, value in points]


def history(client, run, key) -> list:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_a_run_logs_its_config_scalars_and_artifacts_to_mlflow(tmp_path, store):
    logger, client = store
    result = run_cli(*TINY, "trainer.epochs=2", *logger, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stdout + result.stderr
    run = only_run(client)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["optimizer.lr"] == "0.01" and params["model.name"] == "mlp" and params["data.num_train"] == "200"
    assert params["trainer.deterministic"] == "true" and params["data.root"] == ""  # as YAML writes them
    assert all(" at 0x" not in value for value in params.values())  # no object's repr with its address
    assert run.data.tags["trainlab.overrides"].startswith("data=shapes data.num_train=200")
    [attempt] = json.loads((tmp_path / "run" / "provenance.json").read_text())["attempts"]
    assert run.data.tags["mlflow.source.git.commit"] == attempt["git"]["commit"]
    # each scalar at the steps TensorBoard has it
    events = scalars(tmp_path / "run")
    for key in ("train/loss", "train/lr", "val/acc", "test/acc"):
        assert rounded(history(client, run, key)) == rounded(events[key]), key  # TensorBoard keeps float32
    assert [s for s, _ in history(client, run, "train/loss")] == list(range(1, STEPS + 1))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.csv", "provenance.json", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    local = Path(client.download_artifacts(run.info.run_id, "metrics.csv", str(tmp_path)))
    assert local.read_bytes() == (tmp_path / "run" / "metrics.csv").read_bytes()


def test_a_run_killed_and_resumed_goes_on_in_the_same_mlflow_run_with_no_step_twice(tmp_path, store):
    logger, client = store
    settings = [*TINY, "trainer.epochs=2", "trainer.checkpoint_every_n_steps=2", *logger,
                f"hydra.run.dir={tmp_path / 'run'}"]
    killed = run_signalled(signal.SIGKILL, 5, *settings)  # step 5: past the checkpoint of step 4, figures sent
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert only_run(client).info.status == "RUNNING"  # a SIGKILL leaves no time to say otherwise
    result = run_cli(*settings)
    assert result.returncode == 0 and "resuming" in result.stdout, result.stdout + result.stderr
    run = only_run(client)  # the same run: one in the experiment
    assert run.info.status == "FINISHED"
    steps = [s for s, _ in history(client, run, "train/loss")]
    assert steps == list(range(1, STEPS + 1))  # each step once, none missing
    assert rounded(history(client, run, "train/loss")) == rounded(scalars(tmp_path / "run")["train/loss"])


def test_a_stopped_run_is_killed_in_mlflow_and_a_failed_one_failed(tmp_path, store):
    logger, client = store
    stopped = run_signalled(signal.SIGTERM, 3, *TINY, "trainer.epochs=2", *logger, f"hydra.run.dir={tmp_path / 'a'}")
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert only_run(client).info.status == "KILLED"
    failed = run_cli(*TINY, "trainer.epochs=2", "optimizer.lr=1e37", *logger, "logger.mlflow.experiment=failing",
                     f"hydra.run.dir={tmp_path / 'b'}")
    assert failed.returncode != 0, failed.stdout + failed.stderr
    assert only_run(client, "failing").info.status == "FAILED"


def test_a_sweep_is_one_experiment_and_its_jobs_runs_in_it(tmp_path, store):
    logger, client = store
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *TINY, "trainer.epochs=1", "optimizer.lr=0.1,0.01", *logger, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stdout + result.stderr
    experiment = client.get_experiment_by_name(f"trainlab/{sweep.name}")
    runs = sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.data.tags["trainlab.job"])
    assert [(r.data.tags["trainlab.job"], r.data.params["optimizer.lr"], r.info.status) for r in runs] == [
        ("0", "0.1", "FINISHED"), ("1", "0.01", "FINISHED")]
    for number, run in enumerate(runs):
        assert run.data.tags["trainlab.run_dir"] == str(job_dir(sweep, number).resolve())
        assert [s for s, _ in history(client, run, "train/loss")] == list(range(1, 4))


def test_a_tracker_out_of_reach_is_one_warning_and_the_run_loses_nothing(tmp_path):
    needs_extra("mlflow", "mlflow")
    result = run_cli(*TINY, "trainer.epochs=2", "logger=[tensorboard,mlflow]",
                     "logger.mlflow.tracking_uri=http://127.0.0.1:9", f"hydra.run.dir={tmp_path}")  # nothing listens
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if line.startswith("warning: logger.mlflow")]
    assert len(warnings) == 1, output
    assert output.strip().splitlines()[-1].endswith("logger.mlflow missed what came after it failed to start its run")
    assert [row["epoch"] for row in read_metrics(tmp_path)] == [1, 2, "test"]
    assert [s for s, _ in scalars(tmp_path)["train/loss"]] == list(range(1, STEPS + 1))


def test_logger_chooses_tensorboard_too_and_a_trackers_setting_needs_its_tracker(tmp_path):
    result = run_cli(*TINY, "trainer.epochs=1", "logger=[]", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(tmp_path.glob("events.out.tfevents.*")) and (tmp_path / "metrics.csv").exists()
    assert_one_clear_line(run_cli("data=shapes", "logger.mlflow.tracking_uri=x", f"hydra.run.dir={tmp_path / 'b'}"),
                          "logger.mlflow.tracking_uri is a setting of the mlflow tracker, which logger does not choose")
    assert_one_clear_line(run_cli("data=shapes", "logger=[mlfow]", f"hydra.run.dir={tmp_path / 'c'}"),
                          "did you mean logger=mlflow?")
    for setting, expected in (("logger.mlflow.tracking_uri=databricks", "it must be a sqlite:///, postgresql://"),
                              ("logger.mlflow.log_checkpoint=bestt", "it must be one of best, last, all, none")):
        assert_one_clear_line(run_cli("data=shapes", "logger=[mlflow]", setting, f"hydra.run.dir={tmp_path / 'd'}"),
                              f"{setting} cannot work: {expected}")
    assert not (tmp_path / "d").exists()


def test_a_tracker_that_is_not_installed_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    from trainlab.runs.trackers import check_trackers

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else found(name, *a))
    with pytest.raises(TrainlabError, match=r"logger=mlflow needs mlflow, which is not installed: "
                                            r"pip install -e \.\[mlflow\]"):
        check_trackers(compose("logger=[tensorboard,mlflow]").logger)
    check_trackers(compose().logger)  # TensorBoard needs no extra


def test_a_resumed_tracker_run_skips_the_steps_it_already_holds(tmp_path, store):
    # A run killed after sending figures past its last checkpoint replays those steps when resumed, with the same
    # values (an exact resume): each step stays once in the tracker run's history.
    from trainlab.launch import Launch
    from trainlab.runs.trackers import Tracking

    logger, client = store
    cfg = compose(*TINY, *logger)
    first = Tracking(cfg.logger, {"optimizer": {"lr": 0.01}}, tmp_path / "run", Launch(tmp_path / "run"))
    [sink] = first.sinks()
    for step in range(1, 6):
        sink.scalars({"train/loss": 1.0 / step}, step)
    sink.flush()  # sent, then killed: no close
    again = Tracking(cfg.logger, {"optimizer": {"lr": 0.01}}, tmp_path / "run", Launch(tmp_path / "run"))
    again.load_state_dict(first.state_dict())  # from the checkpoint, written at step 3
    [sink] = again.sinks()
    for step in range(4, 9):
        sink.scalars({"train/loss": 1.0 / step}, step)
    sink.close()
    run = only_run(client)
    assert run.info.status == "FINISHED" and run.info.run_id == first.ids["mlflow"]
    assert history(client, run, "train/loss") == [(s, pytest.approx(1.0 / s)) for s in range(1, 9)]


# --- Weights & Biases, offline ---

def wandb_attempts(run_dir: Path) -> list:
    """Each offline attempt of the run (wandb/offline-run-*/run-<id>.wandb), in order, as its protobuf Records. The
    file is W&B's: a 7-byte header (:W&B, magic, version), then records in 32 KiB blocks, each with a 7-byte header
    (CRC32, little-endian length, kind: 1 whole, 2 first, 3 middle, 4 last piece), as LevelDB's log."""
    from wandb.proto import wandb_internal_pb2

    attempts = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, block, pieces, records = 7, 32768, [], []
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a header is padding
                pos += block - pos % block
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind == 0:  # zeros: the rest of the block
                pos += -pos % block
                continue
            pieces = [payload] if kind in (1, 2) else pieces + [payload]
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(b"".join(pieces))
                records.append(record)
        attempts.append(records)
    return attempts


def wandb_history(records: list) -> dict:
    """{key: [(step, value), ...]} from a W&B attempt's history records (W&B's own _step, _runtime left out)."""
    found = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)  # train/loss is held as ["train", "loss"]
                if not key.startswith("_"):
                    found.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
    return found


def only(records: list, kind: str):
    [found] = [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]
    return found


def test_a_run_logs_to_wandb_offline_inside_its_folder(tmp_path):
    needs_extra("wandb", "wandb")
    from trainlab.runs.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    result = run_cli(*TINY, "trainer.epochs=2", "logger=[tensorboard,wandb]", f"hydra.run.dir={run_dir}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any(line.startswith("wandb:") for line in (result.stdout + result.stderr).splitlines())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing outside the run folder
    [records] = wandb_attempts(run_dir)
    run = only(records, "run")
    assert run.run_id == load_checkpoint(run_dir / "checkpoints" / "last.pt")["tracking"]["wandb"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["optimizer"]["lr"] == 0.01 and config["model"]["name"] == "mlp"
    history, events = wandb_history(records), scalars(run_dir)
    for key in ("train/loss", "train/lr", "val/acc", "test/acc"):
        assert rounded(history[key]) == rounded(events[key]), key
    assert only(records, "exit").exit_code == 0
    files = run_dir / "wandb" / "latest-run" / "files"
    assert (files / "metrics.csv").read_bytes() == (run_dir / "metrics.csv").read_bytes()
    assert (files / "checkpoints" / "best.pt").is_file()


def test_a_run_killed_and_resumed_goes_on_under_the_same_wandb_run_id_with_no_step_twice(tmp_path):
    needs_extra("wandb", "wandb")
    from trainlab.runs.checkpoint import load_checkpoint

    settings = [*TINY, "trainer.epochs=2", "trainer.checkpoint_every_n_steps=2", "logger=[tensorboard,wandb]",
                f"hydra.run.dir={tmp_path}"]
    killed = run_signalled(signal.SIGKILL, 5, *settings)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    result = run_cli(*settings)
    assert result.returncode == 0 and "resuming" in result.stdout, result.stdout + result.stderr
    killed_attempt, resumed = wandb_attempts(tmp_path)  # an offline-run-* folder each, one run id: `wandb sync`
    assert only(resumed, "run").run_id == load_checkpoint(tmp_path / "checkpoints" / "last.pt")["tracking"]["wandb"]
    assert {p.name.rsplit("-", 1)[1] for p in tmp_path.glob("wandb/offline-run-*")} == {only(resumed, "run").run_id}
    # The resumed attempt logs from the checkpoint (step 4) on; the killed one sent nothing past it, so no step is
    # twice. (What W&B's service had not written when the process was killed is lost to W&B: a SIGKILL left this
    # attempt's file empty. The event files and metrics.csv hold every step.)
    before = {step for step, _ in wandb_history(killed_attempt).get("train/loss", [])}
    assert [step for step, _ in wandb_history(resumed)["train/loss"]] == [5, 6] and not before & {5, 6}
    assert [s for s, _ in scalars(tmp_path)["train/loss"]] == list(range(1, STEPS + 1))


def test_an_optuna_searchs_trials_carry_their_number_and_state_in_mlflow(tmp_path, store):
    logger, client = store
    search = ["-m", "hparams_search=tudui_optuna", *TINY, "trainer.epochs=1", "hydra.sweeper.n_trials=2", *logger,
              f"hydra.sweep.dir={tmp_path / 'search'}"]
    result = run_cli(*search)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = client.search_runs([client.get_experiment_by_name("trainlab/search").experiment_id])
    assert sorted((r.data.tags["optuna.trial"], r.data.tags["trainlab.job"], r.data.tags["optuna.state"])
                  for r in runs) == [("0", "0", "COMPLETE"), ("1", "1", "COMPLETE")]

"""Deny by default, tried as an attacker would: a config, a run folder, a checkpoint or a data folder handed over by
someone else runs no code, writes nothing outside the run's own new folder and clobbers no other run.

Each refusal is the real src/run.py (or predict.py, evaluate.py, report.py) in a subprocess, started from a folder
in tmp_path, with every file it could reach (victims, other runs, the folder it would write) in tmp_path too, and
asserts: exit status 2, one `error:` line naming the key or file, and tmp_path exactly as it was, byte for byte.
"""
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import QUICK, ROOT, assert_one_clear_line, run_cli, run_forked

TINY = ["data=shapes", "data.num_train=64", "data.num_test=32", "trainer.epochs=1", *QUICK]
SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"]
OPTUNA = ["-m", "hydra/sweeper=trainlab_optuna", "hydra.sweeper.n_trials=1", "optimizer.lr=choice(0.01)"]


def listing(root: Path) -> dict:
    """Everything under `root`, links not followed: {relative path: its bytes, 'folder', or 'link -> target'}."""
    found = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "folder"
            else:
                found[key] = path.read_bytes()
    return found


class Scene:
    """tmp_path as an attacker leaves it: `victim`, a file of the user's; `run`, another run's folder; `work`, where
    the command is typed (its outputs/ would appear there); conf/, the shared YAML files."""

    def __init__(self, root: Path):
        self.root, self.work, self.conf = root, root / "work", root / "shared_conf"
        self.work.mkdir()
        self.victim = root / "victim.txt"
        self.victim.write_text("the user's own file\n")
        self.run = root / "another_run"
        (self.run / ".hydra").mkdir(parents=True)
        (self.run / ".hydra" / "config.yaml").write_text("optimizer:\n  lr: 0.01\n")
        (self.run / "metrics.csv").write_text("epoch,step,val_acc\n1,10,0.5\n")
        (self.run / "run.log").write_text("[INFO] the other run's log\n")

    def shared(self, group: str, node: dict, package_global: bool = True) -> list:
        """A shared config, conf/<group>/evil.yaml holding `node` -> the arguments that use it."""
        (self.conf / group).mkdir(parents=True, exist_ok=True)
        header = "# @package _global_\n" if package_global else ""
        (self.conf / group / "evil.yaml").write_text(header + yaml.safe_dump(node, default_style=None))
        return [f"{group}=evil", f"hydra.searchpath=[file://{self.conf}]"]

    def refused(self, *args, error: str, script: str = "run.py", env=None):
        """Run `script` with args from `work`: it must refuse with one line holding `error`, and write nothing."""
        before = listing(self.root)
        result = run_forked(*args, script=script, cwd=self.work,
                            env={"XDG_CACHE_HOME": str(self.root / "cache"), **(env or {})})
        assert_one_clear_line(result, error)
        assert listing(self.root) == before, "something was written"
        return result


@pytest.fixture
def scene(tmp_path) -> Scene:
    return Scene(tmp_path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real run of one epoch on the shapes: its folder, to copy into each test that needs one."""
    from omegaconf import OmegaConf

    from conftest import compose
    from trainlab.training.recipe import run

    folder = tmp_path_factory.mktemp("finished") / "run"
    cfg = compose(*TINY)
    run(cfg, folder)  # in this process: a second is not what these tests are about
    (folder / ".hydra").mkdir()
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")  # as src/run.py's Hydra leaves it
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(TINY))
    return folder


def copy_of(run: Path, into: Path) -> Path:
    shutil.copytree(run, into, symlinks=True)
    return into


# --- the vectors of the third attack: each was a way through on the code before deny by default ---

def test_a_logging_handler_in_factory_form_cannot_open_another_runs_file(scene):
    handler = {"()": "logging.FileHandler", "filename": str(scene.run / "metrics.csv"), "mode": "w"}
    args = scene.shared("experiment", {"hydra": {"job_logging": {"handlers": {"x": handler}}}})
    scene.refused(*TINY, *args, error="hydra.job_logging.handlers.x.() is set by this config")


def test_a_formatter_in_factory_form_is_refused(scene):
    formatter = {"()": "logging.Formatter", "fmt": "import os"}
    args = scene.shared("experiment", {"hydra": {"job_logging": {"formatters": {"x": formatter}}}})
    scene.refused(*TINY, *args, error="hydra.job_logging.formatters.x.() is set by this config")


def test_a_callable_parked_under_callbacks_and_pulled_into_a_formatter_is_refused(scene):
    payload = {"_target_": "shutil.copyfile", "src": str(scene.victim), "dst": str(scene.root / "copied")}
    node = {"hydra": {"callbacks": {"payload": payload},
                      "job_logging": {"formatters": {"console": {"format": "${hydra:callbacks.payload}"}}}}}
    scene.refused(*TINY, *scene.shared("experiment", node), error="hydra.callbacks.payload")


def test_a_plain_dict_decoded_from_a_string_is_walked(scene):
    decoded = "${oc.decode:'{_target_: shutil.copyfile, src: a, dst: b}'}"  # a loss of the user's own: any keys
    loss = {"_target_": "torch.nn.CrossEntropyLoss", "weight": decoded}
    scene.refused(*TINY, *scene.shared("loss", loss, package_global=False),
                  error="loss.weight._target_ 'shutil.copyfile' is not allowed")


def test_the_runtime_output_dir_cannot_be_set_for_a_hydra_logging_file(scene):
    handler = {"class": "logging.FileHandler", "filename": "${hydra.runtime.output_dir}/x.log"}
    args = scene.shared("experiment", {"hydra": {"hydra_logging": {"handlers": {"file": handler}}}})
    scene.refused(*TINY, f"hydra.runtime.output_dir={scene.run}", *args, error="hydra.")


def test_a_newline_in_a_slurm_launcher_string_is_refused(scene):
    args = scene.shared("experiment", {"hydra": {"launcher": {"comment": "ok\ntouch X\n#"}}})
    scene.refused(*SLURM, *TINY, *args, error="hydra.launcher.comment=")


def test_a_trusted_launcher_key_still_takes_no_line_break(scene):
    args = scene.shared("experiment", {"hydra": {"launcher": {"setup": ["echo ok\ntouch X"]}}})
    scene.refused(*SLURM, *TINY, *args, error="hydra.launcher.setup.0=",
                  env={"TRAINLAB_ALLOW_KEYS": "hydra.launcher.setup.*"})


@pytest.mark.parametrize("name", [".lock", "run.log", "metrics.csv", "error.log"])
def test_a_run_folder_whose_own_file_is_a_symlink_is_refused(scene, name):
    (scene.run / name).unlink(missing_ok=True)
    (scene.run / name).symlink_to(scene.victim)
    scene.refused(*TINY, f"trainer.resume={scene.run}", f"hydra.run.dir={scene.run}",
                  error=f"{scene.run / name} is a symbolic link")


@pytest.mark.parametrize("name", ["checkpoints", ".hydra", "evaluate"])
def test_a_run_folder_whose_own_folder_is_a_symlink_is_refused(scene, name):
    elsewhere = scene.root / "elsewhere"
    elsewhere.mkdir()
    if (scene.run / name).exists():
        shutil.rmtree(scene.run / name)
    (scene.run / name).symlink_to(elsewhere)
    scene.refused(*TINY, f"hydra.run.dir={scene.run}", error=f"{scene.run / name} is a symbolic link")


def test_a_checkpoint_file_that_is_a_symlink_is_refused(scene, finished_run):
    run = copy_of(finished_run, scene.root / "colleague")
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints" / "last.pt").symlink_to(scene.victim)
    scene.refused(*TINY, f"hydra.run.dir={run}", error=f"{run / 'checkpoints' / 'last.pt'} is a symbolic link")


def test_a_finished_run_given_as_the_run_folder_with_other_settings_keeps_every_byte(scene, finished_run):
    run = copy_of(finished_run, scene.root / "finished")
    scene.refused(*TINY, "optimizer.lr=0.5", f"hydra.run.dir={run}", error="optimizer.lr is 0.5 in this command")
    assert not (run / "error.log").exists()


def test_a_finished_run_resumed_with_another_optimizer_is_refused(scene, finished_run):
    run = copy_of(finished_run, scene.root / "finished")
    scene.refused(*TINY, "optimizer=adam", f"trainer.resume={run}", error="optimizer=adam: the run being resumed")


def test_a_sweep_folder_given_again_with_other_overrides_is_refused(scene):
    sweep = scene.root / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["optimizer=sgd,adam"]}}}))
    scene.refused("-m", *TINY, "optimizer=sgd,adam,adamw", f"hydra.sweep.dir={sweep}",
                  error="holds a sweep made with other settings")


def test_the_output_subdir_cannot_be_moved(scene):
    scene.refused(*TINY, f"hydra.output_subdir={scene.root / 'elsewhere'}", error="hydra.output_subdir is set")


# --- the weak spots found on the way ---

def save_hostile_checkpoint(finished_run: Path, into: Path, model_name: str, classes: list) -> Path:
    from trainlab.runs.checkpoint import load_checkpoint, save_checkpoint

    record = load_checkpoint(finished_run / "checkpoints" / "best.pt")
    record["config"]["model"]["name"] = model_name
    record["classes"] = classes
    save_checkpoint(into, record)
    return into


FAKE = "\nerror: the disk is on fire\x1b[2J\x1b[31m"


def test_names_from_a_checkpoint_reach_the_terminal_escaped(tmp_path, finished_run):
    classes = [f"class{i}{FAKE}" for i in range(10)]
    checkpoint = save_hostile_checkpoint(finished_run, tmp_path / "hostile.pt", f"tudui{FAKE}", classes)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    result = subprocess.run([sys.executable, "src/predict.py", f"checkpoint={checkpoint}",
                             f"image={tmp_path / 'red.png'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "\x1b" not in output and not any(line.startswith("error:") for line in output.splitlines())
    assert "tudui\\nerror: the disk is on fire\\x1b[2J" in output


def test_names_of_class_folders_reach_the_terminal_and_run_log_escaped(tmp_path):
    for name in ("ants\x1b[31m", "bees\nerror: fake"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(tmp_path / "data" / "train" / name / f"{i}.png")
    (tmp_path / "data" / "train" / "bees\nerror: fake" / "broken.png").write_text("not an image\x1b[2J")
    result = run_cli("data=folder", f"data.root={tmp_path / 'data'}", "data.val_split=0", "trainer.epochs=1",
                     *QUICK, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_clear_line(result, "bees\\nerror: fake/broken.png cannot be decoded")
    assert "\x1b" not in result.stdout + result.stderr


def test_report_csv_cells_cannot_be_formulas(tmp_path, finished_run):
    sweep = tmp_path / "sweep"
    for number, value in enumerate(["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "@SUM(A1)", "-2+3"]):
        run = copy_of(finished_run, sweep / str(number))  # a setting whose value a spreadsheet would run
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.name={value}"]))
    result = subprocess.run([sys.executable, "src/report.py", str(sweep), "--no-plot"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    cells = [cell for line in (sweep / "report.csv").read_text().splitlines() for cell in line.split(",")]
    assert not [cell for cell in cells if cell.lstrip('"').startswith(("=", "+", "@", "-"))], cells
    assert "'=HYPERLINK" in (sweep / "report.csv").read_text()


@pytest.mark.parametrize("name", ["report.csv", "val_acc.png"])
def test_report_never_writes_through_a_symlink(scene, finished_run, name):
    sweep = scene.root / "sweep"
    copy_of(finished_run, sweep / "0")
    (sweep / name).symlink_to(scene.victim)
    scene.refused(str(sweep), error=f"{sweep / name} is a symbolic link", script="report.py")


def tiny_folder(root: Path) -> Path:
    for label, colour in (("ants", (200, 0, 0)), ("bees", (0, 0, 200))):
        (root / "train" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), tuple(min(255, c + 10 * i) for c in colour)).save(root / "train" / label / f"{i}.png")
    return root


def test_a_tampered_cache_is_decoded_again_and_labels_come_from_the_folder(tmp_path, monkeypatch, caplog):
    from conftest import compose
    from trainlab.runs.checkpoint import CHECKSUM, save_checkpoint
    from trainlab.data.resident import build_resident
    from trainlab.data.transforms import check_transforms

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tiny_folder(tmp_path / "photos")
    cfg = compose("data=folder", f"data.root={root}", "data.image_size=8", "data.val_split=0")
    first = build_resident(cfg.data, check_transforms(cfg.transform), torch.device("cpu"), 0, False)[0]
    [cache] = (root / ".trainlab-cache").glob("*.pt")
    tampered = torch.load(cache, weights_only=True)
    tampered.pop(CHECKSUM)
    tampered["train_targets"] = 1 - tampered["train_targets"]  # every label swapped, with a fresh (unkeyed) checksum
    save_checkpoint(cache, tampered)
    caplog.set_level("INFO", logger="trainlab")
    again = build_resident(cfg.data, check_transforms(cfg.transform), torch.device("cpu"), 0, False)[0]
    assert "was not written by this user's trainlab" in caplog.text and "decoding again" in caplog.text
    assert torch.equal(again.train.targets, first.train.targets)


def test_a_cache_folder_that_is_a_symlink_is_not_followed(tmp_path, monkeypatch, caplog):
    from conftest import compose
    from trainlab.data.resident import build_resident
    from trainlab.data.transforms import check_transforms

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tiny_folder(tmp_path / "photos")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / ".trainlab-cache").symlink_to(elsewhere)
    cfg = compose("data=folder", f"data.root={root}", "data.image_size=8", "data.val_split=0")
    caplog.set_level("INFO", logger="trainlab")
    build_resident(cfg.data, check_transforms(cfg.transform), torch.device("cpu"), 0, False)
    assert not list(elsewhere.iterdir()) and "is a symbolic link, not followed" in caplog.text
    assert list((tmp_path / "cache" / "trainlab").glob("folder-*.pt"))


def test_evaluate_never_writes_through_an_evaluate_symlink(scene, finished_run):
    run = copy_of(finished_run, scene.root / "colleague")
    elsewhere = scene.root / "elsewhere"
    elsewhere.mkdir()
    (run / "evaluate").symlink_to(elsewhere)
    scene.refused(f"checkpoint={run}", error=f"{run / 'evaluate'} is a symbolic link", script="evaluate.py")


def bomb(path: Path, side: int) -> Path:
    """A PNG whose header says side x side pixels, grey, one bit each: what a bomb shows before it is decoded (a real
    one of 10000x10000 is 27 KB and takes 3.7 GB and 19 s to decode as RGB; its header is all a refusal may read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_predict_on_a_decompression_bomb_is_one_line(scene, finished_run):
    image = bomb(scene.root / "bomb.png", 20000)  # 400 megapixels: past twice PIL's limit
    scene.refused(f"checkpoint={finished_run}", f"image={image}", "data.max_pixels=1000000000",
                  error="bomb.png is too large to decode safely", script="predict.py")


def test_predict_refuses_an_image_over_the_pixel_budget_before_decoding_it(scene, finished_run):
    image = bomb(scene.root / "big.png", 10000)  # 100 megapixels, 27 KB: 3.7 GB and 19 s to decode as RGB
    scene.refused(f"checkpoint={finished_run}", f"image={image}", error="big.png has 10000x10000 = 100,000,000 "
                  "pixels, more than data.max_pixels=64,000,000", script="predict.py")


def test_training_refuses_an_image_over_the_pixel_budget(tmp_path):
    root = tiny_folder(tmp_path / "photos")
    Image.new("RGB", (100, 100)).save(root / "train" / "ants" / "large.png")
    result = run_cli("data=folder", f"data.root={root}", "data.image_size=8", "data.max_pixels=5000", *QUICK,
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_clear_line(result, "large.png has 100x100 = 10,000 pixels, more than data.max_pixels=5,000")


def test_a_secret_in_the_environment_is_not_read_by_a_shared_config(scene):
    args = scene.shared("experiment", {"data": {"root": "${oc.env:MY_SECRET_TOKEN}"}})
    result = scene.refused(*TINY, *args, error="data.root reads ${oc.env:MY_SECRET_TOKEN}",
                           env={"MY_SECRET_TOKEN": "s3cr3t-value"})
    assert "s3cr3t-value" not in result.stdout + result.stderr


def test_a_variable_the_user_allows_is_read(tmp_path):
    result = run_cli(*TINY, "data.root=${oc.env:MY_DATA}", "--cfg", "job", "--resolve",  # checked as a run is
                     env={"MY_DATA": str(tmp_path / "data"), "TRAINLAB_ENV_ALLOW": "MY_DATA"})
    assert result.returncode == 0 and f"root: {tmp_path / 'data'}" in result.stdout, result.stdout + result.stderr


def test_a_database_storage_without_its_driver_is_one_line(scene):
    scene.refused(*OPTUNA, *TINY, "hydra.sweeper.storage=postgresql://user:pw@localhost/db",
                  f"hydra.sweep.dir={scene.root / 'sweep'}", error="pip install psycopg")


# --- more: every other door, tried the same way ---

@pytest.mark.parametrize("node,error", [
    ({"job": {"env_set": {"LD_PRELOAD": "/tmp/x.so"}}}, "hydra.job.env_set.LD_PRELOAD is set"),
    ({"job": {"env_set": {"PYTHONPATH": "/tmp"}}}, "hydra.job.env_set.PYTHONPATH is set"),
    ({"job": {"env_copy": ["HOME"]}}, "hydra.job.env_copy.0 is set"),
    ({"job": {"env_copy": ["TRAINLAB_NOT_SET_ANYWHERE"]}}, "hydra.job.env_copy names 'TRAINLAB_NOT_SET_ANYWHERE'"),
    ({"job": {"name": "../../x"}}, "hydra.job.name is set"),
    ({"job": {"chdir": True}}, "hydra.job.chdir is set"),
    ({"job": {"config": {"override_dirname": {"kv_sep": "\n"}}}}, "hydra.job.config.override_dirname.kv_sep is set"),
    ({"help": {"template": "${oc.env:HOME}"}}, "hydra.help.template is set"),
    ({"hydra_help": {"template": "x"}}, "hydra.hydra_help.template is set"),
    ({"overrides": {"task": ["optimizer.lr=0.5"]}}, "hydra.overrides.task is set by this config"),
    ({"runtime": {"output_dir": "/tmp"}}, "hydra.runtime.output_dir is set"),
    ({"callbacks": {"sweep_report": {"_target_": "os.system", "command": "true"}}},
     "hydra.callbacks.sweep_report._target_ is set"),
    ({"job_logging": {"root": {"handlers": ["console"]}}}, "hydra.job_logging.root.handlers"),
    ({"job_logging": {"handlers": {"file": {"filename": "/tmp/elsewhere.log"}}}},
     "hydra.job_logging.handlers.file.filename is set"),
    ({"job_logging": {"handlers": {"console": {"stream": "ext://os.system"}}}},
     "hydra.job_logging.handlers.console.stream is set"),
    ({"hydra_logging": {"handlers": {"console": {"class": "logging.FileHandler"}}}},
     "hydra.hydra_logging.handlers.console.class is set"),
    ({"sweep": {"subdir": "../../escape"}}, "hydra.sweep.subdir=../../escape cannot be used"),
    ({"run": {"dir": "${oc.env:HOME}"}}, "hydra.run.dir reads ${oc.env:HOME}"),
    ({"searchpath": ["pkg://antigravity"]}, "hydra.searchpath"),
])
def test_a_shared_config_may_not_set_hydras_own_keys(scene, node, error):
    scene.refused(*TINY, *scene.shared("experiment", {"hydra": node}), error=error)


@pytest.mark.parametrize("args,error", [
    (["hydra.sweeper.storage=sqlite:////tmp/elsewhere/x.db"], "hydra.sweeper.storage=sqlite:////tmp/elsewhere/x.db"),
    (["hydra.sweeper.storage=redis://localhost:6379"], "hydra.sweeper.storage=redis://localhost:6379 cannot be used"),
    (["hydra.sweeper.sampler._target_=os.system"], "hydra.sweeper.sampler._target_ is set"),
    (["hydra.sweeper.study_name=../x"], "hydra.sweeper.study_name=../x cannot be used"),
    (["hydra.sweeper._target_=hydra._internal.core_plugins.basic_sweeper.BasicSweeper"],
     "hydra.sweeper._target_ is set"),
])
def test_an_optuna_search_takes_only_its_documented_fields(scene, args, error):
    scene.refused(*OPTUNA, *TINY, *args, f"hydra.sweep.dir={scene.root / 'sweep'}", error=error)


@pytest.mark.parametrize("node,error", [
    ({"submitit_folder": "/tmp/elsewhere"}, "hydra.launcher.submitit_folder is set"),
    ({"additional_parameters": {"wrap": "touch X"}}, "hydra.launcher.additional_parameters.wrap is set"),
    ({"qos": "high\ntouch X"}, "hydra.launcher.qos="),
    ({"name": "job\x00"}, "hydra.launcher.name="),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"},
     "hydra.launcher._target_ is set"),
])
def test_a_slurm_launcher_takes_only_its_documented_fields(scene, node, error):
    scene.refused(*SLURM, *TINY, *scene.shared("experiment", {"hydra": {"launcher": node}}), error=error)


@pytest.mark.parametrize("key,error", [
    ("hydra.launcher.temp_folder=/tmp/elsewhere", "hydra.launcher.temp_folder is set"),
    ("hydra.launcher.pre_dispatch=2*n_jobs+1", "hydra.launcher.pre_dispatch is set"),
    ("hydra.launcher.backend=dask", "hydra.launcher.backend=dask cannot be used"),
])
def test_the_parallel_launcher_takes_only_its_documented_fields(scene, key, error):
    scene.refused("-m", "hydra/launcher=parallel", *TINY, key, error=error)


def test_an_option_of_hydras_groups_from_a_shared_folder_is_refused(scene):
    (scene.conf / "hydra" / "launcher").mkdir(parents=True)
    (scene.conf / "hydra" / "launcher" / "evil.yaml").write_text("_target_: os.system\n")
    scene.refused("-m", *TINY, "hydra/launcher=evil", f"hydra.searchpath=[file://{scene.conf}]",
                  error="hydra/launcher=evil is not an option trainlab runs")


def test_a_shared_file_shadowing_a_plugins_option_is_held_to_the_plugins_values(scene):
    (scene.conf / "hydra" / "launcher").mkdir(parents=True)
    (scene.conf / "hydra" / "launcher" / "joblib.yaml").write_text(textwrap.dedent("""\
        _target_: hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher
        n_jobs: 1
        pre_dispatch: all
        temp_folder: /tmp/elsewhere
        """))
    scene.refused("-m", *TINY, "hydra/launcher=joblib", f"hydra.searchpath=[file://{scene.conf}]", error="hydra.")


def test_another_primary_config_is_held_to_trainlabs_own_hydra_part(scene):
    scene.conf.mkdir()
    (scene.conf / "evil.yaml").write_text(textwrap.dedent("""\
        defaults:
          - config
          - _self_
        hydra:
          callbacks:
            sweep_report:
              _target_: os.system
        """))
    scene.refused(*TINY, f"--config-dir={scene.conf}", "--config-name=evil",
                  error="hydra.callbacks.sweep_report._target_ is set")


@pytest.mark.parametrize("node,error", [
    ({"optimizer": {"_target_": "torch.optim.lr_scheduler.LambdaLR"}}, "optimizer._target_"),
    ({"optimizer": {"_target_": "${oc.decode:'torch.hub.load'}"}}, "optimizer._target_ 'torch.hub.load'"),
    ({"data": {"root": "${no.such.key}"}}, "data.root cannot be resolved"),
    ({"data": {"name": "${oc.env:HOME,shapes}"}}, "data.name reads ${oc.env:HOME}"),
])
def test_the_rest_of_a_shared_config_is_checked_resolved(scene, node, error):
    scene.refused(*TINY, *scene.shared("experiment", node), error=error)


@pytest.mark.parametrize("loss,error", [
    ({"_target_": "${oc.decode:torch.hub.load}"}, "loss._target_ 'torch.hub.load' is not allowed"),
    ({"_target_": "torch.nn.CrossEntropyLoss", "weight": {"()": "torch.hub.load"}},
     "loss.weight.() 'torch.hub.load' is not allowed"),
    ({"_target_": "torch.nn.CrossEntropyLoss", "weight": "${oc.create:'{_target_: os.system}'}"},
     "loss.weight._target_ 'os.system' is not allowed"),
    ({"_target_": "torch.nn.CrossEntropyLoss", "weight": ["${oc.create:'{x: {_target_: os.system}}'}"]},
     "loss.weight.0.x._target_ 'os.system' is not allowed"),
])
def test_a_shared_loss_is_checked_resolved(scene, loss, error):
    scene.refused(*TINY, *scene.shared("loss", loss, package_global=False), error=error)


def test_a_checkpoint_whose_config_builds_a_callable_is_refused_when_resumed(scene, finished_run):
    from trainlab.runs.checkpoint import load_checkpoint, save_checkpoint

    run = copy_of(finished_run, scene.root / "colleague")
    for name in ("last.pt", "best.pt"):
        record = load_checkpoint(run / "checkpoints" / name)
        record["config"]["loss"] = {"_target_": "os.system", "command": f"touch {scene.root / 'ran'}"}
        save_checkpoint(run / "checkpoints" / name, record)
    scene.refused(f"trainer.resume={run}", "trainer.epochs=2", error="loss._target_ 'os.system' is not allowed")


@pytest.mark.parametrize("setup,error", [
    (lambda run: (run / "notes.txt").write_text("mine"), "holds files that are not a run's (notes.txt)"),
    (lambda run: (run / ".bashrc").write_text("export X=1"), "holds files that are not a run's (.bashrc)"),
])
def test_a_run_folder_that_is_not_a_runs_is_refused(scene, setup, error):
    folder = scene.root / "mine"
    folder.mkdir()
    setup(folder)
    scene.refused(*TINY, f"hydra.run.dir={folder}", error=error)


def test_a_run_folders_file_with_another_name_is_refused(scene):
    (scene.run / "metrics.csv").unlink()
    os.link(scene.victim, scene.run / "metrics.csv")  # the user's file, under the run's name too
    scene.refused(*TINY, f"hydra.run.dir={scene.run}", error=f"{scene.run / 'metrics.csv'} has other names")


def test_a_run_folder_with_a_run_but_no_checkpoint_is_not_overwritten(scene):
    (scene.run / "checkpoints").mkdir()
    (scene.run / "checkpoints" / "best.pt").write_bytes(b"the best weights")
    scene.refused(*TINY, f"hydra.run.dir={scene.run}", error="but no checkpoints/last.pt to continue it from")


@pytest.mark.parametrize("setup,error", [
    (lambda sweep, scene: (sweep / "multirun.yaml").symlink_to(scene.victim), "multirun.yaml is a symbolic link"),
    (lambda sweep, scene: (sweep / "optuna.db").symlink_to(scene.victim), "optuna.db is a symbolic link"),
    (lambda sweep, scene: (sweep / "0").mkdir() or (sweep / "0" / ".lock").symlink_to(scene.victim),
     "0/.lock is a symbolic link"),
    (lambda sweep, scene: (sweep / "photos.zip").write_text("mine"), "holds files that are not a sweep's"),
])
def test_a_sweep_folder_that_is_not_the_sweeps_own_is_refused(scene, setup, error):
    sweep = scene.root / "sweep"
    sweep.mkdir()
    setup(sweep, scene)
    scene.refused("-m", *TINY, "optimizer=sgd,adam", f"hydra.sweep.dir={sweep}", error=error)


def test_a_key_the_user_trusts_in_the_environment_is_let_through(tmp_path):
    args = [*TINY, "+hydra.job.env_set.OMP_NUM_THREADS=1", "--cfg", "hydra"]  # checked as a run is
    assert_one_clear_line(run_cli(*args), "hydra.job.env_set.OMP_NUM_THREADS is set")
    result = run_cli(*args, env={"TRAINLAB_ALLOW_KEYS": "hydra.job.env_set.OMP_NUM_THREADS"})
    assert result.returncode == 0 and "OMP_NUM_THREADS: '1'" in result.stdout, result.stdout + result.stderr


def test_a_user_key_with_a_bad_value_names_what_it_takes(scene):
    scene.refused("-m", "hydra/launcher=parallel", *TINY, "hydra.launcher.n_jobs=-5",
                  error="hydra.launcher.n_jobs=-5 cannot be used: hydra.launcher.n_jobs takes an integer")


def test_a_logging_option_from_a_config_folder_is_refused(scene):
    (scene.conf / "hydra" / "hydra_logging").mkdir(parents=True)
    (scene.conf / "hydra" / "hydra_logging" / "evil.yaml").write_text(yaml.safe_dump({
        "version": 1, "handlers": {"file": {"class": "logging.FileHandler", "filename": str(scene.victim),
                                            "mode": "w"}}, "root": {"handlers": ["file"]}}))
    scene.refused(f"--config-dir={scene.conf}", *TINY, "hydra/hydra_logging=evil",
                  error="hydra/hydra_logging=evil is not an option trainlab runs")


def test_a_pkg_search_path_imports_nothing(scene):
    package = scene.root / "lib" / "innocent"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(scene.root / 'imported')!r}, 'w').write('ran')\n")
    scene.refused(*TINY, "hydra.searchpath=[pkg://innocent]", error="not pkg://, which imports a module",
                  env={"PYTHONPATH": str(scene.root / "lib")})
    assert not (scene.root / "imported").exists()

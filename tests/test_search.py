"""Optuna searches (trainlab's sweeper, src/hydra_plugins/trainlab_optuna_sweeper): the search space from Hydra's
grammar, each sampler option, and real searches whose trials fail, that are continued, or whose trial was stopped."""
import json
import os
import re
import signal

import optuna
import pytest
import torch
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import QUICK, ROOT, run_cli, run_signalled
from hydra_plugins.trainlab_optuna_sweeper._search import grid_values, search_space, read_test_score
from trainlab.config.allowlist import check_config
from trainlab.runs.checkpoint import load_checkpoint
from trainlab.runs.folder import read_metrics
from trainlab.errors import TrainlabError

TINY = ["data=shapes", "data.num_train=200", "data.num_test=50", "trainer.epochs=1", *QUICK]
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler", "nsgaii": "NSGAIISampler",
            "cmaes": "CmaEsSampler", "gp": "GPSampler", "qmc": "QMCSampler"}  # hydra/sweeper/optuna_sampler's options


def load_study(sweep, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'optuna.db'}")


def test_the_search_space_keeps_hydras_sweep_grammar():
    space, fixed = search_space(["optimizer=choice(sgd, adam)", "optimizer.lr=tag(log, interval(0.0001, 0.3))",
                                 "optimizer.momentum=interval(0, 0.9)", "data.batch_size=range(32, 160, 32)",
                                 "trainer.epochs=int(interval(1, 4))", "data.subset=shuffle(range(3))",
                                 "model=tudui", "+data.x=1", "optimizer=sgd,adamw"])
    assert sorted(space.pop("data.subset").choices) == [0, 1, 2]  # shuffle(range(...)): those values, as choices
    assert space == {
        "optimizer": CategoricalDistribution(["sgd", "adamw"]),  # the later value of a key replaces the earlier
        "optimizer.lr": FloatDistribution(0.0001, 0.3, log=True),
        "optimizer.momentum": FloatDistribution(0.0, 0.9),
        "data.batch_size": IntDistribution(32, 128, step=32),  # range's stop is left out, as in Python
        "trainer.epochs": IntDistribution(1, 4),
    }
    assert fixed == {"model": "model=tudui", "+data.x": "+data.x=1"}  # every trial gets these as written


def test_the_grid_lists_every_value_and_refuses_an_interval():
    space, _ = search_space(["a=choice(x, y)", "b=range(1, 4)", "c=range(0.5, 1.6, 0.5)"])
    assert grid_values(space) == {"a": ["x", "y"], "b": [1, 2, 3], "c": [0.5, 1.0, 1.5]}
    with pytest.raises(TrainlabError, match="the grid sampler needs values it can list"):
        grid_values(search_space(["lr=interval(0.1, 1)"])[0])
    with pytest.raises(TrainlabError, match="an Optuna search takes choice"):
        search_space(["model=glob(*)"])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_sampler_option_builds_its_optuna_sampler(name):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", return_hydra_config=True, overrides=[
            "hydra/sweeper=trainlab_optuna", f"hydra/sweeper/optuna_sampler={name}", "hydra.sweeper.sampler.seed=1"])
    check_config(cfg)  # its _target_ is on the allow-list
    build = instantiate(cfg.hydra.sweeper.sampler)  # _partial_: the sweeper builds it (the grid sampler with a grid)
    sampler = build(search_space={"a": [1, 2]}) if name == "grid" else build()
    assert type(sampler) is getattr(optuna.samplers, SAMPLERS[name])


def test_the_test_score_is_read_from_best_pt_or_reported_missing(tmp_path):
    torch.save({"format": 2, "test": {"loss": torch.tensor(0.5), "acc": 0.75, "epoch": 3}}, tmp_path / "best.pt")
    torch.save({"format": 2}, tmp_path / "older.pt")
    assert read_test_score(tmp_path / "best.pt") == {"loss": 0.5, "acc": 0.75}
    assert read_test_score(tmp_path / "older.pt") is None and read_test_score(tmp_path / "absent.pt") is None


@pytest.mark.slow
def test_a_search_whose_trials_fail_runs_them_all_records_them_failed_and_exits_1(tmp_path):
    # The grid visits each value once: lr 1e10 makes the loss NaN at the second step (trainer.nonfinite=stop).
    result = run_cli("-m", "hydra/sweeper=trainlab_optuna", "hydra/sweeper/optuna_sampler=grid",
                     "optimizer.lr=choice(0.01, 1e10, 0.02)", *TINY, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1, result.stdout + result.stderr
    trials = load_study(tmp_path, "search").get_trials()
    states = {t.params["optimizer.lr"]: t.state for t in trials}
    assert states == {0.01: TrialState.COMPLETE, 1e10: TrialState.FAIL, 0.02: TrialState.COMPLETE}
    failed = next(t.number for t in trials if t.state == TrialState.FAIL)
    assert "the loss became NaN" in (tmp_path / str(failed) / "error.log").read_text()
    assert "3 trials, 2 complete, 1 failed" in result.stdout
    assert "A new study created" not in result.stdout + result.stderr  # Optuna's set-up line: ours says it
    assert result.stdout.count("#  block") == 1 and result.stdout.count("(its table is above)") == 2  # once a sweep
    listed = result.stdout[result.stdout.index("1 job(s) of the sweep"):]  # trainlab.cli.SweepReport, at the end
    assert f"#{failed} " in listed and "optimizer.lr=10000000000.0" in listed
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_params"]["optimizer.lr"] in (0.01, 0.02) and best["failed"] == [failed]


@pytest.mark.slow
def test_a_search_run_again_in_its_folder_continues_its_study(tmp_path):
    search = ["-m", "hparams_search=tudui_optuna", *TINY, "hydra.sweeper.sampler.n_startup_trials=10",
              f"hydra.sweep.dir={tmp_path}"]
    first = run_cli(*search, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stdout + first.stderr
    before = {job: (tmp_path / job / "checkpoints" / "best.pt").stat().st_mtime_ns for job in ("0", "1")}
    again = run_cli(*search, "hydra.sweeper.n_trials=4")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 trials already done (0 failed); 2 to run, up to n_trials=4" in again.stdout
    assert "#2 : " in again.stdout and "#3 : " in again.stdout and "#0 : " not in again.stdout
    trials = load_study(tmp_path, "tudui").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    assert before == {job: (tmp_path / job / "checkpoints" / "best.pt").stat().st_mtime_ns for job in ("0", "1")}
    # all four still random (n_startup_trials=10): a sampler seeded afresh would draw trials 0 and 1 again
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    # the best of all four, reported with its validation score and its test score from its best.pt
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer", "optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
    study = load_study(tmp_path, "tudui")
    assert best["best_value"] == max(t.value for t in trials) and best["best_trial"] == study.best_trial.number
    assert f"Best trial #{best['best_trial']}: val/acc {best['best_value']:.2%} with optimizer=" in again.stdout
    test = load_checkpoint(tmp_path / str(best["best_trial"]) / "checkpoints" / "best.pt")["test"]
    assert f"test acc {test['acc']:.2%} (loss {test['loss']:.4f})" in again.stdout
    assert best["test"] == {"loss": test["loss"], "acc": test["acc"]}


@pytest.mark.slow
def test_a_trial_stopped_mid_run_resumes_in_its_folder_when_the_search_is_run_again(tmp_path):
    search = ["-m", "hparams_search=tudui_optuna", "data=shapes", "data.num_train=800", "data.num_test=50",
              "trainer.epochs=2", *QUICK, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path}"]
    # SIGTERM at the first logged step: trainlab finishes the step, writes a checkpoint and exits 75
    stopped = run_signalled(signal.SIGTERM, 1, *search)
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert load_study(tmp_path, "tudui").get_trials()[0].state == TrialState.RUNNING
    log = tmp_path / "0" / "run.log"

    again = run_cli(*search)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "trial #0, stopped before it finished, runs again in its folder" in again.stdout
    assert "resuming" in log.read_text() and "epoch 2/2" in log.read_text()
    assert [t.state for t in load_study(tmp_path, "tudui").get_trials()] == [TrialState.COMPLETE]
    assert os.listdir(tmp_path / "0" / "checkpoints")


@pytest.mark.slow
def test_a_trial_whose_config_cannot_be_composed_stops_the_search_and_is_not_run_again(tmp_path):
    search = ["-m", "hydra/sweeper=trainlab_optuna", *TINY, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}"]
    result = run_cli(*search, "data.batch_size=choice(abc)")  # not an int: Hydra refuses the trial's config
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: data.batch_size=abc cannot work: data.batch_size takes an integer, not 'abc'" in result.stderr
    changed = run_cli(*search, "data.batch_size=choice(abc, 16)")  # Optuna keeps a parameter's choices
    assert changed.returncode == 2 and "data.batch_size is searched otherwise than in the study" in changed.stderr
    again = run_cli(*search, "optimizer.lr=choice(0.01)")
    assert "1 trial already done (1 failed); 1 to run" in again.stdout, again.stdout + again.stderr
    trials = load_study(tmp_path, "search").get_trials()
    assert [(t.state, t.params) for t in trials] == [(TrialState.FAIL, {"data.batch_size": "abc"}),
                                                      (TrialState.COMPLETE, {"optimizer.lr": 0.01})]
    assert again.returncode == 1 and ("#0 : error: the job did not start: data.batch_size=abc cannot work"
                                      in again.stdout), again.stdout + again.stderr


def test_two_searches_started_together_on_one_journal_run_the_asked_trials_between_them(tmp_path):
    # As on two machines sharing a file system: the same command twice, one study in a journal file in the shared
    # sweep folder. Neither takes the other's running trial for a stopped one, and n_trials counts them all.
    import json
    import subprocess
    import sys

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "optuna.journal"
    search = [sys.executable, "src/run.py", "-m", "hparams_search=tudui_optuna", *TINY, "hydra.sweeper.n_trials=4",
              f"hydra.sweeper.storage=journal:{journal}", f"hydra.sweep.dir={tmp_path}"]
    workers = [subprocess.Popen(search, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [worker.communicate(timeout=240)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(outputs)
    study = optuna.load_study(study_name="tudui", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [(t.number, t.state) for t in study.trials] == [(n, TrialState.COMPLETE) for n in range(4)]
    # no two trials alike: a seeded sampler moves on past the trials another search asked
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4
    for number in range(4):  # each trial run once, to its end, in its own folder
        folder = tmp_path / str(number)
        assert len(json.loads((folder / "provenance.json").read_text())["attempts"]) == 1
        assert load_checkpoint(folder / "checkpoints" / "best.pt")["test"] is not None


def test_a_trial_whose_search_on_another_machine_went_silent_is_run_again_and_a_beating_one_awaited(tmp_path):
    # Two trials another machine's search claimed in this shared sweep folder: that search still beats #0, and has
    # said nothing of #1 for longer than STALE_SECONDS (it stopped; its process cannot be seen from here).
    import subprocess
    import sys
    import time

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from hydra_plugins.trainlab_optuna_sweeper._search import BEAT, FOLDER, STALE_SECONDS, WORKER

    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="search", direction="maximize",
                                storage=JournalStorage(JournalFileBackend(str(journal))))
    space = {"optimizer.lr": CategoricalDistribution([0.01, 0.02])}
    for number, beat in ((0, time.time()), (1, time.time() - STALE_SECONDS - 1)):
        trial = study.ask(space)
        for key, value in ((FOLDER, str(tmp_path / str(number))), (BEAT, beat), (WORKER, "elsewhere:4242")):
            trial.set_user_attr(key, value)
    killed = tmp_path / "1"  # and #1's job was killed in its first epoch: events and a line, no checkpoint yet
    killed.mkdir()
    (killed / "metrics.csv").write_text("epoch,train_loss\n1,2.3\n")
    (killed / "events.out.tfevents.1.elsewhere").write_bytes(b"events")
    search = subprocess.Popen([sys.executable, "src/run.py", "-m", "hydra/sweeper=trainlab_optuna", *TINY,
                               "optimizer.lr=choice(0.01, 0.02)", "hydra.sweeper.n_trials=2",
                               f"hydra.sweeper.storage=journal:{journal}", f"hydra.sweep.dir={tmp_path}"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in search.stdout:  # it runs #1, then waits for #0, which the other search then finishes
        output.append(line)
        if "waiting for #0 (elsewhere:4242), run by another search" in line:
            study.tell(0, 0.5)
    search.wait(timeout=60)
    output = "".join(output)
    assert search.returncode == 0, output
    assert ("0 trials already done (0 failed); 1 running in another search; 1 to run, up to n_trials=2; trial #1, "
            "stopped before it finished, runs again in its folder") in output
    assert "waiting for #0" in output.split("#1 : ")[1]  # after its own trial
    assert (f"trial #1 left no checkpoint to go on from (stopped in its first epoch): its files moved to "
            f"{killed / 'stopped-1'}, and it starts again") in output
    assert (killed / "stopped-1" / "metrics.csv").read_text() == "epoch,train_loss\n1,2.3\n"  # kept, beside the new
    assert (killed / "stopped-1" / "events.out.tfevents.1.elsewhere").exists() and (killed / "metrics.csv").exists()
    trials = optuna.load_study(study_name="search", storage=JournalStorage(JournalFileBackend(str(journal)))).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2  # no third: #0 counted as running, not stopped
    assert trials[1].user_attrs[WORKER] != "elsewhere:4242" and not (tmp_path / "0").exists()
    assert load_checkpoint(tmp_path / "1" / "checkpoints" / "best.pt")["test"] is not None
    assert "Optuna study 'search': 2 trials, 2 complete" in output  # its report counts the other's trial


def test_a_search_beats_its_running_trials_until_they_end(monkeypatch):
    import time

    from hydra_plugins.trainlab_optuna_sweeper import _search

    monkeypatch.setattr(_search, "BEAT_SECONDS", 0.02)
    study = optuna.create_study()
    trial = study.ask()
    _search._claim(study, trial)
    frozen = study._storage.get_trial(trial._trial_id)
    claimed = frozen.user_attrs[_search.BEAT]
    with _search._beating(study, [trial]):
        time.sleep(0.2)
    last = study._storage.get_trial(trial._trial_id).user_attrs[_search.BEAT]
    assert last > claimed + 0.1  # beaten while it ran
    time.sleep(0.05)
    assert study._storage.get_trial(trial._trial_id).user_attrs[_search.BEAT] == last  # and not after
    # seen by another search: fresh is running elsewhere, silent for STALE_SECONDS is stopped
    other = dict(frozen.user_attrs, **{_search.WORKER: "elsewhere:1"})
    assert _search._running_elsewhere(optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=other))
    other[_search.BEAT] = time.time() - _search.STALE_SECONDS - 1
    assert not _search._running_elsewhere(optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=other))


@pytest.mark.slow
def test_a_search_stops_once_more_than_max_failure_rate_of_its_trials_failed(tmp_path):
    search = ["-m", "hydra/sweeper=trainlab_optuna", "trainer.seed=choice(0, 1)", *TINY, "optimizer.lr=1e37",
              "hydra.sweeper.n_trials=4", "hydra.sweeper.max_failure_rate=0.5", f"hydra.sweep.dir={tmp_path}"]
    result = run_cli(*search)  # every trial's loss becomes NaN: the first failure is more than half
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "the search stops: 1 of its 1 trial failed, more than hydra.sweeper.max_failure_rate=0.5" in output
    assert [t.state for t in load_study(tmp_path, "search").trials] == [TrialState.FAIL]
    assert (tmp_path / "0" / "error.log").exists() and not (tmp_path / "1").exists()


def test_a_journal_that_names_a_folder_is_one_line_and_leaves_no_sweep_folder(tmp_path):
    result = run_cli("-m", "hparams_search=tudui_optuna", *TINY, f"hydra.sweeper.storage=journal:{tmp_path}",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert (f"error: hydra.sweeper.storage=journal:{tmp_path} names a folder: give the journal's file, e.g. "
            f"journal:{tmp_path / 'optuna.journal'}") in result.stderr
    assert not (tmp_path / "sweep").exists()


LEARNS = ["data=shapes", "data.num_train=600", "data.num_test=50", "data.batch_size=32", "optimizer=sgd", *QUICK]


@pytest.mark.slow
def test_a_pruner_stops_the_hopeless_trial_after_its_first_epoch_in_a_job_of_another_process(tmp_path):
    # joblib's workers are other processes: the trial's study and number reach the job through its config
    search = ["-m", "hydra/sweeper=trainlab_optuna", "hydra/launcher=parallel", "hydra.launcher.n_jobs=1", *LEARNS,
              "trainer.epochs=2", "optimizer.lr=choice(0.05, 0.0000001)", "hydra.sweeper.n_trials=3",
              "hydra.sweeper.sampler.seed=6", "hydra.sweeper.pruner=median",
              "hydra.sweeper.pruner_settings.n_startup_trials=1", f"hydra.sweep.dir={tmp_path}"]
    result = run_cli(*search)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    trials = load_study(tmp_path, "search").trials  # read back through Optuna's API
    assert trials[0].params["optimizer.lr"] == 0.05 and trials[0].state == TrialState.COMPLETE  # the one compared to
    hopeless = [t for t in trials if t.params["optimizer.lr"] < 0.001]
    assert hopeless, [t.params for t in trials]
    for trial in trials:
        expected = TrialState.PRUNED if trial in hopeless else TrialState.COMPLETE
        assert trial.state == expected, (trial.number, trial.params, trial.intermediate_values)
        rows = [row for row in read_metrics(tmp_path / str(trial.number)) if row["epoch"] != "test"]
        assert len(rows) == (1 if trial in hopeless else 2)  # pruned after epoch 1; its metrics.csv is kept
        assert sorted(trial.intermediate_values) == [row["epoch"] for row in rows]
    pruned = hopeless[0].number
    assert (tmp_path / str(pruned) / "checkpoints" / "last.pt").exists()
    assert "pruned by the search after epoch 1 (hydra.sweeper.pruner=median)" in \
        (tmp_path / str(pruned) / "run.log").read_text()
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["pruned"] == [t.number for t in hopeless] and results["best_params"]["optimizer.lr"] == 0.05
    table = run_cli_report(tmp_path)
    assert f"{len(hopeless)} pruned" in table.splitlines()[0], table


def run_cli_report(folder):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "src/report.py", str(folder)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


MYSPACE = '''
def space(cfg, trial):
    """momentum, only for the optimizer that has it"""
    if trial.params["optimizer"] == "sgd":
        trial.suggest_float("optimizer.momentum", 0.5, 0.99)
'''


@pytest.mark.slow
def test_a_search_of_two_objectives_keeps_its_pareto_front_and_a_custom_space_conditions_a_parameter(tmp_path,
                                                                                                   monkeypatch):
    (tmp_path / "myspace.py").write_text(MYSPACE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("TRAINLAB_ALLOW_TARGETS", "myspace.space")
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "hydra/sweeper=trainlab_optuna", *TINY, "model=choice(tudui, lenet)",
                     "optimizer=choice(sgd, adam)", "hydra.sweeper.custom_search_space=myspace.space",
                     "hydra.sweeper.direction=[maximize,minimize]", "hydra.sweeper.objectives=[val/acc,params]",
                     "hydra.sweeper.n_trials=5", "hydra.sweeper.sampler.seed=0", f"hydra.sweep.dir={sweep}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    study = load_study(sweep, "search")
    assert len(study.trials) == 5 and {t.params["optimizer"] for t in study.trials} == {"sgd", "adam"}
    for trial in study.trials:  # momentum is sampled only when its condition holds, and reaches the job's config
        assert ("optimizer.momentum" in trial.params) == (trial.params["optimizer"] == "sgd"), trial.params
        config = yaml.safe_load((sweep / str(trial.number) / ".hydra" / "config.yaml").read_text())
        if "optimizer.momentum" in trial.params:
            assert config["optimizer"]["momentum"] == pytest.approx(trial.params["optimizer.momentum"])
        parameters = json.loads((sweep / str(trial.number) / "provenance.json").read_text())["attempts"][0]
        assert trial.values[1] == parameters["model"]["parameters"]  # the second objective: the model's size
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    front = sorted(t.number for t in study.best_trials)
    assert [t["trial"] for t in results["pareto_front"]] == front and front
    assert [list(t["values"].values()) for t in results["pareto_front"]] == [study.trials[n].values for n in front]
    assert "Pareto front of" in run_cli_report(sweep)


def test_a_custom_space_outside_the_allow_list_is_refused_before_any_trial(tmp_path):
    result = run_cli("-m", "hydra/sweeper=trainlab_optuna", *TINY, "hydra.sweeper.custom_search_space=os.system",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert ("error: hydra.sweeper.custom_search_space=os.system is not allowed: a config names no code to run; to "
            "trust your own function, say so in the environment: TRAINLAB_ALLOW_TARGETS=os.system") in result.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("settings, error", [
    ({"directions": ["maximize", "minimize"]}, "hydra.sweeper.direction gives 2 direction(s) and "
                                               "hydra.sweeper.objectives names no objective(s)"),
    ({"directions": ["maximize"], "objectives": ["val/acc", "params"]}, "gives 1 direction(s) and"),
    ({"directions": ["maximize", "minimize"], "objectives": ["val/acc", "params"], "pruner": "median"},
     "Optuna prunes a search of one objective only"),
    ({"directions": ["maximize"], "storage": None, "pruner": "median"}, "needs the study in a storage its trials"),
    ({"directions": ["maximize"], "pruner": "hyperband", "pruner_settings": {"percentile": 25.0}},
     "HyperbandPruner cannot be built"),
])
def test_a_search_whose_own_settings_do_not_fit_is_one_line_before_any_trial(settings, error):
    from hydra_plugins.trainlab_optuna_sweeper._search import Search

    search = Search(None, **{"study_name": "s", "storage": "sqlite:///x.db", "n_trials": 1, "n_jobs": 1,
                             "params": {}, **settings})
    with pytest.raises(TrainlabError, match=re.escape(error)):
        search._checked()


def test_a_trial_whose_study_cannot_be_reached_warns_once_and_is_never_pruned(tmp_path, caplog):
    from trainlab.runs.trial import Pruning, SearchTrial

    gone = SearchTrial(f"sqlite:///{tmp_path / 'no' / 'such' / 'optuna.db'}", "search", 0, "median")
    pruning = Pruning(gone)
    assert [pruning.should_stop(0.1, epoch) for epoch in (1, 2, 3)] == [False, False, False]
    warned = [r.getMessage() for r in caplog.records if "pruning is off" in r.getMessage()]
    assert len(warned) == 1 and "its study could not be reached" in warned[0]
    assert not Pruning(gone, main=False).should_stop(0.1, 1)  # a distributed run's other processes never ask

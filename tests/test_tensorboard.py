"""What TensorBoard shows of runs and sweeps, read back through TensorBoard's own HPARAMS plugin: one column per
setting under its dotted key, what a sweep varied first and marked as differing, option names as values; sweep job
folders named by what the sweep gave them; tag groups that open on train, val and test; evaluate.py's one chart."""
import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import QUICK, compose, run_cli
from trainlab.inference.score import write_tensorboard
from trainlab.launch import Launch, job_folder_name
from trainlab.runs.folder import read_scalars
from trainlab.training.recipe import run

TINY = ["data=shapes", "data.num_train=200", "data.num_test=50", "trainer.epochs=1", *QUICK]


def hparams_tab(logdir) -> tuple:
    """(the Experiment TensorBoard's HPARAMS tab shows for `logdir`: its columns, in order, and its metrics; {run:
    {key: value}} of each run's row), computed by the plugin's own code as `tensorboard --logdir` would."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, metadata

    events = plugin_event_multiplexer.EventMultiplexer()
    events.AddRunsFromDirectory(str(logdir))
    events.Reload()
    provider = data_provider.MultiplexerDataProvider(events, str(logdir))
    plugin = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=events,
                                                           data_provider=provider))
    request = context.RequestContext()
    found = plugin.hparams_metadata(request, "")
    experiment = plugin.experiment_from_metadata(request, "", True, found,
                                                 plugin.hparams_from_data_provider(request, "", None))
    rows = {}
    for name, tags in found.items():
        if metadata.SESSION_START_INFO_TAG in tags:
            start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
            rows[name] = {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}
    return experiment, rows


@pytest.mark.slow
def test_hparams_shows_a_sweep_as_a_comparison_of_what_it_varied(tmp_path):
    result = run_cli("-m", *TINY, "optimizer=sgd,adam", "optimizer.lr=0.05", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = ["0_optimizer-sgd", "1_optimizer-adam"]  # named by what the sweep varied, not by what every job shares
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == jobs

    experiment, rows = hparams_tab(tmp_path)
    columns = [(info.name, info.differs) for info in experiment.hparam_infos]
    assert columns[0] == ("optimizer", True)  # first, marked as differing, so shown and ticked
    assert not any(differs for _, differs in columns[1:])
    names = [name for name, _ in columns]
    assert {"optimizer.lr", "data", "data.num_train", "trainer.epochs", "data.batch_size", "model", "loss",
            "scheduler", "transform"} <= set(names)
    assert len(names) == len(set(names)) and not {"lr", "epochs", "batch_size"} & set(names)  # once each, dotted
    assert [info.name.tag for info in experiment.metric_infos][:2] == ["val/best_acc", "test/acc"]
    assert set(rows) == set(jobs)  # a row per job, named as its folder
    adam = rows["1_optimizer-adam"]
    assert (adam["optimizer"], adam["loss"], adam["scheduler"], adam["data"], adam["model"]) == \
           ("adam", "cross_entropy", "none", "shapes", "tudui")  # the options' names, not their classes
    assert adam["optimizer.lr"] == pytest.approx(0.05) and adam["data.num_train"] == 200

    tags = set(read_scalars(tmp_path / jobs[1]))  # every chart in the groups TensorBoard lists first
    assert {"train/loss", "train/lr", "val/acc", "val/best_acc", "test/acc"} <= tags
    assert {tag.split("/")[0] for tag in tags} == {"train", "val", "test"}


def test_runs_without_hydra_are_compared_by_tensorboard_on_what_differs(tmp_path):
    """A notebook's runs (no sweep, no Hydra): each writes its row only; TensorBoard marks what differs between
    them. Hydra's choices, where a launcher passes them, name the options."""
    run(compose(*TINY, "trainer.log_images=false"), tmp_path / "a")
    run(compose(*TINY, "trainer.log_images=false", "optimizer=adam", "trainer.seed=1"),
        Launch(tmp_path / "b", overrides=("optimizer=adam", "trainer.seed=1"), choices={"optimizer": "adam"}))

    experiment, rows = hparams_tab(tmp_path)
    differing = [info.name for info in experiment.hparam_infos if info.differs]
    assert differing == ["optimizer", "optimizer.lr", "trainer.seed"]  # first: TensorBoard's order
    assert [info.name for info in experiment.hparam_infos][:len(differing)] == differing
    assert rows["b"]["optimizer"] == "adam" and rows["a"]["optimizer"] == "SGD"  # no choice given: the class
    assert rows["a"]["loss"] == "CrossEntropyLoss" and rows["a"]["data"] == "shapes" and rows["a"]["model"] == "tudui"


def test_a_job_folder_is_named_by_what_its_sweep_varied_short_and_safe_to_give_back_to_hydra():
    assert job_folder_name(3, ["data=shapes", "optimizer=adam", "optimizer.lr=0.01"], ("optimizer", "optimizer.lr")) \
           == "3_optimizer-adam+optimizer.lr-0.01"
    assert job_folder_name(2, ["optimizer=adam"], ()) == job_folder_name(2, ["optimizer=adam"], None) == "2"
    name = job_folder_name(0, ["data.root=/home/me/datasets/hymenoptera_data/train", "+model=mlp"],
                           ("data.root", "model"))
    assert name == "0_data.root-_home_me_d..a_data_train+model-mlp"  # one folder; the start and end of the path
    long = job_folder_name(12, [f"key{i}=value_number_{i}" for i in range(20)], tuple(f"key{i}" for i in range(20)))
    assert len(long) <= 120 and long.startswith("12_key0-value_number_0+")
    for folder in (name, long):  # `checkpoint=<sweep>/<job>` reads back as that path, unquoted
        assert OverridesParser.create().parse_override(f"checkpoint=sweep/{folder}").value() == f"sweep/{folder}"


def test_evaluate_writes_one_accuracy_and_one_per_class_chart_beside_the_confusion_matrix(tmp_path):
    confusion = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])  # the third class has no images
    tags = write_tensorboard(tmp_path, confusion, ["ants", "bees", "wasps"], 0.85, [0.8, 0.9, float("nan")], 3, "val")
    assert tags == ["val/evaluate_acc", "val/class_acc", "val/confusion_matrix"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.Tags()["scalars"] == ["val/evaluate_acc"]  # not a card per class
    assert [(e.step, e.value) for e in events.Scalars("val/evaluate_acc")] == [(3, pytest.approx(0.85))]
    assert sorted(events.Tags()["images"]) == ["val/class_acc", "val/confusion_matrix"]
    assert events.Images("val/class_acc")[0].height > 100

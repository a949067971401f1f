"""src/export.py: a checkpoint as ONNX, TorchScript or an ExportedProgram, checked by the command itself on real images
at two batch sizes; predict.py from the ONNX file as from the checkpoint; and one clear line for what a user can get
wrong. One small trained run is shared by the module; the ONNX export (seconds) is made once, by the real command."""
import dataclasses
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import trainlab
from conftest import QUICK, ROOT, assert_one_clear_line, compose, entry_config, run_forked
from trainlab.data.shapes import CLASSES, draw_shape
from trainlab.errors import TrainlabError
from trainlab.inference import export
from trainlab.inference.exported import load_exported
from trainlab.inference.predict import load_trained, predict
from trainlab.runs.checkpoint import load_checkpoint, save_checkpoint
from trainlab.runs.folder import check_run_folder
from trainlab.training.recipe import run

# normalize: the JSON carries its mean and std; adam: a model whose classes are not a tie after one epoch
TRAIN = ["data=shapes", "data.num_train=200", "data.num_test=50", "trainer.epochs=1", "optimizer=adam",
         "transform=normalize", *QUICK, "trainer.log_images=false"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    run(compose(*TRAIN), run_dir)
    return run_dir / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def onnx_export(checkpoint):
    """`python src/export.py checkpoint=<run folder> format=onnx`, as a user types it: into <run>/export/onnx/."""
    result = subprocess.run([sys.executable, str(ROOT / "src" / "export.py"), f"checkpoint={checkpoint.parent.parent}",
                             "format=onnx"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, checkpoint.parent.parent / "export" / "onnx"


@pytest.fixture
def drawn(tmp_path):
    """Three drawn shapes of other sizes than the model's, as a user's folder of images."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(["star", "ring", "cross"]):
        Image.fromarray(draw_shape(CLASSES.index(name), 32 + 16 * i, np.random.default_rng(i))).save(
            folder / f"{name}.png")
    return folder


def exported(checkpoint, **values):
    return export.export_checkpoint(entry_config("export", checkpoint=str(checkpoint), **values))


@pytest.mark.slow
def test_onnx_export_checks_itself_writes_its_json_and_takes_any_batch_size(onnx_export, checkpoint):
    import onnxruntime

    result, folder = onnx_export
    checked = re.search(r"^export format=onnx: onnxruntime's logits match PyTorch's to (\S+) \(tolerance 0.0001\) on "
                        r"8 test images of the run's data, at batch 1 and 8$", result.stdout, re.M)
    assert checked and float(checked[1]) <= 1e-4, result.stdout
    assert "Traceback" not in result.stderr and "unused" not in result.stdout  # the exporter's own chatter left out
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "preprocessing.json"]  # no staging folder left
    saved = load_checkpoint(checkpoint)
    record = json.loads((folder / "preprocessing.json").read_text())
    assert record["format"] == "onnx" and record["model_file"] == "model.onnx" and record["model"] == "tudui"
    assert record["input"]["name"] == "image" and record["input"]["shape"] == [3, 32, 32]
    assert record["output"]["name"] == "logits" and record["classes"] == CLASSES
    assert record["transform_test"] == saved["config"]["transform"]["test"]
    assert record["mean"] == [0.34, 0.34, 0.34] and record["std"] == [0.39, 0.39, 0.39]
    assert (record["epoch"], record["val_acc"], record["test_acc"]) == (1, saved["val"]["acc"], saved["test"]["acc"])
    assert record["trainlab_version"] == trainlab.__version__
    assert check_run_folder(checkpoint.parent.parent)  # export/ is the run's own: it can still be resumed
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_trained(checkpoint).model
    for size in (1, 5):  # any batch size
        images = torch.randn(size, 3, 32, 32, generator=torch.Generator().manual_seed(size))
        [logits] = session.run(None, {"image": images.numpy()})
        with torch.no_grad():
            assert np.abs(logits - model(images).numpy()).max() <= 1e-4


@pytest.mark.slow
def test_predict_from_the_onnx_file_gives_the_checkpoints_classes_and_probabilities(onnx_export, checkpoint, drawn):
    def ranked(source):
        results = predict(entry_config("predict", checkpoint=str(source), image=str(drawn), top_k=len(CLASSES)))
        return {path.name: dict(classes) for path, classes in results}

    from_checkpoint, from_onnx = ranked(checkpoint), ranked(onnx_export[1] / "model.onnx")
    assert list(from_onnx) == ["cross.png", "ring.png", "star.png"] == list(from_checkpoint)
    for name, probabilities in from_checkpoint.items():
        assert probabilities.keys() == from_onnx[name].keys()
        assert max(abs(p - from_onnx[name][c]) for c, p in probabilities.items()) <= 1e-4
        top = sorted(probabilities, key=probabilities.get, reverse=True)
        if probabilities[top[0]] - probabilities[top[1]] > 1e-4:  # not a tie: the same class on top
            assert max(from_onnx[name], key=from_onnx[name].get) == top[0]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("form,file", [("torchscript", "model.ts"), ("exported_program", "model.pt2")])
def test_torchscript_and_exported_program_load_back_and_take_any_batch_size(checkpoint, tmp_path, form, file):
    written = exported(checkpoint, format=form, out=str(tmp_path / "out"))
    assert written == tmp_path / "out" / file
    assert sorted(p.name for p in written.parent.iterdir()) == sorted([file, "preprocessing.json"])
    assert json.loads((tmp_path / "out" / "preprocessing.json").read_text())["format"] == form
    loaded = torch.jit.load(str(written)) if form == "torchscript" else torch.export.load(str(written)).module()
    model = load_trained(checkpoint).model
    for size in (1, 3):
        images = torch.randn(size, 3, 32, 32)
        with torch.no_grad():
            assert (loaded(images) - model(images)).abs().max() <= 1e-4


def test_an_existing_file_is_refused_before_anything_is_written(checkpoint, tmp_path):
    (tmp_path / "preprocessing.json").write_text("mine")
    with pytest.raises(TrainlabError, match=r"preprocessing.json exists already: export never writes over a file; "
                                            r"give out=ANOTHER_FOLDER"):
        exported(checkpoint, format="torchscript", out=str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["preprocessing.json"]
    assert (tmp_path / "preprocessing.json").read_text() == "mine"


def test_a_check_over_tolerance_leaves_nothing_behind(checkpoint, tmp_path, monkeypatch):
    def load_off_by_one(path, classes, softmax):
        model = export.load_torchscript(path, classes, softmax)
        return lambda images: model(images) + 1

    monkeypatch.setitem(export.FORMATS, "torchscript",
                        dataclasses.replace(export.FORMATS["torchscript"], load=load_off_by_one))
    with pytest.raises(TrainlabError, match=r"format=torchscript: torch.jit.load's logits differ from PyTorch's by up "
                                            r"to 1 on a batch of 1 of 8 test images of the run's data, more than "
                                            r"tolerance=0.0001: nothing was written"):
        exported(checkpoint, format="torchscript", out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_an_export_folder_that_is_a_link_is_refused(checkpoint, tmp_path):
    run_dir = tmp_path / "colleague"  # a run folder from someone else, its export/ aimed elsewhere
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, run_dir / "checkpoints" / "best.pt")
    (tmp_path / "elsewhere").mkdir()
    (run_dir / "export").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(TrainlabError, match=r"colleague/export is a symbolic link .*choose another folder \(out=...\)"):
        exported(run_dir, format="torchscript")
    assert not list((tmp_path / "elsewhere").iterdir())


class FixedBatch(torch.nn.Module):
    """A model that works only on batches of 8, as a careless reshape makes one."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).reshape(8, -1)


@pytest.mark.parametrize("form,expected", [
    ("exported_program", r"format=exported_program cannot export the model of .*best.pt \(.*batch.*\): try "
                         r"format=onnx or format=torchscript; HYDRA_FULL_ERROR=1 shows the exporter's report"),
    ("torchscript", r"the model fails on a batch of 1 in PyTorch \(.*\): a model that fixes its batch size cannot "
                    r"be exported with a free one"),
])
def test_an_exporters_failure_is_one_line_and_leaves_nothing(checkpoint, tmp_path, monkeypatch, form, expected):
    def fixed_batch(path):
        trained = load_trained(path)
        trained.model = FixedBatch(trained.model)
        return trained

    monkeypatch.setattr(export, "load_trained", fixed_batch)
    with pytest.raises(TrainlabError, match=expected) as refused:
        exported(checkpoint, format=form, out=str(tmp_path / "out"))
    assert "\n" not in str(refused.value) and not (tmp_path / "out").exists()


def test_the_onnx_exporters_report_is_cut_to_the_op_it_cannot_translate():
    report = ("Failed to convert the exported program to an ONNX model. \x1b[96mThis is step 3/3\x1b[0m of exporting "
              "the model to ONNX. Next steps:\n- If there is a missing ONNX function, implement it\n\n"
              "## Exception summary\n\n<class 'torch.onnx._internal.exporter._errors.DispatchError'>: No ONNX "
              "function found for <OpOverload(op='aten.linalg_eig', overload='default')>. Failure message: No "
              "decompositions registered for the real-valued input\n⬆️\n<class 'ConversionError'>: Error when "
              "translating node %linalg_eig\n")
    assert export.exporter_reason(RuntimeError(report)) == (
        "No ONNX function found for <OpOverload(op='aten.linalg_eig', overload='default')>. Failure message: No "
        "decompositions registered for the real-valued input")


def test_a_checkpoint_whose_data_is_out_of_reach_asks_for_image_and_exports_beside_itself(checkpoint, tmp_path,
                                                                                         drawn, caplog):
    record = load_checkpoint(checkpoint)  # the run's data moved away: CIFAR-10 expected where there is none
    record["config"]["data"].update(name="cifar10", root=str(tmp_path / "gone"))
    save_checkpoint(tmp_path / "copied.pt", record)
    with pytest.raises(TrainlabError, match=r"^the run's data cannot be read here to check the export on \(cifar10 is "
                                            r"not in .*\): give image=FOLDER"):
        exported(tmp_path / "copied.pt", format="torchscript")
    caplog.set_level("INFO", logger="trainlab")
    written = exported(tmp_path / "copied.pt", format="torchscript", image=str(drawn))
    assert written == tmp_path / "export" / "torchscript" / "model.ts"  # a .pt outside a run: export/ beside it
    assert "on 3 images of image=, at batch 1 and 3" in caplog.text


@pytest.mark.parametrize("record,expected", [
    ({"transform_test": [{"type": "lambda"}]}, r"transform_test of .*preprocessing.json step 0 \(lambda\): unknown "
                                               r"step; choose one of to_tensor"),
    ({"transform_test": [{"type": "to_tensor"}, {"type": "normalize", "mean": "__import__('os')", "std": [1]}]},
     r"step 1 \(normalize\): mean must be a list"),
    ({"transform_test": [{"type": "to_tensor"}, {"type": "normalize", "mean": {"_target_": "os.system"}}]},
     r"transform_test must be a list of steps, each an object of numbers, text or lists of numbers"),
    ({"transform_test": [{"type": "to_tensor", "_target_": "os.system"}]}, r"step 0 \(to_tensor\): '_target_' does "
                                                                           r"not apply"),
    ({"classes": "cat"}, r"classes must be a list of class names"),
    ({"input": {"name": "image", "shape": [3, 100000, 100000]}}, r"input.shape must be \[channels \(1 or 3\)"),
    ({"format": "torchscript"}, r'format must be "onnx" \(predict reads ONNX exports only\)'),
    ("NaN", r"cannot be read as JSON \(NaN is not a number JSON allows"),
])
def test_preprocessing_json_is_data_checked_as_a_checkpoints_config_is(tmp_path, record, expected):
    good = {"format": "onnx", "model": "tudui", "input": {"name": "image", "shape": [3, 32, 32]},
            "output": {"name": "logits"}, "classes": CLASSES, "transform_test": [{"type": "to_tensor"}]}
    (tmp_path / "model.onnx").write_bytes(b"never read: the JSON is checked first")
    text = record if isinstance(record, str) else json.dumps({**good, **record})
    (tmp_path / "preprocessing.json").write_text(text)
    with pytest.raises(TrainlabError, match=expected):
        load_exported(tmp_path / "model.onnx")


@pytest.mark.parametrize("file,expected", [
    ("model.pt2", "model.pt2 is a torch.export program: predict reads only trainlab checkpoints (a .pt file or a run "
                  "folder) and ONNX exports"),
    ("model.ts", "model.ts is a TorchScript file: predict reads only trainlab checkpoints"),
    ("model.onnx", "preprocessing.json is missing: predict reads an ONNX model's classes, input shape and "
                   "transform.test from the preprocessing.json src/export.py wrote beside it"),
])
def test_predict_reads_no_torchscript_or_program_and_no_onnx_without_its_json(tmp_path, drawn, file, expected):
    (tmp_path / file).write_bytes(b"never read: refused by its name, or for the file missing beside it")
    with pytest.raises(TrainlabError) as refused:
        predict(entry_config("predict", checkpoint=str(tmp_path / file), image=str(drawn)))
    assert expected in str(refused.value)


@pytest.mark.slow
@pytest.mark.parametrize("script,args,expected", [
    ("predict.py", ["checkpoint={tmp}/model.pt2", "image={tmp}/images"], "model.pt2 is a torch.export program"),
    ("export.py", ["checkpoint={checkpoint}", "format=tflite"], "format=tflite is not a format trainlab exports: use "
                                                                "onnx, torchscript, exported_program"),
])
def test_a_refusal_from_the_command_line_is_one_line_and_writes_nothing(checkpoint, tmp_path, drawn, script, args,
                                                                        expected):
    (tmp_path / "model.pt2").write_bytes(b"never read")
    before = sorted(tmp_path.rglob("*"))
    result = run_forked(*(arg.format(tmp=tmp_path, checkpoint=checkpoint) for arg in args), script=script,
                        cwd=tmp_path)
    assert_one_clear_line(result, expected)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.parametrize("script", ["export", "predict"])
def test_help_shows_the_commands_own_settings_with_the_required_ones_marked(script):
    # before, a setting that must be given (checkpoint: ???) stopped --help with "Missing mandatory value"
    result = subprocess.run([sys.executable, str(ROOT / "src" / f"{script}.py"), "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checkpoint: ???" in result.stdout and "Configuration groups" not in result.stdout

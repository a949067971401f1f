"""Files that are damaged, missing for a moment, written by two processes at once, or not what they claim: each is
found, and either done without (with a warning) or refused in one line."""
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest
import torch
from PIL import Image

from conftest import QUICK, ROOT, assert_one_clear_line, compose, run_cli
from trainlab.runs import checkpoint
from trainlab.runs.checkpoint import FileLock, load_checkpoint, load_latest, read_record, save_checkpoint
from trainlab.errors import TrainlabError
from trainlab.data.resident import _cache_path, _cached_or_decoded, build_resident, cache_key
from trainlab.runs.folder import RunFolderBusy, RunFolderLock, discard_failed_start
from trainlab.training.recipe import run
from trainlab.data.transforms import check_transforms, split_for_device

pytestmark = pytest.mark.slow

SMALL = ["data=shapes", "data.num_train=200", "data.num_test=50", "model=mlp", *QUICK, "trainer.log_images=false",
         "trainer.checkpoint_every_n_steps=0"]


def python(script: str, *args, stdin=None) -> subprocess.Popen:
    """`python -c script ARGS` with src/ and tests/ importable, its output read as it comes."""
    paths = [str(ROOT / "src"), str(ROOT / "tests")]
    return subprocess.Popen([sys.executable, "-c", f"import sys; sys.path[:0] = {paths!r}\n{script}", *map(str, args)],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def flip_a_bit_in_a_tensor(path):
    """Flip one bit in the middle of the largest tensor's bytes: the file stays a valid zip torch reads."""
    with zipfile.ZipFile(path) as archive:
        data = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size)
        with open(path, "rb") as f:
            f.seek(data.header_offset + 26)
            name_length, extra_length = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    offset = data.header_offset + 30 + name_length + extra_length + data.file_size // 2
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))
    torch.load(path, weights_only=True)  # still readable: only the checksum can tell


def tiny_folder(root, per_class=6):
    for label, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        (root / "train" / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (colour[0], i * 20, colour[2])).save(root / "train" / label / f"{i}.png")


def folder_config(root):
    cfg = compose("data=folder", f"data.root={root}", "data.image_size=8", "data.val_split=0")
    return cfg, check_transforms(cfg.transform)


# --- checkpoints: checksums, the previous one, what is not a checkpoint

@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A finished 2-epoch run: last.pt (with its test score), last.prev.pt (epoch 2's end, before it) and best.pt."""
    run_dir = tmp_path_factory.mktemp("two_epochs")
    run(compose(*SMALL, "trainer.epochs=2"), run_dir)
    return run_dir


def test_a_bit_flipped_last_pt_falls_back_to_last_prev_pt_and_a_bit_flipped_best_pt_is_one_line(tmp_path, two_epochs):
    run_dir = tmp_path / "run"
    shutil.copytree(two_epochs, run_dir)
    flip_a_bit_in_a_tensor(run_dir / "checkpoints" / "last.pt")
    result = run_cli(*SMALL, "trainer.epochs=3", f"hydra.run.dir={run_dir}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "last.pt is damaged: its contents no longer match the checksum" in output, output
    assert "resuming from" in output and "last.prev.pt instead" in output, output
    assert "at epoch 3, batch 0" in output, output  # last.prev.pt: epoch 2's end

    flip_a_bit_in_a_tensor(run_dir / "checkpoints" / "best.pt")
    result = subprocess.run([sys.executable, "src/evaluate.py", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_clear_line(result, "best.pt is damaged", "use another checkpoint of the run")


def test_a_checkpoint_without_a_checksum_from_before_them_still_loads(tmp_path, two_epochs):
    record = load_checkpoint(two_epochs / "checkpoints" / "best.pt")
    torch.save(record, tmp_path / "old.pt")  # as save_checkpoint wrote them: no checksum
    assert "checksum" not in torch.load(tmp_path / "old.pt", weights_only=True)
    assert load_checkpoint(tmp_path / "old.pt")["epoch"] == record["epoch"]


def test_a_bare_tensor_or_a_checkpoint_missing_a_key_is_refused_in_one_line(tmp_path, two_epochs):
    bare, partial = tmp_path / "bare.pt", tmp_path / "partial.pt"
    torch.save(torch.zeros(3), bare)
    record = load_checkpoint(two_epochs / "checkpoints" / "last.pt")
    del record["rng"]
    save_checkpoint(partial, record)
    result = run_cli(*SMALL, f"trainer.resume={bare}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_clear_line(result, f"{bare} is a torch file but not a trainlab checkpoint (it holds a Tensor")
    with pytest.raises(TrainlabError, match="is not a complete trainlab checkpoint \\(it holds no rng\\)"):
        load_checkpoint(partial)  # trainer.resume, evaluate and predict all read through it
    result = subprocess.run([sys.executable, "src/evaluate.py", f"checkpoint={partial}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert_one_clear_line(result, "it holds no rng")


def test_last_pt_is_never_absent_while_a_new_one_is_written(tmp_path, monkeypatch):
    last = tmp_path / "last.pt"
    save_checkpoint(last, {"n": 1}, keep_previous=True)
    replace, seen = checkpoint.os.replace, []

    def watched(source, target):
        seen.append(last.exists())
        replace(source, target)
        seen.append(last.exists())

    monkeypatch.setattr(checkpoint.os, "replace", watched)
    save_checkpoint(last, {"n": 2}, keep_previous=True)
    save_checkpoint(last, {"n": 3}, keep_previous=True)
    assert seen and all(seen)
    assert read_record(last) == {"n": 3} and read_record(tmp_path / "last.prev.pt") == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]  # no temporary file left


def test_resuming_from_last_prev_pt_says_so(tmp_path, caplog, two_epochs):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.prev.pt").write_bytes((two_epochs / "checkpoints" / "last.prev.pt").read_bytes())
    state, path = load_latest(folder)
    assert path == folder / "last.prev.pt" and state["position"] == {"epoch": 3, "batch": 0}
    assert f"{folder / 'last.pt'} is missing; resuming from {path}" in caplog.text


def test_two_processes_writing_one_checkpoint_at_once_both_succeed(tmp_path):
    writer = ("from trainlab.runs.checkpoint import save_checkpoint\nprint('ready', flush=True); sys.stdin.readline()\n"
              "for i in range(200): save_checkpoint(sys.argv[1], {'i': i}, keep_previous=True)\n")
    processes = [python(writer, tmp_path / "last.pt", stdin=subprocess.PIPE) for _ in range(2)]
    assert [process.stdout.readline() for process in processes] == ["ready\n"] * 2
    for process in processes:  # both at once
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        output = process.communicate(timeout=120)[0]
        assert process.returncode == 0, output  # before: FileNotFoundError: last.pt.tmp -> last.pt
    assert read_record(tmp_path / "last.pt")["i"] == 199
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


# --- the run folder's lock

def test_a_run_folder_another_live_process_writes_into_is_refused_until_that_process_dies(tmp_path):
    holder = python("import sys; from trainlab.runs.folder import RunFolderBusy, RunFolderLock, discard_failed_start\n"
                    "RunFolderLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()", tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"^another run \\(pid {holder.pid}\\) is writing into {tmp_path}: "):
            RunFolderLock(tmp_path).acquire()
        (tmp_path / ".hydra").mkdir()  # what Hydra writes at the start: the refused run must not discard it
        assert not discard_failed_start(tmp_path) and (tmp_path / ".hydra").is_dir()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunFolderLock(tmp_path):  # the kernel let go of a dead process's lock
        with RunFolderLock(tmp_path):  # and a process never refuses itself
            pass


# --- the resident cache

def test_a_second_process_building_the_same_cache_waits_for_the_first_then_reads_its_cache(tmp_path):
    tiny_folder(tmp_path)
    cfg, steps = folder_config(tmp_path)
    bake_train, bake_test = (split_for_device(steps[k], k)[0] for k in ("train", "test"))
    cache = _cache_path(cfg.data, bake_train, bake_test)
    builder = ("import logging, torch\nlogging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
               "from conftest import compose\nfrom trainlab.data.resident import build_resident\n"
               "from trainlab.data.transforms import check_transforms\n"
               "cfg = compose('data=folder', f'data.root={sys.argv[1]}', 'data.image_size=8', 'data.val_split=0')\n"
               "build_resident(cfg.data, check_transforms(cfg.transform), torch.device('cpu'), 0, False)\n")
    cache.parent.mkdir()
    with FileLock(cache.with_name(cache.name + ".lock")):  # this process is the first: decoding
        second = python(builder, tmp_path)
        lines = []
        while not any("waiting for it" in line for line in lines):
            lines.append(second.stdout.readline())
            assert lines[-1], "".join(lines)  # ended without waiting
        _cached_or_decoded(cache, cache_key(), cfg.data, bake_train, bake_test, torch.device("cpu"), False)
    output = "".join(lines) + second.communicate(timeout=120)[0]
    assert second.returncode == 0, output
    assert f"another process is decoding into {cache}; waiting for it" in output
    assert f"decoded images from {cache}" in output and "cached in" not in output, output


def test_a_bit_flipped_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    tiny_folder(tmp_path)
    cfg, steps = folder_config(tmp_path)
    first = build_resident(cfg.data, steps, torch.device("cpu"), 0, False)[0]
    [cache] = (tmp_path / ".trainlab-cache").glob("*.pt")
    flip_a_bit_in_a_tensor(cache)
    caplog.set_level("INFO", logger="trainlab")
    again = build_resident(cfg.data, steps, torch.device("cpu"), 0, False)[0]
    assert f"warning: data: cache {cache} was not written by this user's trainlab, or changed since" in caplog.text
    assert "decoding again" in caplog.text
    assert "cached in" in caplog.text and torch.equal(first.train.images, again.train.images)


def test_a_cache_cut_short_while_in_use_cannot_kill_the_run(tmp_path):
    tiny_folder(tmp_path)
    reader = ("import os, torch\nfrom conftest import compose\n"
              "from trainlab.data.resident import build_resident\nfrom trainlab.data.transforms import check_transforms\n"
              "cfg = compose('data=folder', f'data.root={sys.argv[1]}', 'data.image_size=8', 'data.val_split=0')\n"
              "for _ in range(2): data = build_resident(cfg.data, check_transforms(cfg.transform), "
              "torch.device('cpu'), 0, False)[0]\n"  # the second reads the cache
              "[cache] = [e.path for e in os.scandir(sys.argv[1] + '/.trainlab-cache') if e.name.endswith('.pt')]\n"
              "os.truncate(cache, 0)\n"  # mapped, every page of it would now raise SIGBUS when touched
              "print('sum', int(data.train.images.long().sum()))\n")
    process = python(reader, tmp_path)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0 and "sum " in output, f"exit {process.returncode}: {output}"


def test_a_cache_folder_that_cannot_be_written_is_warned_of_and_done_without(tmp_path, caplog):
    tiny_folder(tmp_path)
    (tmp_path / ".trainlab-cache").write_text("a file where the cache folder goes")
    cfg, steps = folder_config(tmp_path)
    data = build_resident(cfg.data, steps, torch.device("cpu"), 0, False)[0]
    assert len(data.train) == 12
    assert f"warning: data: the cache folder {tmp_path / '.trainlab-cache'} cannot be written" in caplog.text
    assert "decoding without a cache" in caplog.text

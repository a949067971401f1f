"""The record-class recipe against the record, side by side: experiment=cifar10_fast against airbench94.

    python bench/record.py                    # 3 seeds each, in turns, on this machine's CPU (about 2 h on 2 cores)
    python bench/record.py --seeds 1          # one round
    python bench/record.py --device cuda      # on a GPU: ../shared/bench/airbench94.py unchanged, against the same
    python bench/record.py --device cuda --extra data.batch_size=2000 trainer.accumulate_grad_batches=1
                                              # the source's one batch an update, which a CUDA graph can record
    python bench/record.py --device cuda --seeds 1 --extra trainer.compile=true trainer.compile_mode=max-autotune
    python bench/record.py --experiment cifar10_fast_sgd   # the record's first recipe (SGD, lookahead) instead

In one run, on the CIFAR-10 JPEG copy (../shared/data, extracted to a temporary folder):
  record    airbench94 (../shared/bench/): on a CPU the copy ../shared/bench/airbench94_on_cpu.sh writes (bfloat16 where
            the CPU has bfloat16 instructions, float32 elsewhere), on a GPU the file itself; fed the JPEG copy as
            ../shared/bench/prep_cifar_pt.py makes it, one fresh process a run
  trainlab  python src/run.py experiment=cifar10_fast data=folder data.root=<extracted>/cifar10 data.test_dir=test
The two run in rounds, one seed each, so a slow spell of a shared machine lands on both; the time ratio is taken
within each round, then its median. Each side's one-time preparation is left out of its time and done first: the
record's .pt files, trainlab's decoded cache (a first run does it, as a user's first run would).

Printed: test accuracy (both with their test-time augmentation) as mean +- std over the rounds; the whole command's
wall time and the training time as each counts it (the record: training and evaluation by its own timers; trainlab:
its epochs' time), medians; and trainlab's wall time over the record's, round by round.
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from speed import ROOT, SHARED, describe_machine, extract  # bench/speed.py: the same data, the same machine line
from trainlab.runs.folder import TEST_ACC, read_metrics, read_scalars  # (speed put this tree's src/ on the path)

RECIPE = ["data=folder", "data.test_dir=test", "trainer.progress_bar=false"]  # and experiment=, from --experiment
RECORD_RUN = """
import json, sys, time, torch
torch.set_num_threads({threads})
import {module} as airbench
started = time.perf_counter()
accuracy = airbench.main({seed})
print(json.dumps({{"test_acc": accuracy, "main_s": time.perf_counter() - started}}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="rounds: one run of each side a round")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when there is one")
    parser.add_argument("--data", type=Path, default=None, help="an extracted cifar10/ folder (default: extract)")
    parser.add_argument("--experiment", default="cifar10_fast", help="trainlab's recipe (conf/experiment/)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for trainlab's runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="trainlab-record-"))
    data = args.data or extract(work)
    machine = describe_machine(torch, device)
    print(f"machine: {machine}\ndata: {data}\nwork: {work}", flush=True)
    module = prepare_record(data, work, device)
    extra = [f"experiment={args.experiment}", *args.extra, f"trainer.device={device}"]
    warm = trainlab(data, work / "warm", ["data.subset=1024", "data.test_subset=256", "trainer.epochs=1", *extra])
    print(f"trainlab's first run (decodes the JPEGs into its cache): {warm}", flush=True)

    rounds = {"record": [], "trainlab": []}
    for seed in range(args.seeds):
        this = {"record": record(work, module, seed, torch.get_num_threads()),
                "trainlab": trainlab(data, work / f"seed{seed}", [f"trainer.seed={seed}", *extra])}
        for name, result in this.items():
            rounds[name].append(result)
        print(f"round {seed}: {json.dumps(this)}", flush=True)
    results = {"machine": machine, "experiment": args.experiment, "rounds": rounds}
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def prepare_record(data: Path, work: Path, device: str) -> str:
    """The record's data (cifar10/train.pt, test.pt in `work`) and its script there -> the module name to import."""
    subprocess.run([sys.executable, str(SHARED / "bench" / "prep_cifar_pt.py"), str(data), str(work / "cifar10")],
                   check=True, capture_output=True)
    if device == "cuda":
        shutil.copy(SHARED / "bench" / "airbench94.py", work / "airbench94.py")
        return "airbench94"
    subprocess.run(["bash", str(SHARED / "bench" / "airbench94_on_cpu.sh"), str(work)], check=True)
    return "airbench94_cpu"


def record(work: Path, module: str, seed: int, threads: int) -> dict:
    """One run of airbench94's main() in a fresh process: its test accuracy (with its TTA), its own time for training
    and evaluation (the last row's total_time_seconds), the whole command's wall time."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RECORD_RUN.format(threads=threads, module=module, seed=seed)],
                          cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"failed": (done.stdout + done.stderr).strip()[-400:]}
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    rows = [line for line in lines if line.startswith("|") and "eval" in line]
    own = float(rows[-1].strip("| ").split("|")[-1]) if rows else None
    return {"test_acc": round(result["test_acc"], 4), "train_s": round(own, 1) if own else None,
            "wall_s": round(wall, 1)}


def trainlab(data: Path, run_dir: Path, extra: list) -> dict:
    """One run of the recipe: its test accuracy (scored once, with trainer.tta), its epochs' time, the whole command's
    wall time."""
    started = time.perf_counter()
    command = [sys.executable, "src/run.py", *RECIPE, f"data.root={data}", *extra, f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        lines = [line for line in (done.stdout + done.stderr).strip().splitlines() if "HYDRA_FULL_ERROR" not in line]
        return {"failed": " / ".join(lines[-3:])[-400:]}
    train_s = sum(row["seconds"] for row in read_metrics(run_dir) if row["epoch"] != "test")
    return {"test_acc": round(read_scalars(run_dir)[TEST_ACC][-1][1], 4), "train_s": round(train_s, 1),
            "wall_s": round(wall, 1)}


def print_table(results: dict) -> None:
    rounds = results["rounds"]
    print(f"\n{results['machine']}; {len(rounds['record'])} round(s), the record and trainlab in turns")
    print("| run | test acc, mean +- std | runs | train s (median) | wall s (median) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    labels = {"record": "airbench94 (its own script)", "trainlab": f"trainlab experiment={results['experiment']}"}
    for name, label in labels.items():
        done = [r for r in rounds[name] if "failed" not in r]
        for r in rounds[name]:
            if "failed" in r:
                print(f"| {label} | failed: {r['failed']} | | | |")
        if not done:
            continue
        accs = [r["test_acc"] for r in done]
        spread = f" +- {statistics.stdev(accs):.2%}" if len(accs) > 1 else ""
        timed = [r["train_s"] for r in done if r.get("train_s") is not None]
        train = statistics.median(timed) if timed else float("nan")
        wall = statistics.median(r["wall_s"] for r in done)
        print(f"| {label} | {statistics.mean(accs):.2%}{spread} | {len(done)} | {train:.0f} | {wall:.0f} |")
    ratios = [t["wall_s"] / r["wall_s"] for r, t in zip(rounds["record"], rounds["trainlab"])
              if "failed" not in r and "failed" not in t]
    if ratios:
        print(f"\ntrainlab's wall time over the record's, round by round: {', '.join(f'{x:.2f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()

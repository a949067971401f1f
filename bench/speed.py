"""Speed, measured side by side: the tutorial's own loop, trainlab on the same recipe, and the hardware's ceiling.

    python bench/speed.py                      # CPU: 1 epoch each; a GPU is used when there is one
    python bench/speed.py --epochs 10 --peer-epochs 1 --seeds 1 --peer-seeds 1 --startup-runs 1  # a short GPU lease

In one run, on the real CIFAR-10 (the JPEG copy in ../shared/data, extracted to a temporary folder):
  peer      ../shared/bench/tutorial_baseline.py, unchanged (Tudui, SGD lr 0.01, batch 64, ToTensor per sample)
  trainlab  the same recipe through src/run.py (data=folder transform=to_tensor model=tudui optimizer=sgd)
  ceiling   Tudui's forward, backward and SGD step alone on tensors already in memory, batch 64
Prints images/s, seconds per epoch, test accuracy after the same epochs, start-up, and the ratios.

Test accuracy after a few epochs swings with the seed (one epoch of Tudui: 23 % to 31 % on this data), so the recipe
runs under --seeds seeds and the peer's figure is set against their range. The peer seeds itself with 0; with
--peer-seeds N it also runs, still unchanged, under seeds 1..N-1 (a wrapper hands its torch.manual_seed another
number). The peer, the ceilings and the recipe run in rounds, one seed each, and the ratios are taken within a
round and then their median: a slow spell of a shared machine then slows all three alike. Start-up is set against
the floor every PyTorch script pays: the interpreter, `import torch` and the first torch.optim step (which imports
torch._dynamo).

    python bench/speed.py --epochs 3 --seeds 5 --peer-seeds 5    # the README's CPU table (about 25 minutes)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this tree's trainlab, as src/run.py runs it
from trainlab.runs.folder import IMAGES_PER_S, STARTUP_S, TEST_ACC, read_scalars  # noqa: E402 (the tags a run writes)

SHARED = Path(os.environ.get("TRAINLAB_SHARED", ROOT.parent / "shared"))  # ../shared, or where it was copied
# data.val_split=0: trained on all 50,000 images, as the peer is, and the last epoch's weights tested
RECIPE = ["data=folder", "data.val_split=0", "transform=to_tensor", "model=tudui", "optimizer=sgd",
          "optimizer.lr=0.01", "data.batch_size=64", "trainer.progress_bar=false", "trainer.log_graph=false",
          "trainer.log_images=false"]
TINY = ["data.subset=64", "data.test_subset=64"]  # a run that is all start-up: 64 images each way
# name -> extra overrides: the trainer's speed options, each run once (seed 0) after the recipe's rounds
VARIANTS = {
    "cpu": {"trainlab, bf16": ["trainer.precision=bf16"], "trainlab, DataLoader path": ["trainer.data_path=loader"]},
    # slower to run; `--variants cpu-more`
    "cpu-more": {
        "trainlab, NCHW": ["trainer.channels_last=false"],
        "trainlab, compile": ["trainer.compile=true"],
        "trainlab, DataLoader path": ["trainer.data_path=loader"],
        "trainlab, DataLoader path, 2 workers": ["trainer.data_path=loader", "data.num_workers=2"],
    },
    "gpu": {
        "trainlab, no CUDA graphs": ["trainer.cuda_graphs=false"],
        "trainlab, channels_last": ["trainer.channels_last=true"],
        "trainlab, bf16 (channels_last)": ["trainer.precision=bf16"],
        "trainlab, bf16 NCHW": ["trainer.precision=bf16", "trainer.channels_last=false"],
        "trainlab, nondeterministic cuDNN": ["trainer.deterministic=false"],
        "trainlab, batch 512 bf16": ["data.batch_size=512", "trainer.precision=bf16"],
    },
    # slower to run; `--variants gpu-more`
    "gpu-more": {
        "trainlab, compile, no graphs": ["trainer.compile=true", "trainer.cuda_graphs=false"],
        "trainlab, DataLoader path": ["trainer.data_path=loader", "data.num_workers=8"],
    },
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="training epochs for trainlab (and the peer)")
    parser.add_argument("--peer-epochs", type=int, default=None, help="epochs for the peer (default: --epochs)")
    parser.add_argument("--variants", choices=sorted(VARIANTS), default=None, help="default: gpu when present")
    parser.add_argument("--data", type=Path, default=None, help="an extracted cifar10/ folder (default: extract)")
    parser.add_argument("--seeds", type=int, default=3, help="runs of trainlab's recipe, seeds 0..N-1")
    parser.add_argument("--peer-seeds", type=int, default=3, help="runs of the peer, seeds 0..N-1")
    parser.add_argument("--startup-runs", type=int, default=5, help="start-ups timed, each for trainlab and the floor")
    # an epoch's steps (50,000 images at batch 64): timed over as long a span as trainlab's epoch, since this host
    # runs a short burst faster (300 steps measured 6-7% above 1,800 steps, back to back)
    parser.add_argument("--ceiling-steps", type=int, default=782)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = VARIANTS[args.variants or ("gpu" if device == "cuda" else "cpu")]
    work = Path(tempfile.mkdtemp(prefix="trainlab-bench-"))
    data = args.data or extract(work)
    machine = describe_machine(torch, device)
    print(f"machine: {machine}\ndata: {data}", flush=True)

    results = {"machine": machine, "epochs": args.epochs}
    peer_epochs = args.peer_epochs or args.epochs
    # one short run first decodes the JPEGs into the resident cache, as a user's first run does
    results["cache build"] = trainlab(data, work / "warm", 1, TINY)
    print(f"cache build and start-up: {results['cache build']}", flush=True)
    results["start-up"] = startup(data, work, args.startup_runs)
    print(f"start-up: {results['start-up']}", flush=True)
    # The peer, the ceilings and trainlab's recipe run in rounds, one seed each, so that a slow spell of a shared
    # machine lands on all three alike; the ratios are taken within each round, then their median.
    # The channels_last ceiling (the layout trainlab trains in on a CPU) is taken just before and just after
    # trainlab's run and their mean is its bar: the machine's drift during the run then falls on both sides.
    rounds = {"peer": [], "ceiling": [], "ceiling, channels_last": [], "trainlab": []}
    ratios = {"x peer": [], "of ceiling": [], "of channels_last ceiling": []}
    recipe = work / "trainlab"
    for seed in range(max(args.seeds, args.peer_seeds)):
        this = {}
        if seed < args.peer_seeds:
            this["peer"] = peer(data, peer_epochs, seed)
        this["ceiling"] = ceiling(device, args.ceiling_steps)
        before = ceiling(device, args.ceiling_steps, channels_last=True)
        if seed < args.seeds:
            this["trainlab"] = trainlab(data, recipe / f"seed{seed}", args.epochs, [f"trainer.seed={seed}"])
            after = ceiling(device, args.ceiling_steps, channels_last=True)
            this["ceiling, channels_last"] = {"images_per_s": round(
                (before["images_per_s"] + after["images_per_s"]) / 2), "before": before["images_per_s"],
                "after": after["images_per_s"]}
        else:
            this["ceiling, channels_last"] = before
        for name, result in this.items():
            rounds[name].append(result)
        ours = this.get("trainlab", {}).get("images_per_s")  # None where it failed or sat this round out
        if ours:
            ratios["of ceiling"].append(round(ours / this["ceiling"]["images_per_s"], 3))
            ratios["of channels_last ceiling"].append(
                round(ours / this["ceiling, channels_last"]["images_per_s"], 3))
            if "peer" in this:
                ratios["x peer"].append(round(ours / this["peer"]["images_per_s"], 3))
        print(f"round {seed}: {this}", flush=True)
    results.update({name: over_seeds(runs) for name, runs in rounds.items()})
    results["ratios"] = ratios
    for name, extra in variants.items():
        folder = work / name.replace(" ", "_").replace(",", "")
        results[name] = trainlab(data, folder, args.epochs, [*extra, "trainer.seed=0"])
        print(f"{name}: {results[name]}", flush=True)
    print_table(results, peer_epochs, args.epochs)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def extract(work: Path) -> Path:
    archive = SHARED / "data" / "cifar10-jpg.tar.gz"
    if not archive.exists():
        sys.exit(f"error: {archive} is missing: the benchmark reads CIFAR-10 from ../shared/data")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return work / "cifar10"


def describe_machine(torch, device) -> str:
    import platform

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} + {os.cpu_count()} CPU cores, torch {torch.__version__}"
    from trainlab.training.numerics import CPUINFO, cpu_bf16_flag

    info = CPUINFO.read_text() if CPUINFO.exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return (f"{model}, {os.cpu_count()} CPU cores, bf16 instructions: {cpu_bf16_flag('none') or 'none'}, no GPU, "
            f"torch {torch.__version__}")


RESEEDED = """
import runpy, sys, torch
seed, sys.argv = int(sys.argv[1]), sys.argv[2:]
seed_with = torch.manual_seed
torch.manual_seed = lambda _: seed_with(seed)  # the file seeds once, with 0, before anything random; only that changes
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def peer(data: Path, epochs: int, seed: int = 0) -> dict:
    """The tutorial's loop, the file unchanged; seed 0 is its own, another seed goes in through RESEEDED."""
    started = time.perf_counter()
    command = [str(SHARED / "bench" / "tutorial_baseline.py"), "--root", str(data), "--epochs", str(epochs)]
    if seed:
        command = ["-c", RESEEDED, str(seed), *command]
    out = subprocess.run([sys.executable, *command], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    seconds = result["train_s_per_epoch"]
    return {"images_per_s": round(result["images_per_s"]), "s_per_epoch": round(statistics.median(seconds), 2),
            "train_s": round(sum(seconds), 2), "test_acc": round(result["test_acc"], 4),
            "wall_s": round(time.perf_counter() - started, 1)}


def ceiling(device: str, steps: int, channels_last: bool = False) -> dict:
    """Tudui forward + backward + SGD step on one in-memory batch, in a fresh process like the others: images over
    the wall time of all `steps` steps after a warm-up, as trainlab's images/s is an epoch's images over its time (a
    median of short chunks, as before, left the machine's slow spells out of the ceiling alone)."""
    layout = "torch.channels_last" if channels_last else "torch.contiguous_format"
    code = f"""
import time, torch, json
from torch import nn
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 5, padding=2), nn.MaxPool2d(2),
                    nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 64),
                    nn.Linear(64, 10)).to("{device}", memory_format={layout})
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x = torch.rand(64, 3, 32, 32, device="{device}").contiguous(memory_format={layout})
y = torch.randint(0, 10, (64,), device="{device}")
loss_fn = nn.CrossEntropyLoss()
def step():
    loss = loss_fn(net(x), y); opt.zero_grad(); loss.backward(); opt.step()
for _ in range(20): step()
if "{device}" == "cuda": torch.cuda.synchronize()
t = time.perf_counter()
for _ in range({steps}): step()
if "{device}" == "cuda": torch.cuda.synchronize()
print(json.dumps(64 * {steps} / (time.perf_counter() - t)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {"images_per_s": round(json.loads(out.strip().splitlines()[-1]))}


def trainlab(data: Path, run_dir: Path, epochs: int, extra: list) -> dict:
    started = time.perf_counter()
    command = [sys.executable, "src/run.py", *RECIPE, f"data.root={data}", f"trainer.epochs={epochs}", *extra,
               f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stdout + done.stderr).strip().splitlines() if "HYDRA_FULL_ERROR" not in line]
        return {"failed": " / ".join(lines[-3:])[-400:]}
    wall = time.perf_counter() - started
    values = read_scalars(run_dir)
    rates = [v for _, v in values[IMAGES_PER_S]]
    images = 50000 if not any("subset" in e for e in extra) else 64
    per_epoch = [images / r for r in rates]
    return {"images_per_s": round(statistics.median(rates)), "s_per_epoch": round(statistics.median(per_epoch), 3),
            "train_s": round(sum(per_epoch), 2), "test_acc": round(values[TEST_ACC][-1][1], 4),  # scored once
            "startup_s": round(values[STARTUP_S][0][1], 2) if STARTUP_S in values else None,
            "wall_s": round(wall, 1)}


def over_seeds(runs: list) -> dict:
    """One run's figures, or several runs' medians with the range of their test accuracies."""
    failed = [r for r in runs if "failed" in r]
    if failed or len(runs) == 1:
        return (failed or runs)[0]
    merged = {key: statistics.median(r[key] for r in runs) for key in runs[0]
              if all(r.get(key) is not None for r in runs)}
    if "test_acc" in merged:
        merged["test_acc_range"] = [min(r["test_acc"] for r in runs), max(r["test_acc"] for r in runs)]
        merged["seeds"] = len(runs)
    return merged


FLOOR = """
import time
import torch
net = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
net(torch.zeros(1, 4)).sum().backward()
optimizer.step()
stepped = time.time()
from trainlab.launch import seconds_since_launch
print(seconds_since_launch() - (time.time() - stepped))
"""


def startup(data: Path, work: Path, runs: int) -> dict:
    """Medians of `runs` start-ups with cached data, from the command to the first step, taken in turns with the
    floor: a bare script that imports torch and takes one torch.optim step."""
    ours, floor = [], []
    for run in range(runs):
        result = trainlab(data, work / f"startup{run}", 1, TINY)
        if "failed" in result:
            return result
        ours.append(result["startup_s"])
        out = subprocess.run([sys.executable, "-c", FLOOR], env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                             capture_output=True, text=True, check=True).stdout
        floor.append(float(out.strip().splitlines()[-1]))
    return {"trainlab_s": round(statistics.median(ours), 2), "floor_s": round(statistics.median(floor), 2),
            "trainlab_runs": ours, "floor_runs": [round(f, 2) for f in floor]}


def print_table(results: dict, peer_epochs: int, epochs: int) -> None:
    peer_rate, ceiling_rate = results["peer"]["images_per_s"], results["ceiling"]["images_per_s"]
    print(f"\n{results['machine']}; trainlab {epochs} epoch(s), peer {peer_epochs}; medians over epochs and seeds")
    print("| run | images/s | s/epoch | train s | test acc | wall s | x peer | of ceiling |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    peer, ratios = results["peer"], results["ratios"]
    print(f"| peer (tutorial loop) | {round(peer_rate):,} | {peer['s_per_epoch']:.3g} | {peer['train_s']:.3g} | "
          f"{accuracy(peer)} | {round(peer['wall_s'])} | 1.00 | {peer_rate / ceiling_rate:.0%} |")
    print(f"| ceiling (fwd+bwd in memory) | {round(ceiling_rate):,} | {50000 / ceiling_rate:.2f} | | | | "
          f"{ceiling_rate / peer_rate:.2f} | 100% |")
    cl_rate = results["ceiling, channels_last"]["images_per_s"]
    print(f"| ceiling, channels_last layout | {round(cl_rate):,} | {50000 / cl_rate:.2f} | | | | "
          f"{cl_rate / peer_rate:.2f} | {cl_rate / ceiling_rate:.0%} |")
    for name, r in results.items():
        if name in ("machine", "epochs", "peer", "ceiling", "ceiling, channels_last", "cache build", "start-up",
                    "ratios"):
            continue
        if "failed" in r:
            print(f"| {name} | failed: {r['failed']} | | | | | | |")
            continue
        x_peer, of_ceiling = r["images_per_s"] / peer_rate, r["images_per_s"] / ceiling_rate
        if name == "trainlab":  # the recipe's ratios: within each round, then the median
            x_peer = statistics.median(ratios["x peer"] or [x_peer])
            of_ceiling = statistics.median(ratios["of ceiling"] or [of_ceiling])
        print(f"| {name} | {round(r['images_per_s']):,} | {r['s_per_epoch']:.3g} | {r['train_s']:.3g} | "
              f"{accuracy(r)} | {round(r['wall_s'])} | {x_peer:.2f} | {of_ceiling:.0%} |")
    if len(ratios["x peer"]) > 1:
        print(f"\ntrainlab's recipe, round by round (peer, ceilings and trainlab in turns): x peer "
              f"{', '.join(f'{x:.2f}' for x in ratios['x peer'])}; of the NCHW ceiling "
              f"{', '.join(f'{x:.0%}' for x in ratios['of ceiling'])}; of the channels_last ceiling (taken before and "
              f"after each run) {', '.join(f'{x:.0%}' for x in ratios['of channels_last ceiling'])}")
    ours = results.get("trainlab", {})
    if "test_acc" in ours and ("seeds" in ours or "seeds" in peer):
        low, high = ours.get("test_acc_range", [ours["test_acc"]] * 2)
        peer_low, peer_high = peer.get("test_acc_range", [peer["test_acc"]] * 2)
        overlap = "overlap" if peer_low <= high and low <= peer_high else "do NOT overlap"
        print(f"\ntest accuracy after {epochs} epoch(s): peer {accuracy(peer)}, trainlab {accuracy(ours)}: "
              f"the ranges {overlap}")
    else:
        print("\ntest accuracy: one run each; it swings by points with the seed: --seeds and --peer-seeds give ranges")
    up = results["start-up"]
    if "failed" in up:
        print(f"start-up: failed: {up['failed']}")
    else:
        print(f"start-up, command to first step with cached data (median of {len(up['trainlab_runs'])}): trainlab "
              f"{up['trainlab_s']} s; floor {up['floor_s']} s (python, import torch, one torch.optim step); "
              f"trainlab minus the floor {up['trainlab_s'] - up['floor_s']:+.2f} s")


def accuracy(result: dict) -> str:
    """'42.0%', or with several seeds '42.0% (40.7%-42.3%, 3 seeds)': the median and the range."""
    if "seeds" not in result:
        return f"{result['test_acc']:.1%}"
    low, high = result["test_acc_range"]
    return f"{result['test_acc']:.1%} ({low:.1%}-{high:.1%}, {result['seeds']} seeds)"


if __name__ == "__main__":
    main()

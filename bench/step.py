"""What trainlab's training loop costs over the bare step, measured in one process, in turns.

    python bench/step.py                 # CPU: Tudui, batch 64, channels_last, 8 rounds of 60 steps each

Three loops train Tudui at batch 64 on CIFAR-shaped images, each with its own copy of the same weights:
  ceiling    the tutorial's step alone on one batch already in memory, as bench/speed.py's ceiling runs it
  streamed   the same bare step, each batch gathered from 50,000 resident uint8 images and made float: what any
             loop over a whole data set must do
  trainlab   trainlab's own objects: the ResidentLoader (batch plan, gather, to_tensor), make_train_step's step,
             the Epoch's running sums, finiteness check and logging read-backs
They run in rounds, one after another, so a slow spell of the shared machine lands on all three; the ratios are
taken within each round, then their median. In one process there is no start-up and no cross-process swing, so
what is left between `trainlab` and `ceiling` is what the loop itself adds.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this tree's trainlab
from trainlab.training.clock import Clock  # noqa: E402
from trainlab.training.epoch import Epoch, EpochProgress  # noqa: E402
from trainlab.data.resident import ResidentLoader, ResidentSplit  # noqa: E402
from trainlab.training.numerics import Numerics  # noqa: E402
from trainlab.training.step import make_train_step  # noqa: E402
from trainlab.data.transforms import BatchedSteps  # noqa: E402


def tudui() -> torch.nn.Sequential:
    """The tutorial's network, seeded, so every loop starts from the same weights."""
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(2), nn.Conv2d(32, 32, 5, padding=2),
                         nn.MaxPool2d(2), nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(1024, 64), nn.Linear(64, 10))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60, help="steps of each loop in a round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    numerics = Numerics(device, "fp32", args.channels_last)
    batch, steps = args.batch_size, args.steps
    images = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8, device=device)
    targets = torch.randint(0, 10, (50000,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def bare():
        model = tudui().to(device, memory_format=numerics.memory_format)
        return model, torch.optim.SGD(model.parameters(), lr=0.01)

    ceiling_model, ceiling_sgd = bare()
    x, y = numerics.layout(images[:batch].float().div(255)), targets[:batch]

    def ceiling():
        for _ in range(steps):
            loss = loss_fn(ceiling_model(x), y)
            ceiling_sgd.zero_grad()
            loss.backward()
            ceiling_sgd.step()

    streamed_model, streamed_sgd = bare()
    order = torch.randperm(50000, device=device)

    def streamed(round_):
        start = round_ * steps * batch % (50000 - steps * batch)
        for i in range(steps):
            index = order[start + i * batch:start + (i + 1) * batch]
            loss = loss_fn(streamed_model(numerics.layout(images[index].float().div(255))), targets[index])
            streamed_sgd.zero_grad()
            loss.backward()
            streamed_sgd.step()

    ours_model, ours_sgd = bare()
    step = make_train_step(ours_model, loss_fn, ours_sgd, numerics, cuda_graphs=False,
                           batch_shape=(batch, 3, 32, 32))
    generator = torch.Generator(device=device)
    # an "epoch" of exactly `steps` batches, so that a round is one Epoch
    split = ResidentSplit(images[:steps * batch], targets[:steps * batch])
    loader = ResidentLoader(split, batch, True, True, BatchedSteps([{"type": "to_tensor"}], generator), seed=0)
    progress = EpochProgress(device)

    def trainlab(round_):
        clock = Clock(epochs=args.rounds + 1, batches=loader.batches, epoch=round_ + 1)
        loader.start(clock.epoch)
        progress.begin(0.01)
        for _ in Epoch(step, loader, clock, progress, log_every=10):
            pass
        progress.end()

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - started)

    ceiling(), streamed(0), trainlab(0)  # warm-up: oneDNN and the allocator settle
    rates = {"ceiling": [], "streamed": [], "trainlab": []}
    for round_ in range(1, args.rounds + 1):
        rates["ceiling"].append(timed(ceiling))
        rates["streamed"].append(timed(lambda: streamed(round_)))
        rates["trainlab"].append(timed(lambda: trainlab(round_)))
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"{device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads, Tudui batch {batch} "
          f"{layout}; {args.rounds} rounds of {steps} steps each loop")
    print("| loop | images/s (median) | of ceiling, median of rounds | rounds |")
    print("| --- | ---: | ---: | --- |")
    for name, values in rates.items():
        ratios = [v / c for v, c in zip(values, rates["ceiling"])]
        print(f"| {name} | {statistics.median(values):,.0f} | {statistics.median(ratios):.1%} | "
              f"{' '.join(f'{r:.2f}' for r in ratios)} |")


if __name__ == "__main__":
    main()

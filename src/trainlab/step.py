"""The training step: forward, loss, backward, update on one batch; and the numerics every forward pass of a run
shares (training, evaluation, the confusion matrix), so each sees what the others saw.

make_train_step chooses, once, between the plain eager step and the CUDA-graph step.
"""
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("trainlab")

WARM_UP_STEPS = 3  # eager steps before a CUDA graph is recorded


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86's AMX or AVX512-BF16, ARM's BF16), from the flags Linux
    lists; True where that cannot be told (no /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return re.search(r"\b(amx_bf16|avx512_bf16|bf16)\b", flags) is not None


@dataclass(frozen=True)
class Numerics:
    """Where and how a run computes: the device, bf16 autocast or fp32, and the images' memory layout (channels_last
    stores images and conv weights as NHWC, the layout oneDNN and tensor cores read fastest)."""
    device: torch.device
    precision: str = "fp32"  # fp32 or bf16
    channels_last: bool = False

    @classmethod
    def choose(cls, device: torch.device, precision: str, channels_last=None) -> "Numerics":
        """trainer.channels_last; null: on for the CPU (oneDNN, measured 1.4x) and for bf16 on a GPU, off for fp32
        on a GPU (measured 2.3x slower with Tudui on an H100)."""
        if channels_last is None:
            channels_last = device.type == "cpu" or precision == "bf16"
        if device.type == "cpu" and precision == "bf16" and not cpu_has_bf16():
            log.warning("warning: trainer.precision=bf16 on a CPU without bfloat16 instructions (AMX, AVX512-BF16): "
                        "it is emulated, 14x slower than fp32 as measured on an AMD EPYC; trainer.precision=fp32 is "
                        "faster here")
        return cls(device, precision, channels_last)

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.preserve_format

    def autocast(self):
        """The context the forward pass and the loss run in."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=self.memory_format)


class TrainStep:
    """One optimizer step on a batch, eagerly: -> (loss, number correct), both left on the device, so the loop reads
    them back only when it logs. With skip_nonfinite, a step whose loss or gradients are not finite is not applied
    and gives (None, None); that check reads back every step, so only when asked."""

    def __init__(self, model, loss_fn, optimizer, numerics: Numerics, skip_nonfinite: bool = False):
        self.model, self.loss_fn, self.optimizer, self.numerics = model, loss_fn, optimizer, numerics
        self.skip_nonfinite, self.device = skip_nonfinite, numerics.device

    def __call__(self, images, targets):
        self.optimizer.zero_grad(set_to_none=True)
        return self._step(self.numerics.layout(images), targets)

    def _step(self, images, targets):
        with self.numerics.autocast():
            logits = self.model(images)
            loss = self.loss_fn(logits, targets)
        loss.backward()
        if self.skip_nonfinite and not _all_finite(loss, self.optimizer):
            self.optimizer.zero_grad(set_to_none=True)
            return None, None
        self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) == targets).sum()


class CudaGraphStep(TrainStep):
    """The same step, recorded once as a CUDA graph for a full batch and replayed: one launch per step instead of
    dozens, which is what bounds small batches on a fast GPU.

    Its rules:
    - the first WARM_UP_STEPS steps run eagerly on a side stream (cuDNN and cuBLAS choose and allocate kernels);
    - the graph reads its inputs from static_images / static_targets, made here for a full batch of `batch_shape`;
      a smaller batch (an epoch's last) runs eagerly;
    - the learning rate is a constant inside the graph: it is recorded again whenever the rate has changed, so a
      per-epoch schedule works, a per-step one would record every step (make_train_step does not choose it then);
    - the (loss, correct) it returns are the graph's output tensors, overwritten by the next replay: read them first.
    """

    def __init__(self, model, loss_fn, optimizer, numerics: Numerics, batch_shape: tuple):
        super().__init__(model, loss_fn, optimizer, numerics)
        self.static_images = numerics.layout(torch.zeros(batch_shape, device=self.device))
        self.static_targets = torch.zeros(batch_shape[0], dtype=torch.long, device=self.device)
        self.static_loss = self.static_correct = None  # the graph's outputs: made when it is recorded
        self.graph, self.graph_lr, self.eager_steps = None, None, 0
        for group in optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = True  # Adam's step counter on the device, so a graph can advance it

    def __call__(self, images, targets):
        if self.eager_steps < WARM_UP_STEPS:
            return self._warm_up(self.numerics.layout(images), targets)
        if images.shape != self.static_images.shape:
            return super().__call__(images, targets)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.graph is None or lr != self.graph_lr:
            self._record(lr)
        self.static_images.copy_(images)
        self.static_targets.copy_(targets)
        self.graph.replay()
        return self.static_loss, self.static_correct

    def _warm_up(self, images, targets):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.optimizer.zero_grad(set_to_none=True)
            result = self._step(images, targets)
        torch.cuda.current_stream().wait_stream(stream)
        self.eager_steps += 1
        return result

    def _record(self, lr):
        self.graph, self.graph_lr = torch.cuda.CUDAGraph(), lr
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss, self.static_correct = self._step(self.static_images, self.static_targets)


def make_train_step(model, loss_fn, optimizer, numerics: Numerics, *, cuda_graphs: bool, batch_shape: tuple,
                    skip_nonfinite: bool = False, per_step_schedule: bool = False, distributed: bool = False):
    """The run's step: a CUDA graph where it can hold the whole step (trainer.cuda_graphs on a GPU), else eager.

    A graph cannot skip a step it has recorded, bakes the learning rate in (a per-step schedule would record it
    every step) and would hide DistributedDataParallel's gradient hooks: any of those runs eagerly."""
    graphs = cuda_graphs and numerics.device.type == "cuda" and not (skip_nonfinite or per_step_schedule or distributed)
    if graphs:
        return CudaGraphStep(model, loss_fn, optimizer, numerics, batch_shape)
    return TrainStep(model, loss_fn, optimizer, numerics, skip_nonfinite)


def _all_finite(loss, optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return bool(torch.isfinite(loss).item()) and all(bool(torch.isfinite(g).all().item()) for g in grads)

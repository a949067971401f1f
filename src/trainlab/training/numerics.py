"""The numerics every forward pass of a run shares (training, validation, the test, the confusion matrix,
prediction), so each sees what the others saw: the device, the autocast precision and the memory layout."""
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("trainlab")

# trainer.precision -> the autocast dtype; fp16's small range needs the gradient scaler (trainlab/training/step.py)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CPUINFO = Path("/proc/cpuinfo")  # the flags Linux lists for the CPU


def cpu_bf16_flag(unknown: str = "unknown"):
    """The flag by which this CPU says it computes bfloat16 in hardware (x86's amx_bf16 or avx512_bf16, ARM's bf16),
    from the flags Linux lists; None where it has none; `unknown` where that cannot be told (no /proc/cpuinfo)."""
    try:
        flags = CPUINFO.read_text()
    except OSError:
        return unknown
    found = re.search(r"\b(amx_bf16|avx512_bf16|bf16)\b", flags)
    return found.group(1) if found else None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware; True where that cannot be told (no warning is better then)."""
    return cpu_bf16_flag() is not None


def auto_precision(device: torch.device) -> tuple:
    """trainer.precision=auto -> (bf16 or fp32, why): bf16 where the device computes it in hardware (a CUDA GPU
    that supports it, a CPU with AMX, AVX512-BF16 or ARM's BF16), fp32 elsewhere, emulated bf16 being far slower
    (14x on an AMD EPYC without those instructions)."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return ("bf16" if supported else "fp32"), f"{torch.cuda.get_device_name(device)} " + (
            "computes bfloat16" if supported else "lacks bfloat16")
    if device.type == "cpu":
        flag = cpu_bf16_flag(unknown=None)  # a CPU that cannot be asked gets the safe choice
        return ("bf16", f"the CPU has {flag}") if flag else ("fp32", "the CPU has no bfloat16 instructions")
    return "fp32", f"bf16 is not chosen by default on {device.type}"


@dataclass(frozen=True)
class Numerics:
    """Where and how a run computes: the device, the autocast precision (fp32: none), and the images' memory layout
    (channels_last stores images and conv weights as NHWC, the layout oneDNN and tensor cores read fastest)."""
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False

    @classmethod
    def choose(cls, device: torch.device, precision: str, channels_last=None) -> "Numerics":
        """trainer.precision (fp32, bf16, or auto: auto_precision) and trainer.channels_last; null: on for the CPU (oneDNN, measured 1.4x) and for bf16 on a GPU, off for fp32
        on a GPU (measured 2.3x slower with Tudui on an H100)."""
        if precision == "auto":
            precision, why = auto_precision(device)
            log.info(f"precision: {precision} (trainer.precision=auto: {why})")
        if channels_last is None:
            channels_last = device.type == "cpu" or precision in ("bf16", "fp16")
        if device.type == "cpu" and precision == "bf16" and not cpu_has_bf16():
            log.warning("warning: trainer.precision=bf16 on a CPU without bfloat16 instructions (AMX, AVX512-BF16): "
                        "it is emulated, 14x slower than fp32 as measured on an AMD EPYC; trainer.precision=fp32 is "
                        "faster here")
        if device.type == "cpu" and precision == "fp16":
            log.warning("warning: trainer.precision=fp16 on a CPU: float16 is emulated there (Tudui on shapes, one "
                        "thread: 60 against 700 images/s in fp32, on an AMD EPYC); it is meant for GPUs without bf16")
        return cls(device, precision, channels_last)

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.preserve_format

    def autocast(self):
        """The context the forward pass and the loss run in."""
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def grad_scaler(self):
        """fp16's gradient scaler (the loss scaled up so small gradients survive fp16, a step whose gradients
        overflow skipped and the scale lowered); None for the other precisions, which need none."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the run's layout (contiguous() takes no preserve_format: without channels_last, as they are)."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

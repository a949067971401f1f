"""The numerics every forward pass of a run shares (training, validation, the test, the confusion matrix,
prediction), so each sees what the others saw: the device, the autocast precision and the memory layout."""
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("trainlab")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # trainer.precision -> the autocast dtype


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
    """Where and how a run computes: the device, the autocast precision (fp32: none), and the images' memory layout
    (channels_last stores images and conv weights as NHWC, the layout oneDNN and tensor cores read fastest)."""
    device: torch.device
    precision: str = "fp32"
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
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=self.memory_format)

"""How training runs on a device: which device, and the numeric settings of the step there.

`auto` means CUDA when present; on CUDA the step uses bf16 autocast and channels_last, on a CPU
fp32 and the default memory format (where neither helps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from resnet_mnist.config.settings import TrainConfig
from resnet_mnist.runtime.errors import ProjectError


class DeviceUnavailable(ProjectError, RuntimeError):
    """The device asked for is not on this machine."""


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device=cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(str(name))


@dataclass(frozen=True)
class Speed:
    """How the step runs on this device: `auto` means bf16 + channels_last on CUDA, fp32 on CPU
    (where neither helps)."""

    bf16: bool
    channels_last: bool
    compile: bool

    @classmethod
    def resolve(cls, config: TrainConfig, device: torch.device) -> Speed:
        cuda = device.type == "cuda"
        bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda)
        cl = config.channels_last == "true" or (config.channels_last == "auto" and cuda)
        return cls(bf16=bf16, channels_last=cl, compile=config.compile)

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

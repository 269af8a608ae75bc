"""Where a run trains: the device and the data folder, as the user gives them.

Placement is not part of the experiment. The settings (`TrainConfig`) are logged as params,
compared and kept in the checkpoint; the placement is none of these, so a run trained on a GPU
under `--nproc` resumes, rebuilds and compares on a CPU (its device is recorded as a tag, as
`cuda:0` or `cpu`). Threads and world size are the launcher's (`study` cells, torchrun) and
reach the process as such.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from resnet_mnist.config.settings import TrainConfig, coerce_as, setting
from resnet_mnist.config.space import ConfigError


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass(frozen=True)
class Placement:
    """Where one run trains; the CLI's `--device` and `--root`."""

    device: Device = setting(Device.auto, "auto picks CUDA when available.")
    data_root: str = setting(
        "", "Data root (files in ROOT/MNIST/raw); default $RESNET_MNIST_DATA or ./data.", flag="--root"
    )

    def validate(self, config: TrainConfig) -> Placement:
        """Refuse a placement the settings cannot run on (before any run starts)."""
        errors = []
        if self.device not in list(Device):
            errors.append(f"device={self.device!r} must be one of {', '.join(Device)}")
        if config.sync_bn and self.device == Device.cpu:
            errors.append("sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        if errors:
            raise ConfigError("; ".join(errors))
        return self


PLACEMENT_FIELDS = {f.name: f for f in dataclasses.fields(Placement)}
PLACEMENT_TYPES: dict[str, Any] = typing.get_type_hints(Placement)

#: Params that say where a run ran, not what it learned: older runs logged their device as a
#: param, and a run under `--nproc` logs its backend and per-rank batch (both follow from the
#: settings and the world size).
PLACEMENT_PARAMS = frozenset({*PLACEMENT_FIELDS, "backend", "global_batch_size", "per_rank_batch_size"})


def placement(values: dict[str, Any]) -> Placement:
    """A Placement from option values (None: the default), typed; a ConfigError names a bad one."""
    try:
        return Placement(
            **{k: coerce_as(PLACEMENT_TYPES[k], k, v) for k, v in values.items() if v is not None}
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

"""Data parallelism on PyTorch's own engine: torchrun starts the processes, torch.distributed
connects them (gloo on CPU, NCCL on GPUs), DistributedDataParallel averages the gradients.

Each rank takes its slice of every global batch of the single-process shuffled order, so N
processes see exactly the data one process would, batch for batch. Losses and accuracies are
all-reduced, so the numbers logged (by rank 0 only) describe the whole global batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a batch (sizes differ by at most one)."""
        return torch.tensor_split(tensor, self.world)[self.rank]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when any rank says True (a stop request must stop all ranks)."""
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> Dist:
    """Join the process group torchrun described in the environment."""
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(d: Dist, device: torch.device) -> torch.device:
    return torch.device("cuda", d.local_rank) if device.type == "cuda" else device


def launch(nproc: int, argv: list[str], torchrun_args: list[str] | None = None) -> int:
    """Re-run this CLI command under torchrun with `nproc` processes on this machine.

    `torchrun_args` (e.g. `--nnodes 2 --rdzv-endpoint host:29400 --rdzv-id job1`) replace the
    single-machine default `--standalone`.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               *(torchrun_args or ["--standalone"]), "-m", "resnet_mnist", *argv]
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    return subprocess.call(command, env=env)

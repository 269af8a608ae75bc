"""Data parallelism on PyTorch's own engine: `launch` (or torchrun, across machines) starts the
processes, torch.distributed connects them (gloo on CPU, NCCL on GPUs), DistributedDataParallel
averages the gradients.

Each rank takes its slice of every global batch of the single-process shuffled order, so N
processes see exactly the data one process would, batch for batch. Losses and accuracies are
all-reduced, so the numbers logged (by rank 0 only) describe the whole global batch.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from resnet_mnist.runtime.supervise import supervise


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


def reports() -> bool:
    """Whether this process speaks for its job: rank 0 of several, or a process on its own. The
    other ranks stop when rank 0 stops (`Dist.any`), and rank 0 says why."""
    return not launched() or os.environ.get("RANK", "0") == "0"


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


def free_port() -> int:
    """A loopback port nobody listens on now, for rank 0's rendezvous store."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(nproc: int, argv: list[str], stop: threading.Event) -> int:
    """Run this CLI command again as `nproc` ranks on this machine, as `torchrun --standalone`
    would (the same environment variables for `init_process_group`), but supervised by this
    process: Ctrl-C or SIGTERM here stops every rank at the same step boundary (the run ends
    KILLED with a resumable checkpoint), a rank that fails stops the others, and no rank outlives
    the command. Returns the exit code: rank 0's, or the first failure's.
    """
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    base = os.environ | {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "OMP_NUM_THREADS": threads,
    }
    envs = [base | {"RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0"} for rank in range(nproc)]
    codes = supervise([[sys.executable, "-m", "resnet_mnist", *argv]] * nproc, envs, stop, all_or_none=True)
    return next((code for code in codes if code not in (0, None)), 0)

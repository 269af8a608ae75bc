"""Data parallelism on PyTorch's own engine: `launch` (torch's elastic agent, as torchrun; or
torchrun itself, across machines) starts the processes, torch.distributed connects them (gloo on
CPU, NCCL on GPUs), DistributedDataParallel averages the gradients.

Each rank takes its slice of every global batch of the single-process shuffled order, so N
processes see exactly the data one process would, batch for batch. Losses and accuracies are
all-reduced, so the numbers logged (by rank 0 only) describe the whole global batch.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

from resnet_mnist.runtime.env import overridden


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


#: How long the ranks have to reach a step boundary and end the run after a stop, before the
#: launcher kills them (torch's own default is 30 s; writing a checkpoint on a slow disk needs more).
STOP_GRACE_S = 120
#: The signals the launcher passes on to every rank (torch's agent ends the ranks with the signal
#: it got; a second one during that wait is passed on again, which interrupts the ranks at once).
FORWARDED = "SIGTERM,SIGINT,SIGHUP"


def _signalled(signum: int, frame: object) -> None:
    """What torch's agent does with a signal once it runs the ranks: raise it as its exception."""
    from torch.distributed.elastic.multiprocessing import SignalException

    raise SignalException(f"process {os.getpid()} got signal {signum}", sigval=signal.Signals(signum))


def launch(nproc: int, argv: list[str]) -> int:
    """Run this CLI command again as `nproc` ranks on this machine with torch's own launcher: the
    elastic agent `torchrun --standalone` runs (c10d rendezvous on a loopback port of its
    choosing, no restarts), in this process.

    What the agent does and this relies on: each rank gets a session of its own, so a terminal's
    Ctrl-C reaches only this process; a signal here is passed on to every rank, which stops at its
    next step boundary (the ranks agree through `Dist.any`, the run ends KILLED with a resumable
    checkpoint); a rank that fails ends the others; after STOP_GRACE_S the rest are killed, so no
    rank outlives the command. Returns the exit code: 0, the lowest failed rank's (128 + signal
    for one killed by a signal), or 130 when a signal stopped the job. The agent's own log lines
    (rendezvous, "shutting down workers") are kept to errors: the ranks say what happened.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    agent_logs = [
        logging.getLogger(name)
        for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]
        if name.startswith("torch.distributed.elastic")
    ]
    levels = [log.level for log in agent_logs]
    with tempfile.TemporaryDirectory(prefix="resnet-mnist-ranks-") as logs:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            run_id=uuid.uuid4().hex,
            rdzv_backend="c10d",
            rdzv_endpoint="127.0.0.1:0",
            max_restarts=0,
            monitor_interval=0.1,
            logs_specs=DefaultLogsSpecs(log_dir=logs),
            signals_to_handle=FORWARDED,
            shutdown_timeout=STOP_GRACE_S,
        )
        for log in agent_logs:  # each of the agent's modules sets a level of its own
            log.setLevel(logging.ERROR)
        for sig in handlers:  # a stop before the agent takes over (rendezvous) ends it as well
            signal.signal(sig, _signalled)
        try:
            with overridden({"OMP_NUM_THREADS": threads}):
                elastic_launch(config, sys.executable)("-m", "resnet_mnist", *argv)
        except SignalException:
            return 130
        except ChildFailedError as failed:
            code = failed.failures[min(failed.failures)].exitcode
            return 128 - code if code < 0 else code
        finally:
            for log, old in zip(agent_logs, levels, strict=True):
                log.setLevel(old)
            for sig, handler in handlers.items():  # the agent leaves its own handlers installed
                signal.signal(sig, handler)
    return 0

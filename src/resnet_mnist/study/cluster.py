"""Where a study's cells and a search's trials run: Ray tasks, on an embedded local Ray (started
and stopped with the command) or on an existing Ray cluster (`--address`, or `RAY_ADDRESS`). Only
`study` and `tune` import this module: `train`, `compare` and `predict` never pay for Ray.

Ray schedules the cells on the resources they ask for and retries a cell whose worker or node
died (`RETRIES`); `cells.train_cell` makes each retry continue the dead attempt's run instead of
training the cell twice. A cancel reaches a running cell as SIGINT, which `stop_on_signals` turns
into a stop at the next step boundary.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Hashable
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError, RayError, RayTaskError, TaskCancelledError

from resnet_mnist.runtime.errors import ProjectError, first_line
from resnet_mnist.study.cells import CellOrder, CellOutcome
from resnet_mnist.study.execution import CellFailed
from resnet_mnist.study.spec import Resources
from resnet_mnist.study.trials import TrialOrder, TrialOutcome

#: How often Ray runs a cell again whose worker process or node died (not on an exception).
RETRIES = 3
#: The embedded instance's object store: cells pass a few kilobytes each way (Ray's minimum is
#: 75 MiB; its default, 30 % of memory, would be taken from /dev/shm for nothing).
OBJECT_STORE_BYTES = 128 * 1024**2


class ClusterError(ProjectError, RuntimeError):
    """Ray could not be started or reached, or cannot run a cell; the message says why."""


def node_label() -> str:
    """This worker's node as the cells' tags name it: its address and the start of its Ray node
    id (two nodes of one machine share the address)."""
    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"


@ray.remote(max_retries=RETRIES)
def train_task(order: CellOrder) -> CellOutcome:
    """One cell, in a Ray worker (imported here, in the worker, not at the driver's import)."""
    from resnet_mnist.runtime.collector import for_heavy_imports
    from resnet_mnist.runtime.signals import stop_on_signals
    from resnet_mnist.study.cells import train_cell

    # A worker trains run after run; torch and MLflow came with this module, the runs' model
    # logging and figures still gain (the driver's `main` set it for its own process).
    for_heavy_imports()
    with stop_on_signals() as stop:
        return train_cell(order, node_label(), stop)


@ray.remote(max_retries=RETRIES)
def trial_task(order: TrialOrder) -> TrialOutcome:
    """One trial of a search, in a Ray worker."""
    from resnet_mnist.runtime.collector import for_heavy_imports
    from resnet_mnist.runtime.signals import stop_on_signals
    from resnet_mnist.study.trials import run_trial

    for_heavy_imports()  # as in `train_task`
    with stop_on_signals() as stop:
        return run_trial(order, node_label(), stop)


@dataclass(frozen=True)
class Where:
    """What the study runs on, as the driver says it."""

    address: str | None
    slots: int | None

    @property
    def embedded(self) -> bool:
        return self.address is None


def where(address: str | None, slots: int | None) -> Where:
    """`--address` wins, then `RAY_ADDRESS`; with neither, an embedded instance of `slots` CPUs
    (default: this machine's). Slots belong to an embedded instance only."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None and slots is not None:
        raise ClusterError(
            f"--workers sets the CPU slots of an embedded Ray; the cluster at {address} has its own "
            "(drop --workers, or unset RAY_ADDRESS to run here)"
        )
    return Where(address, slots)


def _token_auth_like_ray_start() -> None:
    """Join a cluster the way `ray start` would on this machine: Ray 2.60 turns token
    authentication on when a token is available (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or
    ~/.ray/auth_token) and RAY_AUTH_MODE is unset, but a plain `ray.init(address=...)` does not,
    and the head then refuses it."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"


#: What Ray's bare Exception says when a new node's raylet has not registered with the GCS in the
#: 30 s Ray allows it (ray/_private/node.py; seen beside a busy test run).
STARTUP_TIMED_OUT = "timed out during startup"

#: Ray's setting (an environment variable its raylet reads) for its worker processes' niceness.
WORKER_NICENESS = "RAY_worker_niceness"


class RayEngine:
    """`execution.Engine` on Ray: connected on entry, disconnected (the embedded instance
    stopped) on exit."""

    def __init__(self, at: Where) -> None:
        self.at = at
        self.startup_s = 0.0
        self.dashboard = ""

    def __enter__(self) -> RayEngine:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.at.embedded:
            # Ray starts its workers at niceness 15: the cells, which are the study's whole work,
            # then get about 4 % of a core beside any other busy program (beside two CPU hogs on
            # 2 cores, importing torch and MLflow in a task took 110 s instead of 6.9 s at 0).
            # The raylet reads this when it starts; a user's own RAY_worker_niceness wins.
            os.environ.setdefault(WORKER_NICENESS, "0")
        started = time.perf_counter()
        try:
            if self.at.embedded:
                context = ray.init(
                    address="local",
                    num_cpus=self.at.slots or os.cpu_count() or 1,
                    object_store_memory=OBJECT_STORE_BYTES,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                )
            else:
                _token_auth_like_ray_start()
                context = ray.init(address=self.at.address, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"could not {self._what()}: {first_line(exc)}") from None
        except Exception as exc:  # Ray's own start-up timeout is a bare Exception
            if STARTUP_TIMED_OUT not in str(exc):
                raise
            raise ClusterError(
                f"could not {self._what()}: its node did not start within Ray's fixed 30 s (a "
                "machine busy with other work can take longer); run the command again"
            ) from None
        self.startup_s = time.perf_counter() - started
        self.dashboard = getattr(context, "dashboard_url", "") or ""
        return self

    def _what(self) -> str:
        return "start an embedded Ray" if self.at.embedded else f"reach the Ray cluster at {self.at.address}"

    def __exit__(self, *exc: object) -> None:
        ray.shutdown()

    def describe(self) -> str:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
        gpus = f", {total['GPU']:g} GPUs" if total.get("GPU") else ""
        kind = "embedded local Ray" if self.at.embedded else f"Ray cluster at {self.at.address}"
        board = f"; dashboard http://{self.dashboard}" if self.dashboard else ""
        return (
            f"{kind}: {len(nodes)} node{'s' * (len(nodes) != 1)}, {total.get('CPU', 0):g} CPU slots{gpus} "
            f"(connected in {self.startup_s:.1f} s){board}"
        )

    def check_fits(self, resources: Resources) -> None:
        """Fail now, not never, when no node can run a cell: Ray would queue it for ever. On a
        cluster an autoscaler may still add such a node, so there it is only a warning."""
        fits = any(
            n.get("Alive")
            and n["Resources"].get("CPU", 0) >= resources.cpus
            and n["Resources"].get("GPU", 0) >= resources.gpus
            for n in ray.nodes()
        )
        if fits:
            return
        message = f"each cell asks for {resources}, and no node of {self.describe()} has that"
        if self.at.embedded:
            raise ClusterError(f"{message}; use --workers, --cpus-per-cell or --gpus-per-cell")
        logging.getLogger(__name__).warning("%s; the cells wait for such a node", message)

    def slots(self, resources: Resources) -> int:
        """How many tasks asking for `resources` the cluster runs at once (at least 1)."""
        total = ray.cluster_resources()
        fits = [total.get("CPU", 0) / resources.cpus if resources.cpus else math.inf]
        if resources.gpus:
            fits.append(total.get("GPU", 0) / resources.gpus)
        return max(1, int(min(fits)))

    def submit(self, order: CellOrder | TrialOrder, resources: Resources) -> Hashable:
        options = {"num_cpus": resources.cpus, "num_gpus": resources.gpus}
        if isinstance(order, TrialOrder):
            return trial_task.options(**options).remote(order)
        return train_task.options(**options).remote(order)

    def wait(self, handles: list[Hashable], timeout_s: float) -> list[Hashable]:
        ready, _ = ray.wait(handles, num_returns=len(handles), timeout=timeout_s, fetch_local=False)
        return list(ready)

    def result(self, handle: Hashable) -> CellOutcome | TrialOutcome:
        try:
            return ray.get(handle, timeout=60)  # type: ignore[call-overload]
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            raise CellFailed(first_line(cause)) from None
        except (TaskCancelledError, GetTimeoutError) as exc:
            raise CellFailed(first_line(exc)) from None
        except RayError as exc:  # its worker or node died RETRIES + 1 times
            raise CellFailed(f"lost after {RETRIES + 1} attempts: {first_line(exc)}") from None

    def cancel(self, handles: list[Hashable]) -> None:
        for handle in handles:
            ray.cancel(handle, force=False)

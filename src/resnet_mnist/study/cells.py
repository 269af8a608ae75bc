"""One cell of a study, exactly once, whichever process or node runs it and however often.

A task that finds its cell FINISHED returns it. A cell left RUNNING by a dead attempt (its node
died, its worker was killed) is taken over: resumed in the same run from its last checkpoint when
it has one; otherwise the dead attempt's run is ended FAILED with the reason and the cell trained
again. A KILLED cell (a stopped study) continues from its checkpoint. Every attempt is numbered
and names the node that made it. Knows nothing of Ray: `cluster` calls `train_cell` in a task.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from resnet_mnist.config.placement import Placement
from resnet_mnist.config.settings import TrainConfig
from resnet_mnist.runtime.errors import ProjectError
from resnet_mnist.study.reach import Reach, data_root
from resnet_mnist.tracking import names
from resnet_mnist.tracking.lifecycle import end_abandoned, same_params
from resnet_mnist.tracking.ownership import STALE_AFTER_S, RunBusy, claim, owner_alive

#: How long a cell waits for another live attempt at it (a partitioned node's, say) to finish or
#: go stale before it gives up: past the heartbeat's staleness, with a margin.
LIVE_ATTEMPT_WAIT_S = STALE_AFTER_S + 60


class CellBusy(ProjectError, RuntimeError):
    """Another live process is training this cell."""


@dataclass(frozen=True)
class CellOrder:
    """Everything a task needs to train one cell, passed explicitly rather than inherited."""

    reach: Reach
    experiment: str
    experiment_id: str
    study: str
    study_run_id: str
    key: str
    phase: str
    config: TrainConfig
    placement: Placement
    threads: int


@dataclass(frozen=True)
class CellOutcome:
    """What became of a cell: its run, and whether it was trained, resumed or found finished."""

    key: str
    run_id: str
    how: str
    attempt: int
    node: str
    dev_accuracy: float
    train_time_s: float


def order_for(
    config: TrainConfig,
    placement: Placement,
    key: str,
    phase: str,
    study: str,
    study_run_id: str,
    experiment: tuple[str, str],
    threads: int,
) -> CellOrder:
    """The order for one cell, with this (driver) process's store, data folder (absolute: on
    another node MNIST is fetched there when missing) and client settings. `experiment` is the
    study's (name, id)."""
    import dataclasses

    return CellOrder(
        reach=Reach.here(),
        experiment=experiment[0],
        experiment_id=experiment[1],
        study=study,
        study_run_id=study_run_id,
        key=key,
        phase=phase,
        config=config,
        placement=dataclasses.replace(placement, data_root=data_root(placement.data_root)),
        threads=threads,
    )


def attempts(client: MlflowClient, order: CellOrder) -> list[Run]:
    """Every run made for this cell of this study, oldest first."""
    query = names.runs_where(
        names.TRAIN, {names.PARENT_RUN_ID: order.study_run_id, names.STUDY_CELL: order.key}
    )
    return client.search_runs(
        [order.experiment_id],
        query,
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )


def train_cell(order: CellOrder, node: str, stop: threading.Event | None = None) -> CellOutcome:
    """Make sure the cell has exactly one FINISHED run (see the module docstring); `node` names
    where this attempt runs. A stop request ends a training cell KILLED with a checkpoint."""
    import torch

    from resnet_mnist.core import data

    order.reach.adopt()
    torch.set_num_threads(order.threads)
    data.fetch(order.placement.data_root)  # this node's copy, fetched and verified if missing
    client = MlflowClient()
    busy = f"cell {order.key} is being trained by another process"
    try:
        with claim(f"cell-{order.study_run_id}-{order.key}", busy, wait_s=LIVE_ATTEMPT_WAIT_S):
            runs = _without_live_attempts(client, order, busy)
            done = [r for r in runs if r.info.status == "FINISHED" and same_params(r, order.config)]
            if done:
                return _outcome(order, done[0], "reused")
            return _attempt(client, order, runs, node, stop)
    except RunBusy as exc:
        raise CellBusy(str(exc)) from None


def _without_live_attempts(client: MlflowClient, order: CellOrder, busy: str) -> list[Run]:
    """The cell's runs once none is RUNNING with a live owner (or one has FINISHED)."""
    deadline = time.monotonic() + LIVE_ATTEMPT_WAIT_S
    while True:
        runs = attempts(client, order)
        if any(r.info.status == "FINISHED" for r in runs):
            return runs
        if not any(r.info.status == "RUNNING" and owner_alive(r.data.tags) for r in runs):
            return runs
        if time.monotonic() >= deadline:
            raise CellBusy(busy)
        time.sleep(2.0)


def _attempt(
    client: MlflowClient, order: CellOrder, runs: list[Run], node: str, stop: threading.Event | None
) -> CellOutcome:
    """Resume the newest stopped or dead attempt that left a checkpoint, else train afresh; dead
    attempts that are not continued are ended with their reason."""
    from resnet_mnist.tracking import runner
    from resnet_mnist.tracking.request import RunRequest

    attempt = 1 + max((int(r.data.tags.get(names.STUDY_ATTEMPT, "1")) for r in runs), default=0)
    continuable = [
        r
        for r in runs
        if r.info.status in ("RUNNING", "KILLED")
        and names.RESUME_STEP in r.data.tags
        and same_params(r, order.config)
    ]
    chosen = continuable[-1] if continuable else None
    for run in runs:
        if run.info.status == "RUNNING" and run is not chosen:
            _end_dead(client, run, attempt)
    tags = {
        names.STUDY_CELL: order.key,
        names.STUDY_PHASE: order.phase,
        names.STUDY_ATTEMPT: str(attempt),
        names.STUDY_NODE: node,
        names.STUDY_NAME: order.study,
    }
    if chosen is None:
        tags[names.STUDY_NODES] = _history(runs[-1:], node)
        request = RunRequest(
            order.config, order.placement, order.experiment, parent_run_id=order.study_run_id, tags=tags
        )
        trained = runner.train(request, stop=stop)
        return _outcome(order, client.get_run(trained.run_id), "trained")
    tags[names.STUDY_NODES] = _history([chosen], node)
    for key, value in tags.items():
        client.set_tag(chosen.info.run_id, key, value)
    resumed = runner.resume(RunRequest.resuming(chosen.info.run_id, order.placement), stop=stop)
    return _outcome(order, client.get_run(resumed.run_id), "resumed")


def _history(runs: list[Run], node: str) -> str:
    """Every node that tried this cell, in order, ending with this one."""
    before = [r.data.tags.get(names.STUDY_NODES, r.data.tags.get(names.STUDY_NODE, "?")) for r in runs]
    return ",".join([*(b for b in before if b), node])


def _end_dead(client: MlflowClient, run: Run, next_attempt: int) -> None:
    """End a RUNNING attempt whose owner is gone and which left no checkpoint: FAILED, saying
    which attempt died where, and that the next trains the cell again."""
    tags = run.data.tags
    reason = (
        f"attempt {tags.get(names.STUDY_ATTEMPT, '1')} on node {tags.get(names.STUDY_NODE, '?')} "
        f"(pid {tags.get(names.OWNER_PID, '?')} on {tags.get(names.OWNER_HOST, '?')}) died before "
        f"its first checkpoint; attempt {next_attempt} trains the cell again"
    )
    end_abandoned(client, run.info.run_id, RunStatus.FAILED, reason)


def _outcome(order: CellOrder, run: Run, how: str) -> CellOutcome:
    tags, metrics = run.data.tags, run.data.metrics
    return CellOutcome(
        key=order.key,
        run_id=run.info.run_id,
        how=how,
        attempt=int(tags.get(names.STUDY_ATTEMPT, "1")),
        node=tags.get(names.STUDY_NODE, "?"),
        dev_accuracy=metrics.get("best_dev_accuracy", math.nan),
        train_time_s=metrics.get("train_time_s", math.nan),
    )

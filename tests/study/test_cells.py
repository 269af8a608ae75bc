"""One cell exactly once (`study.cells`, in this process against a real sqlite store) and the
grid's schedule (`study.execution.run_grid`, with an engine that runs cells in this process)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Hashable
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from resnet_mnist.config.placement import Placement
from resnet_mnist.study import cells as C
from resnet_mnist.study import execution as E
from resnet_mnist.study import spec as S
from resnet_mnist.study.results import duplicated_cells, to_cell
from resnet_mnist.tracking import names
from tests.study.test_study import synthetic_grid


def test_cell_keys_name_group_rate_and_seed() -> None:
    group = S.Group(8, True)
    assert S.cell_key(group, 0.05, 1) == "resnet8-residual/lr=0.05/seed=1"
    assert S.cell_key("resnet8-residual", 0.05, 1) == S.cell_key(group, 0.05, 1)
    assert (
        len(
            {S.cell_key(g, lr, s) for g in S.load_study("cpu").groups() for lr in (0.05, 0.1) for s in (0, 1)}
        )
        == 24
    )


def test_resources_come_from_the_study_file_and_are_checked(tmp_path: Path) -> None:
    assert S.load_study("gpu").resources == S.Resources(2.0, 0.25)
    assert S.load_study("cpu").resources == S.Resources(1.0, 0.0)
    assert S.load_study("gpu", cpus=1, gpus=0).resources == S.Resources(1.0, 0.0)
    assert str(S.Resources(2, 0.25)) == "2 CPUs and 0.25 GPU" and S.Resources(3, 0).threads == 3
    path = tmp_path / "s.yaml"
    for resources, message in (
        ("{cpus: 0.5}", "whole number >= 1"),
        ("{gpus: 1.5}", "whole GPUs"),
        ("{gpus: -1}", "must be a number >= 0"),
        ("{memory: 1}", "takes cpus and gpus"),
    ):
        path.write_text(f"preset: study-tiny\ndepths: [8]\nresources: {resources}\n")
        with pytest.raises(S.ConfigError, match=message):
            S.load_study(str(path))


def test_a_cell_finished_twice_is_refused_by_the_report() -> None:
    _, cells = synthetic_grid()
    assert duplicated_cells(cells) == []
    twice = cells + [cells[0]]
    assert duplicated_cells(twice) == [
        f"{S.cell_key(f'resnet{cells[0].depth}-{cells[0].variant}', cells[0].lr, cells[0].seed)} "
        f"({cells[0].run_id}, {cells[0].run_id})"
    ]


# -- the schedule -------------------------------------------------------------------------------


class InProcess:
    """An engine that 'runs' each cell when asked to wait, in submission order, with a dev
    accuracy that prefers the larger rate for plain networks and the smaller for residual."""

    def __init__(self, fail: str = "") -> None:
        self.submitted: list[C.CellOrder] = []
        self.fail = fail

    def submit(self, order: C.CellOrder, resources: S.Resources) -> Hashable:
        self.submitted.append(order)
        return len(self.submitted) - 1

    def wait(self, handles: list[Hashable], timeout_s: float) -> list[Hashable]:
        return handles[:1]

    def result(self, handle: Hashable) -> C.CellOutcome:
        order = self.submitted[int(handle)]  # type: ignore[call-overload]
        if order.key == self.fail:
            raise E.CellFailed("diverged")
        lr, residual = order.config.lr, order.config.use_residual
        dev = 0.9 + (lr if not residual else -lr)
        return C.CellOutcome(order.key, f"run{handle}", "trained", 1, "here", dev, 1.0)

    def cancel(self, handles: list[Hashable]) -> None:
        raise AssertionError("not stopped")


def test_the_grid_submits_every_rate_first_then_each_groups_seeds(store: str) -> None:
    spec = S.load_study("tiny", depths=[8, 14], seeds=[0, 1, 2], lrs=[0.02, 0.05])
    client = MlflowClient()
    home = E.open_study(client, spec, "study-test")
    engine = InProcess()
    logged: list[str] = []
    result = E.run_grid(engine, client, home, spec, threading.Event(), logged.append)
    keys = [o.key for o in engine.submitted]
    # all 8 rate-search cells before any seed, deepest first
    assert keys[:8] == [S.cell_key(g, lr, 0) for g in spec.groups() for lr in spec.lrs]
    assert keys[0].startswith("resnet14-plain")
    assert len(keys) == spec.cell_count() == 4 * (2 + 2) and len(set(keys)) == len(keys)
    assert result.lrs == {
        "resnet14-plain": 0.05,
        "resnet14-residual": 0.02,
        "resnet8-plain": 0.05,
        "resnet8-residual": 0.02,
    }
    assert (
        S.cell_key("resnet8-residual", 0.02, 2) in keys
        and S.cell_key("resnet8-residual", 0.05, 2) not in keys
    )
    assert client.get_run(home.run_id).data.tags[f"{names.STUDY_LR}resnet8-plain"] == "0.05"
    order = engine.submitted[0]
    assert order.reach.tracking_uri == store and order.study_run_id == home.run_id and order.threads == 1
    assert Path(order.placement.data_root).is_absolute()


def test_a_failed_cell_leaves_its_group_unseeded_and_the_study_incomplete(store: str) -> None:
    spec = S.load_study("tiny", seeds=[0, 1])
    client = MlflowClient()
    home = E.open_study(client, spec, "study-test")
    engine = InProcess(fail=S.cell_key("resnet8-plain", 0.05, 0))
    with pytest.raises(E.StudyIncomplete, match="1 cells failed:\n  resnet8-plain/lr=0.05/seed=0: diverged"):
        E.run_grid(engine, client, home, spec, threading.Event(), lambda line: None)
    keys = [o.key for o in engine.submitted]
    assert S.cell_key("resnet8-residual", 0.02, 1) in keys
    assert not any(k.startswith("resnet8-plain") and k.endswith("seed=1") for k in keys)


# -- one cell, exactly once (real training, slow tier) ------------------------------------------


def dead_pid() -> tuple[int, float]:
    """A process that has exited, with its start time."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.1)"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, started


@pytest.mark.slow
@pytest.mark.usefixtures("own_threads")
def test_a_cell_is_trained_once_and_a_dead_attempt_ended_with_its_reason(store: str) -> None:
    spec = S.load_study("tiny")
    client = MlflowClient()
    home = E.open_study(client, spec, "study-test")
    group, key = spec.groups()[0], S.cell_key(spec.groups()[0], 0.02, 0)
    config = S.cell_config(spec, group, 0.02, 0)
    order = C.order_for(
        config,
        Placement(),
        key,
        "lr-search",
        spec.name,
        home.run_id,
        (home.experiment, home.experiment_id),
        1,
    )
    # attempt 1 died on another node before its first checkpoint: RUNNING, its owner gone
    pid, started = dead_pid()
    dead = client.create_run(
        home.experiment_id,
        tags={
            names.RUN_TYPE: names.TRAIN,
            names.PARENT_RUN_ID: home.run_id,
            names.STUDY_CELL: key,
            names.STUDY_NODE: "10.0.0.9/deadbeef",
            names.OWNER_PID: str(pid),
            names.OWNER_HOST: socket.gethostname(),
            names.OWNER_STARTED: f"{started:.3f}",
        },
    ).info.run_id

    first = C.train_cell(order, "10.0.0.1/cafe0001")
    assert first.how == "trained" and first.attempt == 2 and first.node == "10.0.0.1/cafe0001"
    ended = client.get_run(dead)
    assert ended.info.status == "FAILED"
    assert ended.data.tags[names.FAILURE_REASON] == (
        f"attempt 1 on node 10.0.0.9/deadbeef (pid {pid} on {socket.gethostname()}) died before its "
        "first checkpoint; attempt 2 trains the cell again"
    )
    run = client.get_run(first.run_id)
    assert (
        run.info.status == "FINISHED"
        and run.data.tags[names.STUDY_NODES] == "10.0.0.9/deadbeef,10.0.0.1/cafe0001"
    )

    again = C.train_cell(order, "10.0.0.2/cafe0002")
    assert (again.how, again.run_id, again.attempt) == ("reused", first.run_id, 2)
    finished = [r for r in C.attempts(client, order) if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == [first.run_id]
    assert to_cell(run).dev_accuracy == pytest.approx(first.dev_accuracy)

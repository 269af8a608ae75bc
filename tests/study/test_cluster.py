"""The study on Ray, for real (slow tier): a two-node Ray cluster on loopback whose second node's
raylet is SIGKILLed while one of its cells trains, and Ctrl-C to a study on its embedded Ray.
Either way every cell key ends with exactly one FINISHED run and the same numbers as an
uninterrupted study's.

Nothing here waits on speed: a cell is caught training by its tags in the store (RUNNING, with a
checkpoint), and its worker process is frozen (SIGSTOP) while the node is killed or the study
stopped, so the cell is still mid-training when that lands, on a fast machine as on a slow one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from resnet_mnist.tracking.checkpoints import RESUME
from tests.conftest import BIN, child_env
from tests.study.conftest import (
    ReferenceStudy,
    cell_runs,
    log_of,
    numbers,
    report_table,
    start_study,
    store_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.ray]

#: Ray's own node-death tests detect a dead node in seconds with these.
FAST_FAILURE_DETECTION = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_initial_delay_ms": "0",
}


def ray_env() -> dict[str, str]:
    """Token authentication with a token of this test's own (not ~/.ray's), no usage stats, and
    workers at niceness 0, as docs/scaling.md starts a cluster whose machines do other work too
    (here: the other tests)."""
    return {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_worker_niceness": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": os.urandom(16).hex(),
    } | FAST_FAILURE_DETECTION


def wait_for(
    what: str, check: Callable[[], object], proc: subprocess.Popen, log: Path, limit_s: float = 600
) -> object:
    """Poll `check` until it returns something true; fail if `proc` ends first or after limit_s
    (a bound for a hung test, not a timing), with the end of `proc`'s log."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert proc.poll() is None, f"ended ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {limit_s} s:\n{log.read_text()[-3000:]}")


def training_cell(folder: Path, owners: Callable[[], set[int]] | None = None) -> Run | None:
    """A cell RUNNING with a checkpoint (its worker among `owners` when given)."""
    for run in cell_runs(folder):
        tags = run.data.tags
        if run.info.status != "RUNNING" or "resume_step" not in tags:
            continue
        if owners is None or int(tags.get("owner.pid", "0")) in owners():
            return run
    return None


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) inside the block, continued after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


@pytest.fixture
def uninterrupted(reference_study: ReferenceStudy) -> Path:
    """The folder of the test study trained without interruption (`reference_study`)."""
    return reference_study.folder


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stop_ends_every_cell_at_a_step_and_the_rerun_continues(
    tmp_path: Path, uninterrupted: Path, how: str
) -> None:
    """Ctrl-C in a terminal (SIGINT to the command's process group) or SIGTERM to the command
    (Ray's driver installs a SIGTERM handler of its own that would end it at once). Either leaves
    the same store behind (the stopped cells KILLED with a resumable checkpoint), so the rerun
    that continues them is shown once, after Ctrl-C."""
    proc = start_study(tmp_path, {}, "--workers", "2")
    cell = wait_for(
        "a cell training with a checkpoint", lambda: training_cell(tmp_path), proc, tmp_path / "study.log"
    )
    assert isinstance(cell, Run)
    # the embedded Ray's workers compete for the CPU as any program does (Ray's default: nice 15)
    assert psutil.Process(int(cell.data.tags["owner.pid"])).nice() == 0
    descendants = psutil.Process(proc.pid).children(recursive=True)
    with frozen(int(cell.data.tags["owner.pid"])):  # still mid-training when the stop lands
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal's
        else:
            proc.send_signal(signal.SIGTERM)
        wait_for(
            "the stop",
            lambda: "stopping" in log_of(tmp_path) and "cells at their next" in log_of(tmp_path),
            proc,
            tmp_path / "study.log",
        )
    assert proc.wait(timeout=600) == 130, log_of(tmp_path)
    assert not [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    after = {r.info.run_id: r for r in cell_runs(tmp_path)}
    assert "RUNNING" not in {r.info.status for r in after.values()}
    stopped = after[cell.info.run_id]
    assert stopped.info.status == "KILLED" and "stopped_at_step" in stopped.data.tags
    client = MlflowClient(store_of(tmp_path))
    assert RESUME in {f.path for f in client.list_artifacts(cell.info.run_id, "checkpoints")}
    if how == "sigterm":
        return

    rerun = start_study(tmp_path, {}, "--workers", "2")
    assert rerun.wait(timeout=1200) == 0, log_of(tmp_path)
    continued = {r.info.run_id: r for r in cell_runs(tmp_path)}[cell.info.run_id]
    assert continued.info.status == "FINISHED"  # the same run, continued from its checkpoint
    assert continued.data.tags["resumed_from_step"] == stopped.data.tags["stopped_at_step"]
    assert continued.data.tags["study.attempt"] == "2"
    assert numbers(tmp_path) == numbers(uninterrupted)
    assert report_table(tmp_path) == report_table(uninterrupted)


def wait_until_started(node: subprocess.Popen, log: Path, limit_s: float = 600) -> bool:
    """Whether `ray start` said it started (True) or ended first (False); fails the test if it
    does neither in limit_s (a bound for a hung start, not a timing)."""
    deadline = time.monotonic() + limit_s
    while node.poll() is None:
        if "Ray runtime started" in log.read_text():
            return True
        assert time.monotonic() < deadline, f"`ray start` hung:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    return "Ray runtime started" in log.read_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopbackCluster:
    """A head and a second node on this machine, one CPU each, each `ray start --block` in its
    own session (so that its processes can be found, and ended, by session).

    A node that ends before it has started is started again, on fresh ports, up to
    `START_ATTEMPTS` times: Ray gives a new node's raylet a fixed 30 s to register with the GCS
    (ray/_private/node.py), and once, beside the team server's four trainings, a head ran out of
    it ("The current node timed out during startup"). The start is this test's setting, not what
    it tests; each failed attempt's output and Ray's own logs stay in the test's folder."""

    START_ATTEMPTS = 3

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: socket paths
        self.port = free_port()  # the head's: a new one for each attempt at starting it
        self.nodes: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *args: str, head: bool = False) -> subprocess.Popen:
        name = f"node{len(self.nodes)}"
        for attempt in range(1, self.START_ATTEMPTS + 1):
            proc = self._start(name, head, *args)
            log = self.folder / f"{name}.log"
            if wait_until_started(proc, log):
                self.nodes.append(proc)
                return proc
            self._end(proc)
            log.rename(self.folder / f"{name}-attempt{attempt}.log")
            if head:  # the failed head's session logs (gcs_server.out, raylet.err), then a new one
                shutil.copytree(self.temp, self.folder / f"ray-attempt{attempt}", dirs_exist_ok=True)
                shutil.rmtree(self.temp, ignore_errors=True)
                self.temp.mkdir()
                self.port = free_port()
        raise AssertionError(
            f"{name} did not start in {self.START_ATTEMPTS} attempts:\n"
            + (self.folder / f"{name}-attempt{self.START_ATTEMPTS}.log").read_text()[-3000:]
        )

    def _start(self, name: str, head: bool, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=80000000", "--block"]
        ports = ["--metrics-export-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())]
        if head:
            ports += [f"--port={self.port}", "--ray-client-server-port", str(free_port())]
            args = (f"--temp-dir={self.temp}", "--include-dashboard=false", *args)
        return subprocess.Popen(
            [str(BIN / "ray"), "start", *args, *common, *ports],
            env=child_env(self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def __enter__(self) -> LoopbackCluster:
        self.start("--head", head=True)
        self.start(f"--address={self.address}")
        return self

    def processes(self, node: subprocess.Popen) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == node.pid:
                    found.append(p)
            except (ProcessLookupError, PermissionError):
                continue
        return found

    def _end(self, node: subprocess.Popen) -> None:
        for p in self.processes(node):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        node.wait(timeout=60)

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:  # never `ray stop`: it stops every Ray on the machine
            self._end(node)
        subprocess.run(["rm", "-rf", str(self.temp)], check=False)


def test_a_node_killed_mid_cell_costs_one_retry_not_a_cell(tmp_path: Path, uninterrupted: Path) -> None:
    env = ray_env()
    with LoopbackCluster(tmp_path, env) as cluster:
        second = cluster.nodes[1]
        proc = start_study(tmp_path, env, "--address", cluster.address)
        on_second = lambda: {p.pid for p in cluster.processes(second)}  # noqa: E731
        cell = wait_for(
            "a cell training on the second node",
            lambda: training_cell(tmp_path, on_second),
            proc,
            tmp_path / "study.log",
        )
        assert isinstance(cell, Run)
        (raylet,) = [p for p in cluster.processes(second) if p.name() == "raylet"]
        with frozen(int(cell.data.tags["owner.pid"])):
            raylet.send_signal(signal.SIGKILL)
        assert second.wait(timeout=120) != 0  # `ray start --block` ends with its raylet
        assert proc.wait(timeout=1200) == 0, log_of(tmp_path)

    text = log_of(tmp_path)
    assert "Ray cluster at 127.0.0.1" in text and "2 nodes, 2 CPU slots" in text
    runs = {r.info.run_id: r for r in cell_runs(tmp_path)}
    killed = runs[cell.info.run_id]
    first_node = cell.data.tags["study.node"]
    assert killed.info.status == "FINISHED"  # the same run, taken over and continued
    assert killed.data.tags["study.attempt"] == "2"
    nodes = killed.data.tags["study.nodes"].split(",")
    assert nodes[0] == first_node and nodes[1] != first_node and len(nodes) == 2
    assert int(killed.data.tags["resumed_from_step"]) >= int(cell.data.tags["resume_step"])
    assert killed.data.tags["taken_over_from"].startswith(cell.data.tags["owner.pid"] + "@")
    assert numbers(tmp_path) == numbers(uninterrupted)
    assert report_table(tmp_path) == report_table(uninterrupted)

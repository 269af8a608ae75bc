"""Who trains a run: owner tags and heartbeats, whether the owner still lives, and claims that
let one process at a time train a run or a study cell."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from resnet_mnist.tracking import names
from resnet_mnist.tracking.sqlite import sqlite_path

#: A training process refreshes its run's heartbeat at least this often while it trains.
HEARTBEAT_S = 30
#: A run on another host whose heartbeat is older than this is taken to have lost its owner.
STALE_AFTER_S = 300


def owner_tags() -> dict[str, str]:
    """Who owns a run: this host, this process and when it started (a reused pid is not the
    same owner), and a first heartbeat."""
    import socket

    import psutil

    return {
        names.OWNER_HOST: socket.gethostname(),
        names.OWNER_PID: str(os.getpid()),
        names.OWNER_STARTED: f"{psutil.Process().create_time():.3f}",
        names.OWNER_HEARTBEAT: f"{time.time():.0f}",
    }


def owner_alive(tags: dict[str, str], now: float | None = None) -> bool | None:
    """Whether the process that owns a RUNNING run still exists.

    Same host: the process with that pid and start time is alive. Another host: its heartbeat is
    younger than STALE_AFTER_S. None when the run records no owner (made by another tool).
    """
    import socket

    import psutil

    if names.OWNER_PID not in tags:
        return None
    if tags.get(names.OWNER_HOST) == socket.gethostname():
        try:
            started = psutil.Process(int(tags[names.OWNER_PID])).create_time()
        except (psutil.NoSuchProcess, ValueError):
            return False
        return abs(started - float(tags.get(names.OWNER_STARTED, "0"))) < 1.0
    heartbeat = float(tags.get(names.OWNER_HEARTBEAT, "0"))
    return (now or time.time()) - heartbeat < STALE_AFTER_S


class RunBusy(RuntimeError):
    """Another process is training this run."""


@contextmanager
def run_claim(run_id: str) -> Iterator[None]:
    """Hold a run for this process while it trains (sqlite store: an exclusive file lock beside
    the database, released by the OS when the process dies). Raises RunBusy when another process
    holds it. Other stores rely on the owner tags and the heartbeat."""
    with claim(f"run-{run_id}", f"run {run_id} is being trained by another process"):
        yield


@contextmanager
def claim(name: str, busy: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold `name` (a run, a study cell) for this process in this store: on sqlite an exclusive
    file lock beside the database, which the OS releases when its holder dies, so a claim is
    never left behind by a killed process. Waits up to `wait_s` for a holder to finish or die,
    then raises RunBusy(`busy`). Other stores hold nothing here: owner tags and heartbeats decide."""
    import mlflow

    db = sqlite_path(mlflow.get_tracking_uri())
    if db is None:
        yield
        return
    import fcntl

    folder = db.with_name(f"{db.name}.locks")
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    # The lock files stay: removing one while another process opens it would let two hold it.
    with open(folder / name.replace("/", "_"), "w") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunBusy(busy) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

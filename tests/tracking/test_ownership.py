"""Who trains a run: an owner that lives (same host: its process; elsewhere: its heartbeat), and
one claim per run."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from resnet_mnist.tracking.ownership import STALE_AFTER_S, RunBusy, owner_alive, owner_tags, run_claim


def test_owner_alive_from_process_or_heartbeat() -> None:
    mine = owner_tags()
    assert owner_alive(mine) is True
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    assert owner_alive(mine | {"owner.pid": gone.stdout.strip()}) is False
    # a reused pid is another process: its start time differs
    assert owner_alive(mine | {"owner.started": "1.0"}) is False
    elsewhere = mine | {"owner.host": "another-machine"}
    now = time.time()
    assert owner_alive(elsewhere | {"owner.heartbeat": f"{now - 10:.0f}"}, now) is True
    assert owner_alive(elsewhere | {"owner.heartbeat": f"{now - STALE_AFTER_S - 1:.0f}"}, now) is False
    assert owner_alive({}) is None


def test_one_claim_per_run(store: str) -> None:
    with run_claim("r1"):
        with pytest.raises(RunBusy, match="run r1 is being trained by another process"):
            with run_claim("r1"):
                pass
        with run_claim("r2"):
            pass
    with run_claim("r1"):
        pass

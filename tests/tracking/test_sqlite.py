"""A sqlite store shared by programs: one that another program is creating is waited for, not
reported as damaged, and one this project creates is never seen half-made."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient

from resnet_mnist.tracking import sqlite
from resnet_mnist.tracking.sqlite import open_store, schema_state
from tests.conftest import BIN, child_env

#: Another program (an `mlflow ui`, a script) opening a fresh store: plain MLflow, whose schema
#: migration stops half-way until the test lets it go on, as a slow machine's would.
PAUSED_MIGRATION = """
import sys, time
from pathlib import Path
import alembic.command
from alembic.script import ScriptDirectory

gate, real = Path(sys.argv[2]), alembic.command.upgrade

def paused(config, revision, **kw):
    chain = list(ScriptDirectory.from_config(config).walk_revisions())
    real(config, chain[len(chain) // 2].revision)
    gate.with_suffix(".paused").touch()
    while not gate.exists():
        time.sleep(0.05)
    real(config, revision, **kw)

alembic.command.upgrade = paused
from mlflow.tracking import MlflowClient
MlflowClient(sys.argv[1]).search_experiments(max_results=1)
"""


def revision(db: Path) -> str | None:
    state = schema_state(db)
    return state[0] if state else None


def wait_on(what: str, check, procs: list[subprocess.Popen], limit_s: float = 300) -> None:
    """Poll until `check()` holds; fail when one of `procs` ended first (or after limit_s, a
    bound for a hung test, not a timing)."""
    deadline = time.monotonic() + limit_s
    while not check():
        for proc in procs:
            assert proc.poll() is None, f"ended ({proc.returncode}) before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {limit_s} s"
        time.sleep(0.05)


@pytest.mark.slow  # two real programs
def test_a_store_another_program_is_creating_is_waited_for(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    gate = tmp_path / "go"
    other = subprocess.Popen(
        [sys.executable, "-c", PAUSED_MIGRATION, uri, str(gate)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_on("the other program's half-way point", gate.with_suffix(".paused").exists, [other])
    assert revision(db) not in (None, _get_latest_schema_revision())
    errors = tmp_path / "ours.err"
    with open(errors, "w") as err:
        ours = subprocess.Popen(
            [str(BIN / "resnet-mnist"), "links"],
            cwd=tmp_path,
            env=child_env({"MLFLOW_TRACKING_URI": uri}),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        wait_on("our wait", lambda: "waiting while another program" in errors.read_text(), [ours, other])
    gate.touch()
    assert other.wait(timeout=300) == 0, other.communicate()
    assert ours.wait(timeout=300) == 0, errors.read_text()
    assert "cannot be opened" not in errors.read_text()
    assert revision(db) == _get_latest_schema_revision()
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]


def test_a_new_store_is_made_whole_and_in_place(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "mlflow.db"
    open_store(f"sqlite:///{db}")
    assert revision(db) == _get_latest_schema_revision()
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]
    assert [e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()] == ["Default"]


def test_a_file_no_one_is_creating_is_opened_as_it_is(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sqlite, "STILL_S", 0.3)
    db = tmp_path / "mlflow.db"
    db.touch()  # an empty file: sqlite's empty database, which MLflow migrates in place
    open_store(f"sqlite:///{db}")
    assert "waiting while another program creates or upgrades it" in capsys.readouterr().err
    assert revision(db) == _get_latest_schema_revision()


def test_a_file_that_is_no_database_is_not_waited_for(tmp_path: Path, capsys) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a database" * 100)
    assert schema_state(db) is None
    sqlite.wait_while_created(db)  # returns at once: MLflow then reports the damaged file
    assert capsys.readouterr().err == ""

"""A sqlite tracking store shared by several processes: its set-up lock, and its creation.

MLflow creates a new store in place, one schema migration after another, and does nothing about
a second process doing the same: two programs that open a fresh `mlflow.db` at once (the study
and an `mlflow ui`, or a script that polls it) collide mid-migration ("table
_alembic_tmp_latest_metrics already exists", "Online migration expected to match one row"), and
the loser's half-done step can break the winner's store. So a store that does not exist is built
beside its place (`mlflow.db.<pid>.new`) and linked into place only if nothing is there yet: any
other program then finds no file or a complete one. A file that another program is still creating
is waited for, read-only, while its schema moves towards MLflow's current revision; one that has
stopped moving (its creator died, or it is an empty file) is left to MLflow to open as it is.
Among this project's processes, `store_lock` serialises the rest of first-time set-up.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: A schema that has not moved for this long is no longer being created: migration steps on a new
#: store take milliseconds to a second or two, even on a slow, busy machine.
STILL_S = 15.0
#: How often a store being created elsewhere is looked at.
LOOK_S = 0.1

PREFIX = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, or None for any other store."""
    return Path(uri.removeprefix(PREFIX)) if uri.startswith(PREFIX) else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise first-time set-up (an experiment or dataset created once) between this project's
    processes: a file lock beside the database that the first takes and the others wait on."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_store(uri: str) -> None:
    """Open the store at `uri` (MLflow checks its schema); a sqlite one is created whole if new,
    and waited for while another program creates it. MLflow's errors pass through."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is not None:
        if not db.exists():
            build_aside(db)
        wait_while_created(db)
    with store_lock(uri):
        MlflowClient(uri).search_experiments(max_results=1)


def build_aside(db: Path) -> None:
    """Create a complete store beside `db` and link it into place unless a file got there first.

    The link is atomic and fails on an existing name, so no program ever sees half a schema at
    `db` from this process. (MLflow keeps a pooled connection to the aside name for the life of
    the process: one idle handle on the same file, which sqlite handles across names.)
    """
    from mlflow.tracking import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    aside = db.with_name(f"{db.name}.{os.getpid()}.new")
    try:
        MlflowClient(f"{PREFIX}{aside}").search_experiments(max_results=1)
        try:
            os.link(aside, db)
        except FileExistsError:
            pass  # another program created it meanwhile: `wait_while_created` takes over
    finally:
        aside.unlink(missing_ok=True)


def schema_state(db: Path) -> tuple[str | None, int] | None:
    """The store's schema revision (None before it has one) and its number of tables, read
    without writing or waiting; a store busy with a migration step reads as (None, -1). None
    when the file is not a sqlite database at all: damaged, not being created."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0)
    except sqlite3.Error:
        return None, -1
    try:
        tables = con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            row = None
        return (row[0] if row else None), tables
    except sqlite3.OperationalError:
        return None, -1  # locked by a writer: a migration step in progress
    except sqlite3.DatabaseError:
        return None  # "file is not a database"
    finally:
        con.close()


def wait_while_created(db: Path) -> None:
    """Return once `db` is at MLflow's schema revision, or once it has not changed for STILL_S
    (no one is creating it; MLflow then opens it as it is). Says so when it waits."""
    # MLflow's own head revision, the one its store checks on every open (not public API).
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    state = schema_state(db)
    if state is None or state[0] == head:
        return
    print(
        f"the tracking store {db} is not at MLflow's schema yet: waiting while another program "
        "creates or upgrades it",
        file=sys.stderr,
        flush=True,
    )
    since = time.monotonic()
    while state is not None and state[0] != head and time.monotonic() - since < STILL_S:
        time.sleep(LOOK_S)
        now = schema_state(db)
        if now != state:
            state, since = now, time.monotonic()

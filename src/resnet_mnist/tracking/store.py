"""Access to the tracking store: which one, whether it answers, and writing to it safely.

The default store is embedded (`sqlite:///mlflow.db`, artifacts in `./mlruns`);
`$MLFLOW_TRACKING_URI` switches to a server. Several processes may share one sqlite file: its
first-time set-up is serialised by a file lock and "database is locked" writes are retried.
MLflow is imported where it is used, so that the CLI starts (and refuses bad input) without it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

from resnet_mnist.runtime.env import overridden
from resnet_mnist.runtime.errors import ProjectError, first_line
from resnet_mnist.tracking import names
from resnet_mnist.tracking.views import CURVES_VIEW, save_curves_view

T = TypeVar("T")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrackingUnavailable(ProjectError, RuntimeError):
    """The tracking store cannot be reached; raised before any training starts."""


def configure() -> str:
    """Use `$MLFLOW_TRACKING_URI`, else the embedded store `sqlite:///mlflow.db` (+ `./mlruns`).
    A server's calls give up after about a minute (`offline.bound_retries`)."""
    import mlflow

    from resnet_mnist.tracking.offline import bound_retries

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith(("http://", "https://")):
        bound_retries()
    quiet_retried_locks()
    mlflow.set_tracking_uri(uri)
    return uri


class RetriedLock(logging.Filter):
    """Drops MLflow's traceback for a sqlite write refused with "database is locked".

    MLflow logs every such refusal with its traceback (`mlflow.store.db.utils`) before raising;
    `retry_locked` writes again, so the traceback is noise, and a frightening one: seen when a
    second Ctrl-C under `--nproc 2` landed mid-write and the run's ending waited on the lock.
    A write that still fails after its retries is reported by the command in one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "database is locked" not in record.getMessage()


def quiet_retried_locks() -> None:
    """Install `RetriedLock` on MLflow's sqlite session logger, once per process."""
    log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, RetriedLock) for f in log.filters):
        log.addFilter(RetriedLock())


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise first-time set-up of a sqlite store between processes.

    Several processes opening a new `mlflow.db` at once all run MLflow's schema migrations and
    collide ("duplicate column name"); the same goes for creating one experiment or dataset twice.
    A file lock beside the database makes the first process do it and the others wait.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def retry_locked(call: Callable[[], T], attempts: int = 20) -> T:
    """Retry a store write that sqlite refused with "database is locked" (another writer)."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - MLflow wraps sqlite errors in several types
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


def already_exists(exc: Exception) -> bool:
    """Whether a store write failed because another client wrote the same thing first."""
    text = str(exc)
    return any(
        mark in text
        for mark in ("RESOURCE_ALREADY_EXISTS", "already exists", "UNIQUE constraint", "UniqueViolation")
    )


def retry_conflicts(call: Callable[[], T], attempts: int = 5) -> T:
    """Retry a write that collided with the same write by another client (a dataset, a tag
    added by two processes at once through a tracking server): the second try finds it there."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - MLflow reports the conflict in several types
            if not already_exists(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


#: How long a server that took the connection may take to answer the probe: MLflow's own default
#: request timeout. A team server busy with several trainings starting at once (seen: four on two
#: cores) answers in tens of seconds, and must not be taken for one that is down.
BUSY_SERVER_S = 120


def check_store(timeout_s: int = 5) -> str:
    """Fail fast, with the URI in the message, when the tracking store does not answer.

    MLflow's HTTP client retries with back-off for minutes by default; for this one probe the
    retries are off and the timeout short (unless the user set them), so a server that is not
    there fails in seconds. One that accepted the connection but is slow to answer (a read
    timeout) is alive: it is asked once more, patiently. A sqlite store is created (schema
    migrated) here, under a lock.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from resnet_mnist.tracking.offline import set_by_user

    probe = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    probe = {k: v for k, v in probe.items() if not set_by_user(k)}  # the user's own values win
    patient = probe | (
        {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(BUSY_SERVER_S)} if "MLFLOW_HTTP_REQUEST_TIMEOUT" in probe else {}
    )
    uri = configure()
    if not uri.startswith(("http://", "https://")):
        try:
            with store_lock(uri):
                MlflowClient().search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - sqlite/SQLAlchemy/MLflow errors all mean this
            raise TrackingUnavailable(
                f"the tracking store {uri} cannot be opened ({first_line(exc)}). If it is a damaged file, "
                "move it aside (runs in it may be lost) or point MLFLOW_TRACKING_URI elsewhere."
            ) from None
        return uri
    try:
        ask_server(probe, patient)
    except (MlflowException, OSError) as exc:
        if wants_login(exc, uri):
            raise TrackingUnavailable(
                f"the tracking server at {uri} requires a login (401 Unauthorized): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        raise TrackingUnavailable(
            f"the tracking server at {uri} does not answer ({first_line(exc)}). Start it (`make server`) "
            "or unset MLFLOW_TRACKING_URI to use the local sqlite:///mlflow.db store."
        ) from None
    return uri


def ask_server(probe: dict[str, str], patient: dict[str, str]) -> None:
    """One small request to the server under the `probe` settings; after a read timeout, once
    more under the `patient` ones (unless they are the same)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        with overridden(probe):
            MlflowClient().search_experiments(max_results=1)
    except (MlflowException, OSError) as exc:
        if patient == probe or not timed_out_reading(exc):
            raise
        with overridden(patient):
            MlflowClient().search_experiments(max_results=1)


def wants_login(exc: BaseException, uri: str) -> bool:
    """Whether the server answered 401: the status as a number of its own, not three digits of the
    URI's port (a server on port 44011 was once taken for one asking for a login)."""
    text = str(exc).replace(uri, "")
    return "Unauthorized" in text or re.search(r"(?<![\d:])401(?!\d)", text) is not None


def timed_out_reading(exc: BaseException) -> bool:
    """Whether `exc` is a request the server accepted but did not answer in time (urllib3's
    ReadTimeoutError, which MLflow passes on only as text), rather than a refused connection."""
    return "Read timed out" in str(exc) or "ReadTimeoutError" in str(exc)


#: MLflow 3's UI opens an experiment in its GenAI view unless the experiment says it holds model
#: training; the tag alone does not switch the view, the URL query below does.
EXPERIMENT_KIND = {names.EXPERIMENT_KIND: "custom_model_development"}
TRAINING_VIEW = "workflowType=machine_learning"
UI_DEFAULT = "http://127.0.0.1:5000"
CURVES_QUERY = f"compareRunsMode=CHART&viewStateShareKey={CURVES_VIEW}"


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created on first use (under the store lock), tagged as a
    model-training experiment and given the training-curves chart view."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None:
        with store_lock(mlflow.get_tracking_uri()):
            found = client.get_experiment_by_name(name)
            if found is None:
                try:
                    created = client.create_experiment(name, tags=EXPERIMENT_KIND)
                except MlflowException as exc:
                    # A tracking server has no lock of ours: another client created it first.
                    if not already_exists(exc):
                        raise
                    found = client.get_experiment_by_name(name)
                else:
                    retry_conflicts(partial(save_curves_view, client, created, EXPERIMENT_KIND))
                    return created
    if found is None:
        raise TrackingUnavailable(f"experiment {name!r} could be neither found nor created")
    mark_training_experiment(found.experiment_id)
    return found.experiment_id


def mark_training_experiment(experiment_id: str) -> None:
    """Tag an experiment (e.g. one `mlflow run --experiment-name` made) as model training, with
    the training-curves chart view.

    Several trainings may start at once on a new experiment: its creator and the others then
    write the same tags together, and on a server one insert loses on the unique key (seen with
    PostgreSQL: four trainings, one ended with `UniqueViolation` on `experiment_tag_pk`). The
    loser writes again, over a row that now exists, with the same value.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    if tags.get(names.EXPERIMENT_KIND) is None:
        for key, value in EXPERIMENT_KIND.items():
            retry_conflicts(partial(client.set_experiment_tag, experiment_id, key, value))
    retry_conflicts(partial(save_curves_view, client, experiment_id, tags))


def ui_link(
    experiment: str, run_id: str | None = None, base: str | None = None, *, curves: bool = False
) -> str:
    """A link that opens the MLflow UI's Model training view on an experiment (or one run); with
    `curves`, the experiment's chart view with the training curves first (`tracking.views`).

    The base is the tracking server when there is one, else where `make ui` serves the local
    store.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    base = base or (uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT)
    if curves:
        return f"{base}/#/experiments/{experiment}/runs?{TRAINING_VIEW}&{CURVES_QUERY}"
    page = f"experiments/{experiment}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}/#/{page}?{TRAINING_VIEW}"


def take_project_run() -> str | None:
    """The run `mlflow run` created for this process (it passes `MLFLOW_RUN_ID`), if any.

    Called once, at the process boundary: the variable is removed so that MLflow's fluent API
    never resumes that run by itself; the caller decides which run it becomes.
    """
    return os.environ.pop("MLFLOW_RUN_ID", None) or None


# -- run ownership ------------------------------------------------------------------------------

#: A training process refreshes its run's heartbeat at least this often while it trains.
HEARTBEAT_S = 30
#: A run on another host whose heartbeat is older than this is taken to have lost its owner.
STALE_AFTER_S = 300
OWNER_TAGS = (names.OWNER_HOST, names.OWNER_PID, names.OWNER_STARTED, names.OWNER_HEARTBEAT)


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

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
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

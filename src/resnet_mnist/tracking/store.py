"""Access to the tracking store: which one, whether it answers, and writing to it safely.

The default store is embedded (`sqlite:///mlflow.db`, artifacts in `./mlruns`);
`$MLFLOW_TRACKING_URI` switches to a server. Several processes may share one sqlite file: it is
created whole (`tracking.sqlite`), and "database is locked" writes are retried. MLflow is imported
where it is used, so that the CLI starts (and refuses bad input) without it.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import TypeVar

from resnet_mnist.runtime.env import overridden
from resnet_mnist.runtime.errors import ProjectError, first_line
from resnet_mnist.tracking.sqlite import open_store

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
    timeout) is alive: it is asked once more, patiently. A sqlite store is created here, whole
    (`tracking.sqlite.open_store`).
    """
    from mlflow.exceptions import MlflowException

    from resnet_mnist.tracking.offline import set_by_user

    probe = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    probe = {k: v for k, v in probe.items() if not set_by_user(k)}  # the user's own values win
    patient = probe | (
        {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(BUSY_SERVER_S)} if "MLFLOW_HTTP_REQUEST_TIMEOUT" in probe else {}
    )
    uri = configure()
    if not uri.startswith(("http://", "https://")):
        try:
            open_store(uri)
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


def take_project_run() -> str | None:
    """The run `mlflow run` created for this process (it passes `MLFLOW_RUN_ID`), if any.

    Called once, at the process boundary: the variable is removed so that MLflow's fluent API
    never resumes that run by itself; the caller decides which run it becomes.
    """
    return os.environ.pop("MLFLOW_RUN_ID", None) or None

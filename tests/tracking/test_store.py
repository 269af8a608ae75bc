"""Store access: the probe that tells a busy tracking server from one that is down (and one that
asks for a login), and quiet retries of locked sqlite writes."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

from resnet_mnist.tracking.offline import RETRY_BOUND
from resnet_mnist.tracking.store import TrackingUnavailable, check_store


def test_mlflow_prints_no_traceback_for_a_locked_write_that_is_retried(store: str, caplog) -> None:
    """MLflow logs each "database is locked" with its traceback; the project retries such writes
    (`retry_locked`), so once the store is configured that record is dropped, and no other."""
    import logging

    from resnet_mnist.tracking.store import configure

    configure()
    log = logging.getLogger("mlflow.store.db.utils")
    with caplog.at_level(logging.ERROR, logger="mlflow.store.db.utils"):
        try:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        except RuntimeError as exc:
            log.exception("SQLAlchemy database error. The following exception is caught.\n%s", exc)
        log.error("SQLAlchemy database error. The following exception is caught.\n%s", "disk I/O error")
    assert [r.getMessage().splitlines()[-1] for r in caplog.records] == ["disk I/O error"]
    configure()
    assert len(log.filters) == 1


class SlowServer(http.server.BaseHTTPRequestHandler):
    """Answers every search with no experiments, but only after `delay_s`, and counts requests."""

    delay_s = 2.0
    asked: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's spelling
        self.asked.append(self.path)
        time.sleep(self.delay_s)
        body = json.dumps({"experiments": []}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the probe gave up waiting, as it should have

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowServer)
    SlowServer.asked = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for key in RETRY_BOUND:  # none of the user's, and the ones the probe sets are undone after
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield SlowServer.asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_server_is_waited_for_and_one_that_is_down_is_not(slow_server: list[str]) -> None:
    # it took the connection but answers after the probe's timeout: asked again, patiently
    check_store(timeout_s=1)
    assert len(slow_server) == 2 and all("experiments/search" in p for p in slow_server)
    # the probe's settings are undone, and the project's bound on later calls is not the user's
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == RETRY_BOUND["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    SlowServer.asked.clear()
    check_store(timeout_s=1)
    assert len(slow_server) == 2


def test_the_users_own_timeout_is_the_only_wait(slow_server: list[str], monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(TrackingUnavailable, match="does not answer"):
        check_store()
    assert len(slow_server) == 1


@pytest.mark.parametrize(
    ("message", "login"),
    [
        ("API request to endpoint /api/2.0/mlflow/runs/get failed with error code 401 != 200", True),
        ("401 Client Error: Unauthorized for url: http://127.0.0.1:5000/api/2.0/mlflow/x", True),
        ("HTTPConnectionPool(host='127.0.0.1', port=44011): Read timed out. (read timeout=1)", False),
        ("Max retries exceeded with url: http://127.0.0.1:40199/api/2.0/mlflow/x", False),
        ("Connection refused by http://127.0.0.1:401/api", False),
    ],
)
def test_a_login_is_asked_for_only_by_a_401_status(message: str, login: bool) -> None:
    from resnet_mnist.tracking.store import wants_login

    assert wants_login(RuntimeError(message), "http://127.0.0.1:44011") is login

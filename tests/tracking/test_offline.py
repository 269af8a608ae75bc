"""The offline spool: bounded retries, what counts as a gone server, what is kept and how it is
replayed (the server killed and restarted for real is in test_reliability)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from resnet_mnist.core.distributed import free_port
from resnet_mnist.tracking.offline import (
    RETRY_BOUND,
    Spool,
    TrackingLost,
    bound_retries,
    state_root,
    unreachable,
)


def test_the_default_bound_is_about_a_minute_and_users_settings_win(monkeypatch) -> None:
    from urllib3.exceptions import NewConnectionError
    from urllib3.util.retry import Retry

    retries, factor = (
        int(RETRY_BOUND[f"MLFLOW_HTTP_REQUEST_{k}"]) for k in ("MAX_RETRIES", "BACKOFF_FACTOR")
    )
    retry, waited = Retry(total=retries, backoff_factor=factor), 0.0
    for _ in range(retries):
        retry = retry.increment("GET", "/", error=NewConnectionError(None, "refused"))
        waited += retry.get_backoff_time()
    assert 45 <= waited <= 75  # plus up to 1 s of jitter per retry
    with pytest.raises(Exception, match="exhausted|Max retries"):
        retry.increment("GET", "/", error=NewConnectionError(None, "refused"))

    for key in RETRY_BOUND:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    bound_retries()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == RETRY_BOUND["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


def test_a_dead_server_is_unreachable_a_refusal_is_not(store: str, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception) as dead:
        MlflowClient(f"http://127.0.0.1:{free_port()}").search_experiments()
    assert unreachable(dead.value)
    with pytest.raises(Exception) as missing:
        MlflowClient(store).get_run("0" * 32)
    assert not unreachable(missing.value)
    assert not unreachable(ValueError("Connection refused"))  # not an API request


def test_the_spool_keeps_metrics_and_checkpoint_whole(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RESNET_MNIST_STATE_DIR", str(tmp_path))
    assert state_root() == tmp_path
    spool = Spool("abc").open("http://server:5000", "connection refused")
    spool.add([Metric("train_loss", 0.5, 1, 3), Metric("train_loss", 0.4, 2, 4)])
    with open(spool.path / "metrics.jsonl", "a") as fh:
        fh.write('["train_loss", 0.3, 3')  # a process killed while writing its last line
    assert [(m.key, m.value, m.step) for m in spool.metrics()] == [
        ("train_loss", 0.5, 3),
        ("train_loss", 0.4, 4),
    ]
    spool.keep_checkpoint({"state": {"step": 5}, "w": torch.ones(2)})
    assert sorted(p.name for p in spool.path.iterdir()) == ["metrics.jsonl", "resume.pt", "run.json"]
    assert Spool.find("abc") is not None and Spool.find("other") is None
    assert not spool.released
    spool.release()
    assert spool.released and spool.meta()["tracking_uri"] == "http://server:5000"

    lost = TrackingLost(spool, 5, ConnectionRefusedError("Connection refused"))
    text = " ".join(str(lost).split())
    assert "stopped answering (connection refused)" in text and "2 unsent metric values" in text
    assert str(spool.path) in text and "resnet-mnist train --resume abc" in text


def test_replay_sends_only_what_the_server_lacks(store: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RESNET_MNIST_STATE_DIR", str(tmp_path / "state"))
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("offline")).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, [Metric("train_loss", float(s), now, s) for s in range(5)])
    spool = Spool(run_id).open(store, "gone")
    # Steps 3 and 4 reached the server before it went away; 5..7 did not.
    spool.add(
        [Metric("train_loss", float(s), now, s) for s in range(3, 8)] + [Metric("dev_accuracy", 0.9, now, 7)]
    )
    spool.keep_checkpoint({"state": {"step": 8}})
    assert spool.replay(client) == 4
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(8))
    assert [m.step for m in client.get_metric_history(run_id, "dev_accuracy")] == [7]
    run = client.get_run(run_id)
    assert run.data.tags["resume_step"] == "8" and run.data.tags["offline.replayed"] == "4"
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/resume.pt"]
    assert not spool.path.exists() and Spool.find(run_id) is None

    again = Spool(run_id).open(store, "gone")  # a replay cut short and repeated adds nothing
    again.add([Metric("train_loss", float(s), now, s) for s in range(3, 8)])
    assert again.replay(client) == 0
    assert len(client.get_metric_history(run_id, "train_loss")) == 8

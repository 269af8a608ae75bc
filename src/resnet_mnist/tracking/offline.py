"""When the tracking server goes away mid-run: bounded retries, then what could not be sent is
kept on local disk (the `Spool`) and sent by `train --resume` once the server is back.

MLflow has no offline mode, and its HTTP client retries each call for minutes by default. Here a
call gives up after about a minute (`bound_retries`); the tracker then stops training at the next
step boundary, keeps every unsent metric and the resumable checkpoint in the spool, and the
command exits 75 saying how to continue. The run stays RUNNING on the server with a dead owner,
which is what lets `train --resume` take it over; the replay sends only the steps the server does
not have, so the histories end complete and without duplicates.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from mlflow.entities import Metric

from resnet_mnist.core.trainer import Callback, Trainer
from resnet_mnist.runtime.errors import ProjectError
from resnet_mnist.tracking import names
from resnet_mnist.tracking.batches import log_metrics_batched
from resnet_mnist.tracking.history import last_logged_steps

STATE_ENV = "RESNET_MNIST_STATE_DIR"
#: MLflow's HTTP retry settings for this project's processes (a user's own values win): about a
#: minute per call against a server that refuses connections (back-off 0+4+8+16+32 s plus jitter),
#: instead of MLflow's default of about four minutes with a two-minute timeout per attempt.
RETRY_BOUND = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
EXIT_CODE = 75  # EX_TEMPFAIL: try again later
_GONE = (
    "failed with exception",
    "Max retries exceeded",
    "Connection refused",
    "Connection aborted",
    "Read timed out",
    "RemoteDisconnected",
    "NewConnectionError",
    "502 ",
    "503 ",
    "504 ",
)


def bound_retries() -> None:
    """Bound MLflow's per-call retries (see RETRY_BOUND) unless the user set their own."""
    for key, value in RETRY_BOUND.items():
        os.environ.setdefault(key, value)


def set_by_user(key: str) -> bool:
    """Whether `key` is in the environment with a value of the user's (not one bound_retries put
    there earlier in this process)."""
    return key in os.environ and os.environ[key] != RETRY_BOUND.get(key)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the tracking server could not be reached or did not
    answer, as opposed to refusing the request (bad input, a missing run, a login)."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, ConnectionError)):
            return True
        text = str(seen)
        if "API request to" in text and any(mark in text for mark in _GONE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class TrackingLost(ProjectError, RuntimeError):
    """The tracking server went away during a run; what it did not get is in `spool`."""

    exit_code = EXIT_CODE

    def __init__(self, spool: Spool, step: int, cause: BaseException) -> None:
        self.spool, self.step = spool, step
        kept = spool.metric_count()
        super().__init__(
            f"the tracking server {spool.meta().get('tracking_uri', '')} stopped answering "
            f"({_cause_line(cause)}); training stopped at step {step}. Kept on this disk: the "
            f"resumable checkpoint and {kept} unsent metric value{'s' * (kept != 1)} in "
            f"{spool.path}. When the server answers again, run `resnet-mnist train --resume "
            f"{spool.run_id}`: it sends them to the same run and continues training."
        )


def _cause_line(exc: BaseException) -> str:
    """What went wrong in a few words: MLflow's message repeats the URL and urllib3's chain."""
    text = " ".join(str(exc).split())
    for mark, says in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("RemoteDisconnected", "connection dropped"),
        ("Connection aborted", "connection dropped"),
    ):
        if mark in text:
            return says
    for code in ("502", "503", "504"):
        if f"{code} " in text:
            return f"HTTP {code}"
    return text[:200] + ("…" if len(text) > 200 else "")


def state_root() -> Path:
    """Where kept runs live: $RESNET_MNIST_STATE_DIR, else $XDG_STATE_HOME/resnet-mnist, else
    ~/.local/state/resnet-mnist (state that must survive, not a cache)."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "resnet-mnist"


class Spool:
    """One run's kept metrics (`metrics.jsonl`, appended), resumable checkpoint (`resume.pt`) and
    what it was kept from (`run.json`). Every write is complete or absent: the checkpoint and the
    metadata are replaced atomically, and a torn last metrics line is ignored."""

    def __init__(self, run_id: str, root: Path | None = None) -> None:
        self.run_id = run_id
        self.path = (root or state_root()) / "offline" / run_id

    @classmethod
    def find(cls, run_id: str) -> Spool | None:
        spool = cls(run_id)
        return spool if (spool.path / "run.json").exists() else None

    def open(self, tracking_uri: str, reason: str) -> Spool:
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.meta() or {
            "run_id": self.run_id,
            "tracking_uri": tracking_uri,
            "since": time.time(),
            "reason": reason[:2000],
        }
        _replace(self.path / "run.json", json.dumps(meta, indent=1).encode())
        return self

    def meta(self) -> dict:
        try:
            return json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        """Record that the owner stopped training this run: it may be taken over even while that
        process lives on (a notebook, a test)."""
        _replace(
            self.path / "run.json", json.dumps(self.meta() | {"released_by": os.getpid()}, indent=1).encode()
        )

    @property
    def released(self) -> bool:
        return "released_by" in self.meta()

    def add(self, metrics: Iterable[Metric]) -> None:
        lines = "".join(json.dumps([m.key, m.value, m.timestamp, m.step]) + "\n" for m in metrics)
        if not lines:
            return
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())

    def metrics(self) -> list[Metric]:
        try:
            lines = (self.path / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        kept = []
        for line in lines:
            try:
                key, value, timestamp, step = json.loads(line)
            except ValueError:  # the last line of a process killed while writing it
                continue
            kept.append(Metric(key, float(value), int(timestamp), int(step)))
        return kept

    def metric_count(self) -> int:
        return len(self.metrics())

    def keep_checkpoint(self, checkpoint: dict) -> None:
        import io

        import torch

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        _replace(self.path / "resume.pt", buffer.getvalue())

    def keep_checkpoint_file(self, path: Path) -> None:
        _replace(self.path / "resume.pt", path.read_bytes())

    @property
    def checkpoint(self) -> Path | None:
        path = self.path / "resume.pt"
        return path if path.exists() else None

    def replay(self, client) -> int:  # noqa: ANN001 - an MlflowClient
        """Send the kept metrics the server does not have yet (per metric, the steps after its
        last one there) and the kept checkpoint as the run's `checkpoints/resume.pt`; then forget
        them. Safe to repeat after a failure half-way. Returns how many values were sent."""
        run_id, pending = self.run_id, self.metrics()
        last = last_logged_steps(client, run_id, {m.key for m in pending})
        todo = [m for m in pending if m.step > last[m.key]]
        log_metrics_batched(client, run_id, todo)
        if self.checkpoint is not None:
            from resnet_mnist.tracking.checkpoints import load_checkpoint  # torch: only with a checkpoint

            step = load_checkpoint(self.checkpoint)["state"]["step"]
            client.log_artifact(run_id, str(self.checkpoint), "checkpoints")
            client.set_tag(run_id, names.RESUME_STEP, str(step))
        client.set_tag(run_id, names.OFFLINE_REPLAYED, str(len(todo)))
        self.remove()
        return len(todo)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _replace(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (a temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class StopWhenLost(Callback):
    """The policy for a tracking server that went away: training stops at its next step boundary
    (what it learned since is kept on local disk, and `train --resume` continues it). The logger
    only reports the loss (`server_lost`); this is where it is acted on."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None

    def on_start(self, trainer: Trainer, total_steps: int) -> None:
        self.trainer = trainer

    def server_lost(self) -> None:
        if self.trainer is not None:
            self.trainer.stop.set()

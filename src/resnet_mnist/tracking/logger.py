"""The callback that records a training run's events in MLflow: metrics, the owner's heartbeat,
the checkpoint files the checkpoint callback wrote (Lightning's `after_save_checkpoint`).

Store I/O only: no training decisions here. Per-step metrics are buffered and sent with
`MlflowClient.log_batch` whenever the Trainer reports its losses (every `log_steps`), so tracking
costs a handful of store writes per epoch. If the tracking server stops answering, the tracker
keeps what it could not send in an `offline.Spool` and asks the Trainer to stop at the next step
boundary (see `offline`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from resnet_mnist.core.calibration import Calibration
from resnet_mnist.core.trainer import Callback, Result
from resnet_mnist.tracking import names
from resnet_mnist.tracking.artifacts import naming
from resnet_mnist.tracking.batches import MAX_BATCH
from resnet_mnist.tracking.checkpoints import RESUME
from resnet_mnist.tracking.history import TIME_METRICS
from resnet_mnist.tracking.offline import Spool, TrackingLost, unreachable
from resnet_mnist.tracking.ownership import HEARTBEAT_S
from resnet_mnist.tracking.store import retry_locked

#: Scores of the best checkpoint (the logged model), linked to the split they were measured on.
MODEL_METRICS = {"best_dev_accuracy": "dev", "test_accuracy": "test", "test_loss": "test"}


class MlflowTracker(Callback):
    """Listens to the Trainer and writes metrics to one run in batches; store I/O only.

    `logged` (on resume) holds the last step already in the store per metric; those steps are not
    sent again, so the histories have no duplicates. `datasets` (split -> the run's dataset input)
    links dev and test scores to the split they were measured on, so that MLflow shows them per
    dataset. `spool` is set once the tracking server has stopped answering: from then on nothing
    is sent, everything is kept there, and `on_lost` is told (what to do about it is a policy of
    its own, `offline.StopWhenLost`).
    """

    def __init__(
        self,
        run_id: str,
        client: MlflowClient | None = None,
        logged: dict[str, int] | None = None,
        datasets: dict[str, mlflow.data.Dataset] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.buffer: list[Metric] = []
        self.log_seconds = 0.0
        self.resumed = logged is not None
        self.logged = logged or {}
        self.read_back: set[str] = set()
        self.on_lost = on_lost
        self.datasets = datasets or {}
        self.result: Result | None = None
        self.heartbeat = time.time()
        self.spool: Spool | None = None
        self.cause: BaseException | None = None

    def go_offline(self, exc: BaseException) -> None:
        """The server is gone: keep everything from now on, and say so (`on_lost`)."""
        if self.spool is None:
            self.spool = Spool(self.run_id).open(mlflow.get_tracking_uri(), f"{exc}")
            self.cause = exc
        if self.on_lost is not None:
            self.on_lost()

    @contextmanager
    def offline_on_loss(self) -> Iterator[None]:
        """Run store calls; if the server turns out to be gone, go offline instead of failing
        (any other error still fails)."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - MLflow reports a dead server in several types
            if not unreachable(exc):
                raise
            self.go_offline(exc)

    def lost(self, step: int, checkpoint: Callable[[], dict]) -> TrackingLost:
        """The error to end the command with once training has stopped at `step`: where things
        are kept. The training's `checkpoint()` is kept unless a stop already kept one."""
        assert self.spool is not None and self.cause is not None
        self.flush()
        if self.spool.checkpoint is None:
            self.spool.keep_checkpoint(checkpoint())
        self.spool.release()
        return TrackingLost(self.spool, step, self.cause)

    def _add(self, key: str, value: float, step: int) -> bool:
        """Buffer one value unless the store already has this step; says whether it did."""
        if step <= self.logged.get(key, -1):
            return False
        self.buffer.append(Metric(key, float(value), int(time.time() * 1000), int(step)))
        return True

    def flush(self) -> None:
        """Send the buffered metrics, and the owner's heartbeat when it is due (or keep them,
        once the server is gone)."""
        t0 = time.perf_counter()
        with self.offline_on_loss():
            while self.buffer and self.spool is None:
                chunk = self.buffer[:MAX_BATCH]
                retry_locked(partial(self.client.log_batch, self.run_id, metrics=chunk, synchronous=True))
                del self.buffer[: len(chunk)]
        if self.spool is not None:
            # The model's scores are logged again, with the model, by the resumed run's ending.
            self.spool.add(m for m in self.buffer if m.key not in MODEL_METRICS)
            self.buffer.clear()
            return
        if time.time() - self.heartbeat >= HEARTBEAT_S:
            self.heartbeat = time.time()
            retry_locked(
                lambda: self.client.set_tag(self.run_id, names.OWNER_HEARTBEAT, f"{self.heartbeat:.0f}")
            )
        self.log_seconds += time.perf_counter() - t0

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        self._add("train_loss", loss, step)

    def after_save_checkpoint(self, path: Path, step: int) -> None:
        """Upload the resumable checkpoint the checkpoint callback wrote (`checkpoints/resume.pt`,
        replaced at each save); keep it in the spool instead once the server is gone."""
        self.flush()
        if self.spool is None:
            with self.offline_on_loss():
                with naming(self.run_id, RESUME):
                    self.client.log_artifact(self.run_id, str(path), "checkpoints")
                self.client.set_tag(self.run_id, names.RESUME_STEP, str(step))
        if self.spool is not None:
            self.spool.keep_checkpoint_file(path)

    def on_log(self, step: int, epoch: int, loss: float, images_per_s: float) -> None:
        self.flush()

    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None:
        self._add("dev_loss", dev_loss, step)
        if self._add("dev_accuracy", dev_accuracy, step):
            self.flush()

    def on_epoch_end(self, epoch: int, mean_loss: float) -> None:
        self._add("train_epoch_loss", mean_loss, epoch)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Diagnostics, sent with the next batch; on resume, the steps of each series the store
        already has are first read back (they are not sent again)."""
        for key, value in metrics.items():
            if self.resumed and key not in self.read_back:
                self.read_back.add(key)
                self.logged[key] = max(
                    (m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1
                )
            self._add(key, value, step)

    def on_end(self, result: Result) -> None:
        """Timings at the last step; the scores wait for the model (`log_scores`)."""
        self.result = result
        self._add("best_step", result.best_step, result.best_step)
        for key in TIME_METRICS:
            self._add(key, getattr(result, key), result.steps)
        self.flush()
        self._add("tracking_log_seconds", self.log_seconds, result.steps)
        self.flush()

    def log_calibration(self, model_id: str, calibration: Calibration) -> None:
        """The test split's expected calibration error before and after the temperature, in the
        run and on the LoggedModel, at the best checkpoint's step."""
        if self.result is None:
            return
        now = int(time.time() * 1000)
        for key, value in calibration.metrics().items():
            self.buffer.append(self._at_best_step(key, value, now, model_id, "test"))
        self.flush()

    def log_scores(self, model_id: str | None) -> None:
        """The best checkpoint's dev and test scores at its step, in the run and, with the dataset
        each was measured on, on the LoggedModel `model_id` (when the model was logged)."""
        if self.result is None:
            return
        now = int(time.time() * 1000)
        for key, split in MODEL_METRICS.items():
            value = float(getattr(self.result, key))
            self.buffer.append(self._at_best_step(key, value, now, model_id, split if model_id else None))
        self.flush()

    def _at_best_step(
        self, key: str, value: float, now: int, model_id: str | None, split: str | None
    ) -> Metric:
        """A metric at the best checkpoint's step, on the LoggedModel `model_id` when given, with
        the dataset of `split` it was measured on."""
        assert self.result is not None
        dataset = self.datasets.get(split) if split else None
        return Metric(
            key,
            value,
            now,
            self.result.best_step,
            model_id=model_id,
            dataset_name=dataset.name if dataset else None,
            dataset_digest=dataset.digest if dataset else None,
        )

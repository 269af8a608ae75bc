"""The MLflow side of a training run: the callback that records the Trainer's events, and the
artifacts written around it (dataset inputs, complexity, curves, checkpoints, the model).

Store I/O only: no training decisions here. Per-step metrics are buffered and sent with
`MlflowClient.log_batch` whenever the Trainer reports its losses (every `log_steps`), so tracking
costs a handful of store writes per epoch. If the tracking server stops answering, the tracker
keeps what it could not send in an `offline.Spool` and asks the Trainer to stop at the next step
boundary (see `offline`).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.data.numpy_dataset import from_numpy
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from torch import nn

from resnet_mnist.config.settings import TrainConfig
from resnet_mnist.core import data as D
from resnet_mnist.core.calibration import Calibration
from resnet_mnist.core.complexity import Complexity, format_table
from resnet_mnist.core.diagnostics import GRAD_NORM, LESION
from resnet_mnist.core.figures import History
from resnet_mnist.core.model import DigitClassifier
from resnet_mnist.core.trainer import Callback, Result, Tensors, Trainer
from resnet_mnist.tracking import names
from resnet_mnist.tracking.batches import MAX_BATCH
from resnet_mnist.tracking.checkpoints import BEST, RESUME
from resnet_mnist.tracking.history import TIME_METRICS
from resnet_mnist.tracking.lifecycle import active_run_id, version
from resnet_mnist.tracking.offline import Spool, TrackingLost, unreachable
from resnet_mnist.tracking.ownership import HEARTBEAT_S
from resnet_mnist.tracking.sqlite import store_lock
from resnet_mnist.tracking.store import retry_conflicts, retry_locked

#: Scores of the best checkpoint (the logged model), linked to the split they were measured on.
MODEL_METRICS = {"best_dev_accuracy": "dev", "test_accuracy": "test", "test_loss": "test"}


@contextmanager
def naming(run_id: str, artifact: str) -> Iterator[None]:
    """An OSError while writing an artifact (a full disk) names the file; MLflow's does not."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            try:
                exc.filename = f"{MlflowClient().get_run(run_id).info.artifact_uri}/{artifact}"
            except Exception:  # noqa: BLE001 - the store may be what failed: name what we know
                exc.filename = artifact
        raise


class MlflowTracker(Callback):
    """Listens to the Trainer and writes metrics to one run in batches; store I/O only.

    `logged` (on resume) holds the last step already in the store per metric; those steps are not
    sent again, so the histories have no duplicates. `datasets` (split -> the run's dataset input)
    links dev and test scores to the split they were measured on, so that MLflow shows them per
    dataset. `spool` is set once the tracking server has stopped answering: from then on nothing
    is sent, everything is kept there, and `on_lost` is told (what to do about it is a policy of
    its own, `offline.StopWhenLost`). The run's figures are drawn from what was logged.
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
        self.trainer: Trainer | None = None
        self.spool: Spool | None = None
        self.cause: BaseException | None = None

    def on_start(self, trainer: Trainer, total_steps: int) -> None:
        self.trainer = trainer

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

    def lost(self) -> TrackingLost:
        """The error to end the command with once training has stopped: where things are kept.
        The trainer's state is kept as the checkpoint unless a stop already kept one."""
        assert self.spool is not None and self.cause is not None
        self.flush()
        if self.spool.checkpoint is None and self.trainer is not None:
            self.spool.keep_checkpoint(self.trainer.checkpoint())
        step = self.trainer.state.step if self.trainer is not None else 0
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

    def on_checkpoint(self, step: int, checkpoint: dict) -> None:
        """A resumable checkpoint (`checkpoints/resume.pt`), replaced at each save; kept in the
        spool instead once the server is gone."""
        self.flush()
        if self.spool is None:
            with self.offline_on_loss():
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "resume.pt"
                    torch.save(checkpoint, path)
                    with naming(self.run_id, RESUME):
                        self.client.log_artifact(self.run_id, str(path), "checkpoints")
                self.client.set_tag(self.run_id, names.RESUME_STEP, str(step))
        if self.spool is not None:
            self.spool.keep_checkpoint(checkpoint)

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

    def log_diagnostics(self, title: str) -> None:
        """`plots/diagnostics.png` (gradient norms per stage, the lesion test), drawn from the
        diagnostics the run logged, when it logged any."""
        keys = [k for k in self.client.get_run(self.run_id).data.metrics if k.startswith((GRAD_NORM, LESION))]
        series = {k: {m.step: m.value for m in self.client.get_metric_history(self.run_id, k)} for k in keys}
        grads = {k.removeprefix(GRAD_NORM): v for k, v in series.items() if k.startswith(GRAD_NORM)}
        lesion = {k.removeprefix(LESION): v[max(v)] for k, v in series.items() if k.startswith(LESION) and v}
        if not grads and not lesion:
            return
        from resnet_mnist.core.figures import plot_diagnostics  # matplotlib: after training (`log_curves`)

        with tempfile.TemporaryDirectory() as tmp:
            path = plot_diagnostics(grads, lesion, Path(tmp) / "diagnostics.png", title)
            with naming(self.run_id, "plots/diagnostics.png"):
                self.client.log_artifact(self.run_id, str(path), "plots")

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


def mnist_datasets(config: TrainConfig, tensors: Tensors) -> dict[str, mlflow.data.Dataset]:
    """The run's MNIST splits as MLflow datasets: digest from the official SHA-256s and the split
    size, so the same subset is the same dataset in every run."""
    source = str(D.raw_dir(config.data_root or None).resolve())
    sizes = tensors.sizes()
    datasets: dict[str, mlflow.data.Dataset] = {}
    for key in ("train", "dev", "test"):
        labels = getattr(tensors, key)[1].cpu().numpy()
        with warnings.catch_warnings():
            # MLflow registers its local-file source class twice and warns that a path is
            # ambiguous between the two identical candidates.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            datasets[key] = from_numpy(
                labels,
                source=source,
                name=f"mnist-{key}",
                digest=D.split_digest(key, sizes[key]),
            )
    return datasets


def log_inputs(datasets: dict[str, mlflow.data.Dataset]) -> None:
    """Record the splits as the run's dataset inputs (training, dev, test contexts)."""
    for context, key in (("training", "train"), ("dev", "dev"), ("test", "test")):
        # Datasets are shared by the experiment: two processes adding the same one at once
        # collide on a unique key, so this is serialised (sqlite) or retried (a server).
        with store_lock(mlflow.get_tracking_uri()):
            retry_conflicts(partial(mlflow.log_input, datasets[key], context=context))


def log_complexity(c: Complexity) -> None:
    mlflow.log_metrics({"param_count": c.param_count, "macs": c.macs, "flops": c.flops})
    mlflow.log_text(format_table(c), "summary/layers.txt")


def log_best_checkpoint(state: dict[str, torch.Tensor]) -> None:
    """`checkpoints/best_model.pt`: the best-dev state_dict, at the end or after a failure (so
    nothing learned is lost). Plain tensors: it loads with `weights_only=True`."""
    if not state:
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "best_model.pt"
        torch.save(state, checkpoint)
        with naming(active_run_id(), BEST):
            mlflow.log_artifact(str(checkpoint), "checkpoints")


def log_model(
    model: nn.Module, normalize: str, example_images: np.ndarray, step: int, temperature: float = 1.0
) -> str:
    """Log the model (torch.export `pt2` format, no pickle) wrapped to take raw 28x28 digits and
    answer calibrated probabilities (`temperature`, kept as the LoggedModel's param too).

    The signature is uint8 (N, 28, 28), as MNIST and PIL images come; MLflow enforces tensor
    dtypes strictly, so float images are cast to uint8 by the caller (`resnet-mnist predict` does).
    `step` is the best checkpoint's: MLflow links the run's metrics at that step (dev and test
    scores, with their datasets) to the LoggedModel, so the Models tab and `search_logged_models`
    can rank models by them. Returns the LoggedModel's id.
    """
    classifier = DigitClassifier(model, D.Preprocess(normalize), temperature).to("cpu").eval()
    example = np.ascontiguousarray(example_images, dtype=np.uint8).copy()
    with torch.inference_mode():
        output = classifier(torch.from_numpy(example)).numpy()
    signature = mlflow.models.infer_signature(example, output)
    with naming(active_run_id(), "model"):
        info = mlflow.pytorch.log_model(
            classifier,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=[
                f"torch=={version(torch)}",
                f"mlflow=={version(mlflow)}",
                f"numpy=={version(np)}",
            ],
            step=step,
            model_type="image-classifier",
        )
    # MLflow 3 keeps the model as a LoggedModel; registering its own URI avoids a lookup.
    mlflow.set_tag(names.LOGGED_MODEL_URI, info.model_uri)
    mlflow.log_model_params({names.TEMPERATURE: repr(float(temperature))}, info.model_id)
    return info.model_id


def log_curves(history: History, variant: str, title: str) -> None:
    # matplotlib is imported here, once training is over: imported with MLflow at start-up it
    # adds its memory to the peak that training's tensors reach (and the import time is the same)
    from resnet_mnist.core.figures import plot_curves

    with tempfile.TemporaryDirectory() as tmp:
        # PNG only: the PDF, for papers, is made for the comparison figure (`compare`).
        for path in plot_curves(
            {variant: [history]}, Path(tmp) / "curves.png", title=title, formats=("png",)
        ):
            with naming(active_run_id(), f"plots/{path.name}"):
                mlflow.log_artifact(str(path), "plots")

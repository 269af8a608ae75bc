"""The one place training runs are written to MLflow: the run lifecycle and the tracking callback.

Per-step metrics are buffered and sent with `MlflowClient.log_batch` whenever the Trainer flushes
its losses (every `log_steps`), so tracking costs a handful of store writes per epoch. A run always
ends: FINISHED, FAILED (with the error in tags) or KILLED (Ctrl-C / SIGTERM); never RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient
from torch import nn

from resnet_mnist import data as D
from resnet_mnist.complexity import Complexity, format_table
from resnet_mnist.config import TrainConfig
from resnet_mnist.plots import History, plot_curves
from resnet_mnist.train import Callback, NonFiniteLossError, Result, Tensors

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "resnet18-mnist"
MAX_BATCH = 1000


_PROJECT_RUN: list[str | None] = []


def configure() -> str:
    """Use `$MLFLOW_TRACKING_URI`, else the embedded store `sqlite:///mlflow.db` (+ `./mlruns`)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    return uri


def project_run_id() -> str | None:
    """The run `mlflow run` created for this process (it passes MLFLOW_RUN_ID), if any.

    That run holds the project's parameters (with `preset` placeholders); our runs become its
    children so that their params are the resolved values. Read once: the variable is removed
    so that MLflow's fluent API never resumes that run by itself.
    """
    if not _PROJECT_RUN:
        _PROJECT_RUN.append(os.environ.pop("MLFLOW_RUN_ID", None))
    return _PROJECT_RUN[0]


def experiment_for(experiment: str) -> str:
    """The experiment id to write to: the project run's when under `mlflow run`, else by name."""
    parent = project_run_id()
    if parent:
        return MlflowClient().get_run(parent).info.experiment_id
    return mlflow.set_experiment(experiment).experiment_id


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(module: object) -> str:
    return str(getattr(module, "__version__", "unknown")).split("+")[0]


class DigitClassifier(nn.Module):
    """What the logged model is: raw 28x28 digits (uint8, 0-255) in, class probabilities out.

    It carries the run's own preprocessing, so callers never need to know the normalisation.
    """

    def __init__(self, model: nn.Module, normalize: str) -> None:
        super().__init__()
        self.preprocess = D.Preprocess(normalize)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(self.preprocess(images)), dim=1)


class MlflowTracker(Callback):
    """Listens to the Trainer and writes metrics to the active run in batches."""

    def __init__(self, run_id: str, client: MlflowClient | None = None) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.buffer: list[Metric] = []
        self.history = History()
        self.log_seconds = 0.0

    def _add(self, key: str, value: float, step: int) -> None:
        self.buffer.append(Metric(key, float(value), int(time.time() * 1000), int(step)))

    def flush(self) -> None:
        t0 = time.perf_counter()
        while self.buffer:
            chunk, self.buffer = self.buffer[:MAX_BATCH], self.buffer[MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
        self.log_seconds += time.perf_counter() - t0

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        self._add("train_loss", loss, step)
        self.history.steps.append(step)
        self.history.train_loss.append(loss)

    def on_log(self, step: int, epoch: int, loss: float, images_per_s: float) -> None:
        self.flush()

    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None:
        self._add("dev_loss", dev_loss, step)
        self._add("dev_accuracy", dev_accuracy, step)
        self.history.eval_steps.append(step)
        self.history.dev_loss.append(dev_loss)
        self.history.dev_accuracy.append(dev_accuracy)
        self.flush()

    def on_epoch_end(self, epoch: int, mean_loss: float) -> None:
        self._add("train_epoch_loss", mean_loss, epoch)

    def on_end(self, result: Result) -> None:
        for key in ("best_dev_accuracy", "test_accuracy", "test_loss", "train_images_per_s",
                    "train_time_s", "eval_time_s"):
            self._add(key, getattr(result, key), result.steps)
        self._add("best_step", result.best_step, result.steps)
        self.flush()


@contextmanager
def tracked_run(
    config: TrainConfig, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
    device: str = "cpu", tags: dict[str, str] | None = None, parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run, log the config, and make sure it ends in the right state whatever happens.

    `parent_run_id` nests the run (a seed group's child); under `mlflow run` the project's run
    is the parent.

    SIGTERM is turned into KeyboardInterrupt for the duration so that `kill` ends the run KILLED.
    """
    configure()
    client = MlflowClient()
    experiment_id = experiment_for(experiment)
    parent = parent_run_id or project_run_id()
    name = run_name or f"resnet18-{config.variant}-seed{config.seed}"
    run_tags = {"variant": config.variant, "preset": config.preset, "run_type": "train",
                "torch_version": _version(torch), "mlflow_version": _version(mlflow),
                **(tags or {})}
    if parent:
        run_tags["mlflow.parentRunId"] = parent
    commit = git_commit()
    if commit:
        run_tags["git_commit"] = commit
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_sigterm)
    run = mlflow.start_run(run_name=name, experiment_id=experiment_id, tags=run_tags)
    try:
        mlflow.log_params(config.params() | {"device": device})
        yield run
    except KeyboardInterrupt:
        client.set_tag(run.info.run_id, "failure_reason", "interrupted (Ctrl-C or SIGTERM)")
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        client.set_tag(run.info.run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_tag(run.info.run_id, "failure_reason", type(exc).__name__)
        if isinstance(exc, NonFiniteLossError):
            client.set_tag(run.info.run_id, "failed_at_step", str(exc.step))
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    finally:
        signal.signal(signal.SIGTERM, previous)


def log_inputs(config: TrainConfig, tensors: Tensors) -> None:
    """Record MNIST as the run's dataset input: digest from the official SHA-256s, split sizes."""
    source = str(D.raw_dir(config.data_root or None).resolve())
    sizes = tensors.sizes()
    for context, key in (("training", "train"), ("dev", "dev"), ("test", "test")):
        labels = tensors.__getattribute__(key)[1].cpu().numpy()
        with warnings.catch_warnings():
            # MLflow registers its local-file source class twice and warns that a path is
            # ambiguous between the two identical candidates.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            dataset = mlflow.data.from_numpy(
                labels, source=source, name=f"mnist-{key}",
                digest=f"{D.dataset_digest()}-{key}{sizes[key]}",
            )
        mlflow.log_input(dataset, context=context)


def log_complexity(c: Complexity) -> None:
    mlflow.log_metrics({"param_count": c.param_count, "macs": c.macs, "flops": c.flops})
    mlflow.log_text(format_table(c), "summary/layers.txt")


def log_result_artifacts(
    config: TrainConfig, model: nn.Module, result: Result, history: History,
    example_images: np.ndarray,
) -> str:
    """Best checkpoint, curves, and the raw-digit model; returns the model URI `runs:/<id>/model`."""
    run = mlflow.active_run()
    assert run is not None, "log_result_artifacts needs an active run"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "best_model.pt"
        torch.save(result.best_state, checkpoint)
        mlflow.log_artifact(str(checkpoint), "checkpoints")
        for path in plot_curves({config.variant: history}, Path(tmp) / "curves.png",
                                title=run.info.run_name or ""):
            mlflow.log_artifact(str(path), "plots")
    log_model(model, config.normalize, example_images)
    return f"runs:/{run.info.run_id}/model"


def log_model(model: nn.Module, normalize: str, example_images: np.ndarray) -> None:
    """Log the model (torch.export `pt2` format, no pickle) wrapped to take raw 28x28 digits.

    The signature is uint8 (N, 28, 28), as MNIST and PIL images come; MLflow enforces tensor
    dtypes strictly, so float images are cast to uint8 by the caller (`resnet-mnist predict` does).
    """
    classifier = DigitClassifier(model, normalize).to("cpu").eval()
    example = np.ascontiguousarray(example_images, dtype=np.uint8).copy()
    with torch.inference_mode():
        output = classifier(torch.from_numpy(example)).numpy()
    signature = mlflow.models.infer_signature(example, output)
    info = mlflow.pytorch.log_model(
        classifier, name="model", signature=signature, input_example=example,
        pip_requirements=[f"torch=={_version(torch)}", f"mlflow=={_version(mlflow)}",
                          f"numpy=={_version(np)}"],
    )
    # MLflow 3 keeps the model as a LoggedModel; registering its own URI avoids a lookup.
    mlflow.set_tag("logged_model_uri", info.model_uri)


def log_failure_checkpoint(result_state: dict[str, torch.Tensor]) -> None:
    """Keep the best state reached before a failure, so nothing learned is lost."""
    if not result_state:
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "best_model.pt"
        torch.save(result_state, checkpoint)
        mlflow.log_artifact(str(checkpoint), "checkpoints")


def train_and_track(
    config: TrainConfig, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
    callbacks: list[Callback] | None = None, tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> tuple[str, Result, str]:
    """Validate, load data, then train one variant inside one MLflow run.

    Everything that can fail on bad input (device, data files) fails before the run starts.
    Returns (run_id, result, model_uri).
    """
    from resnet_mnist.complexity import measure
    from resnet_mnist.train import Trainer, build_model, load_tensors, resolve_device

    device = resolve_device(config.device)
    tensors = load_tensors(config, device)
    model = build_model(config, device)
    complexity = measure(model)
    example = D.book_split(D.load(config.data_root or None, verify=False), 1, 4, 1)["dev"].images
    with tracked_run(config, experiment, run_name, str(device), tags, parent_run_id) as run:
        tracker = MlflowTracker(run.info.run_id)
        log_inputs(config, tensors)
        log_complexity(complexity)
        mlflow.log_text(str(model), "summary/model.txt")
        trainer = Trainer(config, model, [tracker, *(callbacks or [])])
        try:
            result = trainer.fit(tensors)
        except BaseException:
            tracker.flush()
            log_failure_checkpoint(trainer.best_state)
            raise
        mlflow.log_metric("tracking_log_seconds", tracker.log_seconds)
        model_uri = log_result_artifacts(config, model, result, tracker.history, example)
        return run.info.run_id, result, model_uri

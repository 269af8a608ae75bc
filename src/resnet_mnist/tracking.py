"""The one place training runs are written to MLflow: the run lifecycle and the tracking callback.

Per-step metrics are buffered and sent with `MlflowClient.log_batch` whenever the Trainer flushes
its losses (every `log_steps`), so tracking costs a handful of store writes per epoch. A run always
ends: FINISHED, FAILED (with the error in tags) or KILLED (Ctrl-C / SIGTERM); never RUNNING.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient
from torch import nn

from resnet_mnist import data as D
from resnet_mnist.complexity import Complexity, format_table
from resnet_mnist.config import TrainConfig
from resnet_mnist.distributed import Dist
from resnet_mnist.plots import History, plot_curves
from resnet_mnist.train import (
    Callback,
    NonFiniteLossError,
    Result,
    StopRequested,
    Tensors,
    clear_stop,
    request_stop,
)

T = TypeVar("T")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "resnet18-mnist"
MAX_BATCH = 1000


_PROJECT_RUN: list[str | None] = []


def configure() -> str:
    """Use `$MLFLOW_TRACKING_URI`, else the embedded store `sqlite:///mlflow.db` (+ `./mlruns`)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    return uri


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached; raised before any training starts."""


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise first-time set-up of a sqlite store between processes.

    Several processes opening a new `mlflow.db` at once all run MLflow's schema migrations and
    collide ("duplicate column name"); the same goes for creating one experiment twice. A file
    lock beside the database makes the first process do it and the others wait.
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


def check_store(timeout_s: int = 5) -> str:
    """Fail fast, with the URI in the message, when the tracking store does not answer.

    MLflow's HTTP client retries with back-off for minutes by default; for this one probe the
    retries are off and the timeout short (unless the user set them). A sqlite store is created
    (schema migrated) here, under a lock.
    """
    from mlflow.exceptions import MlflowException

    uri = configure()
    if not uri.startswith(("http://", "https://")):
        with store_lock(uri):
            MlflowClient().search_experiments(max_results=1)
        return uri
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    try:
        MlflowClient().search_experiments(max_results=1)
    except (MlflowException, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise TrackingUnavailable(
            f"the tracking server at {uri} does not answer ({first}). Start it (`make server`) "
            "or unset MLFLOW_TRACKING_URI to use the local sqlite:///mlflow.db store.") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
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
    with store_lock(mlflow.get_tracking_uri()):
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

    def __init__(self, run_id: str, client: MlflowClient | None = None,
                 history: History | None = None, logged: dict[str, int] | None = None) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.buffer: list[Metric] = []
        self.history = history or History()
        self.log_seconds = 0.0
        # On resume: the last step already in the store per metric; those steps are not re-sent.
        self.logged = logged or {}

    def _add(self, key: str, value: float, step: int) -> None:
        if step <= self.logged.get(key, -1):
            return
        self.buffer.append(Metric(key, float(value), int(time.time() * 1000), int(step)))

    def flush(self) -> None:
        t0 = time.perf_counter()
        while self.buffer:
            chunk, self.buffer = self.buffer[:MAX_BATCH], self.buffer[MAX_BATCH:]
            retry_locked(lambda chunk=chunk: self.client.log_batch(
                self.run_id, metrics=chunk, synchronous=True))
        self.log_seconds += time.perf_counter() - t0

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        self._add("train_loss", loss, step)
        if not self.history.steps or step > self.history.steps[-1]:
            self.history.steps.append(step)
            self.history.train_loss.append(loss)

    def on_checkpoint(self, step: int, checkpoint: dict) -> None:
        """A resumable checkpoint (`checkpoints/resume.pt`), replaced at each save."""
        self.flush()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "resume.pt"
            torch.save(checkpoint, path)
            self.client.log_artifact(self.run_id, str(path), "checkpoints")
        self.client.set_tag(self.run_id, "resume_step", str(step))

    def on_log(self, step: int, epoch: int, loss: float, images_per_s: float) -> None:
        self.flush()

    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None:
        self._add("dev_loss", dev_loss, step)
        self._add("dev_accuracy", dev_accuracy, step)
        if self.history.eval_steps and step <= self.history.eval_steps[-1]:
            return
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
def stop_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM ask the Trainer to stop at the next step boundary (it saves a resumable
    checkpoint first); a second signal interrupts at once."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) > 1:
            raise KeyboardInterrupt(f"signal {signum}")
        request_stop()

    clear_stop()
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        clear_stop()
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def tracked_run(
    config: TrainConfig, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
    device: str = "cpu", tags: dict[str, str] | None = None, parent_run_id: str | None = None,
    resume_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with `resume_run_id`, reopen) a run and make sure it ends in the right state.

    FINISHED on success; KILLED on Ctrl-C or SIGTERM; FAILED with `error` and `failure_reason`
    tags on any error (`failed_at_step` too for a non-finite loss). `parent_run_id` nests the run
    (a seed group's child); under `mlflow run` the project's run is the parent.
    """
    configure()
    client = MlflowClient()
    if resume_run_id:
        run = mlflow.start_run(run_id=resume_run_id)
    else:
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
        run = mlflow.start_run(run_name=name, experiment_id=experiment_id, tags=run_tags)
    run_id = run.info.run_id
    try:
        with stop_signals():
            if not resume_run_id:
                mlflow.log_params(config.params() | {"device": device})
            yield run
    except KeyboardInterrupt as exc:
        client.set_tag(run_id, "failure_reason", "interrupted (Ctrl-C or SIGTERM)")
        if isinstance(exc, StopRequested):
            client.set_tag(run_id, "stopped_at_step", str(exc.step))
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        client.set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_tag(run_id, "failure_reason", type(exc).__name__)
        if isinstance(exc, NonFiniteLossError):
            client.set_tag(run_id, "failed_at_step", str(exc.step))
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def log_inputs(config: TrainConfig, tensors: Tensors) -> None:
    """Record MNIST as the run's dataset input: digest from the official SHA-256s, split sizes."""
    source = str(D.raw_dir(config.data_root or None).resolve())
    sizes = tensors.sizes()
    for context, key in (("training", "train"), ("dev", "dev"), ("test", "test")):
        labels = getattr(tensors, key)[1].cpu().numpy()
        with warnings.catch_warnings():
            # MLflow registers its local-file source class twice and warns that a path is
            # ambiguous between the two identical candidates.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            dataset = mlflow.data.from_numpy(
                labels, source=source, name=f"mnist-{key}",
                digest=f"{D.dataset_digest()}-{key}{sizes[key]}",
            )
        # Datasets are shared by the experiment: two processes adding the same one at once
        # collide on a unique key, so this too is serialised.
        with store_lock(mlflow.get_tracking_uri()):
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
    log_best_checkpoint(result.best_state)
    with tempfile.TemporaryDirectory() as tmp:
        for path in plot_curves({config.variant: [history]}, Path(tmp) / "curves.png",
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


def log_best_checkpoint(state: dict[str, torch.Tensor]) -> None:
    """`checkpoints/best_model.pt`: the best-dev state_dict, at the end or after a failure (so
    nothing learned is lost). Plain tensors: it loads with `weights_only=True`."""
    if not state:
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "best_model.pt"
        torch.save(state, checkpoint)
        mlflow.log_artifact(str(checkpoint), "checkpoints")


def train_and_track(
    config: TrainConfig, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
    callbacks: list[Callback] | None = None, tags: dict[str, str] | None = None,
    parent_run_id: str | None = None, dist: Dist | None = None,
) -> tuple[str, Result, str]:
    """Validate, load data, then train one variant inside one MLflow run.

    Everything that can fail on bad input (device, data files) fails before the run starts.
    With `dist` (torchrun), every rank trains and only rank 0 talks to MLflow.
    Returns (run_id, result, model_uri); other ranks get empty ids.
    """
    from resnet_mnist.complexity import measure
    from resnet_mnist.distributed import device_for
    from resnet_mnist.train import Trainer, build_model, load_tensors, resolve_device

    device = resolve_device(config.device)
    if dist is not None:
        device = device_for(dist, device)
    tensors = load_tensors(config, device)
    if dist is not None and not dist.is_main:
        return "", Trainer(config, build_model(config, device), [], dist).fit(tensors), ""
    check_store()
    model = build_model(config, device)
    complexity = measure(model)
    with tracked_run(config, experiment, run_name, str(device), tags, parent_run_id) as run:
        if dist is not None:
            per_rank = -(-config.batch_size // dist.world)
            mlflow.log_params({"world_size": dist.world, "backend": dist.backend,
                               "global_batch_size": config.batch_size,
                               "per_rank_batch_size": per_rank})
        log_inputs(config, tensors)
        log_complexity(complexity)
        mlflow.log_text(str(model), "summary/model.txt")
        tracker = MlflowTracker(run.info.run_id)
        return _fit(config, model, tensors, tracker, callbacks, None, dist)


def _fit(
    config: TrainConfig, model: nn.Module, tensors: Tensors, tracker: MlflowTracker,
    callbacks: list[Callback] | None, resume: dict | None, dist: Dist | None = None,
) -> tuple[str, Result, str]:
    """Train inside the active run, keep what was learned on failure, log the results."""
    from resnet_mnist.train import Trainer

    trainer = Trainer(config, model, [tracker, *(callbacks or [])], dist)
    try:
        result = trainer.fit(tensors, resume=resume)
    except BaseException:
        tracker.flush()
        log_best_checkpoint(trainer.best_state)
        raise
    mlflow.log_metric("tracking_log_seconds", tracker.log_seconds)
    model_uri = log_result_artifacts(config, model, result, tracker.history, tensors.raw_examples)
    return tracker.run_id, result, model_uri


class ResumeError(RuntimeError):
    """The run cannot be resumed; the message says why."""


def resume_and_track(
    run_id: str, data_root: str = "", device: str | None = None,
    callbacks: list[Callback] | None = None,
) -> tuple[str, Result, str]:
    """Continue a KILLED or FAILED run from its `checkpoints/resume.pt`, in the same run.

    Metrics already in the store are not sent again, so the histories have no duplicates; on a
    CPU the resumed run ends with the same metrics as an uninterrupted one.
    """
    from mlflow.exceptions import MlflowException

    from resnet_mnist.compare import history
    from resnet_mnist.config import from_params
    from resnet_mnist.train import build_model, load_tensors, resolve_device

    check_store()
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ResumeError(f"no run {run_id!r} in {mlflow.get_tracking_uri()}: {exc}") from None
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} is already FINISHED; nothing to resume")
    if run.info.status == "RUNNING":
        raise ResumeError(f"run {run_id} is RUNNING; stop it first")
    overrides = {"data_root": data_root} | ({"device": device} if device else {})
    config = from_params(run.data.params, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="checkpoints/resume.pt", dst_path=tmp)
        except (MlflowException, OSError):
            raise ResumeError(f"run {run_id} has no resumable checkpoint (checkpoints/resume.pt);"
                              " it stopped before any was written") from None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ResumeError(f"refused checkpoints/resume.pt of run {run_id}: it holds objects "
                              f"other than tensors and plain values ({str(exc)[:200]})") from None
    dev = resolve_device(config.device)
    tensors = load_tensors(config, dev)
    model = build_model(config, dev)
    logged = {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
              for key in ("train_loss", "dev_loss", "dev_accuracy", "train_epoch_loss")}
    past = history(client, run_id)
    with tracked_run(config, resume_run_id=run_id) as active:
        mlflow.set_tag("resumed_from_step", str(checkpoint["state"]["step"]))
        tracker = MlflowTracker(active.info.run_id, history=past, logged=logged)
        return _fit(config, model, tensors, tracker, callbacks, checkpoint)

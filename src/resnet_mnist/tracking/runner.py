"""Train or resume one variant as one tracked MLflow run: validate, load, track, fit, log.

Both take one `RunRequest`. Everything that can fail on bad input (device, data files, store)
fails before the run starts. With `dist` (torchrun) every rank trains and only rank 0 talks to
MLflow.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from torch import nn

from resnet_mnist.config.settings import TrainConfig, from_params
from resnet_mnist.core.calibration import calibrate
from resnet_mnist.core.complexity import measured
from resnet_mnist.core.device import resolve_device
from resnet_mnist.core.distributed import Dist, device_for
from resnet_mnist.core.trainer import Callback, Result, Tensors, Trainer, build_model, load_tensors
from resnet_mnist.runtime.errors import ProjectError
from resnet_mnist.runtime.signals import safe_point, shielded
from resnet_mnist.runtime.timeline import mark
from resnet_mnist.tracking import names
from resnet_mnist.tracking.artifacts import (
    log_checkpoint,
    log_complexity,
    log_inputs,
    log_model,
    mnist_datasets,
)
from resnet_mnist.tracking.checkpoints import (
    RESUME,
    CheckpointWriter,
    MissingCheckpoint,
    RefusedCheckpoint,
    fetch_checkpoint,
    write_best,
)
from resnet_mnist.tracking.history import last_logged_steps
from resnet_mnist.tracking.lifecycle import fail_unfinished_models, tracked_run
from resnet_mnist.tracking.logger import MlflowTracker
from resnet_mnist.tracking.offline import Spool, StopWhenLost, unreachable
from resnet_mnist.tracking.ownership import RunBusy, owner_alive, run_claim
from resnet_mnist.tracking.plots import log_curves, log_diagnostics
from resnet_mnist.tracking.request import RunRequest
from resnet_mnist.tracking.store import check_store


class ResumeError(ProjectError, RuntimeError):
    """The run cannot be resumed; the message says why."""


@dataclass
class Trained:
    """What a tracked training produced (empty ids on ranks other than 0)."""

    run_id: str
    result: Result
    model_uri: str
    config: TrainConfig


def train(
    request: RunRequest,
    callbacks: list[Callback] | None = None,
    dist: Dist | None = None,
    stop: threading.Event | None = None,
) -> Trained:
    """Train one variant inside one MLflow run: a new one, or the one `request` adopts."""
    config, placement = request.validate().config, request.placement
    device = resolve_device(placement.device)
    if dist is not None:
        device = device_for(dist, device)
    tensors = load_tensors(config, device, placement.data_root)
    if dist is not None and not dist.is_main:
        result = Trainer(config, build_model(config, device), [], dist, stop).fit(tensors)
        return Trained("", result, "", config)
    mark("data")
    check_store()
    mark("store")
    _import_dynamo()
    model = build_model(config, device)
    complexity = measured(model, config.architecture)
    mark("complexity")
    if stop is not None and stop.is_set():  # Ctrl-C while loading: no run to make
        raise KeyboardInterrupt("stopped before training started")
    with tracked_run(request, str(device)) as run:
        if dist is not None:
            mlflow.log_params(
                {
                    "world_size": dist.world,
                    "backend": dist.backend,
                    "global_batch_size": config.batch_size,
                    "per_rank_batch_size": -(-config.batch_size // dist.world),
                }
            )
        datasets = mnist_datasets(tensors, placement.data_root)
        log_inputs(datasets)
        log_complexity(complexity)
        mlflow.log_text(str(model), "summary/model.txt")
        tracker = MlflowTracker(run.info.run_id, datasets=datasets)
        mark("run_start")
        return _fit(config, model, tensors, tracker, callbacks, None, dist, stop)


def resume(
    request: RunRequest,
    callbacks: list[Callback] | None = None,
    stop: threading.Event | None = None,
    trial: bool = False,
) -> Trained:
    """Continue `request.resume`, a KILLED or FAILED run or a RUNNING one whose owner is gone,
    from its `checkpoints/resume.pt`, in the same run, with its logged settings wherever
    `request` places it. What this machine kept while the tracking server was
    gone (`offline.Spool`) is sent first, and its checkpoint is the one continued from.

    Only one process trains a run at a time (`run_claim`). Metrics already in the store are not
    sent again, so the histories have no duplicates; on a CPU the resumed run ends with the same
    metrics as an uninterrupted one. A tune trial's run is continued only by its search (`trial`):
    its end is the trial's state, which the search's reporter must see.
    """
    from mlflow.exceptions import MlflowException

    run_id, placement = request.resume, request.placement
    if run_id is None:
        raise ValueError("resume() needs a request that names the run to resume")
    check_store()
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ResumeError(f"no run {run_id!r} in {mlflow.get_tracking_uri()}: {exc}") from None
    resumable(run, trial)
    try:
        with run_claim(run_id):
            run = client.get_run(run_id)  # as it is now that this process holds it
            taken_over = resumable(run, trial)
            fail_unfinished_models(client, run)
            request = request.with_settings(from_params(run.data.params)).validate()
            config = request.config
            spool = Spool.find(run_id)
            if spool is not None:  # kept while the server was gone: send it first
                spool.replay(client)
            checkpoint = _download_checkpoint(run_id)
            dev = resolve_device(placement.device)
            tensors = load_tensors(config, dev, placement.data_root)
            _import_dynamo()
            model = build_model(config, dev)
            logged = last_logged_steps(client, run_id)
            with tracked_run(request, str(dev)) as active:
                mlflow.set_tag(names.RESUMED_FROM_STEP, str(checkpoint["state"]["step"]))
                if taken_over:
                    mlflow.set_tag(names.TAKEN_OVER_FROM, taken_over)
                tracker = MlflowTracker(
                    active.info.run_id,
                    logged=logged,
                    datasets=mnist_datasets(tensors, placement.data_root),
                )
                return _fit(config, model, tensors, tracker, callbacks, checkpoint, None, stop)
    except RunBusy as exc:
        raise ResumeError(str(exc)) from None


def _import_dynamo() -> None:
    """torch imports its compiler front end (about a second and 150 MiB here) when an optimiser
    is built (torch.optim wraps `add_param_group` in `torch._disable_dynamo`), and torch.export
    needs it for the model; imported here, as a stage of its own, so that no run timing and no
    other stage of the timeline includes it."""
    import torch._dynamo  # noqa: F401

    mark("torch_dynamo")


def resumable(run: Run, trial: bool = False) -> str:
    """Why `run` may be resumed, or a ResumeError saying why not. Returns the dead owner
    (`pid@host`) when a RUNNING run is being taken over, else "". A tune trial's run is resumed
    only for its search (`trial`)."""
    tags, status = run.data.tags, run.info.status
    if status == "FINISHED":
        raise ResumeError(f"run {run.info.run_id} is already FINISHED; nothing to resume")
    if names.TUNE_TRIAL in tags and not trial:
        raise ResumeError(
            f"run {run.info.run_id} is trial {tags[names.TUNE_TRIAL]} of a tune search: its end is the "
            "trial's state, so `resnet-mnist tune` continues it (run the same tune command again)"
        )
    if status != "RUNNING":
        return ""
    owner = f"pid {tags.get(names.OWNER_PID, '?')} on {tags.get(names.OWNER_HOST, '?')}"
    alive = owner_alive(tags)
    spool = Spool.find(run.info.run_id)
    if alive and spool is not None and spool.released:
        alive = False  # it lost its tracking server and gave the run up (`offline`)
    if alive is None:
        raise ResumeError(f"run {run.info.run_id} is RUNNING and records no owner; stop it first")
    if alive:
        raise ResumeError(f"run {run.info.run_id} is RUNNING and its owner ({owner}) is alive; stop it first")
    return f"{tags[names.OWNER_PID]}@{tags.get(names.OWNER_HOST, '?')}"


def _download_checkpoint(run_id: str) -> dict:
    """The run's resumable checkpoint (no code runs when it loads)."""
    try:
        return fetch_checkpoint(run_id, RESUME)
    except MissingCheckpoint:
        raise ResumeError(
            f"run {run_id} has no resumable checkpoint ({RESUME}); it stopped before any was written"
        ) from None
    except RefusedCheckpoint as exc:
        raise ResumeError(f"refused {RESUME} of run {run_id}: {exc}") from None


def _fit(
    config: TrainConfig,
    model: nn.Module,
    tensors: Tensors,
    tracker: MlflowTracker,
    callbacks: list[Callback] | None,
    checkpoint: dict | None,
    dist: Dist | None,
    stop: threading.Event | None,
) -> Trained:
    """Train inside the active run, keep what was learned on failure, log the results."""
    with tempfile.TemporaryDirectory(prefix="resnet-mnist-checkpoints-") as tmp:
        folder = Path(tmp)
        policy = StopWhenLost()
        tracker.on_lost = policy.server_lost
        writer = CheckpointWriter(folder, tracker.after_save_checkpoint)
        trainer = Trainer(config, model, [tracker, writer, policy, *(callbacks or [])], dist, stop)
        try:
            result = trainer.fit(tensors, resume=checkpoint)
        except BaseException as exc:
            tracker.flush()
            if tracker.spool is not None:  # the server went away: it stopped at a step boundary
                raise tracker.lost(trainer.state.step, trainer.checkpoint) from exc
            log_checkpoint(write_best(trainer.best_state, folder))
            raise
        if tracker.spool is not None:  # gone during the last steps: keep the end of training
            raise tracker.lost(trainer.state.step, trainer.checkpoint)
        mark("training")
        # What follows writes the results; no signal cuts a write in half. A stop asked for
        # meanwhile is honoured between the writes, and the run then ends KILLED. If the server
        # goes away now, the finished training is kept, and a resume writes the results again.
        with shielded():
            try:
                _log_results(config, model, tensors, tracker, result, folder, stop)
            except Exception as exc:
                if not unreachable(exc):
                    raise
                tracker.go_offline(exc)
                raise tracker.lost(trainer.state.step, trainer.checkpoint) from exc
    return Trained(tracker.run_id, result, f"runs:/{tracker.run_id}/model", config)


def _log_results(
    config: TrainConfig,
    model: nn.Module,
    tensors: Tensors,
    tracker: MlflowTracker,
    result: Result,
    folder: Path,
    stop: threading.Event | None,
) -> None:
    safe_point(stop)
    log_checkpoint(write_best(result.best_state, folder))
    mark("checkpoint")
    active = mlflow.active_run()
    name = (active.info.run_name if active else None) or ""
    log_curves(tracker.client, tracker.run_id, config.architecture, name)
    log_diagnostics(tracker.client, tracker.run_id, name)
    mark("curves")
    safe_point(stop)
    try:
        if tensors.raw_examples is None:
            raise ValueError("the model's input example (raw dev digits) was not loaded")
        calibration = calibrate(model, tensors.dev, tensors.test)
        model_id = log_model(
            model, config.normalize, tensors.raw_examples, result.best_step, calibration.temperature
        )
    except BaseException:
        tracker.log_scores(None)
        raise
    mark("model")
    tracker.log_scores(model_id)
    tracker.log_calibration(model_id, calibration)
    safe_point(stop)

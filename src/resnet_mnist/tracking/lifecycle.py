"""The life of a training run in MLflow: start it (new, adopted from `mlflow run`, or resumed),
record who made it, and end it in the state that says what happened.

A run always ends: FINISHED on success; KILLED on Ctrl-C or SIGTERM (tag `stopped_at_step` when
training stopped cleanly with a resumable checkpoint); FAILED with tags `error` and
`failure_reason` on any error (`failed_at_step` too for a non-finite loss). Never RUNNING, with
one exception: a tracking server that stopped answering cannot be told anything, so its run stays
RUNNING with a dead owner until `train --resume` takes it over (see `offline`).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Run, RunStatus
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from resnet_mnist.config.settings import ConfigError, TrainConfig, same_value
from resnet_mnist.core.trainer import NonFiniteLossError, StopRequested
from resnet_mnist.runtime.env import overridden
from resnet_mnist.runtime.signals import shielded
from resnet_mnist.tracking import names
from resnet_mnist.tracking.experiments import experiment_id, mark_training_experiment
from resnet_mnist.tracking.names import DEFAULT_EXPERIMENT
from resnet_mnist.tracking.offline import TrackingLost, unreachable
from resnet_mnist.tracking.ownership import RunBusy, owner_alive, owner_tags, run_claim
from resnet_mnist.tracking.store import retry_locked


class RunInterrupted(KeyboardInterrupt):
    """The run was ended KILLED by Ctrl-C or SIGTERM; `step` is set when training stopped at a
    step boundary with a resumable checkpoint."""

    def __init__(self, run_id: str, step: int | None) -> None:
        super().__init__(f"run {run_id} interrupted")
        self.run_id = run_id
        self.step = step


def active_run_id() -> str:
    """The id of the run this process is recording (inside `tracked_run`)."""
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("no active MLflow run: this is called only inside tracked_run")
    return active.info.run_id


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def version(module: object) -> str:
    return str(getattr(module, "__version__", "unknown")).split("+")[0]


def run_name(config: TrainConfig) -> str:
    return f"{config.architecture}-seed{config.seed}"


def train_tags(config: TrainConfig, parent_run_id: str | None = None) -> dict[str, str]:
    """What a training run is (variant, depth, preset, versions, commit): tags to search and group by."""
    tags = {
        names.VARIANT: config.variant,
        names.DEPTH: str(config.depth),
        names.ARCHITECTURE: config.architecture,
        names.PRESET: config.preset,
        names.RUN_TYPE: names.TRAIN,
        "torch_version": version(torch),
        "mlflow_version": version(mlflow),
    }
    if parent_run_id:
        tags[names.PARENT_RUN_ID] = parent_run_id
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def log_params(run_id: str, params: dict[str, object]) -> None:
    """Log `params`, except those the run already holds with the same meaning.

    `mlflow run` logs every `-P` parameter as text before our process starts (`use_residual=true`,
    `lr=2e-2`); MLflow refuses to change a param, so an equal one is kept as it is and a
    conflicting one is an error.
    """
    client = MlflowClient()
    have = client.get_run(run_id).data.params
    clash = sorted(k for k, v in params.items() if k in have and not same_value(k, have[k], v))
    if clash:
        raise ConfigError(
            "the run already holds other values for "
            + ", ".join(f"{k}={have[k]!r} (wanted {params[k]!s})" for k in clash)
        )
    mlflow.log_params({k: v for k, v in params.items() if k not in have})


#: System metrics (CPU, memory, disk, network; GPU through nvidia-ml-py when one is present) are
#: sampled in a background thread while a training run is open. The monitor is ours, not the one
#: `start_run(log_system_metrics=True)` would keep, so that a run whose server went away can stop
#: it through its public `finish` (see `detach`).
SYSTEM_METRICS_INTERVAL_S = 2
_monitors: dict[str, SystemMetricsMonitor] = {}


def _monitor(run_id: str, resumed: bool) -> None:
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, samples_before_logging=1, resume_logging=resumed
    )
    monitor.start()
    _monitors[run_id] = monitor


def _start(
    config: TrainConfig,
    experiment: str,
    name: str | None,
    device: str,
    tags: dict[str, str] | None,
    parent_run_id: str | None,
    run_id: str | None,
    resume: bool,
) -> mlflow.ActiveRun:
    run = _open(config, experiment, name, device, tags, parent_run_id, run_id, resume)
    _monitor(run.info.run_id, resumed=run_id is not None)
    return run


def _open(
    config: TrainConfig,
    experiment: str,
    name: str | None,
    device: str,
    tags: dict[str, str] | None,
    parent_run_id: str | None,
    run_id: str | None,
    resume: bool,
) -> mlflow.ActiveRun:
    if resume:
        run = mlflow.start_run(run_id=run_id)
        mlflow.set_tags(owner_tags())
        return run
    all_tags = train_tags(config, parent_run_id) | owner_tags() | (tags or {})
    params = config.params() | {"device": device}
    if run_id:  # the run `mlflow run` made for this process becomes the training run
        run = mlflow.start_run(run_id=run_id)
        MlflowClient().update_run(run_id, name=name or run_name(config))
        mark_training_experiment(run.info.experiment_id)
        mlflow.set_tags(all_tags)
    else:
        run = mlflow.start_run(
            run_name=name or run_name(config), experiment_id=experiment_id(experiment), tags=all_tags
        )
    try:
        log_params(run.info.run_id, params)
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    return run


@contextmanager
def tracked_run(
    config: TrainConfig,
    experiment: str = DEFAULT_EXPERIMENT,
    name: str | None = None,
    device: str = "cpu",
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    resume: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run and make sure it ends in the right state (see the module docstring).

    `run_id` with `resume` reopens a stopped run (the caller holds its claim); `run_id` alone adopts
    a run someone else created (the project run of `mlflow run`); neither makes a new run in
    `experiment`, nested under `parent_run_id` when given. The run records its owner (host, pid,
    start time) and, through the tracker, a heartbeat.
    """
    with ExitStack() as stack:
        with shielded():  # no signal between creating the run and guarding its end
            run = _start(config, experiment, name, device, tags, parent_run_id, run_id, resume)
            stack.enter_context(ended(run.info.run_id))
        if resume:
            yield run
        else:
            with run_claim(run.info.run_id):
                yield run


@contextmanager
def ended(run_id: str) -> Iterator[None]:
    """End `run_id` when the block ends: FINISHED; KILLED after Ctrl-C or SIGTERM (then
    `RunInterrupted` is raised); FAILED after an error, with its reason in the tags.

    The ending is shielded from further signals (see `signals`), so a second or tenth Ctrl-C
    waits for the status and reason to be recorded; an error while ending makes the run FAILED,
    never FINISHED.
    """
    try:
        yield
    except TrackingLost:
        detach(run_id)
        raise
    except KeyboardInterrupt as exc:
        step = exc.step if isinstance(exc, StopRequested) else None
        _end(
            run_id,
            RunStatus.KILLED,
            {"failure_reason": "interrupted (Ctrl-C or SIGTERM)"}
            | ({"stopped_at_step": str(step)} if step is not None else {}),
        )
        raise RunInterrupted(run_id, step) from exc
    except BaseException as exc:
        _end(
            run_id,
            RunStatus.FAILED,
            {"error": f"{type(exc).__name__}: {exc}"[:5000], "failure_reason": type(exc).__name__}
            | ({"failed_at_step": str(exc.step)} if isinstance(exc, NonFiniteLossError) else {}),
        )
        raise
    else:
        _end(run_id, RunStatus.FINISHED)


def _end(run_id: str, status: int, tags: dict[str, str] | None = None) -> None:
    """Record the reason, then the status. If the store fails half-way, the run is still ended
    directly (FAILED instead of FINISHED, with the error as its reason) and the error raised."""
    client = MlflowClient()
    with shielded():
        try:
            for key, value in (tags or {}).items():
                retry_locked(partial(client.set_tag, run_id, key, value))
            _terminate(client, run_id, RunStatus.to_string(status))
        except Exception as exc:
            if unreachable(exc):  # nobody to tell: the run stays RUNNING with a dead owner
                detach(run_id)
                raise
            final = RunStatus.FAILED if status == RunStatus.FINISHED else status
            try:
                client.set_tag(
                    run_id,
                    "failure_reason",
                    f"error while ending the run: {type(exc).__name__}: {exc}"[:5000],
                )
            finally:
                client.set_terminated(run_id, RunStatus.to_string(final))
            raise


def _terminate(client: MlflowClient, run_id: str, status: str) -> None:
    """Stop the run's system metrics (their last samples sent), then end it: through MLflow's
    fluent API when it is the active run, else through the client."""
    monitor = _monitors.pop(run_id, None)
    if monitor is not None:
        monitor.finish()
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        client.set_terminated(run_id, status)


def detach(run_id: str) -> None:
    """Forget the active run in this process, asking the store (which is gone) only once, without
    retries, so that MLflow neither ends it at exit (retrying for a minute) nor keeps its system
    metrics thread sending. The run stays RUNNING with a dead owner (KILLED should that one call
    reach it), for `train --resume` either way."""
    monitor = _monitors.pop(run_id, None)
    if monitor is not None:  # `finish` waits for a send in flight: not here, the server is gone
        threading.Thread(target=monitor.finish, daemon=True, name="metrics-stop").start()
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        return
    with overridden({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}):
        try:
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))  # leaves the stack first
        except Exception as exc:  # noqa: BLE001 - the store is gone: expected
            if not unreachable(exc):
                raise


def same_params(run: Run, config: TrainConfig) -> bool:
    """Whether `run` was trained with exactly `config` (device aside): what lets a finished run
    stand in for training it again. A run from before a setting existed holds that setting's
    default."""
    have, defaults = run.data.params, TrainConfig().params()
    return all(
        same_value(k, have[k], v) if k in have else defaults.get(k) == v
        for k, v in config.params().items()
        if k != "device"
    )


def running_runs(client: MlflowClient, experiment: str) -> list[tuple[Run, bool | None]]:
    """The experiment's RUNNING runs, each with whether its owner is alive (None: unknown)."""
    exp = client.get_experiment_by_name(experiment)
    running = [] if exp is None else client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    return [(run, owner_alive(run.data.tags)) for run in running]


def end_stale(client: MlflowClient, run_id: str) -> bool:
    """End a run whose owner is gone as KILLED (it stays resumable); False when another process
    holds it (it is being resumed)."""
    try:
        with run_claim(run_id):
            fail_unfinished_models(client, client.get_run(run_id))
            client.set_tag(run_id, names.FAILURE_REASON, "owner gone (resnet-mnist stale)")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    except RunBusy:
        return False
    return True


def fail_unfinished_models(client: MlflowClient, run: Run) -> list[str]:
    """Mark FAILED the run's LoggedModels still PENDING: their logging was cut off (the process
    killed, or the tracking server gone) and the owner that could finish them is gone, so they
    would stay PENDING in the Models tab for ever. Called with the run claimed (`run_claim`), when
    a resume takes the run over or `stale` ends it. Returns their ids."""
    from mlflow.entities import LoggedModelStatus

    # by run only: a `status = 'PENDING'` filter matches nothing in MLflow 3.17's sqlite store
    models = [
        m
        for m in client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        if m.status == LoggedModelStatus.PENDING
    ]
    for model in models:
        client.set_logged_model_tags(
            model.model_id, {"failure_reason": "its logging was cut off; the run's owner is gone"}
        )
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
    return [m.model_id for m in models]

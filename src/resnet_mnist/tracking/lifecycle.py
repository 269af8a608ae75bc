"""The life of a training run in MLflow: start it (new, adopted from `mlflow run`, or resumed),
record who made it, and end it in the state that says what happened.

A run always ends: FINISHED on success; KILLED on Ctrl-C or SIGTERM (tag `stopped_at_step` when
training stopped cleanly with a resumable checkpoint) and when a callback stopped it early on
purpose (a pruned trial: tags `stopped_early_at_step` and `failure_reason`); FAILED with tags `error` and
`failure_reason` on any error (`failed_at_step` too for a non-finite loss). Never RUNNING, with
one exception: a tracking server that stopped answering cannot be told anything, so its run stays
RUNNING with a dead owner until `train --resume` takes it over (see `offline`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from resnet_mnist.config.settings import ConfigError, TrainConfig, differing_settings, same_value
from resnet_mnist.core.trainer import EarlyStop, NonFiniteLossError, StopRequested
from resnet_mnist.runtime.env import overridden
from resnet_mnist.runtime.signals import shielded
from resnet_mnist.tracking import names
from resnet_mnist.tracking.experiments import experiment_id, mark_training_experiment
from resnet_mnist.tracking.offline import TrackingLost, unreachable
from resnet_mnist.tracking.ownership import RunBusy, owner_alive, owner_tags, run_claim
from resnet_mnist.tracking.provenance import SystemMetrics, run_name, train_tags
from resnet_mnist.tracking.request import RunRequest
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


def _open(request: RunRequest, device: str) -> mlflow.ActiveRun:
    """A new run in the request's experiment, the run it adopts, or the run it resumes."""
    if request.resume:
        run = mlflow.start_run(run_id=request.resume)
        mlflow.set_tags(owner_tags() | {names.DEVICE: device})
        return run
    config = request.config
    name = request.run_name or run_name(config)
    all_tags = (
        train_tags(config, request.parent_run_id) | owner_tags() | {names.DEVICE: device} | dict(request.tags)
    )
    if request.adopt:  # the run `mlflow run` made for this process becomes the training run
        run = mlflow.start_run(run_id=request.adopt)
        MlflowClient().update_run(request.adopt, name=name)
        mark_training_experiment(run.info.experiment_id)
        mlflow.set_tags(all_tags)
    else:
        run = mlflow.start_run(run_name=name, experiment_id=experiment_id(request.experiment), tags=all_tags)
    try:
        log_params(run.info.run_id, config.params())
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    return run


@contextmanager
def tracked_run(request: RunRequest, device: str = "cpu") -> Iterator[mlflow.ActiveRun]:
    """Start the request's run and make sure it ends in the right state (see the module
    docstring); `device` is where it trains (`cuda:0`, `cpu`), recorded as a tag.

    A request that resumes reopens a stopped run (the caller holds its claim); one that adopts
    takes over a run someone else created (the project run of `mlflow run`); else a new run is
    made in its experiment, nested under its parent when given. The run records its owner (host,
    pid, start time) and, through the tracker, a heartbeat.
    """
    with ExitStack() as stack:
        with shielded():  # no signal between creating the run and guarding its end
            run = _open(request, device)
            metrics = SystemMetrics(run.info.run_id, resumed=bool(request.adopt or request.resume)).start()
            stack.enter_context(ended(run.info.run_id, metrics))
        if request.resume:
            yield run
        else:
            with run_claim(run.info.run_id):
                yield run


@contextmanager
def ended(run_id: str, metrics: SystemMetrics | None = None) -> Iterator[None]:
    """End `run_id` when the block ends: FINISHED; KILLED after Ctrl-C or SIGTERM (then
    `RunInterrupted` is raised); FAILED after an error, with its reason in the tags. The run's
    system `metrics`, when it samples them, stop first.

    The ending is shielded from further signals (see `signals`), so a second or tenth Ctrl-C
    waits for the status and reason to be recorded; an error while ending makes the run FAILED,
    never FINISHED.
    """
    try:
        yield
    except TrackingLost:
        detach(run_id, metrics)
        raise
    except KeyboardInterrupt as exc:
        step = exc.step if isinstance(exc, StopRequested) else None
        _end(
            run_id,
            metrics,
            RunStatus.KILLED,
            {names.FAILURE_REASON: "interrupted (Ctrl-C or SIGTERM)"}
            | ({names.STOPPED_AT_STEP: str(step)} if step is not None else {}),
        )
        raise RunInterrupted(run_id, step) from exc
    except EarlyStop as exc:
        _end(
            run_id,
            metrics,
            RunStatus.KILLED,
            {names.FAILURE_REASON: exc.reason[:5000], names.STOPPED_EARLY_AT_STEP: str(exc.step)},
        )
        raise
    except BaseException as exc:
        _end(
            run_id,
            metrics,
            RunStatus.FAILED,
            {names.ERROR: f"{type(exc).__name__}: {exc}"[:5000], names.FAILURE_REASON: type(exc).__name__}
            | ({names.FAILED_AT_STEP: str(exc.step)} if isinstance(exc, NonFiniteLossError) else {}),
        )
        raise
    else:
        _end(run_id, metrics, RunStatus.FINISHED)


def _end(run_id: str, metrics: SystemMetrics | None, status: int, tags: dict[str, str] | None = None) -> None:
    """Record the reason, then the status. If the store fails half-way, the run is still ended
    directly (FAILED instead of FINISHED, with the error as its reason) and the error raised."""
    client = MlflowClient()
    with shielded():
        try:
            for key, value in (tags or {}).items():
                retry_locked(partial(client.set_tag, run_id, key, value))
            if metrics is not None:  # their last samples sent before the run ends
                metrics.finish()
            _terminate(client, run_id, RunStatus.to_string(status))
        except Exception as exc:
            if unreachable(exc):  # nobody to tell: the run stays RUNNING with a dead owner
                detach(run_id, metrics)
                raise
            final = RunStatus.FAILED if status == RunStatus.FINISHED else status
            try:
                client.set_tag(
                    run_id,
                    names.FAILURE_REASON,
                    f"error while ending the run: {type(exc).__name__}: {exc}"[:5000],
                )
            finally:
                client.set_terminated(run_id, RunStatus.to_string(final))
            raise


def _terminate(client: MlflowClient, run_id: str, status: str) -> None:
    """End the run: through MLflow's fluent API when it is the active run, else the client."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        client.set_terminated(run_id, status)


def detach(run_id: str, metrics: SystemMetrics | None = None) -> None:
    """Forget the active run in this process, asking the store (which is gone) only once, without
    retries, so that MLflow neither ends it at exit (retrying for a minute) nor keeps its system
    metrics thread sending. The run stays RUNNING with a dead owner (KILLED should that one call
    reach it), for `train --resume` either way."""
    if metrics is not None:  # not waiting for a send in flight: the server is gone
        metrics.abandon()
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
    """Whether `run` was trained with exactly `config`'s settings: what lets a finished run stand
    in for training it again."""
    return not differing_settings(run.data.params, config)


def running_runs(client: MlflowClient, experiment: str) -> list[tuple[Run, bool | None]]:
    """The experiment's RUNNING runs, each with whether its owner is alive (None: unknown)."""
    exp = client.get_experiment_by_name(experiment)
    running = [] if exp is None else client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    return [(run, owner_alive(run.data.tags)) for run in running]


def end_stale(client: MlflowClient, run_id: str) -> bool:
    """End a run whose owner is gone as KILLED (it stays resumable); False when another process
    holds it (it is being resumed)."""
    return end_abandoned(client, run_id, RunStatus.KILLED, "owner gone (resnet-mnist stale)")


def end_abandoned(client: MlflowClient, run_id: str, status: int, reason: str) -> bool:
    """End a run whose owner is gone, under the run's claim: its LoggedModels still PENDING
    FAILED, the reason, then `status`. False when another process holds the run after all (it
    ends the run itself)."""
    try:
        with run_claim(run_id):
            fail_unfinished_models(client, client.get_run(run_id))
            client.set_tag(run_id, names.FAILURE_REASON, reason[:5000])
            client.set_terminated(run_id, RunStatus.to_string(status))
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
            model.model_id, {names.FAILURE_REASON: "its logging was cut off; the run's owner is gone"}
        )
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
    return [m.model_id for m in models]

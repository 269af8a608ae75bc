"""One trial of a tune search, exactly once, whichever process or node runs it and however often.

The trial's MLflow run is the one Optuna's MLflow storage made when the driver asked for the
trial; the training adopts it, so the trial is an ordinary training run (our params, curves,
checkpoint, model) nested under the tune run. The run's end status is the trial's state to
Optuna (FINISHED: complete, KILLED: pruned, FAILED: failed), so nothing tells Optuna a state:
the trial's value is written before its run ends, and the run's lifecycle ends it FINISHED when
training and its results are done, or KILLED with the reason (`stopped_early_at_step`) at the
evaluation where the pruner says so.

A task that finds its trial's run FINISHED or pruned returns it. A run left RUNNING by a dead
process (its worker was killed, its node died) or stopped by Ctrl-C continues from its last
checkpoint in the same run; one that died before its first checkpoint is ended FAILED with the
reason (the search then asks for another trial). Knows nothing of Ray: `cluster` calls
`run_trial` in a task.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from resnet_mnist.config.placement import Placement
from resnet_mnist.config.settings import TrainConfig
from resnet_mnist.core.trainer import Callback, EarlyStop, Result
from resnet_mnist.runtime.errors import ProjectError
from resnet_mnist.study.reach import Reach
from resnet_mnist.tracking import names
from resnet_mnist.tracking.lifecycle import end_abandoned
from resnet_mnist.tracking.ownership import STALE_AFTER_S, RunBusy, claim, owner_alive

if TYPE_CHECKING:
    import optuna

#: How long a trial waits for another live process training it to finish or go stale.
LIVE_ATTEMPT_WAIT_S = STALE_AFTER_S + 60
COMPLETE, PRUNED, FAILED, CONTINUE, BUSY = "complete", "pruned", "failed", "continue", "busy"


class TrialBusy(ProjectError, RuntimeError):
    """Another live process is training this trial."""


@dataclass(frozen=True)
class PrunerSpec:
    """Which pruner judges the trials at each dev evaluation, and how patiently: the same one
    is built in every worker (Optuna's storage does not keep it)."""

    kind: str = "median"
    startup_trials: int = 3
    warmup_steps: int = 0

    def build(self) -> optuna.pruners.BasePruner:
        import optuna

        if self.kind == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=self.startup_trials, n_warmup_steps=self.warmup_steps
            )
        if self.kind == "halving":
            return optuna.pruners.SuccessiveHalvingPruner()
        return optuna.pruners.NopPruner()

    def __str__(self) -> str:
        if self.kind == "median":
            return f"median (after {self.startup_trials} trials, from step {self.warmup_steps})"
        return {"halving": "successive halving", "none": "none"}[self.kind]


@dataclass(frozen=True)
class TrialOrder:
    """Everything a task needs to train one trial, passed explicitly rather than inherited."""

    reach: Reach
    experiment: str
    experiment_id: str
    study_name: str
    tune_run_id: str
    run_id: str
    number: int
    config: TrainConfig
    placement: Placement
    pruner: PrunerSpec
    threads: int


@dataclass(frozen=True)
class TrialOutcome:
    """What became of a trial: its state, its value (best dev accuracy; NaN when failed) and how
    this task got it (trained, resumed, reused)."""

    number: int
    run_id: str
    state: str
    how: str
    value: float
    node: str
    reason: str = ""


class TrialReporter(Callback):
    """Feeds the pruner the dev accuracy of every evaluation the Trainer makes, and gives the
    trial its value before its run ends.

    With Optuna's MLflow storage a trial's state *is* its run's status, so the reporter tells no
    state: it writes the value as the storage's own `tell` does (the run's metric `value`), and
    the run's lifecycle then ends the run FINISHED (complete) or, after `EarlyStop`, KILLED with
    the reason (pruned). A trial is never pruned at its last evaluation: its training is done.
    """

    def __init__(self, trial: optuna.trial.Trial, pruner: PrunerSpec, last_step: int) -> None:
        self.trial = trial
        self.pruner = pruner
        self.last_step = last_step

    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None:
        self.trial.report(dev_accuracy, step)
        if step < self.last_step and self.trial.should_prune():
            self._value(dev_accuracy)  # as Optuna values a pruned trial: its last report
            raise EarlyStop(
                step,
                f"pruned at step {step} by the {self.pruner.kind} pruner (dev accuracy {dev_accuracy:.2%})",
            )

    def on_end(self, result: Result) -> None:
        self._value(result.best_dev_accuracy)

    def _value(self, value: float) -> None:
        """The trial's value, written (with the reports still queued) before its run ends."""
        from mlflow.entities import Metric

        self.trial.storage.flush_all_batches()  # type: ignore[attr-defined]
        run_id = str(self.trial._trial_id)
        metric = Metric(names.OPTUNA_VALUE, value, int(time.time() * 1000), 1)
        MlflowClient().log_batch(run_id, metrics=[metric], synchronous=True)


def state_of(run: Run) -> str:
    """A trial's state from its run: complete, pruned, failed, or `continue` (stopped, or left
    RUNNING by a dead process or before its training started) or `busy` (a live process has it)."""
    status, tags = run.info.status, run.data.tags
    if status == "FINISHED":
        return COMPLETE
    if status == "FAILED":
        return FAILED
    if status == "KILLED":
        return PRUNED if names.STOPPED_EARLY_AT_STEP in tags else CONTINUE
    return BUSY if owner_alive(tags) else CONTINUE


def counts(run: Run) -> bool:
    """Whether a trial spent budget: it ended complete or pruned, or its training diverged."""
    state = state_of(run)
    return state in (COMPLETE, PRUNED) or (state == FAILED and names.FAILED_AT_STEP in run.data.tags)


def run_trial(order: TrialOrder, node: str, stop: threading.Event | None = None) -> TrialOutcome:
    """Make sure the trial has ended (see the module docstring); `node` names where this attempt
    runs. A stop request ends a training trial KILLED with a checkpoint (a rerun continues it)."""
    import torch
    from mlflow.optuna.storage import MlflowStorage

    from resnet_mnist.core import data

    order.reach.adopt()
    torch.set_num_threads(order.threads)
    data.fetch(order.placement.data_root)
    client = MlflowClient()
    busy = f"trial {order.number} is being trained by another process"
    storage = MlflowStorage(order.experiment_id)
    try:
        with claim(f"trial-{order.run_id}", busy, wait_s=LIVE_ATTEMPT_WAIT_S):
            run = _without_live_owner(client, order, busy)
            ended = _ended(order, run, node)
            if ended is not None:
                return ended
            return _attempt(client, storage, order, run, node, stop)
    except RunBusy as exc:
        raise TrialBusy(str(exc)) from None
    finally:
        storage.flush_all_batches()


def _without_live_owner(client: MlflowClient, order: TrialOrder, busy: str) -> Run:
    """The trial's run once it is not RUNNING with a live owner."""
    deadline = time.monotonic() + LIVE_ATTEMPT_WAIT_S
    while True:
        run = client.get_run(order.run_id)
        if not (run.info.status == "RUNNING" and owner_alive(run.data.tags)):
            return run
        if time.monotonic() >= deadline:
            raise TrialBusy(busy)
        time.sleep(2.0)


def _ended(order: TrialOrder, run: Run, node: str) -> TrialOutcome | None:
    """The outcome of a trial that has already ended, else None."""
    state = state_of(run)
    return outcome(order, run, state, "reused", node) if state in (COMPLETE, PRUNED, FAILED) else None


def _attempt(
    client: MlflowClient,
    storage: Any,
    order: TrialOrder,
    run: Run,
    node: str,
    stop: threading.Event | None,
) -> TrialOutcome:
    """Train the trial in its run, continue it from its checkpoint, or end it FAILED when its
    process died before the first checkpoint."""
    import optuna

    from resnet_mnist.tracking import runner
    from resnet_mnist.tracking.request import RunRequest

    tags = run.data.tags
    started = names.OWNER_PID in tags
    if started and names.RESUME_STEP not in tags:
        return _end_dead(client, order, run, node)
    study = optuna.load_study(study_name=order.study_name, storage=storage, pruner=order.pruner.build())
    # Optuna's MLflow storage uses run ids as trial ids (typed int in Optuna)
    trial = optuna.trial.Trial(study, cast(int, order.run_id))
    reporter = TrialReporter(trial, order.pruner, order.config.total_steps() - 1)
    mine = {names.TUNE_TRIAL: str(order.number), names.TUNE_NODE: node}
    try:
        if not started:
            request = RunRequest(
                order.config,
                order.placement,
                order.experiment,
                run_name=f"{order.config.architecture}-trial-{order.number}",
                parent_run_id=order.tune_run_id,
                tags=mine,
                adopt=order.run_id,
            )
            runner.train(request, [reporter], stop=stop)
            how = "trained"
        else:
            for key, value in mine.items():
                client.set_tag(order.run_id, key, value)
            resuming = RunRequest.resuming(order.run_id, order.placement)
            runner.resume(resuming, [reporter], stop=stop, trial=True)
            how = "resumed"
    except EarlyStop:
        return outcome(
            order, client.get_run(order.run_id), PRUNED, "trained" if not started else "resumed", node
        )
    return outcome(order, client.get_run(order.run_id), COMPLETE, how, node)


def _end_dead(client: MlflowClient, order: TrialOrder, run: Run, node: str) -> TrialOutcome:
    """End a trial whose process died before its first checkpoint: FAILED, saying so."""
    tags = run.data.tags
    reason = (
        f"its process (pid {tags.get(names.OWNER_PID, '?')} on {tags.get(names.OWNER_HOST, '?')}, node "
        f"{tags.get(names.TUNE_NODE, '?')}) died before its first checkpoint; the search asks for "
        "another trial"
    )
    end_abandoned(client, run.info.run_id, RunStatus.FAILED, reason)
    return outcome(order, client.get_run(run.info.run_id), FAILED, "ended", node)


def outcome(order: TrialOrder, run: Run, state: str, how: str, node: str) -> TrialOutcome:
    metrics, tags = run.data.metrics, run.data.tags
    value = metrics.get(names.OPTUNA_VALUE, math.nan) if state in (COMPLETE, PRUNED) else math.nan
    return TrialOutcome(
        number=order.number,
        run_id=run.info.run_id,
        state=state,
        how=how,
        value=value,
        node=tags.get(names.TUNE_NODE, node),
        reason=tags.get(names.FAILURE_REASON, "") if state != COMPLETE else "",
    )

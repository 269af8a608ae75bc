"""How a study's grid is scheduled: the study run its cells nest under, every seed-0 cell of the
learning-rate grid submitted at once, each (depth, variant) group's other seeds as soon as its
rate is chosen, and a stop that reaches every running cell. Where the cells run is an `Engine`
(`cluster.RayEngine`: Ray tasks); what one cell does is `cells`; the grid is `spec`."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from resnet_mnist.config.placement import Placement
from resnet_mnist.runtime.errors import ProjectError
from resnet_mnist.study.cells import CellOrder, CellOutcome, order_for
from resnet_mnist.study.spec import (
    Chosen,
    Group,
    Resources,
    StudySpec,
    cell_config,
    cell_key,
    choose_lr,
    chosen_settings,
)
from resnet_mnist.study.trials import TrialOrder
from resnet_mnist.tracking import names
from resnet_mnist.tracking.experiments import experiment_id as find_experiment
from resnet_mnist.tracking.sqlite import store_lock
from resnet_mnist.tracking.store import retry_conflicts
from resnet_mnist.tracking.views import save_search_views

SEARCH, SEEDS, TUNED = "lr-search", "seeds", "tuned"


class StudyIncomplete(ProjectError, RuntimeError):
    """Cells of the grid have not finished; the message says how to train them."""


class CellFailed(ProjectError, RuntimeError):
    """A cell's task failed (its training raised, or Ray ran out of retries); the message says why."""


class Engine(Protocol):
    """Runs cells somewhere: submit returns a handle, wait the handles that are done."""

    def submit(self, order: CellOrder | TrialOrder, resources: Resources) -> Hashable: ...

    def wait(self, handles: list[Hashable], timeout_s: float) -> list[Hashable]: ...

    def result(self, handle: Hashable) -> Any:
        """The task's outcome (a CellOutcome, a TrialOutcome), or CellFailed."""
        ...

    def cancel(self, handles: list[Hashable]) -> None:
        """Ask running cells to stop (at a step boundary the first time, at once the second)
        and drop those not started."""
        ...


def study_run(client: MlflowClient, experiment_id: str, spec: StudySpec, run_id: str | None = None) -> str:
    """The study's parent run, found by its grid key or created (as `run_id` when given, the run
    `mlflow run -e study` made). Creation is serialised; should two machines still race on a
    server, the oldest run with the key is the study run."""
    key = spec.key()
    query = names.runs_where(names.STUDY, {names.STUDY_KEY: key})
    tags = {
        names.RUN_TYPE: names.STUDY,
        names.STUDY_NAME: spec.name,
        names.STUDY_KEY: key,
        names.PRESET: spec.preset,
        names.STUDY_DEPTHS: ",".join(map(str, spec.depths)),
        names.STUDY_SEEDS: ",".join(map(str, spec.seeds)),
        names.STUDY_CELLS: str(spec.cell_count()),
    }
    if spec.tune:
        tags[names.STUDY_TUNE] = spec.tune.describe()
    else:
        tags[names.STUDY_LRS] = ",".join(map(str, spec.lrs))
    with store_lock(mlflow.get_tracking_uri()):
        found = client.search_runs(
            [experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1
        )
        if found:
            return found[0].info.run_id
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=f"study-{spec.name}").info.run_id
        else:
            client.update_run(run_id, name=f"study-{spec.name}")
        for key, value in (tags | {names.STUDY_STATUS: "training"}).items():
            client.set_tag(run_id, key, value)
        # A container: its status says nothing of its cells (`study.status` does).
        client.set_terminated(run_id, "FINISHED")
    oldest = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1)
    return oldest[0].info.run_id if oldest else run_id


@dataclass(frozen=True)
class StudyHome:
    """Where a study's runs live: its experiment and its study run."""

    experiment_id: str
    experiment: str
    run_id: str


def open_study(
    client: MlflowClient, spec: StudySpec, experiment: str, project_run: str | None = None
) -> StudyHome:
    """The study run for this grid, found or created: in `experiment`, or, under `mlflow run -e
    study`, in the project run's experiment (the project run becomes the study run, or points to
    the one that already exists with the tag `study.run`)."""
    if project_run:
        exp_id = client.get_run(project_run).info.experiment_id
        experiment = client.get_experiment(exp_id).name
    else:
        exp_id = find_experiment(experiment)
    run_id = study_run(client, exp_id, spec, project_run)
    if project_run and project_run != run_id:
        client.set_tag(project_run, names.STUDY_RUN, run_id)
    retry_conflicts(partial(save_search_views, client, exp_id, True))
    return StudyHome(exp_id, experiment, run_id)


def cells_of(client: MlflowClient, experiment_id: str, study_run_id: str) -> list[Run]:
    """The study's FINISHED cells."""
    return client.search_runs(
        [experiment_id],
        names.runs_where(names.TRAIN, {names.PARENT_RUN_ID: study_run_id}, finished=True),
        max_results=5000,
    )


@dataclass(frozen=True)
class Planned:
    """A cell submitted to the engine: its group, rate (or tuned settings) and seed."""

    group: Group
    chosen: Chosen
    seed: int
    phase: str

    @property
    def key(self) -> str:
        return cell_key(self.group, self.chosen, self.seed)


@dataclass
class GridResult:
    """What the grid's cells came to: the chosen rates and the failures."""

    lrs: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self) -> None:
        """StudyIncomplete when anything failed."""
        if self.failures:
            raise StudyIncomplete(
                f"{len(self.failures)} cells failed:\n  "
                + "\n  ".join(self.failures)
                + "\nrerun the command to train what is missing (finished cells are kept)"
            )


def describe(planned: Planned, outcome: CellOutcome) -> str:
    dev = "" if math.isnan(outcome.dev_accuracy) else f": dev {outcome.dev_accuracy:.2%}"
    took = "" if math.isnan(outcome.train_time_s) else f", {outcome.train_time_s:.0f} s training"
    return (
        f"{planned.key} ({planned.phase}) {outcome.how} on {outcome.node}, "
        f"attempt {outcome.attempt}{dev}{took}"
    )


def run_grid(
    engine: Engine,
    client: MlflowClient,
    home: StudyHome,
    spec: StudySpec,
    stop: threading.Event,
    log: Callable[[str], None],
    placement: Placement | None = None,
) -> GridResult:
    """Train every cell of the grid that has not finished. Parallelism is the engine's slots,
    not the number of groups: every seed-0 cell of the rate grid is submitted at once (deepest
    first: they take longest), and each group's other seeds as soon as its rate is chosen.
    A stop cancels every cell (see `stop_cells`) and raises KeyboardInterrupt."""
    result = GridResult()
    pending: dict[Hashable, Planned] = {}
    searched: dict[str, dict[float, float]] = {g.name: {} for g in spec.groups()}

    def submit(planned: Planned) -> None:
        pending[submit_cell(engine, home, spec, planned, placement)] = planned

    for group in spec.groups():
        for lr in spec.lrs:
            submit(Planned(group, lr, spec.seeds[0], SEARCH))
    while pending:
        if stop.is_set():
            stop_cells(engine, pending, log)
            raise KeyboardInterrupt("study stopped")
        for handle in engine.wait(list(pending), 0.5):
            planned = pending.pop(handle)
            outcome = collect_cell(engine, handle, planned, result, log)
            if outcome is None or planned.phase != SEARCH:
                continue
            rates = searched[planned.group.name]
            rates[chosen_settings(planned.chosen)["lr"]] = outcome.dev_accuracy
            if len(rates) == len(spec.lrs):
                best = choose_lr(rates)
                result.lrs[planned.group.name] = best
                client.set_tag(home.run_id, f"{names.STUDY_LR}{planned.group.name}", str(best))
                log(f"{planned.group.name}: lr {best:g} chosen on dev; its other seeds submitted")
                for seed in spec.seeds[1:]:
                    submit(Planned(planned.group, best, seed, SEEDS))
    result.check()
    return result


def submit_cell(
    engine: Engine, home: StudyHome, spec: StudySpec, planned: Planned, placement: Placement | None
) -> Hashable:
    """One cell to the engine, as an order with this driver's store and data folder."""
    order = order_for(
        cell_config(spec, planned.group, planned.chosen, planned.seed),
        placement or Placement(),
        planned.key,
        planned.phase,
        spec.name,
        home.run_id,
        (home.experiment, home.experiment_id),
        spec.resources.threads,
    )
    return engine.submit(order, spec.resources)


def collect_cell(
    engine: Engine, handle: Hashable, planned: Planned, result: GridResult, log: Callable[[str], None]
) -> CellOutcome | None:
    """An ended cell's outcome, logged; a failure is recorded in `result` (None)."""
    try:
        outcome: CellOutcome = engine.result(handle)
    except CellFailed as exc:
        result.failures.append(f"{planned.key}: {exc}")
        log(f"{planned.key} ({planned.phase}) failed: {exc}")
        return None
    log(describe(planned, outcome))
    return outcome


#: How long a stopped study waits for its cells to end KILLED with a checkpoint (the step in
#: progress, then the checkpoint's upload) before asking them once more, at once.
STOP_GRACE_S = 300.0


def stop_cells(
    engine: Engine, pending: dict[Hashable, Any], log: Callable[[str], None], what: str = "cells"
) -> None:
    """Cancel every cell and wait until each has ended: a running one stops at its next step
    boundary and ends KILLED with a resumable checkpoint (a rerun continues it). A second
    Ctrl-C here, or STOP_GRACE_S without an end, asks the cells again: they stop at once (their
    runs still end KILLED)."""
    log(f"stopping {len(pending)} {what} at their next step boundary (again to stop them at once)")
    engine.cancel(list(pending))
    asked_again, deadline = False, time.monotonic() + STOP_GRACE_S
    while pending:
        try:
            for handle in engine.wait(list(pending), 0.5):
                pending.pop(handle)
        except KeyboardInterrupt:
            if asked_again:
                raise
        else:
            if asked_again or time.monotonic() <= deadline:
                continue
        asked_again = True
        log(f"stopping the {what} at once")
        engine.cancel(list(pending))

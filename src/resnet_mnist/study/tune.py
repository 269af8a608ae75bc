"""A search over one network's settings: an Optuna study stored in MLflow (Optuna's MLflow
storage: the study is the tune run, each trial a training run nested under it), its trials Ray
tasks on the study's engine (`cluster.RayEngine`), what one trial does in `trials`.

The driver asks Optuna's sampler (TPE) for settings, one trial per free slot, and submits each
as a task; the pruner judges every trial at each dev evaluation inside its task. The budget is
the number of trials that ended complete or pruned (a trial that diverged counts as well): asked
again with a larger `--trials`, the same search continues, a trial stopped by Ctrl-C or left
by a dead process is continued (or ended FAILED when it left no checkpoint), and no trial is
trained twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from resnet_mnist.config.placement import Placement
from resnet_mnist.config.search import SearchSpace
from resnet_mnist.config.settings import TrainConfig
from resnet_mnist.config.space import ConfigError
from resnet_mnist.runtime.errors import ProjectError
from resnet_mnist.study.execution import CellFailed, Engine, stop_cells
from resnet_mnist.study.reach import Reach, data_root
from resnet_mnist.study.spec import Resources
from resnet_mnist.study.trials import (
    COMPLETE,
    CONTINUE,
    PrunerSpec,
    TrialOrder,
    TrialOutcome,
    counts,
    state_of,
)
from resnet_mnist.tracking import names
from resnet_mnist.tracking.experiments import experiment_id as find_experiment
from resnet_mnist.tracking.lifecycle import end_abandoned
from resnet_mnist.tracking.ownership import owner_alive
from resnet_mnist.tracking.sqlite import store_lock
from resnet_mnist.tracking.store import retry_conflicts
from resnet_mnist.tracking.views import save_search_views


class SearchIncomplete(ProjectError, RuntimeError):
    """Trials failed and the budget is not spent; the message says how to go on."""


@dataclass(frozen=True)
class TuneSpec:
    """What a search tunes: the base settings (a preset, the variant and any overrides), the
    space, the budget, the pruner and the sampler's seed, and what each trial asks of the
    cluster. The base settings and the space identify the search; the rest is how it is run."""

    base: TrainConfig
    space: SearchSpace
    trials: int
    pruner: PrunerSpec = PrunerSpec()
    sampler_seed: int = 0
    resources: Resources = Resources()

    def key(self) -> str:
        fixed = {k: str(v) for k, v in sorted(self.base.params().items()) if k not in self.space.names()}
        text = json.dumps({"settings": fixed, "space": self.space.key()})
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def study_name(self) -> str:
        """The tune run's name, which Optuna's storage finds the study by."""
        return f"tune-{self.base.architecture}-{self.base.preset}-{self.key()}"

    def config_for(self, params: dict[str, Any]) -> TrainConfig:
        """The base settings with a trial's values."""
        return dataclasses.replace(self.base, **params).validate()

    def sampler(self, asked: int = 0) -> Any:
        """TPE, random for its first third of the budget (at least 3 trials), lying constantly
        about the trials in flight so that parallel asks spread out. Seeded by the sampler seed
        and the trials `asked` before, so that a continued search does not draw its first
        settings again."""
        import numpy as np
        import optuna

        seed = int(np.random.SeedSequence([self.sampler_seed, asked]).generate_state(1)[0])
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=max(3, self.trials // 3),
            multivariate=True,
            constant_liar=True,
        )


@dataclass(frozen=True)
class TuneHome:
    """Where a search lives: its experiment, its tune run (the Optuna study) and its name."""

    experiment_id: str
    experiment: str
    run_id: str
    study_name: str


def pruner_for(kind: str, base: TrainConfig, space: SearchSpace) -> PrunerSpec:
    """The pruner, patient enough: no trial is judged before its first evaluation, nor while the
    search may still be warming it up."""
    warming = max((int(d.bounds()[1]) for d in space.dimensions if d.name == "warmup_steps"), default=0)
    return PrunerSpec(kind, startup_trials=3, warmup_steps=max(base.eval_steps, warming))


def open_tune(
    client: MlflowClient,
    spec: TuneSpec,
    experiment: str,
    project_run: str | None = None,
    parent: tuple[str, str] | None = None,
) -> TuneHome:
    """The tune run for this search, found by name or created (as `project_run` when given, the
    run `mlflow run -e tune` made; when the search already exists, that run points to it with
    the tag `tune.run`). A study's search is created nested under `parent`, (the study run's
    id, the group's name). Creation is serialised on sqlite."""
    from mlflow.optuna.storage import MlflowStorage

    if project_run:
        exp_id = client.get_run(project_run).info.experiment_id
        experiment = client.get_experiment(exp_id).name
    else:
        exp_id = find_experiment(experiment)
    storage = MlflowStorage(exp_id)
    name = spec.study_name
    with store_lock(mlflow.get_tracking_uri()):
        found = storage.get_study_id_by_name_if_exists(name)
        if found is None:
            run_id = _new_tune_run(client, storage, spec, project_run, parent)
        else:
            run_id = str(found)
            if project_run and project_run != run_id:
                client.set_tag(project_run, names.TUNE_RUN, run_id)
    if parent is None:  # a study's searches live in its experiment, which has its own views
        retry_conflicts(partial(save_search_views, client, exp_id, False))
    return TuneHome(exp_id, experiment, run_id, name)


def find_tune(client: MlflowClient, spec: TuneSpec, experiment_id: str) -> TuneHome | None:
    """The search's tune run, if it exists (read only)."""
    from mlflow.optuna.storage import MlflowStorage

    found = MlflowStorage(experiment_id).get_study_id_by_name_if_exists(spec.study_name)
    if found is None:
        return None
    return TuneHome(experiment_id, client.get_experiment(experiment_id).name, str(found), spec.study_name)


def _new_tune_run(
    client: MlflowClient,
    storage: Any,
    spec: TuneSpec,
    project_run: str | None,
    parent: tuple[str, str] | None,
) -> str:
    """The Optuna study's run: `project_run` renamed and given the study's direction, or a new
    run made by the storage; tagged with what the search tunes (and the study it serves)."""
    from optuna.study import StudyDirection

    if project_run:
        client.update_run(project_run, name=spec.study_name)
        client.set_tag(project_run, names.OPTUNA_DIRECTION, StudyDirection.MAXIMIZE.name)
        run_id = project_run
    else:
        run_id = str(storage.create_new_study([StudyDirection.MAXIMIZE], spec.study_name))
    tags = {
        names.RUN_TYPE: names.TUNE,
        names.TUNE_KEY: spec.key(),
        names.PRESET: spec.base.preset,
        names.ARCHITECTURE: spec.base.architecture,
        names.VARIANT: spec.base.variant,
        names.DEPTH: str(spec.base.depth),
        names.TUNE_SPACE: "; ".join(d.describe() for d in spec.space.dimensions),
    }
    if parent:
        tags |= {names.PARENT_RUN_ID: parent[0], names.STUDY_GROUP: parent[1]}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if not project_run:  # a container: `tune.status` says how far the search is
        client.set_terminated(run_id, "FINISHED")
    return run_id


def trial_runs(client: MlflowClient, home: TuneHome) -> list[Run]:
    """Every trial's run, oldest first."""
    return client.search_runs(
        [home.experiment_id],
        f"tags.`{names.PARENT_RUN_ID}` = {names.quote(home.run_id)}",
        order_by=["attributes.start_time ASC"],
        max_results=5000,
    )


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """The trial's value of every dimension, asked of the sampler (an enum's choices as plain
    text: Optuna stores categorical values as JSON)."""
    values: dict[str, Any] = {}
    for dim in space.dimensions:
        if dim.choices:
            values[dim.name] = trial.suggest_categorical(
                dim.name, [str(c) if isinstance(c, str) else c for c in dim.choices]
            )
        elif dim.kind is int:
            low, high = dim.bounds()
            values[dim.name] = trial.suggest_int(dim.name, int(low), int(high), log=dim.log)
        else:
            low, high = dim.bounds()
            values[dim.name] = trial.suggest_float(dim.name, low, high, log=dim.log)
    return values_of(values, space)


@dataclass
class SearchResult:
    """What this command's share of the search came to."""

    outcomes: list[TrialOutcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class Search:
    """Trials until `spec.trials` of them count (see `counts`), at most `slots` at once, asked of
    the sampler as slots free up. A stop cancels every trial (each ends KILLED with a checkpoint,
    continued by a rerun) and raises KeyboardInterrupt."""

    def __init__(
        self,
        engine: Engine,
        client: MlflowClient,
        home: TuneHome,
        spec: TuneSpec,
        slots: int,
        log: Callable[[str], None],
        placement: Placement | None = None,
    ) -> None:
        import optuna
        from mlflow.optuna.storage import MlflowStorage

        self.engine, self.client, self.home, self.spec, self.slots, self.log = (
            engine, client, home, spec, slots, log
        )  # fmt: skip
        self.storage = MlflowStorage(home.experiment_id)
        self.study = optuna.load_study(
            study_name=home.study_name, storage=self.storage, pruner=spec.pruner.build()
        )
        # every trial is read back from MLflow (several requests each): once, here
        self.asked = self.study.get_trials(deepcopy=False)
        self.study.sampler = spec.sampler(len(self.asked))
        where = placement or Placement()
        self.placement = dataclasses.replace(where, data_root=data_root(where.data_root))
        self.reach = Reach.here()
        self.pending: dict[Hashable, TrialOrder] = {}
        self.result = SearchResult()
        self.spent = 0
        self.broken = 0
        #: trials that failed without spending budget after which the command gives up
        self.failure_limit = max(3, spec.trials)

    def run(self, stop: threading.Event) -> SearchResult:
        """The whole search on its own: trials until the budget is spent (see the class)."""
        self.start()
        while True:
            while not stop.is_set() and len(self.pending) < self.slots and self.wants():
                self.ask()
            if not self.pending:
                break
            if stop.is_set():
                self.stop()
                raise KeyboardInterrupt("search stopped")
            for handle in self.engine.wait(list(self.pending), 0.5):
                self.collect(handle)
            if self.gave_up:
                self.stop()
                break
        if not self.complete:
            raise SearchIncomplete(self.incomplete())
        return self.result

    def stop(self) -> None:
        """Cancel the trials in flight and wait until each has ended (see `stop_cells`)."""
        orders = list(self.pending.values())
        stop_cells(self.engine, self.pending, self.log, "trials")
        end_unstarted(self.client, orders)

    def wants(self) -> bool:
        """Whether another trial may be asked for: budget left, beyond the trials in flight."""
        return self.spent + len(self.pending) < self.spec.trials and not self.gave_up

    @property
    def gave_up(self) -> bool:
        """Too many trials failed without spending budget: the search stops asking."""
        return self.broken >= self.failure_limit

    @property
    def complete(self) -> bool:
        return self.spent >= self.spec.trials

    def incomplete(self) -> str:
        failures = self.result.failures
        return (
            f"{self.spent} of {self.spec.trials} trials ended; {len(failures)} failed:\n  "
            + "\n  ".join(failures)
            + "\nrerun the command to go on (ended trials are kept)"
        )

    def _submit(self, run_id: str, number: int, config: TrainConfig) -> None:
        order = TrialOrder(
            self.reach, self.home.experiment, self.home.experiment_id, self.home.study_name,
            self.home.run_id, run_id, number, config, self.placement, self.spec.pruner,
            self.spec.resources.threads,
        )  # fmt: skip
        self.pending[self.engine.submit(order, self.spec.resources)] = order

    def start(self) -> None:
        """Count the trials that spent budget; submit those a stop or a dead process left."""
        runs = {r.info.run_id: r for r in trial_runs(self.client, self.home)}
        self.spent = sum(counts(r) for r in runs.values())
        for trial in self.asked:
            run = runs.get(str(trial._trial_id))
            if run is None or state_of(run) != CONTINUE:
                continue
            if set(trial.params) != set(self.spec.space.names()):
                fail_unsettled(self.client, run)
                continue
            self.log(f"trial {trial.number}: continued ({run.info.status.lower()} before)")
            self._submit(
                run.info.run_id, trial.number, self.spec.config_for(values_of(trial.params, self.spec.space))
            )

    def ask(self) -> None:
        """One new trial from the sampler, submitted; refused settings end it FAILED."""
        import optuna

        trial = self.study.ask()
        run_id = str(trial._trial_id)
        values = suggest(trial, self.spec.space)
        self.storage.flush_all_batches()
        try:
            config = self.spec.config_for(values)
        except ConfigError as exc:
            self.client.set_tag(run_id, names.FAILURE_REASON, f"settings refused: {exc}")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.result.failures.append(f"trial {trial.number}: settings refused: {exc}")
            self.broken += 1
            return
        self._submit(run_id, trial.number, config)

    def collect(self, handle: Hashable) -> None:
        """An ended task: its outcome logged, its trial counted as its run says (as a rerun
        would count it); a trial Ray gave up on is ended FAILED, not left RUNNING."""
        order = self.pending.pop(handle)
        try:
            outcome: TrialOutcome = self.engine.result(handle)
        except CellFailed as exc:
            self.result.failures.append(f"trial {order.number}: {exc}")
            self.log(f"trial {order.number} failed: {exc}")
            end_lost(self.client, order.run_id, str(exc))
        else:
            self.result.outcomes.append(outcome)
            self.log(describe(outcome, order, self.spec.space.names()))
        spent = counts(self.client.get_run(order.run_id))
        self.spent += spent
        self.broken += not spent


def end_lost(client: MlflowClient, run_id: str, reason: str) -> None:
    """End FAILED, with the reason, a trial whose task failed while its run is still RUNNING
    with no live owner (Ray ran out of retries): else it would stay in flight for ever."""
    run = client.get_run(run_id)
    if run.info.status == "RUNNING" and not owner_alive(run.data.tags):
        end_abandoned(client, run_id, RunStatus.FAILED, reason)


def end_unstarted(client: MlflowClient, orders: list[TrialOrder]) -> None:
    """End KILLED the trials a stop reached before their training took their run over: the run
    the storage made when the trial was asked is RUNNING with no owner, and would look in flight
    for ever. A rerun trains them (to `state_of` they are to be continued)."""
    for order in orders:
        run = client.get_run(order.run_id)
        if run.info.status == "RUNNING" and names.OWNER_PID not in run.data.tags:
            end_abandoned(client, order.run_id, RunStatus.KILLED, "stopped before its training started")


def values_of(params: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """A trial's values as the settings take them (a choice of an enum setting as that enum)."""
    kinds = {d.name: d.kind for d in space.dimensions}
    return {k: kinds[k](v) if isinstance(v, str) else v for k, v in params.items() if k in kinds}


def fail_unsettled(client: MlflowClient, run: Run) -> None:
    """End a trial that was asked for but never given all its settings (its driver died)."""
    client.set_tag(
        run.info.run_id, names.FAILURE_REASON, "asked for, but its driver died before its settings"
    )
    client.set_terminated(run.info.run_id, "FAILED")


def describe(outcome: TrialOutcome, order: TrialOrder, searched_names: list[str]) -> str:
    """One line per ended trial: its number, searched values, state, where, and its value."""
    searched = ", ".join(f"{k}={_short(getattr(order.config, k))}" for k in searched_names)
    value = "" if math.isnan(outcome.value) else f": dev {outcome.value:.2%}"
    reason = f"; {outcome.reason}" if outcome.reason and outcome.state != COMPLETE else ""
    return (
        f"trial {outcome.number} ({searched}) {outcome.state}, {outcome.how} on {outcome.node}{value}{reason}"
    )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

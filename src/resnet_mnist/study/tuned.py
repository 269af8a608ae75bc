"""A tuned study's schedule: every (depth, variant) group's search with the same budget (the
study file's `tune:`: trials of the preset's epochs over one space, on a selection seed that no
scored cell uses), then each group's scored seeds at the settings its search chose, all on one
engine. Trials of every search and the cells of finished searches share the engine's slots:
cells first (they are submitted as soon as their search ends), then a trial of the search with
the fewest trials so far, the deepest group first on a tie (its trials take longest).

Each search is an ordinary `tune` search (`study.tune.Search`) whose tune run is nested under the
study run and tagged with its group; the chosen settings are tagged on the study run too. A
stopped study continues: finished trials and cells are kept, stopped ones continued.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient

from resnet_mnist.config.placement import Placement
from resnet_mnist.config.search import load_space
from resnet_mnist.study.execution import (
    TUNED,
    Engine,
    GridResult,
    Planned,
    StudyHome,
    collect_cell,
    stop_cells,
    submit_cell,
)
from resnet_mnist.study.spec import Group, StudySpec, trial_base
from resnet_mnist.study.trials import TrialOrder
from resnet_mnist.study.tune import (
    Search,
    TuneHome,
    TuneSpec,
    end_unstarted,
    find_tune,
    open_tune,
    pruner_for,
    trial_runs,
)
from resnet_mnist.study.tune_report import Findings, findings
from resnet_mnist.tracking import names


def tune_spec(spec: StudySpec, group: Group) -> TuneSpec:
    """A group's search: the study's budget, from the group's trial base."""
    if spec.tune is None:
        raise ValueError(f"study {spec.name} has no tune budget")
    base = trial_base(spec, group)
    space = load_space(spec.tune.space).check_with(base)
    pruner = pruner_for(spec.tune.pruner, base, space)
    return TuneSpec(base, space, spec.tune.trials, pruner, 0, spec.resources)


@dataclass(frozen=True)
class GroupSearch:
    """What a group's search came to, read back from its trials (None: not started)."""

    group: Group
    spec: TuneSpec
    home: TuneHome | None
    found: Findings | None

    @property
    def chosen(self) -> dict[str, Any] | None:
        """The settings the search chose, once its whole budget is spent."""
        if self.found is None or self.found.spent < self.spec.trials:
            return None
        return self.found.chosen(self.spec)


def group_searches(client: MlflowClient, spec: StudySpec, experiment_id: str) -> list[GroupSearch]:
    """Every group's search as it stands (read only: what the report and `--report-only` see)."""
    out = []
    for group in spec.groups():
        tspec = tune_spec(spec, group)
        home = find_tune(client, tspec, experiment_id)
        found = findings(trial_runs(client, home), tspec) if home else None
        out.append(GroupSearch(group, tspec, home, found))
    return out


def tuned_settings(searches: list[GroupSearch]) -> dict[str, dict[str, Any]]:
    """Each group's chosen settings, for the groups whose search has ended."""
    return {s.group.name: chosen for s in searches if (chosen := s.chosen) is not None}


class TunedGrid:
    """The searches and the scored cells of a tuned study on one engine (see the module)."""

    def __init__(
        self,
        engine: Engine,
        client: MlflowClient,
        home: StudyHome,
        spec: StudySpec,
        slots: int,
        log: Callable[[str], None],
        placement: Placement | None = None,
    ) -> None:
        self.engine, self.client, self.home, self.spec, self.slots, self.log = (
            engine, client, home, spec, slots, log
        )  # fmt: skip
        self.placement = placement
        self.searches: dict[str, tuple[Group, Search]] = {}
        for group in spec.groups():
            tspec = tune_spec(spec, group)
            thome = open_tune(client, tspec, home.experiment, parent=(home.run_id, group.name))
            say = _prefixed(log, group.name)
            self.searches[group.name] = (group, Search(engine, client, thome, tspec, slots, say, placement))
        self.cells: dict[Hashable, Planned] = {}
        self.seeded: set[str] = set()
        self.result = GridResult()

    def in_flight(self) -> int:
        return len(self.cells) + sum(len(s.pending) for _, s in self.searches.values())

    def run(self, stop: threading.Event) -> GridResult:
        """Every search, then every group's seeds; a stop cancels all and raises
        KeyboardInterrupt, failures raise StudyIncomplete once nothing else can go on."""
        for group, search in self.searches.values():
            search.start()
            self._settle(group, search)
        while True:
            while not stop.is_set() and self.in_flight() < self.slots:
                askable = [s for _, s in self.searches.values() if s.wants()]
                if not askable:
                    break
                min(askable, key=lambda s: s.spent + len(s.pending)).ask()
            if not self.in_flight():
                break
            if stop.is_set():
                self._stop_all()
                raise KeyboardInterrupt("study stopped")
            for handle in self.engine.wait(self._handles(), 0.5):
                self._collect(handle)
        self.result.check()
        return self.result

    def _handles(self) -> list[Hashable]:
        return [*self.cells, *(h for _, s in self.searches.values() for h in s.pending)]

    def _collect(self, handle: Hashable) -> None:
        if handle in self.cells:
            collect_cell(self.engine, handle, self.cells.pop(handle), self.result, self.log)
            return
        for group, search in self.searches.values():
            if handle in search.pending:
                search.collect(handle)
                self._settle(group, search)
                return

    def _settle(self, group: Group, search: Search) -> None:
        """A search with nothing in flight that has spent its budget: its settings chosen,
        tagged on the study run, and its seeds submitted; one that gave up is a failure."""
        if search.pending or group.name in self.seeded or search.wants():
            return
        self.seeded.add(group.name)
        if not search.complete:
            self.result.failures.append(f"{group.name}: its search gave up. {search.incomplete()}")
            return
        found = findings(trial_runs(self.client, search.home), search.spec)
        chosen = found.chosen(search.spec)
        if chosen is None:
            self.result.failures.append(f"{group.name}: no trial of its search completed")
            return
        self.client.set_tag(self.home.run_id, f"{names.STUDY_TUNED}{group.name}", json.dumps(chosen))
        assert found.best is not None
        self.log(
            f"{group.name}: trial {found.best.number} chosen on dev ({found.best.value:.2%}, "
            f"{found.pruned} of {len(found.trials)} trials pruned); "
            f"its {len(self.spec.seeds)} seeds submitted"
        )
        for seed in self.spec.seeds:
            planned = Planned(group, chosen, seed, TUNED)
            self.cells[submit_cell(self.engine, self.home, self.spec, planned, self.placement)] = planned

    def _stop_all(self) -> None:
        pending: dict[Hashable, Any] = dict(self.cells)
        for _, search in self.searches.values():
            pending |= search.pending
        trials = [o for o in pending.values() if isinstance(o, TrialOrder)]
        stop_cells(self.engine, pending, self.log, "cells and trials")
        end_unstarted(self.client, trials)


def _prefixed(log: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda line: log(f"{prefix}: {line}")

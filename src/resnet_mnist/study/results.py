"""The grid's finished cells as the report reads them, and plain against residual per depth at
each variant's chosen rate: the statistics the verdict, tables and figures are drawn from."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run

from resnet_mnist.analysis.stats import Interval, t_interval
from resnet_mnist.config.space import VARIANTS
from resnet_mnist.study.spec import StudySpec, cell_key, choose_lr, chosen_settings
from resnet_mnist.tracking import names

DIAGNOSTIC_PREFIXES = ("grad_norm/", "init/", "lesion/")


@dataclass
class Cell:
    """One finished training run of the grid, as the report sees it."""

    run_id: str
    depth: int
    variant: str
    lr: float
    seed: int
    phase: str
    final_train_loss: float
    dev_accuracy: float
    dev_size: int
    test_accuracy: float
    param_count: int
    train_time_s: float
    #: the run's cell key (its `study.cell` tag); derived from the rate when not given
    cell: str = ""
    diagnostics: dict[str, float] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list, repr=False)
    train_loss: list[float] = field(default_factory=list, repr=False)

    @property
    def group(self) -> str:
        return f"resnet{self.depth}-{self.variant}"

    @property
    def key(self) -> str:
        return self.cell or cell_key(self.group, self.lr, self.seed)


def to_cell(run: Run) -> Cell:
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    return Cell(
        run_id=run.info.run_id,
        depth=int(p.get("depth", 18)),
        variant=t.get("variant", "?"),
        lr=float(p["lr"]),
        seed=int(p["seed"]),
        phase=t.get(names.STUDY_PHASE, ""),
        final_train_loss=m.get("train_epoch_loss", math.nan),
        dev_accuracy=m.get("best_dev_accuracy", math.nan),
        dev_size=int(p.get("dev_size", 0)),
        test_accuracy=m.get("test_accuracy", math.nan),
        param_count=int(m.get("param_count", 0)),
        train_time_s=m.get("train_time_s", math.nan),
        cell=t.get(names.STUDY_CELL, ""),
        diagnostics={k: v for k, v in m.items() if k.startswith(DIAGNOSTIC_PREFIXES)},
    )


@dataclass
class DepthResult:
    """Plain against residual at one depth, at each variant's chosen rate."""

    depth: int
    #: each variant's chosen settings (the grid's: its rate alone)
    settings: dict[str, dict[str, Any]]
    cells: dict[str, list[Cell]]
    train_loss: dict[str, Interval]
    dev_accuracy: dict[str, Interval]
    #: plain - residual final training loss, paired by seed
    loss_gap: Interval
    #: residual - plain full-dev accuracy, paired by seed
    accuracy_gap: Interval

    @property
    def lr(self) -> dict[str, float]:
        """Each variant's rate: chosen from the grid, or by its search (NaN: the search left
        the preset's)."""
        return {v: float(self.settings[v].get("lr", math.nan)) for v in VARIANTS}


def paired(cells: dict[str, list[Cell]], key: str, sign: int) -> Interval:
    by_seed = {v: {c.seed: getattr(c, key) for c in cells[v]} for v in VARIANTS}
    seeds = sorted(set(by_seed["plain"]) & set(by_seed["residual"]))
    return t_interval([sign * (by_seed["plain"][s] - by_seed["residual"][s]) for s in seeds])


Tuned = Mapping[str, Mapping[str, Any]]


def search_cells(spec: StudySpec, cells: list[Cell]) -> list[Cell]:
    """A grid's rate-search cells: the first seed at every rate (a tuned study has none: its
    searches are tune runs)."""
    return [] if spec.tune else [c for c in cells if c.seed == spec.seeds[0] and c.lr in spec.lrs]


def analyse(
    spec: StudySpec, cells: list[Cell], tuned: Tuned | None = None
) -> tuple[list[DepthResult], list[Cell]]:
    """Per depth, the cells at each variant's chosen settings and their statistics; also the
    rate search cells (seed 0 at every rate of a grid). A tuned study's settings are `tuned`,
    by group name (what each group's search chose)."""
    search = search_cells(spec, cells)
    results = []
    for depth in sorted(spec.depths):
        settings, chosen = {}, {}
        for variant in VARIANTS:
            name = f"resnet{depth}-{variant}"
            settings[variant] = dict(_chosen(spec, name, search, tuned) or {})
            keys = {cell_key(name, settings[variant], s): s for s in spec.seeds}
            by_seed = {keys[c.key]: c for c in cells if c.group == name and c.key in keys}
            chosen[variant] = [by_seed[s] for s in spec.seeds if s in by_seed]
        results.append(
            DepthResult(
                depth,
                settings,
                chosen,
                {v: t_interval([c.final_train_loss for c in chosen[v]]) for v in VARIANTS},
                {v: t_interval([c.dev_accuracy for c in chosen[v]]) for v in VARIANTS},
                paired(chosen, "final_train_loss", 1),
                paired(chosen, "dev_accuracy", -1),
            )
        )
    return results, search


def _chosen(spec: StudySpec, group: str, search: list[Cell], tuned: Tuned | None) -> dict[str, Any] | None:
    """A group's settings: its search's choice, or the grid rate best on dev (None: not yet)."""
    if spec.tune:
        found = (tuned or {}).get(group)
        return None if found is None else dict(found)
    rates = {c.lr: c.dev_accuracy for c in search if c.group == group}
    if len(rates) < len(spec.lrs):
        return None
    return chosen_settings(choose_lr(rates))


def missing_cells(spec: StudySpec, cells: list[Cell], tuned: Tuned | None = None) -> int:
    """How many cells of the grid have not finished (a group's rate search, or its tune search,
    must be complete first)."""
    have = {c.key for c in cells}
    search = search_cells(spec, cells)
    missing = 0
    for group in spec.groups():
        if not spec.tune:
            missing += len(spec.lrs) - sum(c.group == group.name for c in search)
        settings = _chosen(spec, group.name, search, tuned)
        if settings is None:
            missing += len(spec.seeds) - (0 if spec.tune else 1)
            continue
        seeds = spec.seeds if spec.tune else spec.seeds[1:]
        missing += sum(cell_key(group, settings, s) not in have for s in seeds)
    return missing


def duplicated_cells(cells: list[Cell]) -> list[str]:
    """Cells of the grid with more than one FINISHED run: a grid that counts a cell twice is not
    judged (which run would stand for it?)."""
    runs: dict[str, list[str]] = {}
    for c in cells:
        runs.setdefault(c.key, []).append(c.run_id)
    return [f"{key} ({', '.join(ids)})" for key, ids in sorted(runs.items()) if len(ids) > 1]

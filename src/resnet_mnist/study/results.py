"""The grid's finished cells as the report reads them, and plain against residual per depth at
each variant's chosen rate: the statistics the verdict, tables and figures are drawn from."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlflow.entities import Run

from resnet_mnist.analysis.stats import Interval, t_interval
from resnet_mnist.config.space import VARIANTS
from resnet_mnist.study.spec import StudySpec, cell_key, choose_lr
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
    diagnostics: dict[str, float] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list, repr=False)
    train_loss: list[float] = field(default_factory=list, repr=False)

    @property
    def group(self) -> str:
        return f"resnet{self.depth}-{self.variant}"


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
        diagnostics={k: v for k, v in m.items() if k.startswith(DIAGNOSTIC_PREFIXES)},
    )


@dataclass
class DepthResult:
    """Plain against residual at one depth, at each variant's chosen rate."""

    depth: int
    lr: dict[str, float]
    cells: dict[str, list[Cell]]
    train_loss: dict[str, Interval]
    dev_accuracy: dict[str, Interval]
    #: plain - residual final training loss, paired by seed
    loss_gap: Interval
    #: residual - plain full-dev accuracy, paired by seed
    accuracy_gap: Interval


def paired(cells: dict[str, list[Cell]], key: str, sign: int) -> Interval:
    by_seed = {v: {c.seed: getattr(c, key) for c in cells[v]} for v in VARIANTS}
    seeds = sorted(set(by_seed["plain"]) & set(by_seed["residual"]))
    return t_interval([sign * (by_seed["plain"][s] - by_seed["residual"][s]) for s in seeds])


def analyse(spec: StudySpec, cells: list[Cell]) -> tuple[list[DepthResult], list[Cell]]:
    """Per depth, the cells at each variant's chosen rate and their statistics; also the rate
    search cells (seed 0 at every rate)."""
    search = [c for c in cells if c.seed == spec.seeds[0] and c.lr in spec.lrs]
    results = []
    for depth in sorted(spec.depths):
        lr, chosen = {}, {}
        for variant in VARIANTS:
            group = [c for c in cells if c.depth == depth and c.variant == variant]
            lr[variant] = choose_lr(
                {c.lr: c.dev_accuracy for c in search if c.depth == depth and c.variant == variant}
            )
            by_seed = {c.seed: c for c in group if c.lr == lr[variant]}
            chosen[variant] = [by_seed[s] for s in spec.seeds if s in by_seed]
        results.append(
            DepthResult(
                depth,
                lr,
                chosen,
                {v: t_interval([c.final_train_loss for c in chosen[v]]) for v in VARIANTS},
                {v: t_interval([c.dev_accuracy for c in chosen[v]]) for v in VARIANTS},
                paired(chosen, "final_train_loss", 1),
                paired(chosen, "dev_accuracy", -1),
            )
        )
    return results, search


def missing_cells(spec: StudySpec, cells: list[Cell]) -> int:
    """How many cells of the grid have not finished (the rate search must be complete first)."""
    have = {(c.depth, c.variant, c.lr, c.seed) for c in cells}
    missing = 0
    for group in spec.groups():
        variant = "residual" if group.use_residual else "plain"
        searched = {
            lr: next(
                (
                    c
                    for c in cells
                    if (c.depth, c.variant, c.lr, c.seed) == (group.depth, variant, lr, spec.seeds[0])
                ),
                None,
            )
            for lr in spec.lrs
        }
        missing += sum(c is None for c in searched.values())
        if any(c is None for c in searched.values()):
            missing += len(spec.seeds) - 1
            continue
        lr = choose_lr({lr: c.dev_accuracy for lr, c in searched.items() if c is not None})
        missing += sum((group.depth, variant, lr, s) not in have for s in spec.seeds[1:])
    return missing


def duplicated_cells(cells: list[Cell]) -> list[str]:
    """Cells of the grid with more than one FINISHED run: a grid that counts a cell twice is not
    judged (which run would stand for it?)."""
    runs: dict[str, list[str]] = {}
    for c in cells:
        runs.setdefault(cell_key(c.group, c.lr, c.seed), []).append(c.run_id)
    return [f"{key} ({', '.join(ids)})" for key, ids in sorted(runs.items()) if len(ids) > 1]

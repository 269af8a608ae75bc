"""The residual study: where do shortcuts matter? A depth x variant x seed grid as nested runs.

A study file (`mlproject/studies/*.yaml`) names a training preset whose settings both variants
share, the depths, the seeds and a small learning-rate grid. Each (depth, variant) group first
trains seed 0 at every rate of the grid and keeps the rate with the best full-dev accuracy, then
trains the other seeds at that rate, so that neither variant is handicapped by a rate chosen for
the other. Every cell is a training run nested under one study run; a cell that already finished
with the same settings is never trained again, so a stopped study continues where it stopped, and
shards of the groups can run in several processes or on several machines against one server.
Reading the finished grid back and judging it is `study_report`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from resnet_mnist.config.presets import STUDY_DIRS, find_yaml
from resnet_mnist.config.settings import (
    ConfigError,
    TrainConfig,
    build_config,
    find_preset,
    load_preset,
    read_mapping,
)
from resnet_mnist.config.space import VARIANTS
from resnet_mnist.core.model import family
from resnet_mnist.runtime.supervise import drop_options, supervise
from resnet_mnist.tracking.lifecycle import same_params
from resnet_mnist.tracking.store import experiment_id as find_experiment
from resnet_mnist.tracking.store import store_lock

DEFAULT_EXPERIMENT = "resnet-mnist-study"


@dataclass(frozen=True)
class StudySpec:
    """What a study trains: the shared preset, the depths, seeds and learning-rate grid."""

    name: str
    preset: str
    depths: tuple[int, ...]
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]

    def key(self) -> str:
        """Identifies the grid: the same study on another machine finds the same study run."""
        settings = load_preset(self.preset, True)
        text = json.dumps({"preset": self.preset, "settings": {k: str(v) for k, v in
                                                               sorted(settings.items())},
                           "depths": self.depths, "seeds": self.seeds, "lrs": self.lrs})
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def groups(self) -> list[Group]:
        """Deepest first (they take longest), plain before residual: the order shards split."""
        return [Group(d, v == "residual") for d in sorted(self.depths, reverse=True)
                for v in VARIANTS]

    def cells(self) -> int:
        return len(self.groups()) * (len(self.lrs) + len(self.seeds) - 1)


@dataclass(frozen=True)
class Group:
    """One (depth, variant) pair of the grid: its rate search and its seeds."""

    depth: int
    use_residual: bool

    @property
    def name(self) -> str:
        return f"resnet{self.depth}-{'residual' if self.use_residual else 'plain'}"


def find_study(name: str) -> Path:
    """A study by name (`cpu`, `gpu`, `tiny`) or by path to a YAML file."""
    return find_yaml(name, STUDY_DIRS, "study", "studies")


def _numbers(value: Any, kind: type, what: str, source: str) -> tuple:
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, int | float)
                        or (kind is int and not float(v).is_integer()) for v in items):
        raise ConfigError(f"{source}: {what} must be a non-empty list of numbers, got {value!r}")
    out = tuple(kind(v) for v in items)
    if len(set(out)) != len(out):
        raise ConfigError(f"{source}: {what} repeats a value: {value!r}")
    return out


def load_study(
    name: str, depths: list[int] | None = None, seeds: list[int] | None = None,
    lrs: list[float] | None = None,
) -> StudySpec:
    """A study file, with any of its lists replaced; everything validated before training."""
    path = find_study(name)
    raw = read_mapping(path, "study", "preset, depths, seeds, lrs")
    unknown = set(raw) - {"preset", "depths", "seeds", "lrs"}
    if unknown or "preset" not in raw:
        raise ConfigError(f"study {path} takes preset, depths, seeds and lrs; "
                          f"{'unknown: ' + ', '.join(map(str, unknown)) if unknown else 'no preset'}")
    source = str(path)
    spec = StudySpec(
        name=path.stem, preset=str(raw["preset"]),
        depths=_numbers(depths or raw.get("depths", [18]), int, "depths", source),
        seeds=_numbers(seeds or raw.get("seeds", [0]), int, "seeds", source),
        lrs=_numbers(lrs or raw.get("lrs", []) or [load_preset(str(raw["preset"]), True).get(
            "lr", TrainConfig.lr)], float, "lrs", source),
    )
    for depth in spec.depths:
        try:
            family(depth)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    find_preset(spec.preset)
    if load_preset(spec.preset, True) != load_preset(spec.preset, False):
        raise ConfigError(f"preset {spec.preset!r} sets the variants differently; a study "
                          "compares them with matched settings (one value per setting)")
    for group in spec.groups():  # every cell's settings are valid
        cell_config(spec, group, spec.lrs[0], spec.seeds[0])
    return spec


def cell_config(spec: StudySpec, group: Group, lr: float, seed: int,
                overrides: dict[str, Any] | None = None) -> TrainConfig:
    return build_config(spec.preset, group.use_residual,
                        (overrides or {}) | {"depth": group.depth, "lr": lr, "seed": seed})


def shard(groups: list[Group], index: int, count: int) -> list[Group]:
    """Shard `index` (1-based) of `count`: every count-th group, so that deep and shallow mix."""
    if not 1 <= index <= count:
        raise ConfigError(f"shard {index}/{count}: the index must be in 1..{count}")
    return groups[index - 1::count]


def parse_shard(text: str) -> tuple[int, int]:
    """`2/4` -> (2, 4)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes K/N such as 1/2, got {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard {text}: K must be in 1..{count}")
    return index, count


# -- the study run and its cells ----------------------------------------------------------------

def study_run(client: MlflowClient, experiment_id: str, spec: StudySpec,
              run_id: str | None = None) -> str:
    """The study's parent run, found by its grid key or created (as `run_id` when given, the run
    `mlflow run -e study` made). Creation is serialised; should two machines still race on a
    server, the oldest run with the key is the study run."""
    key = spec.key()
    query = f"tags.run_type = 'study' and tags.`study.key` = '{key}'"
    tags = {"run_type": "study", "study": spec.name, "study.key": key,
            "preset": spec.preset, "study.depths": ",".join(map(str, spec.depths)),
            "study.seeds": ",".join(map(str, spec.seeds)),
            "study.lrs": ",".join(map(str, spec.lrs)), "study.cells": str(spec.cells())}
    with store_lock(mlflow.get_tracking_uri()):
        found = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"],
                                   max_results=1)
        if found:
            return found[0].info.run_id
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=f"study-{spec.name}").info.run_id
        else:
            client.update_run(run_id, name=f"study-{spec.name}")
        for key, value in (tags | {"study.status": "training"}).items():
            client.set_tag(run_id, key, value)
        # A container: its status says nothing of its cells (`study.status` does).
        client.set_terminated(run_id, "FINISHED")
    oldest = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"],
                                max_results=1)
    return oldest[0].info.run_id if oldest else run_id


@dataclass(frozen=True)
class StudyHome:
    """Where a study's runs live: its experiment and its study run."""

    experiment_id: str
    experiment: str
    run_id: str


def open_study(client: MlflowClient, spec: StudySpec, experiment: str,
               project_run: str | None = None) -> StudyHome:
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
        client.set_tag(project_run, "study.run", run_id)
    return StudyHome(exp_id, experiment, run_id)


def cells_of(client: MlflowClient, experiment_id: str, study_run_id: str) -> list[Run]:
    """The study's FINISHED cells."""
    return client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{study_run_id}' and "
        "tags.run_type = 'train' and attributes.status = 'FINISHED'", max_results=5000)


#: Trains one cell as a run nested under the study run, with these tags; returns its run id.
TrainCell = Callable[[TrainConfig, dict[str, str]], str]


@dataclass
class GroupResult:
    group: Group
    lr: float
    trained: int
    reused: int


def run_group(
    client: MlflowClient, experiment_id: str, study_run_id: str, spec: StudySpec, group: Group,
    train: TrainCell, overrides: dict[str, Any] | None = None,
) -> GroupResult:
    """The group's rate search (seed 0 at each rate), then its other seeds at the chosen rate.
    Cells that already finished with the same settings are reused."""
    done = [r for r in cells_of(client, experiment_id, study_run_id)
            if r.data.tags.get("architecture") == group.name]
    trained = reused = 0

    def cell(config: TrainConfig, phase: str) -> Run:
        nonlocal trained, reused
        match = next((r for r in done if same_params(r, config)), None)
        if match is not None:
            reused += 1
            return match
        trained += 1
        run_id = train(config, {"study": spec.name, "study.phase": phase})
        return client.get_run(run_id)

    first, rest = spec.seeds[0], spec.seeds[1:]
    search = {lr: cell(cell_config(spec, group, lr, first, overrides), "lr-search")
              for lr in spec.lrs}
    best_lr = choose_lr({lr: run.data.metrics.get("best_dev_accuracy", 0.0)
                         for lr, run in search.items()})
    client.set_tag(study_run_id, f"study.lr.{group.name}", str(best_lr))
    for seed in rest:
        cell(cell_config(spec, group, best_lr, seed, overrides), "seeds")
    return GroupResult(group, best_lr, trained, reused)


def choose_lr(dev_accuracy: dict[float, float]) -> float:
    """The rate with the best dev accuracy; on a tie the smaller rate (the safer one)."""
    return max(sorted(dev_accuracy), key=lambda lr: (dev_accuracy[lr], -lr))


# -- worker processes ---------------------------------------------------------------------------

def worker_commands(argv: list[str], index: int, count: int, workers: int) -> list[list[str]]:
    """Command lines for `workers` processes that split shard `index`/`count` between them: worker
    j takes shard index + count*j of count*workers. The cores are split between them too (small
    convolutions use threads poorly, so processes make better use of them)."""
    base = drop_options(argv, ("--workers", "--shard", "--threads"),
                        ("--report", "--no-report", "--report-only"))
    threads = max(1, (os.cpu_count() or 1) // workers)
    return [[sys.executable, "-m", "resnet_mnist", *base, "--workers", "1", "--no-report",
             "--shard", f"{index + count * j}/{count * workers}", "--threads", str(threads)]
            for j in range(workers)]


def run_workers(commands: list[list[str]], stop: threading.Event) -> list[int]:
    """Run the workers to the end and return their exit codes (see `signals.supervise`: a stop
    reaches every worker, which ends its cell KILLED; no worker outlives this call)."""
    return supervise(commands, [dict(os.environ)] * len(commands), stop)

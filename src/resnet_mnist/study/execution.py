"""How a study's cells run: the study run they nest under, each (depth, variant) group's rate search
and seeds, shards and worker processes, and the judging once every cell has finished. What the
grid is lives in `spec`; the report in `report`."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from resnet_mnist.config.settings import ConfigError, TrainConfig
from resnet_mnist.runtime.errors import ProjectError
from resnet_mnist.runtime.supervise import drop_options, supervise
from resnet_mnist.study.spec import Group, StudySpec, cell_config, choose_lr
from resnet_mnist.tracking import names
from resnet_mnist.tracking.lifecycle import same_params
from resnet_mnist.tracking.store import experiment_id as find_experiment
from resnet_mnist.tracking.store import store_lock

#: Trains one cell as a run nested under the study run, with these tags; returns its run id.
TrainCell = Callable[[TrainConfig, dict[str, str]], str]


class StudyIncomplete(ProjectError, RuntimeError):
    """Cells of the grid have not finished; the message says how to train them."""


def shard(groups: list[Group], index: int, count: int) -> list[Group]:
    """Shard `index` (1-based) of `count`: every count-th group, so that deep and shallow mix."""
    if not 1 <= index <= count:
        raise ConfigError(f"shard {index}/{count}: the index must be in 1..{count}")
    return groups[index - 1 :: count]


def parse_shard(text: str) -> tuple[int, int]:
    """`2/4` -> (2, 4)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes K/N such as 1/2, got {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard {text}: K must be in 1..{count}")
    return index, count


def study_run(client: MlflowClient, experiment_id: str, spec: StudySpec, run_id: str | None = None) -> str:
    """The study's parent run, found by its grid key or created (as `run_id` when given, the run
    `mlflow run -e study` made). Creation is serialised; should two machines still race on a
    server, the oldest run with the key is the study run."""
    key = spec.key()
    query = names.runs_where(names.STUDY, {names.STUDY_KEY: key})
    tags = {
        names.RUN_TYPE: names.STUDY,
        "study": spec.name,
        names.STUDY_KEY: key,
        names.PRESET: spec.preset,
        "study.depths": ",".join(map(str, spec.depths)),
        "study.seeds": ",".join(map(str, spec.seeds)),
        "study.lrs": ",".join(map(str, spec.lrs)),
        "study.cells": str(spec.cells()),
    }
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
    return StudyHome(exp_id, experiment, run_id)


def cells_of(client: MlflowClient, experiment_id: str, study_run_id: str) -> list[Run]:
    """The study's FINISHED cells."""
    return client.search_runs(
        [experiment_id],
        names.runs_where(names.TRAIN, {names.PARENT_RUN_ID: study_run_id}, finished=True),
        max_results=5000,
    )


@dataclass
class GroupResult:
    group: Group
    lr: float
    trained: int
    reused: int


def run_group(
    client: MlflowClient,
    experiment_id: str,
    study_run_id: str,
    spec: StudySpec,
    group: Group,
    train: TrainCell,
    overrides: dict[str, Any] | None = None,
) -> GroupResult:
    """The group's rate search (seed 0 at each rate), then its other seeds at the chosen rate.
    Cells that already finished with the same settings are reused."""
    done = [
        r
        for r in cells_of(client, experiment_id, study_run_id)
        if r.data.tags.get(names.ARCHITECTURE) == group.name
    ]
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
    search = {lr: cell(cell_config(spec, group, lr, first, overrides), "lr-search") for lr in spec.lrs}
    best_lr = choose_lr({lr: run.data.metrics.get("best_dev_accuracy", 0.0) for lr, run in search.items()})
    client.set_tag(study_run_id, f"{names.STUDY_LR}{group.name}", str(best_lr))
    for seed in rest:
        cell(cell_config(spec, group, best_lr, seed, overrides), "seeds")
    return GroupResult(group, best_lr, trained, reused)


def worker_commands(argv: list[str], index: int, count: int, workers: int) -> list[list[str]]:
    """Command lines for `workers` processes that split shard `index`/`count` between them: worker
    j takes shard index + count*j of count*workers. The cores are split between them too (small
    convolutions use threads poorly, so processes make better use of them)."""
    base = drop_options(
        argv, ("--workers", "--shard", "--threads"), ("--report", "--no-report", "--report-only")
    )
    threads = max(1, (os.cpu_count() or 1) // workers)
    return [
        [
            sys.executable,
            "-m",
            "resnet_mnist",
            *base,
            "--workers",
            "1",
            "--no-report",
            "--shard",
            f"{index + count * j}/{count * workers}",
            "--threads",
            str(threads),
        ]
        for j in range(workers)
    ]


def run_workers(commands: list[list[str]], stop: threading.Event) -> list[int]:
    """Run the workers to the end and return their exit codes (see `signals.supervise`: a stop
    reaches every worker, which ends its cell KILLED; no worker outlives this call)."""
    return supervise(commands, [dict(os.environ)] * len(commands), stop)


def train_grid(
    client: MlflowClient,
    home: StudyHome,
    spec: StudySpec,
    shard_of: tuple[int, int],
    workers: int,
    argv: list[str],
    train: TrainCell,
    stop: threading.Event,
    log: Callable[[str], None],
) -> None:
    """Train this shard's cells of the grid: in worker processes of this command (`argv`, each
    with a share of the groups), or here, group by group, through `train`."""
    index, count = shard_of
    if workers > 1:
        codes = run_workers(worker_commands(argv, index, count, workers), stop)
        if stop.is_set():
            raise KeyboardInterrupt("study stopped")
        if any(codes):
            raise StudyIncomplete(
                f"{sum(c != 0 for c in codes)} of {workers} workers failed "
                f"(exit codes {codes}); rerun to train the missing cells"
            )
        return
    prefix = f"[{index}/{count}] " if count > 1 else ""
    for group in shard(spec.groups(), index, count):
        done = run_group(client, home.experiment_id, home.run_id, spec, group, train)
        log(
            f"{prefix}{group.name}: lr {done.lr:g} chosen; {done.trained} cells trained, {done.reused} reused"
        )

"""`resnet-mnist study`: the depth x variant x seed grid trained as nested runs, then judged."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resnet_mnist.cli.boundary import fail
from resnet_mnist.cli.common import RootOption, console, parse_numbers, parse_seeds
from resnet_mnist.config.settings import Device, TrainConfig
from resnet_mnist.runtime.signals import stop_on_signals
from resnet_mnist.tracking.names import STUDY_EXPERIMENT


def study(
    name: Annotated[
        str,
        typer.Option(
            "--study",
            help="cpu (this 2-core machine, < 30 min), gpu (the full grid), tiny (tests), or a YAML file.",
        ),
    ] = "cpu",
    depths: Annotated[
        str | None, typer.Option(help="Depths instead of the file's, e.g. 20,56 (18, 34, or 6n+2).")
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(help="Seeds instead of the file's: a count (`3` = 0..2) or a list (`0,1,2`)."),
    ] = None,
    lrs: Annotated[
        str | None, typer.Option(help="Learning-rate grid instead of the file's, e.g. 0.02,0.05.")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes on this machine (the groups are split between them).")
    ] = 1,
    shard: Annotated[
        str,
        typer.Option(
            help="K/N: train only this machine's share of the grid "
            "(run one shard per machine against one tracking "
            "server)."
        ),
    ] = "1/1",
    report: Annotated[
        bool, typer.Option(help="Judge the grid and log the report when every cell has finished.")
    ] = True,
    report_only: Annotated[bool, typer.Option(help="Train nothing; report the finished grid.")] = False,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = STUDY_EXPERIMENT,
    out: Annotated[Path, typer.Option(help="Where the figures, tables and verdict go.")] = Path(
        "reports/study"
    ),
    device: Annotated[Device, typer.Option(help="Device for the training.")] = Device.auto,
    threads: Annotated[int | None, typer.Option(hidden=True, min=1)] = None,
    data_root: RootOption = None,
) -> None:
    """Where do shortcuts matter? Train a depth x variant x seed grid, then judge it.

    Each (depth, variant) first picks its learning rate from the grid on full-dev accuracy
    (seed 0), then trains the other seeds at that rate, with settings shared by both variants.
    Every cell is a run nested under one study run; finished cells are never trained again, so
    a stopped study continues where it stopped. With every cell finished, the report (He et
    al.'s Fig. 6 for these networks, loss and accuracy against depth, block diagnostics, table,
    verdict per depth) is logged to the study run.

    Under `mlflow run -e study` the project's run is the study run.
    """
    import dataclasses

    from mlflow.tracking import MlflowClient

    from resnet_mnist.study import execution as E
    from resnet_mnist.study import spec as S
    from resnet_mnist.study.report import TABLE, study_report, unfinished
    from resnet_mnist.tracking import runner
    from resnet_mnist.tracking.store import check_store, take_project_run, ui_link

    spec = S.load_study(
        name, parse_numbers(depths, int, "--depths"), parse_seeds(seeds), parse_numbers(lrs, float, "--lrs")
    )
    index, count = E.parse_shard(shard)
    if threads:
        import torch

        torch.set_num_threads(threads)
    project_run = take_project_run()
    check_store()
    client = MlflowClient()
    home = E.open_study(client, spec, experiment, project_run)
    root = str(data_root) if data_root else ""
    prefix = f"[{index}/{count}] " if count > 1 else ""
    started = time.perf_counter()

    def say(line: str) -> None:
        console.print(line, highlight=False)

    if not report_only:
        with stop_on_signals() as stop:

            def train_cell(config: TrainConfig, tags: dict[str, str]) -> str:
                config = dataclasses.replace(config, device=device, data_root=root)
                say(
                    f"{prefix}{config.architecture} lr {config.lr:g} seed {config.seed} "
                    f"({tags['study.phase']}): training"
                )
                trained = runner.train(
                    config, home.experiment, tags=tags, parent_run_id=home.run_id, stop=stop
                )
                r = trained.result
                say(
                    f"{prefix}{config.architecture} lr {config.lr:g} seed {config.seed}: dev "
                    f"{r.best_dev_accuracy:.2%}, {r.train_time_s:.0f} s training"
                )
                return trained.run_id

            E.train_grid(client, home, spec, (index, count), workers, sys.argv[1:], train_cell, stop, say)
    if not report and not report_only:
        return
    missing = unfinished(client, home, spec)
    if missing:
        if report_only:
            raise fail(missing)
        say(missing)
        return
    result = study_report(client, home.experiment_id, home.run_id, spec, out)
    table = Table(title=f"study {spec.name}: plain vs residual by depth")
    for column in TABLE[:-1]:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in result.rows:
        table.add_row(*row[:-1])
    console.print(table, width=max(console.width, 160))
    say(result.verdict)
    say(f"figures, tables and verdict in {out}/; study run {home.run_id}")
    say(f"in the MLflow UI: {ui_link(home.experiment_id, home.run_id)}")
    console.print(f"wall time {time.perf_counter() - started:.1f} s")

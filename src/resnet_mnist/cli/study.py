"""`resnet-mnist study`: the depth x variant x seed grid trained as nested runs, then judged."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resnet_mnist.cli.boundary import fail
from resnet_mnist.cli.common import RootOption, console, parse_numbers, parse_seeds
from resnet_mnist.config.placement import Device
from resnet_mnist.runtime.signals import stop_on_signals
from resnet_mnist.tracking.names import STUDY_EXPERIMENT


def study(
    name: Annotated[
        str,
        typer.Option(
            "--study",
            help="cpu (this 2-core machine, tuned, < 45 min), cpu-grid (the two-rate grid), gpu (the "
            "full grid, tuned), tiny and tiny-tuned (tests), or a YAML file.",
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
        int | None,
        typer.Option(
            min=1,
            help="CPU slots of the embedded Ray this command starts (default: every core); "
            "a cell takes the study file's `resources.cpus` of them.",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="An existing Ray cluster to run the cells on (host:port of its head, or "
            "ray://...); default $RAY_ADDRESS, else an embedded Ray on this machine."
        ),
    ] = None,
    cpus_per_cell: Annotated[
        int | None, typer.Option(min=1, help="CPUs (and torch threads) per cell instead of the study file's.")
    ] = None,
    gpus_per_cell: Annotated[
        float | None,
        typer.Option(min=0.0, help="GPUs per cell instead of the study file's (0.25: four cells share one)."),
    ] = None,
    report: Annotated[
        bool, typer.Option(help="Judge the grid and log the report when every cell has finished.")
    ] = True,
    report_only: Annotated[bool, typer.Option(help="Train nothing; report the finished grid.")] = False,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = STUDY_EXPERIMENT,
    out: Annotated[Path, typer.Option(help="Where the figures, tables and verdict go.")] = Path(
        "reports/study"
    ),
    device: Annotated[Device, typer.Option(help="Device for the training.")] = Device.auto,
    data_root: RootOption = None,
) -> None:
    """Where do shortcuts matter? Train a depth x variant x seed grid, then judge it.

    Each (depth, variant) first picks its learning rate from the grid on full-dev accuracy
    (seed 0), then trains the other seeds at that rate, with settings shared by both variants.
    Every cell is a Ray task and a run nested under one study run, tagged with its cell key,
    attempt and node; finished cells are never trained again, a cell whose node died continues
    from its checkpoint, so a stopped study continues where it stopped. With every cell
    finished, the report (He et al.'s Fig. 6 for these networks, loss and accuracy against
    depth, block diagnostics, table, verdict per depth) is logged to the study run.

    Under `mlflow run -e study` the project's run is the study run.
    """
    from mlflow.tracking import MlflowClient

    from resnet_mnist.config.placement import Placement
    from resnet_mnist.study import execution as E
    from resnet_mnist.study import spec as S
    from resnet_mnist.study.report import TABLE, study_report, unfinished
    from resnet_mnist.tracking.experiments import ui_link
    from resnet_mnist.tracking.store import check_store, take_project_run
    from resnet_mnist.tracking.views import SEARCH_VIEW, SEEDS_VIEW

    spec = S.load_study(
        name,
        parse_numbers(depths, int, "--depths"),
        parse_seeds(seeds),
        parse_numbers(lrs, float, "--lrs"),
        cpus_per_cell,
        gpus_per_cell,
    )
    project_run = take_project_run()
    check_store()
    client = MlflowClient()
    home = E.open_study(client, spec, experiment, project_run)
    root = str(data_root) if data_root else ""
    started = time.perf_counter()

    def say(line: str) -> None:
        console.print(line, highlight=False)

    if not report_only:
        from resnet_mnist.study import cluster

        at = cluster.where(address, workers)
        # Ray's driver installs a SIGTERM handler of its own (which ends the process): ours goes
        # on after it, so that SIGTERM, like Ctrl-C, stops every cell at a step boundary.
        with cluster.RayEngine(at) as engine, stop_on_signals() as stop:
            say(engine.describe())
            engine.check_fits(spec.resources)
            say(f"study {spec.name}: {spec.cell_count()} cells, each asking for {spec.resources}")
            if spec.tune:
                from resnet_mnist.study.tuned import TunedGrid

                say(f"tuned first: {spec.tune.describe()}")
                slots = engine.slots(spec.resources)
                TunedGrid(engine, client, home, spec, slots, say, Placement(device, root)).run(stop)
            else:
                E.run_grid(engine, client, home, spec, stop, say, Placement(device, root))
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
    say(f"the seeds by network: {ui_link(home.experiment_id, view=SEEDS_VIEW)}")
    if spec.tune:
        say(f"the searches: {ui_link(home.experiment_id, view=SEARCH_VIEW)}")
    console.print(f"wall time {time.perf_counter() - started:.1f} s")

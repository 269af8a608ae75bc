"""`resnet-mnist compare`: plain vs residual from what MLflow recorded, and the registry's winner."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from resnet_mnist.cli.common import RootOption, console, parse_seeds
from resnet_mnist.config.placement import Device
from resnet_mnist.runtime.signals import stop_on_signals
from resnet_mnist.tracking.names import DEFAULT_EXPERIMENT, MODEL_NAME, TUNED_FROM


def compare(
    preset: Annotated[str, typer.Option(help="Preset whose runs to compare or train.")] = "seed",
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Train missing runs so each variant has these seeds (`5` = 0..4, or `0,1,2`), "
            "nested under one seed-group run, and compare mean ± std."
        ),
    ] = None,
    train_missing: Annotated[
        bool, typer.Option(help="Train a variant that has no FINISHED run with the preset's parameters.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Retrain even when matching runs exist.")] = False,
    tuned: Annotated[
        bool,
        typer.Option(
            help="Compare each variant at its own tuned settings: the best of its newest complete "
            "`resnet-mnist tune` search of the preset (trained when missing; with --seeds, per seed). "
            "The default compares both at the preset's settings, as the book does."
        ),
    ] = False,
    runs: Annotated[str | None, typer.Option(help="Compare exactly these run ids (comma list).")] = None,
    filter: Annotated[
        str | None,
        typer.Option(
            "--filter", help="An MLflow search string choosing the runs, e.g. \"params.seed = '1'\"."
        ),
    ] = None,
    allow_mismatch: Annotated[
        bool,
        typer.Option(
            help="Compare runs whose settings differ in more than the variant (refused otherwise); "
            "the verdict and the tag `settings_mismatch` name the differences."
        ),
    ] = False,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = DEFAULT_EXPERIMENT,
    model_name: Annotated[str, typer.Option(help="Registered model name.")] = MODEL_NAME,
    register: Annotated[
        bool,
        typer.Option(
            help="Register the dev winner as @champion if it is at least as good on the full dev "
            "split as the current champion."
        ),
    ] = True,
    out: Annotated[Path, typer.Option(help="Where the figure, table and verdict go.")] = Path(
        "reports/compare"
    ),
    device: Annotated[Device, typer.Option(help="Device for any training.")] = Device.auto,
    data_root: RootOption = None,
) -> None:
    """Plain vs residual: curves, table, verdict and statistics; registers the winner.

    By default the newest FINISHED plain and residual runs of the preset whose settings match are
    compared; explicit --runs or --filter selections must match too, unless --allow-mismatch. Of
    two runs of one variant with one seed, the newest is compared and the older set aside.
    Everything is decided on the full 10,000-image dev split (never on test): the statistic, the
    winning variant, and the candidate, which takes the alias `champion` only if its full-dev
    accuracy is at least the current champion's.

    Under `mlflow run -e compare` the project's run is the comparison run.
    """
    if tuned and (runs or filter):  # refused before torch and MLflow load
        raise typer.BadParameter("--tuned chooses (or trains) the runs itself", param_hint="--runs/--filter")
    seed_list = parse_seeds(seeds)

    from mlflow.tracking import MlflowClient

    from resnet_mnist.analysis import compare as C
    from resnet_mnist.analysis import selection as SEL
    from resnet_mnist.cli.progress import for_console
    from resnet_mnist.config.placement import Placement
    from resnet_mnist.tracking import runner
    from resnet_mnist.tracking.experiments import ui_link
    from resnet_mnist.tracking.request import RunRequest
    from resnet_mnist.tracking.store import check_store, take_project_run

    project_run = take_project_run()
    check_store()
    client = MlflowClient()
    root = str(data_root) if data_root else ""
    place = Placement(device, root)
    started = time.perf_counter()

    tuned_from = SEL.tuned_settings(client, preset) if tuned else {}
    for variant, found in tuned_from.items():
        settings = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(found.settings.items())
        )
        console.print(f"{variant}: tuned settings {settings} (tune run {found.tune_run_id})", highlight=False)

    with stop_on_signals() as stop:

        def train_one(config, parent):
            console.print(f"training {config.architecture} seed {config.seed} ({config.preset})")
            tags = {TUNED_FROM: tuned_from[config.variant].tune_run_id} if tuned_from else {}
            request = RunRequest(config, place, experiment, parent_run_id=parent, tags=tags)
            return runner.train(request, [for_console(console)], stop=stop).run_id

        selected = SEL.choose_runs(
            client,
            experiment,
            preset,
            run_ids=[r.strip() for r in runs.split(",")] if runs else None,
            where=filter or "",
            seeds=seed_list,
            train_missing=train_missing,
            force=force,
            allow_mismatch=allow_mismatch,
            train=train_one,
            tuned=tuned_from,
        )
        result = C.compare(
            client,
            selected,
            out,
            C.comparisons_experiment(client, selected),
            model_name if register else None,
            root or None,
            run_id=project_run,
            allow_mismatch=allow_mismatch,
            tuned=tuned,
            stop=stop,
        )
    table = Table(title="plain vs residual")
    for column in C.COLUMNS:
        table.add_column(column, justify="left" if column in ("variant", "run id") else "right")
    for row in result.rows:
        table.add_row(*row)
    console.print(table, width=max(console.width, 160))
    console.print(result.verdict)
    console.print(f"figure, table and verdict in {out}/; comparison run {result.run_id}")
    comparison = client.get_run(result.run_id)
    console.print(f"the runs:       {ui_link(selected[0].info.experiment_id)}", highlight=False)
    console.print(f"their curves:   {ui_link(selected[0].info.experiment_id, curves=True)}", highlight=False)
    console.print(f"the comparison: {ui_link(comparison.info.experiment_id, result.run_id)}", highlight=False)
    if result.champion_uri:
        console.print(
            f"{result.champion_note}; {result.champion_uri} is version {result.champion_version}",
            highlight=False,
        )
    console.print(f"wall time {time.perf_counter() - started:.1f} s")

"""`resnet-mnist train`: one variant as one MLflow run, in this process, as `--nproc` ranks, or
resumed (`--resume ID`) in the run it continues."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from resnet_mnist.cli.common import console, drop_options
from resnet_mnist.cli.options import flag, split_options, with_config_options
from resnet_mnist.runtime.signals import stop_on_signals
from resnet_mnist.runtime.timeline import mark
from resnet_mnist.tracking.names import DEFAULT_EXPERIMENT

if TYPE_CHECKING:
    from resnet_mnist.tracking.runner import Trained


@with_config_options
def train(
    preset: Annotated[
        str,
        typer.Option(help="seed (the book), full (all of MNIST), smoke (tests), or a path to a YAML file."),
    ] = "seed",
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="Data-parallel processes on this machine (torchrun; gloo on CPU, NCCL on "
            "GPUs). For several machines run torchrun yourself: see the README.",
        ),
    ] = 1,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue this KILLED/FAILED run (or one whose process or tracking server went "
            "away) from its resumable checkpoint, in the same run, with its logged settings "
            "(only where it runs, --device and --root, may change)."
        ),
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = DEFAULT_EXPERIMENT,
    run_name: Annotated[str | None, typer.Option(help="Default resnet18-VARIANT-seedN.")] = None,
    **settings: Any,
) -> None:
    """Train one variant and record it as one MLflow run (params, curves, checkpoint, model).

    The store is $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db with artifacts in ./mlruns.

    Under `mlflow run` the project's run is the training run.
    """
    from resnet_mnist.config.placement import placement
    from resnet_mnist.config.settings import build_config

    # What the options alone can refuse is refused before torch and MLflow load (2 s here), so
    # a mistyped command answers at once.
    given, where = split_options(settings)
    place = placement(where)
    if resume:
        if nproc > 1:
            raise typer.BadParameter("--resume continues in one process; drop --nproc", param_hint="--nproc")
        ignored = [flag(k) for k in given]
        if ignored:
            raise typer.BadParameter(
                f"--resume continues with the run's logged settings; drop {', '.join(ignored)}",
                param_hint="--resume",
            )
    else:
        config = build_config(preset, given.pop("use_residual", True), given)
        place.validate(config)

    from resnet_mnist.cli.progress import for_console
    from resnet_mnist.core import distributed
    from resnet_mnist.core.device import resolve_device
    from resnet_mnist.tracking import runner
    from resnet_mnist.tracking.request import RunRequest
    from resnet_mnist.tracking.store import take_project_run

    mark("imports")
    if resume:
        from resnet_mnist.tracking.offline import Spool

        kept = Spool.find(resume)
        if kept is not None:
            console.print(
                f"sending what was kept while the server was gone ({kept.metric_count()}"
                f" metric values, the checkpoint) from {kept.path}",
                highlight=False,
            )
        with stop_on_signals() as stop:
            trained = runner.resume(RunRequest.resuming(resume, place), [for_console(console)], stop)
    else:
        if nproc > 1 and not distributed.launched():
            # Validated above; now the same command runs again as every rank of one job.
            code = distributed.launch(nproc, drop_options(sys.argv[1:], ("--nproc",)))
            if code == 130:
                raise KeyboardInterrupt("distributed run stopped")
            raise typer.Exit(code)
        dist = distributed.init(resolve_device(place.device).type) if distributed.launched() else None
        main_rank = dist is None or dist.is_main
        project_run = take_project_run()
        try:
            with stop_on_signals() as stop:
                request = RunRequest(
                    config, place, experiment, run_name, adopt=project_run if main_rank else None
                )
                callbacks = [for_console(console)] if main_rank else []
                trained = runner.train(request, callbacks, dist, stop)
        finally:
            distributed.close()
        if not main_rank:
            return
    mark("run_end")
    _print_trained(trained)


def _print_trained(trained: Trained) -> None:
    import mlflow

    result = trained.result
    table = Table(title=f"{trained.config.architecture} ({trained.config.preset})")
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in (
        ("run id", trained.run_id),
        ("tracking uri", mlflow.get_tracking_uri()),
        ("best dev accuracy", f"{result.best_dev_accuracy:.4f} (step {result.best_step})"),
        ("test accuracy", f"{result.test_accuracy:.4f}"),
        ("test loss", f"{result.test_loss:.4f}"),
        ("train time", f"{result.train_time_s:.1f} s ({result.train_images_per_s:,.0f} img/s)"),
        ("model uri", trained.model_uri),
    ):
        table.add_row(key, value)
    console.print(table)
    from resnet_mnist.tracking.experiments import ui_link

    run = mlflow.get_run(trained.run_id)
    console.print(f"in the MLflow UI: {ui_link(run.info.experiment_id, trained.run_id)}", highlight=False)

"""`resnet-mnist tune`: one network's settings searched by Optuna, each trial a training run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from resnet_mnist.cli.common import console
from resnet_mnist.cli.options import split_options, with_config_options
from resnet_mnist.runtime.signals import stop_on_signals
from resnet_mnist.tracking.names import TUNE_EXPERIMENT


@with_config_options
def tune(
    preset: Annotated[
        str,
        typer.Option(help="The preset whose settings are the search's base (seed, smoke, a YAML file)."),
    ] = "seed",
    trials: Annotated[
        int,
        typer.Option(
            min=1,
            help="The budget: trials that end complete or pruned (or diverge). Asked again with a "
            "larger number, the same search continues.",
        ),
    ] = 8,
    space: Annotated[
        str,
        typer.Option(help="The search space: default, tiny (tests), or a YAML file (mlproject/spaces/)."),
    ] = "default",
    pruner: Annotated[
        str,
        typer.Option(
            help="median, halving (successive halving) or none; fed the dev accuracy at each evaluation."
        ),
    ] = "median",
    sampler_seed: Annotated[int, typer.Option(help="The TPE sampler's seed.")] = 0,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="CPU slots of the embedded Ray (default: every core); one trial per slot."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="An existing Ray cluster (host:port of its head); default $RAY_ADDRESS, else embedded."
        ),
    ] = None,
    cpus_per_trial: Annotated[
        float, typer.Option(min=0.01, help="CPUs (and torch threads) per trial.")
    ] = 1.0,
    gpus_per_trial: Annotated[
        float, typer.Option(min=0.0, help="GPUs per trial (0.25: four share one).")
    ] = 0.0,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = TUNE_EXPERIMENT,
    out: Annotated[Path, typer.Option(help="Where the trials' table, figure and best settings go.")] = Path(
        "reports/tune"
    ),
    **settings: Any,
) -> None:
    """Tune one network's settings with an adaptive search: Optuna's TPE sampler and a pruner.

    The base is the preset (with the variant, --use-residual, and any setting given here); the
    space file says which settings are searched and over what ranges. One tune run holds the
    search (Optuna's MLflow storage: the Optuna study is that run) and each trial is a training
    run nested under it, with the usual params, curves, checkpoint and model. Trials are Ray
    tasks, one per slot; the pruner judges each trial at every dev evaluation and stops the
    unpromising (its run ends KILLED, with the reason). The best settings are printed, logged
    on the tune run and written as a preset file.

    Asked again with a larger --trials, the search continues: no trial is trained twice, and a
    trial stopped by Ctrl-C or left by a dead worker continues from its checkpoint.

    Under `mlflow run -e tune` the project's run is the tune run.
    """
    from mlflow.tracking import MlflowClient

    from resnet_mnist.config.placement import placement
    from resnet_mnist.config.search import load_space
    from resnet_mnist.config.settings import build_config
    from resnet_mnist.study import cluster
    from resnet_mnist.study import tune as T
    from resnet_mnist.study.spec import Resources
    from resnet_mnist.study.tune_report import report
    from resnet_mnist.tracking.experiments import ui_link
    from resnet_mnist.tracking.store import check_store, take_project_run
    from resnet_mnist.tracking.views import SEARCH_VIEW

    if pruner not in ("median", "halving", "none"):
        raise typer.BadParameter("use median, halving or none", param_hint="--pruner")
    given, where = split_options(settings)
    place = placement(where)
    base = build_config(preset, given.pop("use_residual", True), given)
    place.validate(base)
    searched = load_space(space).check_with(base)
    spec = T.TuneSpec(
        base,
        searched,
        trials,
        T.pruner_for(pruner, base, searched),
        sampler_seed,
        Resources(cpus_per_trial, gpus_per_trial),
    )
    project_run = take_project_run()
    check_store()
    client = MlflowClient()
    home = T.open_tune(client, spec, experiment, project_run)
    started = time.perf_counter()

    def say(line: str) -> None:
        console.print(line, highlight=False)

    if not base.eval_steps:
        say("the preset evaluates only at its last step (eval_steps 0): no trial can be pruned")
    at = cluster.where(address, workers)
    with cluster.RayEngine(at) as engine, stop_on_signals() as stop:
        say(engine.describe())
        engine.check_fits(spec.resources)
        slots = engine.slots(spec.resources)
        say(
            f"search {home.study_name}: {trials} trials of {base.architecture} ({base.preset}), "
            f"{slots} at once; space {searched.name}: "
            + "; ".join(d.describe() for d in searched.dimensions)
            + f"; pruner {spec.pruner}"
        )
        T.Search(engine, client, home, spec, slots, say, place).run(stop)
    summary = report(client, home, spec, out)
    say(summary.text)
    if summary.best is not None:
        say(
            f"best settings as a preset: {summary.preset_path} (train them: resnet-mnist train --preset "
            f"{summary.preset_path} --use-residual {str(base.use_residual).lower()}); trials in {out}/"
        )
    say(f"in the MLflow UI: {ui_link(home.experiment_id, home.run_id)}")
    say(f"the trials' settings against dev accuracy: {ui_link(home.experiment_id, view=SEARCH_VIEW)}")
    console.print(f"wall time {time.perf_counter() - started:.1f} s")

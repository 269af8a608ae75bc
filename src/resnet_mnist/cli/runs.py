"""`resnet-mnist stale` and `links`: the runs whose process is gone, and where the MLflow UI shows
each experiment."""

from __future__ import annotations

from typing import Annotated

import typer

from resnet_mnist.cli.common import console
from resnet_mnist.tracking import names
from resnet_mnist.tracking.names import DEFAULT_EXPERIMENT


def stale(
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = DEFAULT_EXPERIMENT,
    mark_killed: Annotated[
        bool, typer.Option(help="End the runs whose owner is gone as KILLED (they stay resumable).")
    ] = False,
) -> None:
    """List RUNNING runs whose training process is gone (killed, or its machine died).

    Same host: the recorded process no longer exists. Another host: no heartbeat for 5 minutes.
    `train --resume ID` takes such a run over; `compare` only ever uses FINISHED runs.
    """
    from mlflow.tracking import MlflowClient

    from resnet_mnist.tracking.lifecycle import end_stale, running_runs
    from resnet_mnist.tracking.offline import Spool
    from resnet_mnist.tracking.store import check_store

    check_store()
    client = MlflowClient()
    found = running_runs(client, experiment)
    if not found:
        console.print(f"no RUNNING runs in {experiment!r}")
    for run, alive in found:
        tags, run_id = run.data.tags, run.info.run_id
        state = {True: "owner alive", False: "owner gone", None: "no owner recorded"}[alive]
        console.print(
            f"{run_id}  {run.info.run_name}  {state} (pid {tags.get(names.OWNER_PID, '?')} "
            f"on {tags.get(names.OWNER_HOST, '?')}, checkpoint at step "
            f"{tags.get(names.RESUME_STEP, 'none')})",
            highlight=False,
        )
        kept = Spool.find(run_id)
        if kept is not None:
            console.print(
                f"  lost its tracking server; kept on this machine in {kept.path} "
                f"(`resnet-mnist train --resume {run_id}` sends it)",
                highlight=False,
            )
        if mark_killed and alive is False:
            if end_stale(client, run_id):
                console.print(
                    f"  marked KILLED; resume with `resnet-mnist train --resume {run_id}`", highlight=False
                )
            else:
                console.print(f"  {run_id} is being resumed by another process; left alone")


def links(
    port: Annotated[int, typer.Option(help="Where `make ui` serves the local store.")] = 5000,
) -> None:
    """Print the MLflow UI links that open each experiment in its Model training view."""
    from mlflow.tracking import MlflowClient

    from resnet_mnist.tracking.experiments import ui_link
    from resnet_mnist.tracking.store import check_store
    from resnet_mnist.tracking.views import CURVES_VIEW_TAG

    uri = check_store()
    base = None if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    experiments = [e for e in MlflowClient().search_experiments() if e.name != "Default"]
    if not experiments:
        console.print(f"no experiments yet in {uri}; train first (`make run`)", highlight=False)
    for exp in experiments:
        console.print(f"{exp.name}: {ui_link(exp.experiment_id, base=base)}", highlight=False)
        if CURVES_VIEW_TAG in exp.tags:
            console.print(
                f"  its curves: {ui_link(exp.experiment_id, base=base, curves=True)}", highlight=False
            )

"""Experiments: found or created once, marked as model training with the curves chart view, and
linked in the MLflow UI."""

from __future__ import annotations

from functools import partial

from resnet_mnist.tracking import names
from resnet_mnist.tracking.sqlite import store_lock
from resnet_mnist.tracking.store import TrackingUnavailable, already_exists, retry_conflicts
from resnet_mnist.tracking.views import CURVES_VIEW, save_curves_view

#: MLflow 3's UI opens an experiment in its GenAI view unless the experiment says it holds model
#: training; the tag alone does not switch the view, the URL query below does.
EXPERIMENT_KIND = {names.EXPERIMENT_KIND: "custom_model_development"}
TRAINING_VIEW = "workflowType=machine_learning"
UI_DEFAULT = "http://127.0.0.1:5000"
#: The runs page's chart mode, opened on a saved view.
VIEW_QUERY = "compareRunsMode=CHART&viewStateShareKey={}"


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created on first use (under the store lock), tagged as a
    model-training experiment and given the training-curves chart view."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None:
        with store_lock(mlflow.get_tracking_uri()):
            found = client.get_experiment_by_name(name)
            if found is None:
                try:
                    created = client.create_experiment(name, tags=EXPERIMENT_KIND)
                except MlflowException as exc:
                    # A tracking server has no lock of ours: another client created it first.
                    if not already_exists(exc):
                        raise
                    found = client.get_experiment_by_name(name)
                else:
                    retry_conflicts(partial(save_curves_view, client, created, EXPERIMENT_KIND))
                    return created
    if found is None:
        raise TrackingUnavailable(f"experiment {name!r} could be neither found nor created")
    mark_training_experiment(found.experiment_id)
    return found.experiment_id


def mark_training_experiment(experiment_id: str) -> None:
    """Tag an experiment (e.g. one `mlflow run --experiment-name` made) as model training, with
    the training-curves chart view.

    Several trainings may start at once on a new experiment: its creator and the others then
    write the same tags together, and on a server one insert loses on the unique key (seen with
    PostgreSQL: four trainings, one ended with `UniqueViolation` on `experiment_tag_pk`). The
    loser writes again, over a row that now exists, with the same value.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    if tags.get(names.EXPERIMENT_KIND) is None:
        for key, value in EXPERIMENT_KIND.items():
            retry_conflicts(partial(client.set_experiment_tag, experiment_id, key, value))
    retry_conflicts(partial(save_curves_view, client, experiment_id, tags))


def ui_link(
    experiment: str,
    run_id: str | None = None,
    base: str | None = None,
    *,
    curves: bool = False,
    view: str | None = None,
) -> str:
    """A link that opens the MLflow UI's Model training view on an experiment (or one run); with
    `curves`, the experiment's chart view with the training curves first, with `view` that saved
    view's charts (`tracking.views`).

    The base is the tracking server when there is one, else where `make ui` serves the local
    store.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    base = base or (uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT)
    view = CURVES_VIEW if curves else view
    if view:
        return f"{base}/#/experiments/{experiment}/runs?{TRAINING_VIEW}&{VIEW_QUERY.format(view)}"
    page = f"experiments/{experiment}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}/#/{page}?{TRAINING_VIEW}"

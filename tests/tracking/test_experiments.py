"""Experiments made as model-training ones, with the curves view, and UI links that open them."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from resnet_mnist.cli.app import app
from resnet_mnist.tracking.experiments import experiment_id, mark_training_experiment, ui_link


def test_experiments_are_tagged_and_linked_to_the_training_view(store: str) -> None:
    client = MlflowClient()
    new = experiment_id("made-here")
    assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment_id("made-here") == new
    other = client.create_experiment("made-by-mlflow-run")  # as `mlflow run` makes one: no tag
    mark_training_experiment(other)
    assert client.get_experiment(other).tags["mlflow.experimentKind"] == "custom_model_development"

    assert ui_link(new) == f"http://127.0.0.1:5000/#/experiments/{new}?workflowType=machine_learning"
    assert ui_link(new, "abc", base="http://host:1") == (
        f"http://host:1/#/experiments/{new}/runs/abc?workflowType=machine_learning"
    )
    out = CliRunner().invoke(app, ["links", "--port", "5123"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert f"made-here: http://127.0.0.1:5123/#/experiments/{new}?workflowType=machine_learning" in (
        out.output
    )
    # both kinds of experiment carry the training-curves view, and `links` opens it
    curves = "compareRunsMode=CHART&viewStateShareKey=resnet-mnist-training-curves"
    for exp in (new, other):
        assert "mlflow.sharedViewState.resnet-mnist-training-curves" in client.get_experiment(exp).tags
    assert ui_link(new, curves=True) == (
        f"http://127.0.0.1:5000/#/experiments/{new}/runs?workflowType=machine_learning&{curves}"
    )
    assert (
        f"its curves: http://127.0.0.1:5123/#/experiments/{new}/runs?workflowType=machine_learning&{curves}"
        in (out.output)
    )


def test_a_tag_another_training_wrote_at_the_same_moment_is_written_again(store: str, monkeypatch) -> None:
    """Two trainings starting together on a new experiment write the same tags; through a server
    one insert loses on the unique key (PostgreSQL's UniqueViolation) and is simply written again."""
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    other = client.create_experiment("made-by-two-at-once")
    real, lost = MlflowClient.set_experiment_tag, []

    def collides_once(self, experiment_id, key, value):
        if key not in lost:
            lost.append(key)
            raise MlflowException(f'(psycopg.errors.UniqueViolation) duplicate key "experiment_tag_pk" {key}')
        return real(self, experiment_id, key, value)

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", collides_once)
    mark_training_experiment(other)
    tags = client.get_experiment(other).tags
    assert len(lost) == 2 and tags["mlflow.experimentKind"] == "custom_model_development"
    assert "mlflow.sharedViewState.resnet-mnist-training-curves" in tags


def test_a_tracking_server_is_its_own_ui(monkeypatch) -> None:
    import mlflow

    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://tracking.example:5000/")
    assert ui_link("7") == "http://tracking.example:5000/#/experiments/7?workflowType=machine_learning"

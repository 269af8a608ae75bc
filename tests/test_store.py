"""Store access: experiments made as model-training ones, and UI links that open that view."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from resnet_mnist.cli import app
from resnet_mnist.store import experiment_id, mark_training_experiment, ui_link


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
        f"http://host:1/#/experiments/{new}/runs/abc?workflowType=machine_learning")
    out = CliRunner().invoke(app, ["links", "--port", "5123"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert f"made-here: http://127.0.0.1:5123/#/experiments/{new}?workflowType=machine_learning" in (
        out.output)


def test_a_tracking_server_is_its_own_ui(monkeypatch) -> None:
    import mlflow

    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://tracking.example:5000/")
    assert ui_link("7") == "http://tracking.example:5000/#/experiments/7?workflowType=machine_learning"

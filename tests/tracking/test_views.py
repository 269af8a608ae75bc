"""The training-curves view: the tag MLflow's UI reads its saved views from, written once."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from resnet_mnist.tracking import views as V


def test_the_view_is_a_saved_view_the_ui_can_read(store: str) -> None:
    client = MlflowClient()
    exp = client.create_experiment("curves")
    V.save_curves_view(client, exp, client.get_experiment(exp).tags)
    value = client.get_experiment(exp).tags[V.CURVES_VIEW_TAG]
    name, state = V.decode_view(value)
    assert name == V.CURVES_VIEW_NAME
    first, *rest = state["compareRunSections"]
    assert first["name"] == V.CURVES_SECTION and [s["name"] for s in rest] == [
        "Model metrics",
        "System metrics",
    ]
    charts = state["compareRunCharts"]
    assert [c["metricKey"] for c in charts] == ["train_loss", "dev_accuracy", "dev_loss", "train_epoch_loss"]
    assert {c["metricSectionId"] for c in charts} == {first["uuid"]} and {c["type"] for c in charts} == {
        "LINE"
    }
    assert state["isAccordionReordered"] is True  # the UI keeps our section order


def test_a_view_edited_in_the_ui_is_kept(store: str) -> None:
    client = MlflowClient()
    exp = client.create_experiment("edited")
    edited = V.encode_view("mine", {"compareRunCharts": []})
    client.set_experiment_tag(exp, V.CURVES_VIEW_TAG, edited)
    V.save_curves_view(client, exp, client.get_experiment(exp).tags)
    assert client.get_experiment(exp).tags[V.CURVES_VIEW_TAG] == edited
    assert V.decode_view(edited) == ("mine", {"compareRunCharts": []})

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


def test_study_and_tune_experiments_get_the_search_and_seeds_views(store: str) -> None:
    client = MlflowClient()
    study, tune = client.create_experiment("study"), client.create_experiment("tune")
    V.save_search_views(client, study, study=True)
    V.save_search_views(client, tune, study=False)
    tags = client.get_experiment(study).tags
    name, search = V.decode_view(tags[V.SEARCH_VIEW_TAG])
    assert name == V.SEARCH_VIEW_NAME and search["runsHiddenMode"] == "SHOW_ALL"
    (parallel,) = [c for c in search["compareRunCharts"] if c["type"] == "PARALLEL"]
    assert parallel["selectedParams"] == ["lr", "momentum", "weight_decay", "warmup_steps"]
    assert parallel["selectedMetrics"] == ["best_dev_accuracy"] and parallel["showAllRuns"] is True
    assert parallel["metricSectionId"] == search["compareRunSections"][0]["uuid"]
    name, seeds = V.decode_view(tags[V.SEEDS_VIEW_TAG])
    assert seeds["groupBy"] == {
        "aggregateFunction": "average",
        "groupByKeys": [{"mode": "tag", "groupByData": "architecture"}],
    }
    assert seeds["searchFilter"] == V.SCORED and seeds["useGroupedValuesInCharts"] is True
    assert [c["type"] for c in seeds["compareRunCharts"]] == ["BAR", "BAR", "LINE"]
    # a tune experiment: the search view on the trials' value, no seeds view
    tune_tags = client.get_experiment(tune).tags
    assert V.SEEDS_VIEW_TAG not in tune_tags
    _, searched = V.decode_view(tune_tags[V.SEARCH_VIEW_TAG])
    assert [c["selectedMetrics"] for c in searched["compareRunCharts"] if c["type"] == "PARALLEL"] == [
        ["value"]
    ]
    # written once: an edited view is kept
    client.set_experiment_tag(study, V.SEEDS_VIEW_TAG, V.encode_view("mine", {}))
    V.save_search_views(client, study, study=True)
    assert V.decode_view(client.get_experiment(study).tags[V.SEEDS_VIEW_TAG]) == ("mine", {})

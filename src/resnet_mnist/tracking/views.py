"""Saved chart views, as the MLflow UI saves one itself (Views → "Save as new view"): the
training curves first in each training experiment; in the tune and study experiments, the search
(a parallel-coordinates chart: the searched settings against dev accuracy) and, in the study's,
the scored runs grouped by network (the mean over seeds, and the min–max band).

MLflow's chart view has no server-side default layout: it shows prefixed sections first, then
"Model metrics" in name order, so a run's one-off scores (`best_dev_accuracy`, `flops`, …) fill
the first screen and `train_loss` comes eighteenth. A saved view is an experiment tag
`mlflow.sharedViewState.<key>` holding the page's state; the UI lists it in the Views menu and
opens it from `?viewStateShareKey=<key>`. Ours puts the curves in a section of their own above
everything else; MLflow files every other metric into its usual sections when the view opens.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only a client passed in is used: importing this module costs no MLflow import
    from mlflow.tracking import MlflowClient

#: Where the UI looks for saved views, and the key of ours (stable, so it is written once).
SHARED_VIEW_STATE = "mlflow.sharedViewState."
CURVES_VIEW = "resnet-mnist-training-curves"
CURVES_VIEW_TAG = SHARED_VIEW_STATE + CURVES_VIEW
CURVES_VIEW_NAME = "Training curves"
#: The section's charts, in the order they are drawn (three to a row at the UI's usual width).
CURVES = ("train_loss", "dev_accuracy", "dev_loss", "train_epoch_loss")
CURVES_SECTION = "Training curves"
#: A fixed creation time keeps the tag's value a pure function of the layout.
CREATED_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

_SECTIONS = {CURVES_SECTION: "curves", "Model metrics": "model", "System metrics": "system"}

#: The search view: every setting a search space may hold, against the search's value.
SEARCH_VIEW = "resnet-mnist-search"
SEARCH_VIEW_TAG = SHARED_VIEW_STATE + SEARCH_VIEW
SEARCH_VIEW_NAME = "Search: settings and dev accuracy"
SEARCH_SECTION = "Search"
SEARCHED = ("lr", "momentum", "weight_decay", "warmup_steps")
#: The seeds view: a study's scored runs grouped by network (`architecture`: depth and variant).
SEEDS_VIEW = "resnet-mnist-seeds"
SEEDS_VIEW_TAG = SHARED_VIEW_STATE + SEEDS_VIEW
SEEDS_VIEW_NAME = "Seeds by network: mean and min-max"
SEEDS_SECTION = "Seeds by network"
#: The study's scored runs: its tuned seeds or its grid's seeds (a run without the tag is none).
SCORED = "tags.run_type = 'train' and tags.`study.phase` != 'lr-search'"


def _card(view: str, section: str, key: str, kind: str) -> dict[str, Any]:
    """The fields every chart card has, as the UI writes them for a card it made itself."""
    return {
        "uuid": f"{view}-{key}",
        "type": kind,
        "runsCountToCompare": 10,
        "metricSectionId": f"{view}-{section}",
        "deleted": False,
        "isGenerated": False,
    }


def _line_chart(metric: str, view: str = CURVES_VIEW, section: str = "curves") -> dict[str, Any]:
    """One line chart card, with the fields the UI writes for a chart it generates itself."""
    return _card(view, section, metric, "LINE") | {
        "displayName": metric,
        "metricKey": metric,
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "range": {},
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
    }


def _parallel_chart(metric: str) -> dict[str, Any]:
    """Parallel coordinates over every run the filter shows (not only the first ten)."""
    return _card(SEARCH_VIEW, "main", "parallel", "PARALLEL") | {
        "displayName": f"searched settings and {metric}",
        "selectedParams": list(SEARCHED),
        "selectedMetrics": [metric],
        "showAllRuns": True,
    }


def _bar_chart(metric: str) -> dict[str, Any]:
    return _card(SEEDS_VIEW, "main", metric, "BAR") | {"displayName": metric, "metricKey": metric}


def _sections(view: str, first: str, key: str = "main") -> list[dict[str, Any]]:
    """Our section first, then the UI's own (it files every other metric there)."""
    return [
        {
            "uuid": f"{view}-{section_key}",
            "name": name,
            "display": True,
            "isReordered": False,
            "deleted": False,
            "isGenerated": section_key != key,
        }
        for name, section_key in [(first, key), *list(_SECTIONS.items())[1:]]
    ]


#: Runs listed by network: nested runs (trials under their tune run, cells under the study run)
#: are listed flat, not hidden under a collapsed parent whose own charts are empty.
BY_NETWORK = {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "architecture"}]}


def search_view_state(metric: str) -> dict[str, Any]:
    """The training runs of a search (a tune experiment's trials; a study's trials and cells)
    as one parallel-coordinates chart: each run a line through its settings to `metric`
    (listed by network, but drawn one line a run)."""
    return curves_view_state() | {
        "searchFilter": "tags.run_type = 'train'",
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": [_parallel_chart(metric), _line_chart("train_loss", SEARCH_VIEW, "main")],
        "compareRunSections": _sections(SEARCH_VIEW, SEARCH_SECTION),
        "groupBy": BY_NETWORK,
        "useGroupedValuesInCharts": False,
    }


def seeds_view_state() -> dict[str, Any]:
    """A study's scored runs grouped by network: each group's mean over its seeds, with the band
    from its lowest to its highest seed (the UI's grouped charts), for the measures the study
    judges (final training loss, full-dev accuracy) and the training loss curve."""
    charts = [_bar_chart("train_epoch_loss"), _bar_chart("best_dev_accuracy")]
    return curves_view_state() | {
        "searchFilter": SCORED,
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": [*charts, _line_chart("train_loss", SEEDS_VIEW, "main")],
        "compareRunSections": _sections(SEEDS_VIEW, SEEDS_SECTION),
        "groupBy": BY_NETWORK,
        "useGroupedValuesInCharts": True,
    }


def curves_view_state() -> dict[str, Any]:
    """The runs page's state with the curves section first (the UI's own defaults elsewhere)."""
    return {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"],
        "columnOrder": [],
        "columnWidths": {},
        "runsHiddenMode": "FIRST_10_RUNS",
        "compareRunCharts": [_line_chart(metric) for metric in CURVES],
        "compareRunSections": _sections(CURVES_VIEW, CURVES_SECTION, "curves"),
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": True,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": None,
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def encode_view(name: str, state: dict[str, Any]) -> str:
    """A saved view's tag value as the UI writes it: an envelope whose state is deflated JSON."""
    packed = base64.b64encode(zlib.compress(json.dumps(state, separators=(",", ":")).encode())).decode()
    return json.dumps(
        {"name": name, "createdAt": CREATED_MS, "updatedAt": CREATED_MS, "state": f"deflate;{packed}"}
    )


def decode_view(value: str) -> tuple[str, dict[str, Any]]:
    """The name and state of a saved view's tag value (deflated or plain, as the UI reads it)."""
    envelope = json.loads(value)
    state = envelope["state"]
    if state.startswith("deflate;"):
        state = zlib.decompress(base64.b64decode(state.removeprefix("deflate;"))).decode()
    return envelope["name"], json.loads(state)


def save_curves_view(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> None:
    """Give the experiment (whose tags the caller has just read) the training-curves view unless
    it has it (a person may have edited it in the UI since: theirs is kept)."""
    if CURVES_VIEW_TAG not in tags:
        view = encode_view(CURVES_VIEW_NAME, curves_view_state())
        client.set_experiment_tag(experiment_id, CURVES_VIEW_TAG, view)


def save_search_views(client: MlflowClient, experiment_id: str, study: bool) -> None:
    """Give a tune experiment the search view (its trials' value), or a study experiment the
    search view (dev accuracy) and the seeds view, unless it has them (theirs are kept)."""
    tags = client.get_experiment(experiment_id).tags
    views = {
        SEARCH_VIEW_TAG: (SEARCH_VIEW_NAME, search_view_state("best_dev_accuracy" if study else "value"))
    }
    if study:
        views[SEEDS_VIEW_TAG] = (SEEDS_VIEW_NAME, seeds_view_state())
    for tag, (name, state) in views.items():
        if tag not in tags:
            client.set_experiment_tag(experiment_id, tag, encode_view(name, state))

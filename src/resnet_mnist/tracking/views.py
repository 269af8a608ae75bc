"""The training curves first: a saved chart view of each training experiment, as the MLflow UI
saves one itself (Views → "Save as new view").

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


def _line_chart(metric: str, section: str) -> dict[str, Any]:
    """One line chart card, with the fields the UI writes for a chart it generates itself."""
    return {
        "uuid": f"{CURVES_VIEW}-{metric}",
        "type": "LINE",
        "runsCountToCompare": 10,
        "metricSectionId": f"{CURVES_VIEW}-{_SECTIONS[section]}",
        "deleted": False,
        "isGenerated": False,
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
        "compareRunCharts": [_line_chart(metric, CURVES_SECTION) for metric in CURVES],
        "compareRunSections": [
            {
                "uuid": f"{CURVES_VIEW}-{key}",
                "name": name,
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": name != CURVES_SECTION,
            }
            for name, key in _SECTIONS.items()
        ],
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

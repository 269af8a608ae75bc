"""A model's per-digit scores on digits as people bring them (`predict --presented N --log`),
written where the model lives: under `evaluation/` of its LoggedModel and of the run that logged
it, as one table and one figure, not one single-point metric per digit and presentation."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient

from resnet_mnist.analysis.evaluation import per_digit_table, plot_per_digit
from resnet_mnist.runtime.errors import ProjectError, first_line

PRESENTED = "presented"


class EvaluationError(ProjectError):
    """The scores have nowhere to go: the model URI names no model MLflow tracked."""


def log_presented(
    model_uri: str, confusions: Mapping[str, np.ndarray], client: MlflowClient | None = None
) -> str:
    """Write `evaluation/presented.json` (an MLflow table: set, digit, support, precision, recall,
    F1) and `evaluation/presented.png` to the model and its run, replacing an earlier one; the
    model's id."""
    client = client or MlflowClient()
    try:
        info = get_model_info(model_uri)
    except MlflowException as exc:
        raise EvaluationError(f"cannot log to {model_uri}: {first_line(exc)}") from None
    if not info.model_id:
        raise EvaluationError(f"{model_uri} is not a LoggedModel (MLflow 3): there is no model to log to")
    count = int(next(iter(confusions.values())).sum())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = pd.DataFrame(per_digit_table(confusions))
        table.to_json(folder / f"{PRESENTED}.json", orient="split", index=False)
        plot_per_digit(confusions, folder / f"{PRESENTED}.png", f"{count} test digits as people bring them")
        client.log_model_artifacts(info.model_id, tmp, "evaluation")
        if info.run_id:
            client.log_artifacts(info.run_id, tmp, "evaluation")
    return info.model_id

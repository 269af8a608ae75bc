"""A training run's figures, drawn from what it logged and uploaded to it: the curves
(`plots/curves.png`) and, when it recorded them, the diagnostics (`plots/diagnostics.png`).

matplotlib is imported here, once training is over: imported with MLflow at start-up it adds
its memory to the peak that training's tensors reach (and the import time is the same).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from resnet_mnist.core.diagnostics import GRAD_NORM, LESION
from resnet_mnist.tracking.artifacts import naming
from resnet_mnist.tracking.history import read_history


def log_curves(client: MlflowClient, run_id: str, architecture: str, title: str) -> None:
    """`plots/curves.png`: the run's train and dev curves, labelled with its `architecture`."""
    from resnet_mnist.core.figures import plot_curves

    history = read_history(client, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        # PNG only: the PDF, for papers, is made for the comparison figure (`compare`).
        for path in plot_curves(
            {architecture: [history]}, Path(tmp) / "curves.png", title=title, formats=("png",)
        ):
            with naming(run_id, f"plots/{path.name}"):
                client.log_artifact(run_id, str(path), "plots")


def log_diagnostics(client: MlflowClient, run_id: str, title: str) -> None:
    """`plots/diagnostics.png` (gradient norms per stage, the lesion test), drawn from the
    diagnostics the run logged, when it logged any."""
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith((GRAD_NORM, LESION))]
    series = {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in keys}
    grads = {k.removeprefix(GRAD_NORM): v for k, v in series.items() if k.startswith(GRAD_NORM)}
    lesion = {k.removeprefix(LESION): v[max(v)] for k, v in series.items() if k.startswith(LESION) and v}
    if not grads and not lesion:
        return
    from resnet_mnist.core.figures import plot_diagnostics

    with tempfile.TemporaryDirectory() as tmp:
        path = plot_diagnostics(grads, lesion, Path(tmp) / "diagnostics.png", title)
        with naming(run_id, "plots/diagnostics.png"):
            client.log_artifact(run_id, str(path), "plots")

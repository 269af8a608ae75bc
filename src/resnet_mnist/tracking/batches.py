"""Metrics written in as few store calls as MLflow allows: one sqlite write costs about 6 ms here
and one HTTP call far more, so per-step values go in batches, never one `log_metric` each."""

from __future__ import annotations

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

#: MLflow's limit of metrics in one `log_batch` call.
MAX_BATCH = 1000


def log_metrics_batched(
    client: MlflowClient, run_id: str, metrics: list[Metric], synchronous: bool = True
) -> None:
    """Write `metrics` to `run_id` in calls of at most `MAX_BATCH`."""
    for start in range(0, len(metrics), MAX_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_BATCH], synchronous=synchronous)

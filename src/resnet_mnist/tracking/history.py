"""Reading a run's curves back from MLflow: the full per-step histories, not the last values."""

from __future__ import annotations

from collections.abc import Iterable

from mlflow.tracking import MlflowClient

from resnet_mnist.core.figures import History

CURVES = ("train_loss", "dev_loss", "dev_accuracy", "train_epoch_loss")
TIME_METRICS = ("train_images_per_s", "train_time_s", "eval_time_s")
#: What a training run logs by step and a resumed one must not send again.
STEP_METRICS = (*CURVES, "best_step", *TIME_METRICS, "tracking_log_seconds")


def read_history(client: MlflowClient, run_id: str) -> History:
    """The run's train loss at every step and dev loss/accuracy at every evaluation."""
    train = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train_loss"))
    dev_loss = {m.step: m.value for m in client.get_metric_history(run_id, "dev_loss")}
    dev_acc = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "dev_accuracy"))
    return History(
        steps=[s for s, _ in train],
        train_loss=[v for _, v in train],
        eval_steps=[s for s, _ in dev_acc],
        dev_loss=[dev_loss[s] for s, _ in dev_acc],
        dev_accuracy=[v for _, v in dev_acc],
    )


def last_logged_steps(
    client: MlflowClient, run_id: str, keys: Iterable[str] = STEP_METRICS
) -> dict[str, int]:
    """The last step already in the store for each metric of `keys` (-1 when none): what a
    resumed run, or a replay of kept metrics, must not send again."""
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1) for key in keys}

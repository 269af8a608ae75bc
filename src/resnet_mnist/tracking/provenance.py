"""What a training run is and where it came from: its name, the tags to search and group it by
(variant, depth, preset, the torch and MLflow versions, the git commit under MLflow's own key),
and the system metrics sampled while it trains."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import mlflow
import torch
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from resnet_mnist.config.settings import TrainConfig
from resnet_mnist.tracking import names

#: How often system metrics (CPU, memory, disk, network; GPU through nvidia-ml-py when one is
#: present) are sampled while a training run is open.
SYSTEM_METRICS_INTERVAL_S = 2


def version(module: object) -> str:
    """A package's version without its local build tag (`2.14.1`, not `2.14.1+cpu`)."""
    return str(getattr(module, "__version__", "unknown")).split("+")[0]


def git_commit() -> str | None:
    """The checkout's commit, when the package runs from one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_name(config: TrainConfig) -> str:
    return f"{config.architecture}-seed{config.seed}"


def train_tags(config: TrainConfig, parent_run_id: str | None = None) -> dict[str, str]:
    """What a training run is (variant, depth, preset, versions, commit): tags to search and group by."""
    tags = {
        names.VARIANT: config.variant,
        names.DEPTH: str(config.depth),
        names.ARCHITECTURE: config.architecture,
        names.PRESET: config.preset,
        names.RUN_TYPE: names.TRAIN,
        names.TORCH_VERSION: version(torch),
        names.MLFLOW_VERSION: version(mlflow),
    }
    if parent_run_id:
        tags[names.PARENT_RUN_ID] = parent_run_id
    commit = git_commit()
    if commit:
        tags[names.GIT_COMMIT] = commit
    return tags


class SystemMetrics:
    """A run's system metrics, sampled in a background thread from `start` on.

    The monitor is ours, not the one `start_run(log_system_metrics=True)` would keep, so that the
    run's ending decides how it stops: `finish` sends the last samples first; `abandon` (the
    tracking server is gone) does not wait for a send in flight. It stops once, whichever is
    asked first (a run's ending may find the server gone after `finish`, and `abandon` then).
    """

    def __init__(self, run_id: str, resumed: bool) -> None:
        self.monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=SYSTEM_METRICS_INTERVAL_S,
            samples_before_logging=1,
            resume_logging=resumed,
        )
        self.stopped = False

    def start(self) -> SystemMetrics:
        self.monitor.start()
        return self

    def finish(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.monitor.finish()

    def abandon(self) -> None:
        if not self.stopped:
            self.stopped = True
            threading.Thread(target=self.monitor.finish, daemon=True, name="metrics-stop").start()

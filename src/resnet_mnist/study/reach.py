"""What a task on a Ray worker takes from the driver to reach the same store: the tracking URI
(a sqlite path made absolute) and the MLflow client's login. A worker inherits its raylet's
environment, not the driver's, so both travel with the task; what the driver's environment must
not impose on the task (`mlflow run`'s own run) is dropped there."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

#: MLflow client settings a task takes from the driver: the team server's login must reach
#: every node.
CLIENT_SETTINGS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)
#: What a driver's environment must not impose on a task (`mlflow run` exports the project's
#: run, which would override the task's own; mlflow issue 15713).
FOREIGN = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@dataclass(frozen=True)
class Reach:
    """The driver's store and client settings, as a task carries them."""

    tracking_uri: str
    client_settings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def here(cls) -> Reach:
        """This (driver) process's store and client settings."""
        import mlflow

        return cls(
            absolute_uri(mlflow.get_tracking_uri()),
            {k: os.environ[k] for k in CLIENT_SETTINGS if k in os.environ},
        )

    def adopt(self) -> None:
        """This process works for the driver's store only, whatever its environment says."""
        for key in FOREIGN:
            os.environ.pop(key, None)
        os.environ.update(self.client_settings)
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri


def absolute_uri(uri: str) -> str:
    """A sqlite store's path made absolute: a worker's working directory is not the driver's."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri.removeprefix("sqlite:///"))
    return uri


def data_root(placement_root: str) -> str:
    """The data folder, absolute: on another node MNIST is fetched there when missing."""
    from resnet_mnist.core.data import default_root

    return os.path.abspath(placement_root or default_root())

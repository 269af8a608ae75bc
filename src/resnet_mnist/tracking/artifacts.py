"""What a training run logs around its training: the splits as dataset inputs, the model's
complexity, the checkpoint files the checkpoint callback wrote, and the model itself (a
LoggedModel that takes raw digits). Each write that fails on the disk names its artifact.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.data.numpy_dataset import from_numpy
from mlflow.tracking import MlflowClient
from torch import nn

from resnet_mnist.core import data as D
from resnet_mnist.core.complexity import Complexity, format_table
from resnet_mnist.core.model import DigitClassifier
from resnet_mnist.core.trainer import Tensors
from resnet_mnist.tracking import names
from resnet_mnist.tracking.lifecycle import active_run_id
from resnet_mnist.tracking.provenance import version
from resnet_mnist.tracking.requirements import checked_here
from resnet_mnist.tracking.sqlite import store_lock
from resnet_mnist.tracking.store import retry_conflicts


@contextmanager
def naming(run_id: str, artifact: str) -> Iterator[None]:
    """An OSError while writing an artifact (a full disk) names the file; MLflow's does not."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            try:
                exc.filename = f"{MlflowClient().get_run(run_id).info.artifact_uri}/{artifact}"
            except Exception:  # noqa: BLE001 - the store may be what failed: name what we know
                exc.filename = artifact
        raise


def mnist_datasets(tensors: Tensors, data_root: str = "") -> dict[str, mlflow.data.Dataset]:
    """The run's MNIST splits (read from `data_root`) as MLflow datasets: digest from the official
    SHA-256s and the split size, so the same subset is the same dataset in every run."""
    source = str(D.raw_dir(data_root or None).resolve())
    sizes = tensors.sizes()
    datasets: dict[str, mlflow.data.Dataset] = {}
    for key in ("train", "dev", "test"):
        labels = getattr(tensors, key)[1].cpu().numpy()
        with warnings.catch_warnings():
            # MLflow registers its local-file source class twice and warns that a path is
            # ambiguous between the two identical candidates.
            warnings.filterwarnings("ignore", message="The specified dataset source")
            datasets[key] = from_numpy(
                labels,
                source=source,
                name=f"mnist-{key}",
                digest=D.split_digest(key, sizes[key]),
            )
    return datasets


def log_inputs(datasets: dict[str, mlflow.data.Dataset]) -> None:
    """Record the splits as the run's dataset inputs (training, dev, test contexts)."""
    for context, key in (("training", "train"), ("dev", "dev"), ("test", "test")):
        # Datasets are shared by the experiment: two processes adding the same one at once
        # collide on a unique key, so this is serialised (sqlite) or retried (a server).
        with store_lock(mlflow.get_tracking_uri()):
            retry_conflicts(partial(mlflow.log_input, datasets[key], context=context))


def log_complexity(c: Complexity) -> None:
    mlflow.log_metrics({"param_count": c.param_count, "macs": c.macs, "flops": c.flops})
    mlflow.log_text(format_table(c), "summary/layers.txt")


def log_checkpoint(path: Path | None) -> None:
    """Upload a checkpoint file the checkpoint callback wrote (`checkpoints.write_best`) to the
    active run's `checkpoints/`: at the end, or after a failure, so nothing learned is lost."""
    if path is None:
        return
    with naming(active_run_id(), f"checkpoints/{path.name}"):
        mlflow.log_artifact(str(path), "checkpoints")


def log_model(
    model: nn.Module, normalize: str, example_images: np.ndarray, step: int, temperature: float = 1.0
) -> str:
    """Log the model (torch.export `pt2` format, no pickle) wrapped to take raw 28x28 digits and
    answer calibrated probabilities (`temperature`, kept as the LoggedModel's param too).

    The signature is uint8 (N, 28, 28), as MNIST and PIL images come; MLflow enforces tensor
    dtypes strictly, so float images are cast to uint8 by the caller (`resnet-mnist predict` does).
    `step` is the best checkpoint's: MLflow links the run's metrics at that step (dev and test
    scores, with their datasets) to the LoggedModel, so the Models tab and `search_logged_models`
    can rank models by them. Returns the LoggedModel's id.
    """
    classifier = DigitClassifier(model, D.Preprocess(normalize), temperature).to("cpu").eval()
    example = np.ascontiguousarray(example_images, dtype=np.uint8).copy()
    with torch.inference_mode():
        output = classifier(torch.from_numpy(example)).numpy()
    signature = mlflow.models.infer_signature(example, output)
    with naming(active_run_id(), "model"), checked_here():  # MLflow's check costs a second
        info = mlflow.pytorch.log_model(
            classifier,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=[
                f"torch=={version(torch)}",
                f"mlflow=={version(mlflow)}",
                f"numpy=={version(np)}",
            ],
            step=step,
            model_type="image-classifier",
            # MLflow would load the model it has just written and predict the example, a check
            # that only ever warns, at ~0.5 s a run; `resnet-mnist predict`, the scoring server
            # and the suite's serve tests load every logged model for real.
            validate_serving_input=False,
        )
    # MLflow 3 keeps the model as a LoggedModel; registering its own URI avoids a lookup.
    mlflow.set_tag(names.LOGGED_MODEL_URI, info.model_uri)
    mlflow.log_model_params({names.TEMPERATURE: repr(float(temperature))}, info.model_id)
    return info.model_id

"""Tracking: a real MLflow store in a temp dir; what a run records, how runs end."""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from resnet_mnist.config.placement import Placement
from resnet_mnist.config.settings import build_config
from resnet_mnist.core import calibration as C
from resnet_mnist.core import data as D
from resnet_mnist.core.model import build_resnet
from resnet_mnist.core.trainer import Callback
from resnet_mnist.tracking.request import RunRequest
from resnet_mnist.tracking.runner import train


@pytest.fixture
def smoke(real_root) -> RunRequest:
    """The smoke preset's residual run, in experiment `exp`, reading the real MNIST files."""
    return RunRequest(build_config("smoke", True), Placement(data_root=str(real_root)), "exp")


def test_finished_run_records_everything(store, smoke, mnist, tmp_path) -> None:
    trained = train(smoke)
    run_id, result, model_uri = trained.run_id, trained.result, trained.model_uri
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "resnet18-residual-seed0"
    assert client.get_experiment(run.info.experiment_id).name == "exp"
    params = run.data.params
    assert params["lr"] == "0.01" and params["batch_size"] == "32" and params["preset"] == "smoke"
    assert params["variant"] == "residual"
    assert "data_root" not in params and "device" not in params  # where it ran is no setting
    tags = run.data.tags
    assert tags["run_type"] == "train" and tags["torch_version"].startswith("2.14")
    assert tags["device"] == "cpu"

    total = 16 * 3
    train_loss = client.get_metric_history(run_id, "train_loss")
    assert [m.step for m in train_loss] == list(range(total))
    dev = client.get_metric_history(run_id, "dev_accuracy")
    assert [m.step for m in dev] == [8, 16, 24, 32, 40, 47]
    assert [m.step for m in client.get_metric_history(run_id, "train_epoch_loss")] == [0, 1, 2]
    metrics = run.data.metrics
    assert metrics["param_count"] == 11_175_370 and 35e6 < metrics["macs"] < 36e6
    assert metrics["best_dev_accuracy"] == max(m.value for m in dev) == result.best_dev_accuracy
    assert metrics["test_accuracy"] == pytest.approx(result.test_accuracy)
    for key in ("test_loss", "flops", "train_images_per_s", "train_time_s", "best_step"):
        assert key in metrics

    inputs = run.inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"mnist-train", "mnist-dev", "mnist-test"}
    # the experiment opens as model training; CPU and memory were sampled while it trained
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)

    # The LoggedModel is the best checkpoint: linked to its step, with its dev and test scores
    # and the dataset each was measured on, so models rank by dev accuracy.
    (output,) = run.outputs.model_outputs
    assert output.step == result.best_step == metrics["best_step"]
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        output_format="list",
        order_by=[{"field_name": "metrics.best_dev_accuracy", "ascending": False}],
    )
    assert logged.model_id == output.model_id and logged.source_run_id == run_id
    scores = {m.key: m for m in logged.metrics}
    assert scores["best_dev_accuracy"].value == result.best_dev_accuracy
    assert (scores["best_dev_accuracy"].dataset_name, scores["test_accuracy"].dataset_name) == (
        "mnist-dev",
        "mnist-test",
    )
    assert {m.step for m in logged.metrics} == {result.best_step}
    assert [m.step for m in client.get_metric_history(run_id, "best_dev_accuracy")] == [result.best_step]
    # Its temperature, fitted on the dev split, is its param; the test split's calibration error
    # before and after it are its metrics (and the run's).
    temperature = float(logged.params["temperature"])
    assert C.LIMITS[0] < temperature < C.LIMITS[1]
    assert scores["test_ece"].dataset_name == scores["test_ece_calibrated"].dataset_name == "mnist-test"
    assert 0 <= scores["test_ece_calibrated"].value <= 1 and metrics["test_ece"] == scores["test_ece"].value

    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert artifacts == {"plots/curves.png"}
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="checkpoints", dst_path=str(tmp_path / "dl")
    )
    state = torch.load(f"{local}/best_model.pt", weights_only=True)
    assert all(torch.equal(state[k], result.best_state[k]) for k in state)
    assert "summary/layers.txt" in {a.path for a in client.list_artifacts(run_id, "summary")}

    # The logged model takes raw uint8 digits and classifies real test images.
    assert model_uri == f"runs:/{run_id}/model"
    digits, labels = mnist.test_images[:200].copy(), mnist.test_labels[:200]
    probs = mlflow.pyfunc.load_model(model_uri).predict(digits)
    assert probs.shape == (200, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert (probs.argmax(1) == labels).mean() > 0.7
    torch_model = mlflow.pytorch.load_model(model_uri)
    torch_probs = torch_model(torch.from_numpy(digits)).detach().numpy()
    assert np.allclose(torch_probs, probs, atol=1e-5)
    # what it serves is calibrated: the best checkpoint's logits divided by that temperature
    network = build_resnet(18, True).eval()
    network.load_state_dict(result.best_state)
    with torch.no_grad():
        logits = network(D.Preprocess(smoke.config.normalize)(torch.from_numpy(digits)))
    assert np.allclose(C.calibrated(logits, temperature).numpy(), probs, atol=1e-5)


class Boom(Callback):
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None:
        if step >= 16:
            raise self.exc


@pytest.mark.parametrize(
    "exc,status", [(RuntimeError("disk full"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_runs_never_stay_running(store, smoke, exc, status) -> None:
    with pytest.raises(type(exc)):
        train(smoke, callbacks=[Boom(exc)])
    runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("exp").experiment_id])
    assert [r.info.status for r in runs] == [status]
    run = runs[0]
    if status == "FAILED":
        assert run.data.tags["error"] == "RuntimeError: disk full"
    # the best checkpoint reached before the failure is kept
    assert "checkpoints/best_model.pt" in {
        a.path for a in MlflowClient().list_artifacts(run.info.run_id, "checkpoints")
    }


def test_non_finite_loss_fails_with_step_tag(store, smoke) -> None:
    with pytest.raises(Exception, match="non-finite"):
        train(smoke.with_settings(dataclasses.replace(smoke.config, lr=1e30)))
    run = MlflowClient().search_runs([mlflow.get_experiment_by_name("exp").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "NonFiniteLossError"
    assert int(run.data.tags["failed_at_step"]) >= 0


def test_a_stop_before_training_makes_no_run(store, smoke) -> None:
    import threading

    stop = threading.Event()
    stop.set()
    with pytest.raises(KeyboardInterrupt):
        train(smoke, stop=stop)
    exp = mlflow.get_experiment_by_name("exp")
    assert exp is None or MlflowClient().search_runs([exp.experiment_id]) == []

"""The runner takes one run request: a run stopped mid-training resumes wherever the request
places it, whatever device its params say it trained on."""

from __future__ import annotations

import threading

import pytest
from mlflow.tracking import MlflowClient

from resnet_mnist.config.placement import Placement
from resnet_mnist.config.settings import build_config, from_params
from resnet_mnist.core.trainer import Callback
from resnet_mnist.tracking.lifecycle import RunInterrupted
from resnet_mnist.tracking.request import RunRequest
from resnet_mnist.tracking.runner import resume, train


class StopAt(Callback):
    """Asks for a stop at a step, as Ctrl-C would."""

    def __init__(self, step: int, stop: threading.Event) -> None:
        self.step, self.stop = step, stop

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        if step == self.step:
            self.stop.set()


@pytest.mark.slow  # two smoke trainings' worth, in process
def test_a_run_trained_under_nproc_on_cuda_resumes_on_a_cpu(store: str, real_root) -> None:
    config = build_config("smoke", True)
    here = Placement(data_root=str(real_root))
    stop = threading.Event()
    with pytest.raises(RunInterrupted) as stopped:
        train(RunRequest(config, here, "exp"), [StopAt(10, stop)], stop=stop)
    run_id = stopped.value.run_id
    client = MlflowClient()
    # what a run under `--nproc 2` on CUDA logged (the device as a param, as runs did before
    # placement was apart from the settings)
    for key, value in {"device": "cuda:0", "world_size": "2", "backend": "nccl"}.items():
        client.log_param(run_id, key, value)
    assert from_params(client.get_run(run_id).data.params) == config

    done = resume(RunRequest.resuming(run_id, here))
    run = client.get_run(done.run_id)
    assert run.info.status == "FINISHED" and done.config == config
    assert run.data.tags["device"] == "cpu" and int(run.data.tags["resumed_from_step"]) >= 10

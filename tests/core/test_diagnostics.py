"""Diagnostics: gradient norms per stage, statistics at initialisation that leave no trace, the
block-lesion test, and what a tracked run with `diagnostics=True` records."""

from __future__ import annotations

import dataclasses
import math

import mlflow
import pytest
import torch
import torch.nn.functional as F
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from resnet_mnist.config.placement import Placement
from resnet_mnist.config.settings import TrainConfig, build_config
from resnet_mnist.core.diagnostics import block_lesion, grad_norms, init_statistics
from resnet_mnist.core.figures import plot_diagnostics
from resnet_mnist.core.model import blocks, build_resnet
from resnet_mnist.core.trainer import Callback, Result, Tensors, Trainer, build_model
from resnet_mnist.tracking.logger import MlflowTracker
from resnet_mnist.tracking.plots import log_diagnostics
from resnet_mnist.tracking.request import RunRequest
from resnet_mnist.tracking.runner import train

CPU = torch.device("cpu")


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("depth", [8, 18])
def test_grad_norms_are_per_stage_l2_norms(depth: int) -> None:
    torch.manual_seed(0)
    model = build_resnet(depth)
    x, y = batch()
    assert all(v == 0 for v in grad_norms(model).values())  # no gradients yet
    F.cross_entropy(model(x), y).backward()
    norms = grad_norms(model)
    assert list(norms) == [f"grad_norm/{name}" for name in model.stages()]
    assert all(math.isfinite(v) and v > 0 for v in norms.values())
    stage1 = torch.cat([p.grad.flatten() for p in model.stages()["stage1"].parameters()])
    assert norms["grad_norm/stage1"] == pytest.approx(stage1.norm().item(), rel=1e-5)


def test_init_statistics_leave_no_trace() -> None:
    torch.manual_seed(0)
    model = build_resnet(20).eval()
    x, y = batch()
    model(x).sum().backward()  # gradients already there must survive
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    stats = init_statistics(model, x, y)

    names = list(model.stages())
    assert list(stats) == [f"init/act_std/{n}" for n in names] + [f"init/grad_norm/{n}" for n in names]
    assert all(math.isfinite(v) and v > 0 for v in stats.values())
    assert stats["init/act_std/stem"] == pytest.approx(1.0, abs=0.01)  # the stem's BatchNorm
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())  # BN running stats too
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training


def test_bypassing_a_block_changes_the_output_and_is_undone() -> None:
    torch.manual_seed(0)
    model = build_resnet(8).eval()
    x, _ = batch()
    name, block = blocks(model)[1]
    with torch.no_grad():
        intact = model(x)
        block.bypass = True
        lesioned = model(x)
        block.bypass = False
    assert not torch.allclose(intact, lesioned)

    seen: list[list[str]] = []

    def score(m: torch.nn.Module) -> float:
        seen.append([n for n, b in blocks(m) if b.bypass])
        with torch.no_grad():
            return m(x).mean().item()

    metrics = block_lesion(model, score)
    assert list(metrics) == ["lesion/none"] + [f"lesion/{n}" for n, _ in blocks(model)]
    assert seen == [[]] + [[n] for n, _ in blocks(model)]  # one block at a time
    assert metrics[f"lesion/{name}"] != metrics["lesion/none"]
    assert not any(b.bypass for _, b in blocks(model))


def test_lesion_skips_blocks_without_a_shortcut_and_resets_on_error() -> None:
    model = build_resnet(18, use_residual=False)
    names = [k.removeprefix("lesion/") for k in block_lesion(model, lambda m: 0.0)]
    assert names == [
        "none",
        "stage1.block0",
        "stage1.block1",
        "stage2.block1",
        "stage3.block1",
        "stage4.block1",
    ]

    def fail(m: torch.nn.Module) -> float:
        if any(b.bypass for _, b in blocks(m)):
            raise RuntimeError("boom")
        return 1.0

    with pytest.raises(RuntimeError):
        block_lesion(model, fail)
    assert not any(b.bypass for _, b in blocks(model))


class Recorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.logs: list[int] = []
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.result: Result | None = None

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        self.losses.append(loss)

    def on_log(self, step: int, epoch: int, loss: float, images_per_s: float) -> None:
        self.logs.append(step)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.append((step, metrics))

    def on_end(self, result: Result) -> None:
        self.result = result


def random_tensors() -> Tensors:
    g = torch.Generator().manual_seed(1)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)

    return Tensors(split(48), split(16), split(16))


def test_diagnostics_do_not_change_training() -> None:
    config = TrainConfig(
        depth=8,
        train_size=48,
        dev_size=16,
        test_size=16,
        epochs=2,
        batch_size=16,
        eval_steps=2,
        log_steps=2,
        lr=0.1,
        momentum=0.9,
        seed=3,
    )
    tensors = random_tensors()
    runs = {}
    for on in (False, True):
        recorder = Recorder()
        model = build_model(dataclasses.replace(config, diagnostics=on), CPU)
        Trainer(dataclasses.replace(config, diagnostics=on), model, [recorder]).fit(tensors)
        runs[on] = recorder, model
    (off, model_off), (on, model_on) = runs[False], runs[True]
    assert on.losses == off.losses and len(on.losses) == 6
    assert on.result.test_accuracy == off.result.test_accuracy
    assert all(torch.equal(v, model_on.state_dict()[k]) for k, v in model_off.state_dict().items())
    assert off.metrics == [] and off.result.diagnostics == {}

    stages = list(model_on.stages())
    init, *grads, lesion = on.metrics
    assert init[0] == 0 and set(init[1]) == {
        f"init/{kind}/{s}" for kind in ("act_std", "grad_norm") for s in stages
    }
    assert [step for step, _ in grads] == on.logs == [0, 2, 4, 5]
    assert all(list(m) == [f"grad_norm/{s}" for s in stages] for _, m in grads)
    assert lesion[0] == 5 and lesion[1] == on.result.diagnostics
    assert lesion[1]["lesion/none"] == on.result.test_accuracy
    assert set(lesion[1]) == {"lesion/none"} | {f"lesion/{n}" for n, _ in blocks(model_on)}
    assert all(math.isfinite(v) for _, m in on.metrics for v in m.values())


def test_tracked_smoke_run_records_diagnostics(store, real_root) -> None:
    config = build_config("smoke", True, {"diagnostics": True, "epochs": 1})
    trained = train(RunRequest(config, Placement(data_root=str(real_root)), "exp"))
    client, run_id = MlflowClient(), trained.run_id
    stages = ["stem", "stage1", "stage2", "stage3", "stage4", "head"]

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

    for stage in stages:
        assert [s for s, _ in history(f"grad_norm/{stage}")] == [0, 8, 15]
        for kind in ("act_std", "grad_norm"):
            assert [s for s, _ in history(f"init/{kind}/{stage}")] == [0]
    lesion = {k: history(k) for k in client.get_run(run_id).data.metrics if k.startswith("lesion/")}
    assert set(lesion) == {"lesion/none"} | {
        f"lesion/stage{i}.block{j}" for i in range(1, 5) for j in range(2)
    }
    assert all([s for s, _ in h] == [15] for h in lesion.values())
    assert lesion["lesion/none"][0][1] == pytest.approx(trained.result.test_accuracy)
    values = [v for h in lesion.values() for _, v in h] + [
        v
        for s in stages
        for k in ("grad_norm", "init/act_std", "init/grad_norm")
        for _, v in history(f"{k}/{s}")
    ]
    assert all(math.isfinite(v) for v in values)
    assert "plots/diagnostics.png" in {a.path for a in client.list_artifacts(run_id, "plots")}


def test_resumed_tracker_sends_no_diagnostic_twice(store) -> None:
    client = MlflowClient()
    run_id = client.create_run(mlflow.create_experiment("exp")).info.run_id
    client.log_batch(run_id, metrics=[Metric("grad_norm/stem", 1.0, 0, s) for s in (0, 8)])
    tracker = MlflowTracker(run_id, client, logged={"train_loss": 8})
    for step in (8, 16):
        tracker.on_metrics(step, {"grad_norm/stem": 2.0})
    tracker.flush()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "grad_norm/stem")] == [
        (0, 1.0),
        (8, 1.0),
        (16, 2.0),
    ]
    log_diagnostics(client, run_id, "t")
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/diagnostics.png"]


def test_plot_diagnostics_writes_a_png(tmp_path) -> None:
    path = plot_diagnostics(
        {"stem": {0: 1.0, 8: 0.5}, "head": {0: 3.0, 8: 2.0}},
        {"none": 0.9, "stage1.block0": 0.8},
        tmp_path / "d.png",
        "t",
    )
    assert path == tmp_path / "d.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert plot_diagnostics({}, {}, tmp_path / "empty.png").is_file()

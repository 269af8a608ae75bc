"""Trainer: the book's schedule of events, best checkpoint, determinism, non-finite loss."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from resnet_mnist.config.settings import build_config
from resnet_mnist.core.trainer import (
    Callback,
    NonFiniteLossError,
    Result,
    StopRequested,
    Trainer,
    build_model,
    load_tensors,
    schedule,
)

CPU = torch.device("cpu")


class Recorder(Callback):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int, float]] = []
        self.evals: list[tuple[int, float, float]] = []
        self.best: list[tuple[int, float]] = []
        self.epochs: list[tuple[int, float]] = []
        self.logs: list[int] = []
        self.result: Result | None = None

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        self.steps.append((step, epoch, loss))

    def on_log(self, step: int, epoch: int, loss: float, images_per_s: float) -> None:
        self.logs.append(step)

    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None:
        self.evals.append((step, dev_loss, dev_accuracy))

    def on_best(self, step: int, dev_accuracy: float) -> None:
        self.best.append((step, dev_accuracy))

    def on_epoch_end(self, epoch: int, mean_loss: float) -> None:
        self.epochs.append((epoch, mean_loss))

    def on_end(self, result: Result) -> None:
        self.result = result


@pytest.fixture(scope="module")
def smoke(real_root):
    config = build_config("smoke", True)
    return config, load_tensors(config, CPU, str(real_root))


def train(config, tensors) -> Recorder:
    recorder = Recorder()
    Trainer(config, build_model(config, CPU), [recorder]).fit(tensors)
    return recorder


def test_schedule_of_events_follows_the_book(smoke) -> None:
    config, tensors = smoke
    rec = train(config, tensors)
    per_epoch = -(-config.train_size // config.batch_size)
    total = per_epoch * config.epochs
    assert [s for s, _, _ in rec.steps] == list(range(total))
    assert [e for _, e, _ in rec.steps] == [s // per_epoch for s in range(total)]
    expected_evals = [s for s in range(1, total) if s % config.eval_steps == 0]
    expected_evals += [total - 1] if (total - 1) not in expected_evals else []
    assert [s for s, _, _ in rec.evals] == expected_evals
    assert [e for e, _ in rec.epochs] == list(range(config.epochs))
    # best improves strictly and the result reports the best one
    accs = [a for _, a in rec.best]
    assert accs == sorted(set(accs))
    assert rec.result.best_dev_accuracy == max(a for _, _, a in rec.evals) == accs[-1]
    assert rec.result.best_step == rec.best[-1][0]
    assert set(rec.result.best_state) == set(build_model(config, CPU).state_dict())
    # it learns: far above chance on the held-out test images
    assert rec.result.test_accuracy > 0.5
    assert rec.steps[-1][2] < rec.steps[0][2]


def test_same_seed_same_metrics(real_root) -> None:
    # four steps of the smoke preset show it as its 48 would
    short = dataclasses.replace(build_config("smoke", True), epochs=1, train_size=128)
    tensors = load_tensors(short, CPU, str(real_root))
    a, b = train(short, tensors), train(short, tensors)
    assert len(a.steps) == 4
    assert [s[2] for s in a.steps] == [s[2] for s in b.steps]
    assert a.evals == b.evals
    c = train(dataclasses.replace(short, seed=1), tensors)
    assert [s[2] for s in c.steps] != [s[2] for s in a.steps]


def test_eval_steps_zero_evaluates_only_at_the_end(smoke) -> None:
    config, tensors = smoke
    rec = train(dataclasses.replace(config, epochs=1, eval_steps=0), tensors)
    assert [s for s, _, _ in rec.evals] == [len(rec.steps) - 1]


def test_non_finite_loss_stops_at_once(smoke) -> None:
    config, tensors = smoke
    recorder = Recorder()
    trainer = Trainer(dataclasses.replace(config, lr=1e30), build_model(config, CPU), [recorder])
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(tensors)
    assert info.value.step <= len(recorder.steps) + config.log_steps
    assert recorder.result is None


def test_step_boundary_follows_the_schedule() -> None:
    config = dataclasses.replace(build_config("smoke", True), eval_steps=8, log_steps=5, checkpoint_every=7)
    trainer = Trainer(config, torch.nn.Linear(2, 2))
    total = 20
    todo = [trainer.at_step_boundary(step, total) for step in range(total)]
    assert [s for s, t in enumerate(todo) if t.evaluate] == [8, 16, 19]
    assert [s for s, t in enumerate(todo) if t.log] == [0, 5, 10, 15, 19]
    assert [s for s, t in enumerate(todo) if t.checkpoint] == [6, 13]
    assert not any(t.stop for t in todo)
    assert [s for s, t in enumerate(todo) if t.flush] == [0, 5, 6, 8, 10, 13, 15, 16, 19]
    trainer.stop.set()
    assert trainer.at_step_boundary(3, total).stop and trainer.at_step_boundary(3, total).flush


class StopAfterFirstReport(Recorder):
    """Asks to stop while the losses of step 0 are being reported (as a signal handler would)."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self.stop = stop
        self.checkpoints: list[tuple[int, dict]] = []

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        super().on_step(step, epoch, loss)
        self.stop.set()

    def on_checkpoint(self, step: int, checkpoint: dict) -> None:
        self.checkpoints.append((step, checkpoint))


def test_stop_request_ends_at_the_next_boundary_with_a_checkpoint(smoke) -> None:
    config, tensors = smoke
    stop = threading.Event()
    recorder = StopAfterFirstReport(stop)
    trainer = Trainer(config, build_model(config, CPU), [recorder], stop=stop)
    with pytest.raises(StopRequested) as info:
        trainer.fit(tensors)
    assert info.value.step == 2
    assert [s for s, _, _ in recorder.steps] == [0, 1]
    ((step, checkpoint),) = recorder.checkpoints
    assert step == 2 and checkpoint["state"]["step"] == 2
    assert recorder.result is None


def rates(config, total: int) -> list[float]:
    """The rate of each of `total` steps under the config's schedule."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = schedule(config, optimizer, total)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return out


def test_warm_up_climbs_linearly_to_the_rate_then_the_schedule_goes_on() -> None:
    config = build_config("seed", True, {"lr": 0.1, "warmup_steps": 4})
    assert rates(config, 6) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert rates(dataclasses.replace(config, warmup_steps=0), 3) == [0.1] * 3
    onecycle = dataclasses.replace(config, schedule="onecycle")
    risen = rates(onecycle, 20)
    assert max(risen) == pytest.approx(0.1) and risen.index(max(risen)) == 3  # the peak at step 4
    own = rates(dataclasses.replace(onecycle, warmup_steps=0), 20)
    assert own.index(max(own)) == 5  # OneCycleLR's own rise: 30 % of the steps, as before

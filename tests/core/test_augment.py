"""Augmentation: each digit changed within bounds, the same for a step whether or not resumed."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from resnet_mnist.config.settings import build_config
from resnet_mnist.core import data as D
from resnet_mnist.core.augment import Augmentation, augment, generator_for
from resnet_mnist.core.trainer import StopRequested, Trainer, build_model, load_tensors
from tests.core.test_trainer import CPU, Recorder, StopAfterFirstReport


@pytest.fixture(scope="module")
def batch(mnist: D.Mnist) -> torch.Tensor:
    split = D.Split(mnist.test_images[:16], mnist.test_labels[:16])
    return D.to_tensors(split, "mnist")[0]


def test_a_step_has_its_own_repeatable_changes(batch: torch.Tensor) -> None:
    a = augment(batch, generator_for(100, 7, 0, CPU))
    assert a.shape == batch.shape and a.dtype == batch.dtype
    assert torch.equal(a, augment(batch, generator_for(100, 7, 0, CPU)))
    for other in (
        generator_for(100, 8, 0, CPU),
        generator_for(100, 7, 1, CPU),
        generator_for(101, 7, 0, CPU),
    ):
        assert not torch.equal(a, augment(batch, other))
    # every image is changed, the background stays background
    assert ((a - batch).abs().flatten(1).amax(1) > 0.1).all()
    background = batch[0, 0, 0, 0]
    assert torch.allclose(a[:, :, 0, :], background.expand_as(a[:, :, 0, :]), atol=1e-4)


def test_no_change_asked_is_no_change(batch: torch.Tensor) -> None:
    still = Augmentation(rotation=0.0, scale=(1.0, 1.0), shift=0.0, stroke=0.0)
    assert torch.allclose(augment(batch, generator_for(0, 0, 0, CPU), still), batch, atol=1e-5)


def test_the_pen_gets_bolder_or_thinner(batch: torch.Tensor) -> None:
    pen_only = Augmentation(rotation=0.0, scale=(1.0, 1.0), shift=0.0, stroke=0.5)
    background = batch[0, 0, 0, 0]
    ink = (batch - background).flatten(1).sum(1)
    changed = (augment(batch, generator_for(0, 0, 0, CPU), pen_only) - background).flatten(1).sum(1)
    assert (changed > ink * 1.05).any() and (changed < ink * 0.95).any()


def test_an_augmented_run_resumes_exactly(real_root) -> None:
    config = dataclasses.replace(build_config("smoke", True), epochs=1, augment=True)
    config = dataclasses.replace(config, train_size=320, batch_size=32, dev_size=100, test_size=100)
    tensors = load_tensors(config, CPU, str(real_root))
    whole = Recorder()
    Trainer(config, build_model(config, CPU), [whole]).fit(tensors)
    stop = threading.Event()
    first = StopAfterFirstReport(stop)
    with pytest.raises(StopRequested):
        Trainer(config, build_model(config, CPU), [first], stop=stop).fit(tensors)
    ((_, checkpoint),) = first.checkpoints
    rest = Recorder()
    Trainer(config, build_model(config, CPU), [rest]).fit(tensors, resume=checkpoint)
    assert [s[2] for s in first.steps + rest.steps] == [s[2] for s in whole.steps]
    plain = Recorder()
    Trainer(dataclasses.replace(config, augment=False), build_model(config, CPU), [plain]).fit(tensors)
    assert [s[2] for s in plain.steps] != [s[2] for s in whole.steps]

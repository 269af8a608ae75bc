"""One training run as the comparison, the registry and the statistics see it, and the error every
comparison step raises when there is nothing (or nothing comparable) to compare."""

from __future__ import annotations

from dataclasses import dataclass, field

from resnet_mnist.config.space import VARIANTS
from resnet_mnist.core.figures import History
from resnet_mnist.runtime.errors import ProjectError

__all__ = ["VARIANTS", "CompareError", "RunSummary"]


class CompareError(ProjectError, RuntimeError):
    """Nothing (or not enough, or not comparable) to compare; the message says what to run."""


@dataclass
class RunSummary:
    """One training run as the comparison sees it."""

    run_id: str
    variant: str
    seed: int
    depth: int
    best_dev_accuracy: float
    test_accuracy: float
    test_loss: float
    dev_accuracy_full: float
    dev_loss_full: float
    test_accuracy_full: float
    test_loss_full: float
    param_count: int
    macs: int
    train_time_s: float
    history: History = field(repr=False)

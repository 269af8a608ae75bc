"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar
T > 0 that divides the logits so that a probability of 0.9 is right about nine times in ten.

A network trained to low loss is over-confident: its top probability is higher than its accuracy,
so "99 %" says little, least of all on an image that is not a digit at all. T is fitted on the dev
split (the logits of the best checkpoint, by the negative log-likelihood, as Guo et al. do), never
on test, and it changes no answer (the order of the logits is kept): only how sure each answer is.
The expected calibration error (ECE) measures the gap between confidence and accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ECE_BINS = 15  #: equal-width confidence bins, as Guo et al.
LIMITS = (0.05, 20.0)  #: the temperatures searched (a model is never that far off)


@dataclass(frozen=True)
class Calibration:
    """A model's temperature and what it did on the test split (ECE before and after)."""

    temperature: float
    test_ece: float  #: at T = 1, as the network came out of training
    test_ece_calibrated: float  #: at the fitted temperature

    def metrics(self) -> dict[str, float]:
        return {"test_ece": self.test_ece, "test_ece_calibrated": self.test_ece_calibrated}


def calibrate(
    model: nn.Module, dev: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]
) -> Calibration:
    """Fit the temperature on the dev split's logits, measure the test split's ECE both ways."""
    temperature = fit_temperature(logits_of(model, dev[0]), dev[1])
    test_logits, test_labels = logits_of(model, test[0]), test[1]
    return Calibration(
        temperature,
        expected_calibration_error(calibrated(test_logits, 1.0), test_labels),
        expected_calibration_error(calibrated(test_logits, temperature), test_labels),
    )


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """The model's logits for preprocessed `images`, in batches, as float32 on the CPU."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(images[i : i + batch]).float().cpu() for i in range(0, len(images), batch)])
    finally:
        model.train(was_training)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T that minimises the negative log-likelihood of softmax(logits / T) on these labels.

    One parameter on a convex-in-log(T)-enough objective: a bounded search on log T (golden
    section, 60 steps: far below float32's resolution) is exact and needs no optimiser state.
    """
    logits, labels = logits.float().cpu(), labels.long().cpu()
    if len(labels) == 0:
        raise ValueError("no examples to fit a temperature on")

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / torch.exp(torch.tensor(log_t)), labels))

    lo, hi = (torch.log(torch.tensor(v)).item() for v in LIMITS)
    ratio = (5**0.5 - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(torch.exp(torch.tensor((lo + hi) / 2)))


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """ECE: the mean gap between confidence and accuracy over equal-width confidence bins,
    weighted by how many answers fall in each."""
    probabilities, labels = probabilities.float().cpu(), labels.long().cpu()
    confidence, predicted = probabilities.max(dim=1)
    right = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = (confidence[inside].mean() - right[inside].mean()).abs()
            total += float(gap) * int(inside.sum())
    return total / max(len(labels), 1)


def calibrated(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class probabilities from logits at `temperature`."""
    return torch.softmax(logits.float() / temperature, dim=1)


def uncalibrated(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """The probabilities the model would give at T = 1, from those it gave at `temperature`
    (log p = z / T + c, so softmax(T log p) = softmax(z)): how sure it was before calibration."""
    return torch.softmax(temperature * torch.log(probabilities.float().clamp_min(1e-30)), dim=1)

"""Our ResNet18 is torchvision's: the same weights give the same outputs (residual variant, three
input channels, 1000 classes, eval mode)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from resnet_mnist.core.model import ResNet18, load_torchvision_weights
from resnet_mnist.runtime.errors import ProjectError


class WeightsError(ProjectError, ValueError):
    """A torchvision state_dict that cannot be read; the message names the file."""


def torchvision_difference(weights: Path | None, batch: int, size: int, seed: int = 0) -> float:
    """The largest |difference| between torchvision's resnet18 and ours, with `weights` (a
    torchvision state_dict) copied into both, on one random `batch` x 3 x `size` x `size` batch.
    Without `weights` both get random weights and random BN statistics, so that eval-mode BN is
    really exercised."""
    torch.manual_seed(seed)
    reference = torchvision.models.resnet18(weights=None)
    if weights is not None:
        try:
            reference.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
            raise WeightsError(f"cannot load torchvision weights from {weights}: {exc}") from None
    else:
        with torch.no_grad():
            for m in reference.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
                    m.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    ours = ResNet18(in_channels=3, num_classes=1000, use_residual=True)
    load_torchvision_weights(ours, reference.state_dict())
    reference.eval()
    ours.eval()
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        return (reference(x) - ours(x)).abs().max().item()

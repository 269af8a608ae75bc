"""ResNet18 whose residual connections can be switched off.

Read top to bottom as torchvision's `models/resnet.py`: a 7x7/2 stem with max-pool, four stages of
two `ResBlock`s (64/128/256/512 channels), global average pool, linear. The book's transcription
bugs are fixed: its forward never added the shortcut, its stem lacked the max-pool and one stage
was missing. Convolutions are bias-free, as in torchvision.

With `use_residual=False` a block is a plain conv-BN-ReLU-conv-BN-ReLU stack and has no 1x1
projection: the book built the projection in both variants but never used it in the plain one, so
its parameters counted without doing anything. The residual network has 11,175,370 parameters
(1 channel, 10 classes), exactly torchvision's resnet18 with those input and output sizes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

STAGE_CHANNELS = (64, 128, 256, 512)


class ResBlock(nn.Module):
    """Two 3x3 convolutions; with `use_residual` the input (or its 1x1 projection) is added."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, use_residual: bool = True
    ) -> None:
        super().__init__()
        self.use_residual = use_residual
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module | None = None
        if use_residual and (stride != 1 or in_channels != out_channels):
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.use_residual:
            out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet18 for `in_channels`-channel images; `use_residual=False` gives the plain network."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, use_residual: bool = True
    ) -> None:
        super().__init__()
        self.use_residual = use_residual
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 64, stride=1)
        self.layer2 = self._make_layer(64, 128, stride=2)
        self.layer3 = self._make_layer(128, 256, stride=2)
        self.layer4 = self._make_layer(256, 512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            ResBlock(in_channels, out_channels, stride, self.use_residual),
            ResBlock(out_channels, out_channels, 1, self.use_residual),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def from_torchvision_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision `resnet18` state_dict onto `ResNet18(use_residual=True)` keys.

    torchvision calls the projection `downsample`; here it is `shortcut`. Everything else shares
    names, so the mapping is total: every key is renamed or kept, none dropped.
    """
    return {key.replace(".downsample.", ".shortcut."): value for key, value in state.items()}


def load_torchvision_weights(model: ResNet18, state: Mapping[str, torch.Tensor]) -> None:
    """Copy torchvision resnet18 weights into `model`, failing loudly on any missing or extra key."""
    if not model.use_residual:
        raise ValueError("torchvision's resnet18 is the residual variant; use use_residual=True")
    model.load_state_dict(from_torchvision_state_dict(state), strict=True)


class DigitClassifier(nn.Module):
    """The served model: raw 28x28 digits (uint8, 0-255) in, class probabilities out.

    It carries the run's own preprocessing (`resnet_mnist.data.Preprocess` with the run's
    normalisation), so callers never need to know how the network was fed during training.
    """

    def __init__(self, model: nn.Module, preprocess: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(self.preprocess(images)), dim=1)

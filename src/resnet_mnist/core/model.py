"""The ResNet family whose residual connections can be switched off; ResNet18 is the default.

Read top to bottom as torchvision's `models/resnet.py`: a 7x7/2 stem with max-pool, four stages of
`ResBlock`s (64/128/256/512 channels; two per stage for ResNet18, 3/4/6/3 for ResNet34), global
average pool, linear. The book's transcription bugs are fixed: its forward never added the
shortcut, its stem lacked the max-pool and one stage was missing. Convolutions are bias-free, as
in torchvision.

`CifarResNet` is He et al.'s CIFAR-10 family (2016, section 4.2): depth 6n+2 (20, 32, 44, 56, 110),
a 3x3 stem, three stages of n blocks with 16/32/64 channels, and the paper's parameter-free
shortcut (option A: subsample, then zero-pad the new channels), so the plain and residual networks
have exactly the same parameters. `build_resnet(depth, use_residual)` picks the family by depth.
Both families are `StagedResNet`s: one `_make_layer` builds every stage, with the widths taken
from `STAGE_CHANNELS` and `CIFAR_CHANNELS`.

With `use_residual=False` a block is a plain conv-BN-ReLU-conv-BN-ReLU stack and has no 1x1
projection: the book built the projection in both variants but never used it in the plain one, so
its parameters counted without doing anything. The residual network has 11,175,370 parameters
(1 channel, 10 classes), exactly torchvision's resnet18 with those input and output sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from resnet_mnist.config.space import IMAGENET_BLOCKS, family

#: The ImageNet-style stages' widths (torchvision's); the stem has the first.
STAGE_CHANNELS = (64, 128, 256, 512)
#: He et al.'s CIFAR stages' widths; the stem has the first.
CIFAR_CHANNELS = (16, 32, 64)


class ResBlock(nn.Module):
    """Two 3x3 convolutions; with `use_residual` the input (or its 1x1 projection) is added."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, use_residual: bool = True
    ) -> None:
        super().__init__()
        self.use_residual = use_residual
        #: Lesion studies set this: the block then passes on only its shortcut path.
        self.bypass = False
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

    @property
    def can_bypass(self) -> bool:
        """A block can be lesioned when it has a shortcut path of the right shape: identity, or
        the residual network's projection. A plain block that changes shape has none."""
        return self.use_residual or (
            self.shortcut is None
            and self.conv1.stride == (1, 1)
            and self.conv1.in_channels == self.conv2.out_channels
        )

    def shortcut_path(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) if self.shortcut is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return self.shortcut_path(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.use_residual:
            out = out + self.shortcut_path(x)
        return self.relu(out)


class CifarBlock(ResBlock):
    """He et al.'s CIFAR block: as `ResBlock`, but where the shape changes the shortcut is option
    A (take every other pixel, zero-pad the new channels), which has no parameters."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, use_residual: bool = True
    ) -> None:
        super().__init__(in_channels, out_channels, stride, use_residual)
        self.shortcut = None
        self.stride, self.pad = stride, out_channels - in_channels

    @property
    def can_bypass(self) -> bool:
        return True

    def shortcut_path(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x


def make_stage(
    block: type[ResBlock],
    in_channels: int,
    out_channels: int,
    count: int,
    stride: int,
    use_residual: bool,
) -> nn.Sequential:
    """`count` blocks; the first changes the shape (stride, channels), the rest keep it."""
    return nn.Sequential(
        block(in_channels, out_channels, stride, use_residual),
        *(block(out_channels, out_channels, 1, use_residual) for _ in range(count - 1)),
    )


class StagedResNet(nn.Module):
    """What both families share, as torchvision's `ResNet`: stages of `block`s, each built by
    `_make_layer`, which keeps `inplanes` (the width the next stage takes in) up to date.

    A subclass builds its stem (`conv1`, `bn1`; setting `inplanes` to the stem's width), then its
    stages in order as `layer1`, `layer2`, ... with `_make_layer`, then `fc`.
    """

    block: type[ResBlock] = ResBlock
    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    fc: nn.Linear

    def __init__(self, depth: int, use_residual: bool) -> None:
        super().__init__()
        self.use_residual, self.depth = use_residual, depth
        self.inplanes = 0

    def _make_layer(self, out_channels: int, count: int, stride: int = 1) -> nn.Sequential:
        """A stage of `count` blocks from `inplanes` to `out_channels`, the first with `stride`."""
        layer = make_stage(self.block, self.inplanes, out_channels, count, stride, self.use_residual)
        self.inplanes = out_channels
        return layer

    def stages(self) -> dict[str, nn.Module]:
        """The network in order, for per-stage diagnostics: stem, the stages, the classifier."""
        layers = [module for name, module in self.named_children() if name.startswith("layer")]
        return {
            "stem": nn.ModuleList([self.conv1, self.bn1]),
            **{f"stage{i}": layer for i, layer in enumerate(layers, start=1)},
            "head": self.fc,
        }


class ResNet(StagedResNet):
    """The ImageNet-style ResNet for `in_channels`-channel images, `blocks` per stage;
    `use_residual=False` gives the plain network."""

    def __init__(
        self,
        blocks: tuple[int, ...] = IMAGENET_BLOCKS[18],
        in_channels: int = 1,
        num_classes: int = 10,
        use_residual: bool = True,
    ) -> None:
        super().__init__(2 + 2 * sum(blocks), use_residual)
        widths = STAGE_CHANNELS
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(widths[0], blocks[0])
        self.layer2 = self._make_layer(widths[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(widths[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(widths[3], blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18(ResNet):
    """ResNet18 (two blocks per stage): the book's network and this project's default."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, use_residual: bool = True) -> None:
        super().__init__(IMAGENET_BLOCKS[18], in_channels, num_classes, use_residual)


class CifarResNet(StagedResNet):
    """He et al.'s CIFAR-10 ResNet of depth 6n+2: 3x3 stem with 16 channels, three stages of n
    blocks (16/32/64 channels, the last two starting with stride 2), average pool, linear."""

    block = CifarBlock

    def __init__(
        self,
        depth: int = 20,
        in_channels: int = 1,
        num_classes: int = 10,
        use_residual: bool = True,
    ) -> None:
        if family(depth) != "cifar":
            raise ValueError(f"depth={depth} is not 6n+2; CifarResNet takes 20, 32, 44, 56, 110…")
        super().__init__(depth, use_residual)
        n = (depth - 2) // 6
        widths = CIFAR_CHANNELS
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], n)
        self.layer2 = self._make_layer(widths[1], n, stride=2)
        self.layer3 = self._make_layer(widths[2], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():  # He initialisation, as the paper
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet(
    depth: int = 18, use_residual: bool = True, in_channels: int = 1, num_classes: int = 10
) -> nn.Module:
    """The network of `depth` (see `family`), with or without shortcuts."""
    if family(depth) == "cifar":
        return CifarResNet(depth, in_channels, num_classes, use_residual)
    return ResNet(IMAGENET_BLOCKS[depth], in_channels, num_classes, use_residual)


def blocks(model: nn.Module) -> list[tuple[str, ResBlock]]:
    """The residual units in forward order, named `stageK.blockI` (for lesion studies)."""
    stages: dict[str, nn.Sequential] = getattr(model, "stages", dict)()
    return [
        (f"{name}.block{i}", cast(ResBlock, block))
        for name, stage in stages.items()
        if name.startswith("stage")
        for i, block in enumerate(stage)
    ]


def from_torchvision_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision `resnet18` state_dict onto `ResNet18(use_residual=True)` keys.

    torchvision calls the projection `downsample`; here it is `shortcut`. Everything else shares
    names, so the mapping is total: every key is renamed or kept, none dropped.
    """
    return {key.replace(".downsample.", ".shortcut."): value for key, value in state.items()}


def load_torchvision_weights(model: ResNet, state: Mapping[str, torch.Tensor]) -> None:
    """Copy torchvision resnet18 weights into `model`, failing loudly on any missing or extra key."""
    if not model.use_residual:
        raise ValueError("torchvision's resnet18 is the residual variant; use use_residual=True")
    model.load_state_dict(from_torchvision_state_dict(state), strict=True)


class DigitClassifier(nn.Module):
    """The served model: raw 28x28 digits (uint8, 0-255) in, calibrated class probabilities out.

    It carries the run's own preprocessing (`resnet_mnist.core.data.Preprocess` with the run's
    normalisation), so callers never need to know how the network was fed during training, and
    the temperature fitted on the dev split (`core.calibration`), so its probabilities say how
    often it is right.
    """

    def __init__(self, model: nn.Module, preprocess: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(self.preprocess(images)) / self.temperature, dim=1)

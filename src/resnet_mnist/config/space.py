"""What a setting may be: MNIST's split sizes, the input normalisations, the depths the ResNet
family builds. Settings are validated against these before any run starts, and the data and model
code build from the same values, so the two can never disagree."""

from __future__ import annotations

from resnet_mnist.runtime.errors import ProjectError

#: The book's split: train = first 50,000 official training images, dev = the last 10,000,
#: test = the official 10,000.
TRAIN_SIZE, DEV_SIZE, TEST_SIZE = 50_000, 10_000, 10_000
#: (mean, std) applied to pixels scaled to [0, 1]; `seed` is the book's (x - 1) / 1.
NORMALIZATIONS = {"seed": (1.0, 1.0), "mnist": (0.1307, 0.3081), "none": (0.0, 1.0)}
#: The two variants of every comparison, by their `use_residual`.
VARIANTS = ("plain", "residual")
#: ImageNet-style depths and their blocks per stage (He et al. 2016, Table 1).
IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
DEPTH_HELP = "18 or 34 (ImageNet-style), or 6n+2 such as 20, 32, 44, 56, 110 (CIFAR-style)"


def family(depth: int) -> str:
    """`imagenet` for 18 and 34, `cifar` for 6n+2 (n >= 1); a ValueError for anything else."""
    if depth in IMAGENET_BLOCKS:
        return "imagenet"
    if depth >= 8 and (depth - 2) % 6 == 0:
        return "cifar"
    raise ValueError(f"depth={depth} is not a ResNet depth: use {DEPTH_HELP}")


class ConfigError(ProjectError, ValueError):
    """A preset or parameter is invalid; the message names it and the allowed range."""

    exit_code = 2  # invalid settings: a usage error

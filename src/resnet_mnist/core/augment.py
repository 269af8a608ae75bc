"""Training digits varied as people's digits vary: a small rotation, scale and shift, and the pen a
little thinner or thicker, drawn per batch on the device tensors (one `grid_sample` and one
pooling per batch, so it costs little next to the step).

MNIST's normalisation frames every digit alike (a 20 px box, centred by mass), but what is left
varies: a slant, a digit drawn narrower than its box, a pen thinner or bolder than MNIST's. The
randomness comes from the run's seed and the step, so a resumed run augments as the uninterrupted
one did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """How far each digit may be changed."""

    rotation: float = 12.0  #: degrees, either way
    scale: tuple[float, float] = (0.85, 1.1)
    shift: float = 0.08  #: of the image side, either way (about 2.5 px at 32x32)
    stroke: float = 0.5  #: at most this share of one pixel's dilation or erosion


def generator_for(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The step's own random stream: the same for a step whether or not the run was resumed."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 64 + rank)


def augment(x: torch.Tensor, generator: torch.Generator, how: Augmentation = Augmentation()) -> torch.Tensor:
    """A batch (N, 1, H, W), normalised as the model sees it, each image changed at random."""
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, device=x.device, generator=generator, dtype=torch.float32) * (high - low) + low

    angle = uniform(-how.rotation, how.rotation) * (math.pi / 180)
    scale = uniform(*how.scale)
    dx, dy = uniform(-how.shift, how.shift) * 2, uniform(-how.shift, how.shift) * 2
    thickness = uniform(-how.stroke, how.stroke)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, dx], 1), torch.stack([sin, cos, dy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # The border of every digit is background, so repeating it fills what the move uncovers.
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    bolder = F.max_pool2d(moved, 3, stride=1, padding=1)
    thinner = -F.max_pool2d(-moved, 3, stride=1, padding=1)
    t = thickness.to(x.dtype).view(n, 1, 1, 1)
    return torch.where(t > 0, moved + t * (bolder - moved), moved - t * (thinner - moved))
